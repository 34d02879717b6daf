# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The storage-replication CLI on the lab: the issue's commands, run on one node, take effect on every node;
bad input changes nothing anywhere; an unreachable node refuses the change unless --force, and catches up."""

from __future__ import annotations

import json

import cluster_setup as cs
import pytest
from lab._system import wait_until

from ansible_collections.storage.replication.plugins.module_utils import config as configmod

pytestmark = pytest.mark.lab


def sr(lab, node, *argv, check=True):
    """Run the CLI on ``node`` (inside its namespaces, as an operator logged in there)."""
    proc = lab.exec(node, [cs.LAUNCHER] + list(argv), check=False, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError("%s on %s failed (%d): %s%s" % (argv, node, proc.returncode, proc.stdout, proc.stderr))
    return proc


def node_config(lab, node):
    return configmod.load(str(lab.private_path(node, "/etc/storage-replication")))


def configs(lab):
    """{node: (generation, replication.cfg text, cluster.json text)}"""
    result = {}
    for node in lab.nodes:
        cfg = node_config(lab, node)
        content = cfg.content()
        result[node] = (cfg.generation, content[configmod.JOBS_FILE], content[configmod.MODEL_FILE])
    return result


def assert_same_everywhere(lab):
    found = configs(lab)
    assert len(set(found.values())) == 1, found
    return found[lab.nodes[0]]


@pytest.fixture(scope="module", name="cluster")
def cluster_fixture(lab):
    cfg = cs.setup(lab)
    cfg.guests[100] = configmod.Guest(100, "vm", "node1", ["%s:vm-100-disk-0" % cs.STORAGE])
    cs.write_config(lab, cfg)
    cs.create_volume(lab, "node1", "vm-100-disk-0")
    yield lab
    for node in lab.nodes:
        lab.heal(node)


def test_the_issue_commands_take_effect_on_every_node(cluster):
    lab = cluster
    generation = assert_same_everywhere(lab)[0]
    proc = sr(lab, "node1", "create-local-job", "100-0", "node2", "--schedule", "*/5", "--rate", "10")
    assert "generation %d is on node1, node2, node3" % (generation + 1) in proc.stdout and proc.stderr == ""
    gen, jobs, _model = assert_same_everywhere(lab)
    assert gen == generation + 1
    assert jobs == "local: 100-0\n\ttarget node2\n\trate 10\n\tschedule */5\n\tsource node1\n\n"

    sr(lab, "node2", "disable", "100-0")
    gen, jobs, _model = assert_same_everywhere(lab)
    assert gen == generation + 2 and "\tdisable\n" in jobs
    sr(lab, "node3", "enable", "100-0")
    gen, jobs, _model = assert_same_everywhere(lab)
    assert gen == generation + 3 and "disable" not in jobs

    sr(lab, "node2", "update", "100-0", "--schedule", "*/00")
    gen, jobs, _model = assert_same_everywhere(lab)
    assert gen == generation + 4 and "\tschedule */00\n" in jobs
    listing = sr(lab, "node3", "list").stdout.splitlines()
    assert listing == ["%-20s %-20s %10s %5s %8s" % row for row in (("JobID", "Target", "Schedule", "Rate", "Enabled"),
                                                                    ("100-0", "local/node2", "*/00", "10", "yes"))]
    unchanged = sr(lab, "node1", "update", "100-0", "--schedule", "*/00")
    assert "nothing to change" in unchanged.stdout and assert_same_everywhere(lab)[0] == gen


@pytest.mark.parametrize("argv, message", [
    (["create-local-job", "100-1", "node2"], "replication job for guest '100' to target 'local/node2' already exists"),
    (["create-local-job", "100-1", "node1"], "Source and target must not be identical"),
    (["create-local-job", "100-1", "node3", "--schedule", "every day"], "invalid schedule 'every day'"),
    (["create-local-job", "100-1", "node3", "--rate", "0"], "rate '0.0' is below the minimum of 1"),
    (["create-local-job", "100-1", "node9"], "Target 'node9' does not exist"),
    (["update", "100-7", "--rate", "5"], "replication job '100-7' does not exist"),
    (["update", "100-0", "--schedule", "25:61"], "invalid schedule '25:61'"),
    (["delete", "100-0", "--keep", "--force"], "parameter '--keep' conflicts with parameter '--force'"),
    (["run", "--id", "100-0", "--mail"], "Mail and id are mutually exclusive"),
    (["read", "100-9"], "no such job '100-9'"),
    (["enable", "100-x"], "invalid replication job id '100-x'"),
])
def test_bad_input_is_one_line_and_changes_nothing(cluster, argv, message):
    lab = cluster
    if "100-0" not in node_config(lab, "node1").jobs:
        sr(lab, "node1", "create-local-job", "100-0", "node2")
    before = configs(lab)
    proc = sr(lab, "node2", *argv, check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert message in proc.stderr
    assert configs(lab) == before


def test_an_unreachable_node_refuses_the_change_until_forced_then_catches_up(cluster):
    lab = cluster
    if "100-0" not in node_config(lab, "node1").jobs:
        sr(lab, "node1", "create-local-job", "100-0", "node2")
    before = assert_same_everywhere(lab)
    lab.partition("node3")
    try:
        refused = sr(lab, "node1", "update", "100-0", "--rate", "20", check=False)
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
        assert "nothing was changed: node 'node3': unreachable at %s" % lab.address("node3") in refused.stderr
        assert "allow unreachable nodes (CLI --allow-unreachable" in refused.stderr
        assert configs(lab) == {node: before for node in lab.nodes}

        forced = sr(lab, "node1", "update", "100-0", "--rate", "20", "--force")
        assert "node 'node3' did not get generation %d" % (before[0] + 1) in forced.stderr
        found = configs(lab)
        assert found["node1"] == found["node2"] and found["node1"][0] == before[0] + 1 and "\trate 20\n" in found["node1"][1]
        assert found["node3"] == before
    finally:
        lab.heal("node3")
    # node3 owns no guest; its runner still asks its peers (the first run of the interval) and adopts.
    sr(lab, "node3", "run")
    assert assert_same_everywhere(lab)[0] == before[0] + 1


def test_a_change_made_on_an_outdated_node_is_rebuilt_on_the_newer_generation(cluster):
    """Compare-and-swap through sshd: node2 missed the last change; its change is built on its old generation, the
    others answer with the newer one, node2 adopts it and commits its change on top of it, everywhere."""
    lab = cluster
    newest = node_config(lab, "node1")
    stale = node_config(lab, "node1")
    stale.generation -= 1
    path = lab.private_path("node2", "/etc/storage-replication")
    # node2 goes back one generation (as if it had missed the last change), then changes something.
    (path / "current").unlink()
    configmod.save(stale, str(path))
    assert node_config(lab, "node2").generation == newest.generation - 1
    sr(lab, "node2", "update", "100-0", "--comment", "from node2")
    generation, jobs, _model = assert_same_everywhere(lab)
    assert generation == newest.generation + 1 and "comment from node2" in jobs


def looked_at(lab, name):
    """What a run could change, on both sides: snapshots and guids, the state file, the run logs, the state dirs."""
    logs = {node: sorted(p.name for p in lab.private_path(node, "/var/log/storage-replication").iterdir())
            for node in ("node1", "node2")}
    log = lab.private_path("node1", "/var/log/storage-replication") / "100-0.log"
    return {"snapshots": {node: cs.snapshots(lab, node, name) for node in ("node1", "node2")},
            "state": cs.local_state(lab, "node1"), "logs": logs, "log": log.read_text() if log.exists() else None,
            "statedirs": {node: sorted(str(p) for p in lab.private_path(node, "/var/lib/storage-replication").rglob("*"))
                          for node in ("node1", "node2")},
            "configs": configs(lab)}


def test_run_check_says_what_the_run_would_send_and_changes_nothing(cluster):
    """run --check: per volume full or incremental, from which snapshot, about how many bytes (zfs-fuse: a delta
    cannot be sized without a snapshot, and it says so); nothing changes on either node, not even the run log."""
    lab = cluster
    name = "vm-100-disk-0"
    if "100-0" not in node_config(lab, "node1").jobs:
        sr(lab, "node1", "create-local-job", "100-0", "node2")
    cs.destroy(lab, "node2", cs.dataset(name))  # node2 holds no replica: the run would send it in full
    for snap in cs.snapshots(lab, "node1", name):
        cs.destroy(lab, "node1", "%s@%s" % (cs.dataset(name), snap))
    cs.write_random(lab, "node1", name, "a.bin", 3)
    # ZFS counts the space written at its next transaction group (zfs-fuse: within seconds)
    wait_until(lambda: int(cs.zfs(lab, "node1", "get", "-Hp", "-o", "value", "used", cs.dataset(name)).stdout) > 3_000_000,
               30, "node1 to account for the data written", 0.5, error=AssertionError)
    before = looked_at(lab, name)
    first = json.loads(sr(lab, "node1", "run", "--check", "--id", "100-0", "--output-format", "json").stdout)
    assert looked_at(lab, name) == before
    (job,) = first["jobs"]
    assert job["ok"] and job["target"] == "node2" and first["check"], first
    (volume,) = job["volumes"]
    assert (volume["volume"], volume["mode"], volume["base"]) == ("%s:%s" % (cs.STORAGE, name), "full", None)
    assert 3_000_000 <= volume["estimated_bytes"] <= 4_000_000, volume  # the 3 MB written, and the file system's own

    sr(lab, "node1", "run", "--id", "100-0")
    (base,) = [snap for snap in cs.snapshots(lab, "node1", name) if snap.startswith("__replicate_100-0_")]
    cs.write_random(lab, "node1", name, "b.bin", 2)
    before = looked_at(lab, name)
    second = json.loads(sr(lab, "node1", "run", "--check", "--id", "100-0", "--output-format", "json").stdout)
    (volume,) = second["jobs"][0]["volumes"]
    assert (volume["mode"], volume["base"], volume["estimated_bytes"]) == ("incremental", base, None), volume
    assert volume["estimate"] == "zfs-fuse cannot size a delta without taking a snapshot"
    text = sr(lab, "node1", "run", "--check", "--id", "100-0").stdout.splitlines()
    assert text[:2] == ["100-0: would run now to 'node2': size unknown",
                        "  %s:%s: incremental from '%s', size unknown (%s)" % (cs.STORAGE, name, base, volume["estimate"])]
    # the timer's run: the job ran a moment ago, so nothing is due; it says when the next one is
    timer = sr(lab, "node1", "run", "--check").stdout
    assert timer.startswith("nothing is due now; next: 100-0 at "), timer
    assert looked_at(lab, name) == before


def test_delete_with_a_node_down_keeps_the_cleanup_and_the_removal_reaches_every_node(cluster):
    lab = cluster
    if "100-0" not in node_config(lab, "node1").jobs:
        sr(lab, "node1", "create-local-job", "100-0", "node2")
    sr(lab, "node1", "run", "--id", "100-0")  # a replica on node2, a job snapshot on node1
    assert cs.exists(lab, "node2", cs.dataset("vm-100-disk-0")) and cs.snapshots(lab, "node1", "vm-100-disk-0")
    before = assert_same_everywhere(lab)
    lab.kill("node3")  # down: its peers are refused at once (a partition would cost a 15 s timeout per call)
    try:
        refused = sr(lab, "node2", "delete", "100-0", check=False)
        assert refused.returncode == 1 and "--allow-unreachable" in refused.stderr and configs(lab)["node1"] == before
        marked = sr(lab, "node2", "delete", "100-0", "--allow-unreachable")
        assert "node 'node3' did not get generation %d" % (before[0] + 1) in marked.stderr
        assert "\tremove_job full\n" in configs(lab)["node1"][1] and configs(lab)["node3"] == before
        # the owner's runner cleans up (full: the replica too), then drops the job on every node it reaches
        removal = sr(lab, "node1", "run", "--output-format", "json")
        assert "100-0" not in node_config(lab, "node1").jobs and "100-0" not in node_config(lab, "node2").jobs, removal.stdout
        assert node_config(lab, "node2").generation == before[0] + 2 and configs(lab)["node3"] == before
        assert not cs.exists(lab, "node2", cs.dataset("vm-100-disk-0")) and cs.snapshots(lab, "node1", "vm-100-disk-0") == {}
        assert "node 'node3' did not get generation %d" % (before[0] + 2) in cs.run_log(lab, "node1", "100-0")
    finally:
        lab.revive("node3")
    # node3 asked its peers in an earlier test; let its runner ask at every run instead of every 600 s
    settings = lab.private_path("node3", "/etc/storage-replication") / "runner.json"
    settings.write_text('{"peer_check_interval": 0}\n')
    try:
        sr(lab, "node3", "run")  # catches up: the job is gone there too
    finally:
        settings.unlink()
    generation, jobs, _model = assert_same_everywhere(lab)
    assert generation == before[0] + 2 and "100-0" not in jobs
