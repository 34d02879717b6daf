# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the cluster configuration: pvesr's replication.cfg format, validation, changes, load/save."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import pathlib

import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as C
from ansible_collections.storage.replication.plugins.module_utils.config import (
    ClusterConfig, ConfigError, Guest, Job, Node, Storage,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
ED25519 = "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))).decode()


def cluster():
    """Three nodes, one zfspool and one dir storage, guest 100 on node1 and 200 on node2, no jobs."""
    cfg = ClusterConfig(generation=0)
    for i in (1, 2, 3):
        cfg.nodes["node%d" % i] = Node("node%d" % i, "10.0.0.%d" % i, ED25519)
    cfg.storages["local-zfs"] = Storage("local-zfs", "zfspool", "rpool/data")
    cfg.storages["local"] = Storage("local", "dir", "rpool/dir")
    cfg.guests[100] = Guest(100, "vm", "node1", ["local-zfs:vm-100-disk-0", "local-zfs:vm-100-disk-1"],
                            {"freeze": ["/usr/bin/fsfreeze", "-f", "/mnt"], "thaw": ["/usr/bin/fsfreeze", "-u", "/mnt"]})
    cfg.guests[200] = Guest(200, "ct", "node2", ["local-zfs:subvol-200-disk-0"])
    return cfg


def with_jobs():
    cfg = cluster()
    cfg.add_job(Job("100-0", "node2", schedule="*/5", rate=10, comment="to node2: 100% üblich"))
    cfg.add_job(Job("100-1", "node3", disable=True))
    cfg.add_job(Job("200-0", "node1"))
    return cfg


def problem_of(change):
    with pytest.raises(ConfigError) as info:
        change()
    return str(info.value)


def listing(root):
    return sorted((str(p.relative_to(root)), p.is_symlink() and os.readlink(p), p.is_file() and p.read_bytes())
                  for p in pathlib.Path(root).rglob("*"))


# ---------------------------------------------------------------------------------------------------------------
# replication.cfg format

PVE_EXAMPLE = "local: 100-0\n\tcomment nightly%3A offsite\n\tdisable\n\ttarget pve2\n\trate 10\n\tschedule */5\n\tsource pve1\n\n"


def test_the_reference_example_parses_and_writes_back_byte_for_byte():
    jobs, warnings = C.parse_replication_cfg(PVE_EXAMPLE)
    assert warnings == []
    assert jobs == {"100-0": Job("100-0", "pve2", schedule="*/5", rate=10, comment="nightly: offsite", disable=True, source="pve1")}
    assert C.format_replication_cfg(jobs.values()) == PVE_EXAMPLE


def test_a_proxmox_file_parses_and_round_trips():
    text = (FIXTURES / "pve-replication.cfg").read_text(encoding="utf-8")
    jobs, warnings = C.parse_replication_cfg(text)
    assert warnings == []
    assert list(jobs) == ["100-0", "100-1", "101-0", "999999999-999999999"]
    assert jobs["100-1"].comment == "offsite: nightly, 100% sure über"
    assert jobs["100-1"].disable is True and jobs["100-1"].schedule == "22:30"
    assert jobs["101-0"].rate == 2.5 and jobs["101-0"].remove_job == "full"
    assert jobs["101-0"].schedule == "mon..fri 8..17,22:0/15"
    assert (jobs["100-0"].guest, jobs["100-0"].jobnum, jobs["100-0"].target_id) == (100, 0, "local/pve2")
    assert C.format_replication_cfg(jobs.values()) == text


@pytest.mark.parametrize("comment", ["a%b:c", "ünïcödé ✓", "tab\there\nnew line", "100%", " leading and trailing ", "#not a comment", "   "])
def test_comments_are_percent_encoded_and_round_trip(comment):
    text = C.format_replication_cfg([Job("100-0", "pve2", comment=comment)])
    line = text.split("\n")[1]
    assert line.startswith("\tcomment ")
    assert not set(line[len("\tcomment "):]) & set("%:\t\n") - {"%"}
    jobs, warnings = C.parse_replication_cfg(text)
    assert warnings == [] and jobs["100-0"].comment == comment
    assert C.format_replication_cfg(jobs.values()) == text


def test_encoding_matches_pvesr_byte_classes():
    assert C.encode_text("a:b%c ü$&9;~\x7f") == "a%3Ab%25c %C3%BC$&9;~%7F"
    assert C.decode_text("a%3Ab%25c %C3%BC") == "a:b%c ü"


def test_key_order_is_comment_disable_target_then_sorted():
    job = Job("100-3", "pve2", schedule="*/5", rate=1.5, comment="c", disable=True, remove_job="local", source="pve1")
    assert C.format_job(job).split("\n") == ["local: 100-3", "\tcomment c", "\tdisable", "\ttarget pve2", "\trate 1.5",
                                             "\tremove_job local", "\tschedule */5", "\tsource pve1", ""]
    assert C.format_job(Job("100-3", "pve2")) == "local: 100-3\n\ttarget pve2\n"


def test_empty_file_and_empty_job_list():
    assert C.parse_replication_cfg("") == ({}, [])
    assert C.format_replication_cfg([]) == ""


def test_hand_edited_file_gives_pvesr_warnings():
    jobs, warnings = C.parse_replication_cfg((FIXTURES / "hand-edited-replication.cfg").read_text(encoding="utf-8"))
    assert list(jobs) == ["100-7", "103-0", "104-0"]
    assert jobs["100-7"] == Job("100-7", "pve2", schedule="*/10")
    assert jobs["103-0"] == Job("103-0", "pve2")
    assert jobs["104-0"] == Job("104-0", "pve3")
    assert warnings[0] == "replication.cfg line 7 (skip section '99-0'): invalid replication job id '99-0' (guest IDs < 100 are reserved)"
    assert warnings[1] == "replication.cfg line 10 (skip section '102-0'): missing value for required option 'target'"
    assert warnings[2].startswith("replication.cfg line 16 (section '103-0') - unable to parse value of 'rate': rate '0.5' is below the minimum")
    assert warnings[3:12] == [
        "replication.cfg line 17 (section '103-0') - unable to parse value of 'colour': unexpected property 'colour'",
        "replication.cfg line 18 (section '103-0') - unable to parse value of 'remove_job': value 'later' does not have a value"
        " in the enumeration 'local, full'",
        "replication.cfg line 19 (section '103-0') - unable to parse value of 'target': duplicate attribute",
        "replication.cfg line 20 (section '103-0') - unable to parse value of 'disable': type check ('boolean') failed - got 'maybe'",
        "replication.cfg line 21 (section '103-0') - ignore config line: stray line inside a section",
        "replication.cfg line 23 - ignore config line: garbage at top level",
        "replication.cfg line 26 (section '104-1') - ignore config line: local: 104-2",
        "replication.cfg line 27 (section '104-1') - unable to parse value of 'target': duplicate attribute",
        "replication.cfg line 29 (skip section '105-0'): unsupported type 'remote'",
    ]
    assert warnings[12:] == [
        "replication.cfg line 35 (skip section '100-7'): duplicate section ID; the first one is kept",
        "delete job 104-1: replication job for guest '104' to target 'local/pve3' already exists",
    ]


def test_leading_zeros_are_normalised_on_read():
    jobs, _warnings = C.parse_replication_cfg("local: 0100-007\n\ttarget pve2\n")
    assert list(jobs) == ["100-7"]
    assert C.format_replication_cfg(jobs.values()) == "local: 100-7\n\ttarget pve2\n\n"


def test_bad_schedule_is_dropped_with_the_schedule_message():
    jobs, warnings = C.parse_replication_cfg("local: 100-0\n\ttarget pve2\n\tschedule mon-fri\n")
    assert jobs["100-0"].schedule is None
    assert warnings[0].startswith("replication.cfg line 3 (section '100-0') - unable to parse value of 'schedule': invalid schedule 'mon-fri'")


def test_only_ascii_digits_make_a_header():
    jobs, warnings = C.parse_replication_cfg("local: \u0661\u0660\u0660-0\n\ttarget pve2\n")
    assert jobs == {} and warnings[0].startswith("replication.cfg line 1 - ignore config line: local: ")


def test_bare_disable_and_boolean_words():
    jobs, _w = C.parse_replication_cfg("local: 100-0\n\ttarget a\n\tdisable\n\nlocal: 100-1\n\ttarget b\n\tdisable 0\n")
    assert jobs["100-0"].disable is True and jobs["100-1"].disable is False
    assert "disable" not in C.format_replication_cfg(jobs.values()).split("local: 100-1")[1]


# ---------------------------------------------------------------------------------------------------------------
# Queries

def test_queries_used_by_the_engine():
    cfg = with_jobs()
    assert [j.id for j in cfg.jobs_of_guest(100)] == ["100-0", "100-1"]
    assert [j.id for j in cfg.jobs_on_node("node1")] == ["100-0", "100-1"]
    assert [j.id for j in cfg.jobs_to_target("node1")] == ["200-0"]
    assert cfg.job_for_target(100, "node3").id == "100-1" and cfg.job_for_target(100, "node1") is None
    assert cfg.next_jobnum(100) == 2 and cfg.next_jobnum(200) == 1 and cfg.next_jobnum(300) == 0
    assert cfg.dataset("local-zfs:vm-100-disk-0") == "rpool/data/vm-100-disk-0"
    assert cfg.guest_datasets(100) == {"local-zfs:vm-100-disk-0": "rpool/data/vm-100-disk-0",
                                       "local-zfs:vm-100-disk-1": "rpool/data/vm-100-disk-1"}
    assert cfg.storage_ids(100) == ["local-zfs"]
    assert cfg.guests[100].hook("freeze") == ["/usr/bin/fsfreeze", "-f", "/mnt"] and cfg.guests[100].hook("start") is None
    assert problem_of(lambda: cfg.dataset("nope:vm-100-disk-0")) == (
        "volume 'nope:vm-100-disk-0': storage 'nope' does not exist; add it to the cluster configuration")


def test_job_as_api_item():
    assert Job("100-1", "pve2", rate=5, disable=True).as_dict() == {
        "id": "100-1", "type": "local", "target": "pve2", "rate": 5, "disable": True, "guest": 100, "jobnum": 1}


# ---------------------------------------------------------------------------------------------------------------
# Changes and their validation

def test_add_job_sets_source_and_keeps_order():
    cfg = with_jobs()
    assert list(cfg.jobs) == ["100-0", "100-1", "200-0"]
    assert cfg.jobs["100-0"].source == "node1" and cfg.jobs["200-0"].source == "node2"
    assert cfg.problems() == []


@pytest.mark.parametrize("job, message", [
    (Job("99-0", "node2"), "invalid replication job id '99-0' (guest IDs < 100 are reserved)"),
    (Job("1000000000-0", "node2"), "invalid replication job id '1000000000-0' (guest IDs are 100..999999999, job numbers 0..999999999)"),
    (Job("100-1000000000", "node2"), "invalid replication job id '100-1000000000' (guest IDs are 100..999999999, job numbers 0..999999999)"),
    (Job("100-007", "node2"), "invalid replication job id '100-007' - leading zeros are not allowed, write '100-7'"),
    (Job("100_0", "node2"), "invalid replication job id '100_0' - write it as '<guest>-<jobnum>', e.g. '100-0'"),
    (Job("300-0", "node2"), "Guest '300' does not exist. Add the guest to the cluster configuration first."),
    (Job("100-2", "node9"), "Target 'node9' does not exist. Known nodes: node1, node2, node3."),
    (Job("100-2", "node2", source="node3"), "Source 'node3' does not match current node of guest '100' (node1)"),
    (Job("100-2", "node1"), "Source and target must not be identical (guest '100' runs on 'node1'); choose another target"),
    (Job("100-0", "node3"), "replication job '100-0' already exists; the next free ID is '100-1'"),
    (Job("100-2", "node2"), "replication job '100-2': replication job for guest '100' to target 'local/node2' already exists;"
                            " keep one job per guest and target"),
    (Job("100-2", "node3", rate=0.5), "replication job '100-2': rate '0.5' is below the minimum of 1 (MB/s); leave it unset for no limit"),
    (Job("100-2", "node3", comment="x" * 4097), "replication job '100-2': comment must be a string of at most 4096 characters"),
    (Job("100-2", "node3", remove_job="all"), "replication job '100-2': remove_job 'all' is not one of: local, full"),
])
def test_add_job_refuses_with_pvesr_messages_and_changes_nothing(job, message):
    cfg = with_jobs()
    cfg.jobs.pop("100-1")  # frees node3 as a target for guest 100
    before = cfg.content()
    assert problem_of(lambda: cfg.add_job(job)) == message
    assert cfg.content() == before


def test_add_job_refuses_a_bad_schedule_naming_it():
    cfg = cluster()
    message = problem_of(lambda: cfg.add_job(Job("100-0", "node2", schedule="not a schedule")))
    assert message.startswith("replication job '100-0': invalid schedule 'not a schedule'")
    assert cfg.jobs == {}


def test_add_job_needs_replicatable_volumes():
    cfg = cluster()
    cfg.guests[300] = Guest(300, "service", "node1", [])
    assert problem_of(lambda: cfg.add_job(Job("300-0", "node2"))) == (
        "replication job '300-0': No replicatable volumes found: guest '300' has no volumes; add a volume on a zfspool storage")
    cfg.guests[300] = Guest(300, "service", "node1", ["local-zfs:data-300", "local:data-300"])
    assert problem_of(lambda: cfg.add_job(Job("300-0", "node2"))) == (
        "replication job '300-0': unable to replicate volume 'local:data-300': storage 'local' has type 'dir', only zfspool"
        " storages can be replicated; move the volume to such a storage")
    assert cfg.jobs == {}


def test_update_job_rules():
    cfg = with_jobs()
    job = cfg.update_job("100-0", rate=None, schedule="daily", disable=True)
    assert (job.rate, job.schedule, job.disable) == (None, "daily", True)
    assert cfg.update_job("100-0", delete=["schedule", "comment"]).schedule is None
    assert cfg.jobs["100-0"].comment is None
    assert cfg.update_job("100-0", target="node2").target == "node2"  # the same value is not a change
    assert problem_of(lambda: cfg.update_job("100-0", target="node3")) == "replication job '100-0': can't change value of fixed parameter 'target'"
    assert problem_of(lambda: cfg.update_job("100-0", delete=["target"])) == "replication job '100-0': unable to delete required option 'target'"
    assert problem_of(lambda: cfg.update_job("100-0", delete=["colour"])) == "replication job '100-0': no such option 'colour'"
    assert problem_of(lambda: cfg.update_job("100-0", colour="blue")).startswith("replication job '100-0': unknown option 'colour'")
    assert problem_of(lambda: cfg.update_job("100-9", rate=5)) == "replication job '100-9' does not exist; 'storage-replication list' shows the jobs"
    before = cfg.content()
    assert problem_of(lambda: cfg.update_job("100-0", rate=0)).endswith("rate '0' is below the minimum of 1 (MB/s); leave it unset for no limit")
    assert cfg.content() == before


def test_removal_marks_and_deletes():
    cfg = with_jobs()
    assert cfg.mark_job_for_removal("100-0").remove_job == "full"
    assert cfg.mark_job_for_removal("100-1", "local").remove_job == "local"
    assert problem_of(lambda: cfg.mark_job_for_removal("200-0", "some")) == (
        "replication job '200-0': removal mode 'some' is not one of: local, full")
    cfg.remove_job("100-0")
    assert list(cfg.jobs) == ["100-1", "200-0"]
    cfg.remove_job("100-0", missing_ok=True)
    assert problem_of(lambda: cfg.remove_job("100-0")).startswith("replication job '100-0' does not exist")


def test_move_guest_switches_direction_like_pvesr():
    cfg = with_jobs()
    cfg.move_guest(100, "node2")
    assert cfg.guests[100].node == "node2"
    assert (cfg.jobs["100-0"].target, cfg.jobs["100-0"].source) == ("node1", "node2")
    assert (cfg.jobs["100-1"].target, cfg.jobs["100-1"].source) == ("node3", "node2")
    assert cfg.problems() == []
    assert problem_of(lambda: cfg.set_guest(Guest(100, "vm", "node3", ["local-zfs:vm-100-disk-0"]))) == (
        "guest '100': its owner changes from 'node2' to 'node3'; use move_guest so that its replication jobs switch direction")


def test_a_stolen_guest_gets_its_jobs_switched_like_pvesr():
    cfg = with_jobs()
    cfg.guests[100].node = "node2"  # moved behind the model's back: job 100-0 now points at its own owner
    assert "replication job '100-0': Source and target must not be identical (guest '100' runs on 'node2');" \
        " change the job's target or remove the job" in cfg.problems()
    assert cfg.fix_stolen_guests("node1") == []
    assert cfg.fix_stolen_guests("node2") == [100]
    assert [(j.id, j.target, j.source) for j in cfg.jobs_of_guest(100)] == [("100-0", "node1", "node2"), ("100-1", "node3", "node2")]
    assert cfg.problems() == [] and cfg.fix_stolen_guests("node2") == []


def test_guests_nodes_storages_changes():
    cfg = with_jobs()
    assert problem_of(lambda: cfg.remove_guest(100)) == "There is a replication job '100-0' for guest '100' - Please remove that first."
    cfg.remove_guest(100, purge=True)
    assert 100 not in cfg.guests and list(cfg.jobs) == ["200-0"]
    assert problem_of(lambda: cfg.remove_node("node1")) == "replication job '200-0': Target 'node1' does not exist. Add the node or remove the job."
    assert problem_of(lambda: cfg.remove_node("node2")).startswith("guest '200': owner node 'node2' does not exist")
    assert problem_of(lambda: cfg.remove_storage("local-zfs")) == (
        "guest '200': volume 'local-zfs:subvol-200-disk-0' is on storage 'local-zfs', which does not exist; add the storage or fix the volume")
    cfg.set_node(Node("node4", "node4.example.org", port=2222))
    cfg.remove_node("node4")
    cfg.set_storage(Storage("tank", "zfspool", "tank/replicas"))
    cfg.remove_storage("tank")
    assert problem_of(lambda: cfg.remove_storage("tank")) == "storage 'tank' does not exist in the cluster configuration"
    assert cfg.problems() == []


@pytest.mark.parametrize("mutate, message", [
    (lambda c: setattr(c.nodes["node3"], "name", "node 3"),
     "node 'node 3' is stored under the name 'node3'; the key and the name must be equal"),
    (lambda c: c.nodes.__setitem__("-x", Node("-x", "10.0.0.9")),
     "node '-x': invalid node name; use letters, digits and '-' (a host name without domain, at most 63 characters)"),
    (lambda c: setattr(c.nodes["node3"], "address", "10.0.0.300 "),
     "node 'node3': address '10.0.0.300 ' is neither an IP address nor a host name; set the address peers reach it at"),
    (lambda c: setattr(c.nodes["node3"], "address", "10.0.0.1"),
     "nodes 'node1' and 'node3' have the same address '10.0.0.1'; give each node its own address"),
    (lambda c: setattr(c.nodes["node3"], "host_key", "ssh-rsa " + ED25519.split()[1]),
     "node 'node3': host key is not '<type> <base64>' (a line of /etc/ssh/ssh_host_ed25519_key.pub without the comment)"),
    (lambda c: setattr(c.nodes["node3"], "port", 0), "node 'node3': port '0' must be an integer 1..65535"),
    (lambda c: c.storages.__setitem__("Bad", Storage("Bad")),
     "storage 'Bad': invalid storage ID; use lower-case letters, digits, '-', '_' and '.', starting with a letter"),
    (lambda c: setattr(c.storages["local-zfs"], "pool", "rpool/@data"),
     "storage 'local-zfs': pool 'rpool/@data' is not a ZFS dataset name like 'rpool/data'"),
    (lambda c: c.guests.__setitem__(50, Guest(50, "vm", "node1")), "guest '50': guest IDs are integers 100..999999999"),
    (lambda c: setattr(c.guests[200], "type", "lxc"), "guest '200': type 'lxc' is not one of: vm, ct, service"),
    (lambda c: setattr(c.guests[200], "node", "node7"),
     "guest '200': owner node 'node7' does not exist; add the node or give the guest a known node (node1, node2, node3)"),
    (lambda c: c.guests[200].volumes.append("local-zfs:../etc"),
     "guest '200': volume 'local-zfs:../etc' is not '<storage>:<name>' with a name of letters, digits, '_', '.', '-' "
     "(at most 200, no '..', not starting with '-')"),
    (lambda c: c.guests[200].volumes.append("local-zfs:vm-100-disk-0"),
     "guest '200': volume 'local-zfs:vm-100-disk-0' is also a volume of guest '100'; a volume belongs to one guest"),
    (lambda c: c.guests[200].hooks.__setitem__("start", "systemctl start x"),
     "guest '200': hook 'start' must be a non-empty list of strings (an argv list such as [\"/usr/bin/systemctl\", \"start\", \"x\"]), never a shell string"),
    (lambda c: c.guests[200].hooks.__setitem__("reboot", ["/sbin/reboot"]),
     "guest '200': unknown hook 'reboot'; hooks are: start, stop, status, freeze, thaw, kill"),
    (lambda c: setattr(c, "generation", -1), "generation '-1' must be an integer >= 0"),
])
def test_model_rules(mutate, message):
    cfg = with_jobs()
    mutate(cfg)
    assert message in cfg.problems()
    assert problem_of(cfg.validate).split("\n") == cfg.problems()


def test_a_real_host_key_and_a_host_name_are_valid():
    cfg = cluster()
    cfg.nodes["node3"].address = "node3.lab.example"
    cfg.nodes["node3"].host_key = ED25519 + " root@node3"
    assert cfg.problems() == []


# ---------------------------------------------------------------------------------------------------------------
# Load and save

def test_load_of_a_missing_directory_is_empty(tmp_path):
    cfg = C.load(str(tmp_path / "none"))
    assert cfg == ClusterConfig() and cfg.generation == 0
    assert not (tmp_path / "none").exists()


def test_save_and_load_round_trip_with_generations(tmp_path):
    confdir = str(tmp_path)
    cfg = with_jobs()
    assert C.save(cfg, confdir) is True and cfg.generation == 1
    assert os.readlink(tmp_path / "current") == "generations/1"
    assert os.readlink(tmp_path / "replication.cfg") == "current/replication.cfg"
    loaded = C.load(confdir)
    assert loaded == cfg and loaded.warnings == []
    assert (tmp_path / "replication.cfg").read_text(encoding="utf-8") == C.format_replication_cfg(cfg.jobs.values())
    assert json.loads((tmp_path / "cluster.json").read_text(encoding="utf-8"))["generation"] == 1
    # Same content: nothing written, no new generation.
    assert C.save(loaded, confdir) is False and C.load(confdir).generation == 1
    loaded.update_job("100-0", rate=20)
    assert C.save(loaded, confdir) is True and C.load(confdir).generation == 2
    assert C.load(confdir).jobs["100-0"].rate == 20
    # The previous generation stays for inspection, untouched.
    assert C.from_files((tmp_path / "generations/1/cluster.json").read_text(encoding="utf-8"),
                        (tmp_path / "generations/1/replication.cfg").read_text(encoding="utf-8")) == cfg


def test_files_we_wrote_are_byte_stable(tmp_path):
    cfg = with_jobs()
    C.save(cfg, str(tmp_path))
    first = cfg.content()
    again = C.load(str(tmp_path)).content()
    assert again == first
    assert (tmp_path / "replication.cfg").read_text(encoding="utf-8") == first["replication.cfg"]


def test_older_generation_is_refused_and_newer_adopted(tmp_path):
    confdir = str(tmp_path)
    C.save(with_jobs(), confdir)
    stale = with_jobs()  # generation 0, from before the save
    stale.update_job("100-0", rate=99)
    assert problem_of(lambda: C.save(stale, confdir)) == (
        "the configuration in %s has generation 1, newer than this one (0); reload it and apply the change again" % confdir)
    pushed = C.load(confdir)
    pushed.generation = 7
    pushed.remove_job("100-1")
    assert C.adopt(pushed, confdir) is True and C.load(confdir).generation == 7
    assert C.adopt(pushed, confdir) is False
    pushed.remove_job("200-0")
    assert problem_of(lambda: C.adopt(pushed, confdir)) == (
        "refusing configuration generation 7: this node already has generation 7 with different content; push the newest"
        " configuration (generation > 7)")
    pushed.generation = 3
    assert problem_of(lambda: C.adopt(pushed, confdir)).startswith("refusing configuration generation 3: this node already has generation 7;")
    assert list(C.load(confdir).jobs) == ["100-0", "200-0"]


def test_failed_validation_writes_nothing(tmp_path):
    confdir = str(tmp_path)
    C.save(with_jobs(), confdir)
    bad = C.load(confdir)  # before the listing: this load writes the parsed cache (config._ParsedCache)
    before = listing(tmp_path)
    bad.guests[200].node = "nowhere"
    assert problem_of(lambda: C.save(bad, confdir)).startswith("guest '200': owner node 'nowhere' does not exist")
    with pytest.raises(ConfigError):
        with C.edit(confdir) as cfg:
            cfg.jobs["100-0"].target = "node1"
    assert listing(tmp_path) == before


def test_edit_saves_once_and_only_when_changed(tmp_path):
    confdir = str(tmp_path)
    with C.edit(confdir) as cfg:
        cfg.nodes.update(cluster().nodes)
        cfg.storages.update(cluster().storages)
        cfg.set_guest(Guest(100, "vm", "node1", ["local-zfs:vm-100-disk-0"]))
        cfg.add_job(Job("100-%d" % cfg.next_jobnum(100), "node2"))
    assert cfg.generation == 1 and C.load(confdir) == cfg
    with C.edit(confdir) as cfg:
        pass
    assert cfg.generation == 1 and sorted(os.listdir(tmp_path / "generations")) == ["1"]


def test_a_copied_proxmox_file_is_read_and_converted(tmp_path):
    (tmp_path / "replication.cfg").write_bytes((FIXTURES / "pve-replication.cfg").read_bytes())
    cfg = C.load(str(tmp_path))
    assert cfg.generation == 0 and list(cfg.jobs) == ["100-0", "100-1", "101-0", "999999999-999999999"]
    assert cfg.problems()  # no nodes or guests yet: the model must be completed before a save
    assert problem_of(lambda: C.save(cfg, str(tmp_path))).startswith("replication job '100-0': Target 'pve2' does not exist.")
    for name in ("pve1", "pve2", "pve3"):
        cfg.nodes[name] = Node(name, name + ".example")
    cfg.storages["local-zfs"] = Storage("local-zfs")
    cfg.guests[100] = Guest(100, "vm", "pve1", ["local-zfs:vm-100-disk-0"])
    cfg.guests[101] = Guest(101, "ct", "pve2", ["local-zfs:subvol-101-disk-0"])
    cfg.guests[999999999] = Guest(999999999, "service", "pve3", ["local-zfs:svc-999999999"])
    assert C.save(cfg, str(tmp_path)) is True and cfg.generation == 1
    assert (tmp_path / "replication.cfg").is_symlink()
    assert (tmp_path / "replication.cfg").read_bytes() == (FIXTURES / "pve-replication.cfg").read_bytes()


def test_broken_cluster_json_is_reported_by_name(tmp_path):
    (tmp_path / "cluster.json").write_text("{not json", encoding="utf-8")
    assert problem_of(lambda: C.load(str(tmp_path))).startswith("%s/cluster.json is not valid JSON" % tmp_path)
    (tmp_path / "cluster.json").write_text(json.dumps({"generation": "3", "nodes": {"a": {"port": "22"}}, "guests": {"x": {}}}),
                                           encoding="utf-8")
    assert problem_of(lambda: C.load(str(tmp_path))).split("\n") == [
        "%s/cluster.json: the file: 'generation' must be of type int, not '3'" % tmp_path,
        "%s/cluster.json: node 'a': 'port' must be of type int, not '22'" % tmp_path,
        "%s/cluster.json: guest 'x': guest IDs are integers 100..999999999" % tmp_path,
    ]


def test_guest_ids_in_cluster_json_are_canonical(tmp_path):
    (tmp_path / "cluster.json").write_text(json.dumps({"guests": {"0100": {"type": "vm", "node": "a"}}}), encoding="utf-8")
    assert problem_of(lambda: C.load(str(tmp_path))) == "%s/cluster.json: guest '0100': guest IDs are integers 100..999999999" % tmp_path


def test_old_generations_are_pruned_and_a_broken_switch_is_explained(tmp_path):
    confdir = str(tmp_path)
    cfg = with_jobs()
    for rate in range(1, 9):
        cfg.update_job("100-0", rate=rate)
        C.save(cfg, confdir)
    assert sorted(os.listdir(tmp_path / "generations"), key=int) == ["4", "5", "6", "7", "8"]
    os.rename(tmp_path / "generations/8", tmp_path / "lost")
    assert problem_of(lambda: C.load(confdir)) == (
        "the cluster configuration of this node cannot be read: %s/generations/8/cluster.json is missing (the generation"
        " 'current' points to is incomplete) - nothing acts on it; restore it from the peers with 'storage-replication "
        "restore-config' (the runner tries this itself)" % confdir)


# ---------------------------------------------------------------------------------------------------------------
# Crash consistency: a save killed at any step leaves the old or the new generation, whole.

CRASH_POINTS = [
    ("write_synced", 1),     # after the first of the two files of the new generation
    ("write_synced", 2),     # both files written, staging directory not yet renamed
    ("fsync_dir", 2),        # staging renamed to generations/<N>, not yet switched
    ("_replace_symlink", 1),  # the switch itself never happened
    ("_replace_symlink", 2),  # switched; stable symlinks not yet updated
    ("_prune", 1),           # everything done but pruning
]


def _crashing_save(confdir, function, call, done):
    """Child process: run a save and die with os._exit when ``function`` is entered for the ``call``-th time."""
    original = getattr(C, function)
    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            os._exit(17)
        return original(*args, **kwargs)
    setattr(C, function, crash)
    cfg = C.load(confdir)
    cfg.update_job("100-0", rate=done)
    C.save(cfg, confdir)
    os._exit(0)


@pytest.mark.parametrize("function, call", CRASH_POINTS)
def test_a_crash_at_any_step_leaves_one_whole_generation(tmp_path, function, call):
    confdir = str(tmp_path)
    C.save(with_jobs(), confdir)
    old = C.load(confdir)
    child = multiprocessing.get_context("fork").Process(target=_crashing_save, args=(confdir, function, call, 42))
    child.start()
    child.join(30)
    assert child.exitcode == 17
    after = C.load(confdir)
    committed = function == "_prune" or (function == "_replace_symlink" and call == 2)
    assert after.generation == (2 if committed else 1)
    assert after.jobs["100-0"].rate == (42 if committed else old.jobs["100-0"].rate)
    assert after.same_content(old) != committed
    # The next save recovers from whatever the crash left behind.
    after.update_job("100-0", rate=43)
    assert C.save(after, confdir) is True
    final = C.load(confdir)
    assert final.generation == after.generation and final.jobs["100-0"].rate == 43
    assert not [n for n in os.listdir(tmp_path / "generations") if n.startswith(".")]
    assert (tmp_path / "replication.cfg").read_text(encoding="utf-8") == final.content()["replication.cfg"]


def _add_job_in_a_child(confdir, target, ready):
    ready.wait(10)
    with C.edit(confdir) as cfg:
        cfg.add_job(Job("200-%d" % cfg.next_jobnum(200), target))


def test_concurrent_edits_are_serialised(tmp_path):
    confdir = str(tmp_path)
    C.save(cluster(), confdir)
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    children = [ctx.Process(target=_add_job_in_a_child, args=(confdir, t, ready)) for t in ("node1", "node3")]
    for child in children:
        child.start()
    ready.set()
    for child in children:
        child.join(30)
    assert [c.exitcode for c in children] == [0, 0]
    cfg = C.load(confdir)
    assert cfg.generation == 3
    assert sorted((j.id, j.target) for j in cfg.jobs.values()) in (
        [("200-0", "node1"), ("200-1", "node3")], [("200-0", "node3"), ("200-1", "node1")])


# ---------------------------------------------------------------------------------------------------------------
# Restore points: keep and keep_source, kept out of replication.cfg

def test_keep_lives_in_cluster_json_and_replication_cfg_stays_pvesr_s(tmp_path):
    cfg = with_jobs()
    plain = cfg.content()
    cfg.update_job("100-0", keep="monthly=6, last=4,daily=0", keep_source="last=2")
    assert (cfg.jobs["100-0"].keep, cfg.jobs["100-0"].keep_source) == ("last=4,monthly=6", "last=2")
    assert cfg.content()["replication.cfg"] == plain["replication.cfg"]  # pvesr's file does not change at all
    assert json.loads(cfg.content()["cluster.json"])["jobs"] == {"100-0": {"keep": "last=4,monthly=6", "keep_source": "last=2"}}
    assert "jobs" not in json.loads(plain["cluster.json"])  # a cluster without keep writes the files it always wrote
    jobs, warnings = C.parse_replication_cfg(cfg.content()["replication.cfg"])
    assert warnings == [] and sorted(jobs) == ["100-0", "100-1", "200-0"]  # as pvesr's parser reads it
    C.save(cfg, str(tmp_path))
    loaded = C.load(str(tmp_path))
    assert loaded == cfg and loaded.jobs["100-0"].retention().text == "last=4,monthly=6"
    assert loaded.jobs["100-1"].retention() == C.retention.PVESR and loaded.jobs["100-0"].retention("source").text == "last=2"


def test_keep_is_validated_normalized_and_reset():
    cfg = with_jobs()
    before = cfg.content()
    message = problem_of(lambda: cfg.update_job("100-0", keep="hourly=24,minutely=5"))
    assert message == ("replication job '100-0': keep: keep 'hourly=24,minutely=5': unknown rule 'minutely'; the rules "
                       "are last, hourly, daily, weekly, monthly, yearly")
    assert "keep on the source (keep_source): keep 'x'" in problem_of(lambda: cfg.update_job("100-0", keep_source="x"))
    assert cfg.content() == before
    assert cfg.update_job("100-0", keep="last=1").keep is None  # pvesr's behaviour is the default, stored as nothing
    cfg.update_job("100-0", keep="daily=7")
    assert cfg.update_job("100-0", delete=["keep"]).keep is None
    assert cfg.content() == before
    cfg.remove_job("100-1")
    assert cfg.add_job(Job("100-1", "node3", keep="weekly=2,last=3")).keep == "last=3,weekly=2"


def test_keep_of_a_job_removed_from_replication_cfg_goes_with_it():
    cfg = with_jobs()
    cfg.update_job("100-0", keep="daily=7")
    content = cfg.content()
    without = C.from_files(content["cluster.json"], content["replication.cfg"].replace(
        C.format_job(cfg.jobs["100-0"]) + "\n", ""))
    assert "100-0" not in without.jobs and "jobs" not in json.loads(without.content()["cluster.json"])


@pytest.mark.parametrize("section, message", [
    ({"100-0": {"colour": "blue"}}, "job '100-0': unknown option(s) colour"),
    ({"100-0": {"keep": 7}}, "'keep' must be of type str, not 7"),
    ([1], "'jobs' must be an object of objects"),
])
def test_bad_job_options_in_cluster_json_are_named(section, message):
    content = with_jobs().content()
    model = json.loads(content["cluster.json"])
    model["jobs"] = section
    with pytest.raises(ConfigError, match=r"cluster.json: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        C.from_files(json.dumps(model), content["replication.cfg"])
