# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible on a bad day (issue 21), on a four-node lab of its own with the runner installed by site.yml:

- site.yml with one of four nodes killed (the first of the inventory) changes the configuration on the three that
  answer, exits 0, credits nothing to the dead node, keeps its SSH trust as recorded, and the node catches up when
  it is back; with two of four killed it refuses for want of a quorum and changes nothing; replication_strict
  refuses with one node down;
- the run module returns each volume's mode, base, bytes and seconds and the run's log lines;
- failover.yml credits its steps to the coordinator, not to the dead first node, prints and records
  replication_failover; --check warns of no node that "did not get" a generation;
- guest_info after the failover: owner, running (status hook), jobs, the replicas per node, a JMESPath query;
- the drift warning is one line; migrate.yml back records replication_migration with where the jobs go now.

The tests build on each other, in order (one story), on the lab ``<SR_LAB_NAME>-day``.
"""

from __future__ import annotations

import json
import os
import re

import pytest

import cluster_setup as cs
from ansible_runner import playbook_lab, run_playbook
from test_site import Site
from workload.guest import config_of, runner

pytestmark = pytest.mark.lab

GUEST = 100
VOLUME = "subvol-100-disk-0"
RUNNING_FILE = "/var/lib/storage-replication/guest-100.running"
PING = "Ask every node"
COORDINATOR_PING = "See which nodes answer"
ADDED_JOB = {"guest": GUEST, "target": "node4", "comment": "added while node1 was down"}
CONFIG_TASKS = ["Record the storages", "Record the guests (where each starts; a moved guest stays where it is)",
                "Converge the replication jobs"]


JOBS = [{"guest": GUEST, "target": "node2"}, {"guest": GUEST, "target": "node3", "schedule": "*/30"}]


def inventory_vars(wheelhouse):
    """Guest 100, a service whose hooks keep a file on its node, replicated from node1 to node2 and node3."""
    return {
        "runner_pip_wheelhouse": wheelhouse,
        "replication_storages": [{"id": cs.STORAGE, "pool": cs.POOL}],
        "replication_guests": [{"id": GUEST, "type": "service", "node": "node1", "volumes": ["%s:%s" % (cs.STORAGE, VOLUME)],
                                "hooks": {"start": ["/bin/touch", RUNNING_FILE], "stop": ["/bin/rm", "-f", RUNNING_FILE],
                                          "status": ["/bin/sh", "-c", "test -e %s || exit 3" % RUNNING_FILE]}}],
        "replication_jobs": JOBS,
    }


@pytest.fixture(scope="module")
def day_lab():
    with playbook_lab("%s-day" % os.environ.get("SR_LAB_NAME", "srtest")[:12], "256M", nodes=4) as lab:
        yield lab


class Story:
    """What the earlier tests found, for the later ones."""
    job_to_node4 = None
    owner = None


class Day(Site):
    """site.yml (with this module's inventory variables), the other playbooks and one-play tasks against the lab."""

    def __init__(self, lab, directory):
        super().__init__(lab, directory)
        self.vars = inventory_vars(self.vars["runner_pip_wheelhouse"])

    def playbook(self, name, extra_vars=None, **kwargs):
        return run_playbook(self.lab.inventory_path, "playbooks/%s.yml" % name, extra_vars=extra_vars, timeout=1800,
                            collections_path=self.collections, **kwargs)

    def site(self, jobs=None, **extra):
        return self.play(dict(extra, replication_jobs=jobs) if jobs is not None else extra)

    def config(self, node):
        """The node's committed configuration, read from its disk (works while the node is dead)."""
        return config_of(self.lab, node)

    def configs(self, nodes=None):
        return {node: self.config(node).content() for node in nodes or self.lab.nodes}


@pytest.fixture(scope="module")
def day(day_lab, tmp_path_factory):
    return Day(day_lab, tmp_path_factory.mktemp("day"))


def output(run):
    """What ansible-playbook printed, with its line wrapping undone."""
    return " ".join((run.stdout + run.stderr).split())


def assert_ok_but_dead(run, dead):
    """Exit 0; the only non-ok results are the dead nodes' ignored answers to the first ping."""
    unexpected = [r for r in run.failures() if not (r["host"] in dead and r["task"] in (PING, COORDINATOR_PING))]
    assert run.rc == 0 and not unexpected, run.describe()


def assert_nothing_credited_to(run, dead):
    """The recap credits the dead nodes with nothing but their ignored ping and the facts set about them."""
    for node in dead:
        stats = run.stats[node]
        assert (stats["changed"], stats["failures"], stats["unreachable"]) == (0, 0, 0), (node, stats)
        worked = sorted({r["task"] for r in run.results if r["host"] == node and r["status"] not in ("skipped",)})
        assert set(worked) <= {PING, COORDINATOR_PING, "Note whether each node answered",
                               "Sort the nodes into those that answer and those that do not"}, (node, worked)


# ---------------------------------------------------------------------------------------------------------------
# site.yml with nodes down

def test_site_installs_four_nodes(day):
    run = day.site()
    run.assert_ok()
    assert len({json.dumps(c, sort_keys=True) for c in day.configs().values()}) == 1
    cs.create_volume(day.lab, "node1", VOLUME)
    cs.write_random(day.lab, "node1", VOLUME, "data.bin", 2)
    day.lab.exec("node1", ["touch", RUNNING_FILE])
    day.cli("node1", "run")
    jobs = {job.target: job.id for job in day.config("node1").jobs.values()}
    assert sorted(jobs) == ["node2", "node3"]
    for target in ("node2", "node3"):
        assert any(s.startswith("__replicate_%s_" % jobs[target]) for s in cs.snapshots(day.lab, target, VOLUME))


def test_site_with_one_of_four_nodes_down_changes_the_other_three(day):
    lab = day.lab
    trusted_before = lab.exec("node2", ["cat", "/root/.ssh/authorized_keys"]).stdout
    before = day.config("node2").generation
    lab.kill("node1")  # the first host of the inventory: run_once would have picked it
    try:
        run = day.site(JOBS + [ADDED_JOB])
        assert_ok_but_dead(run, ["node1"])
        said = output(run)
        assert "1 of 4 nodes do not answer (node1: " in said and "adopt it from their peers when they are back" in said, said[-3000:]
        assert "did not get generation %d" % (before + 1) in said
        assert "Kept as recorded, not refreshed: the keys of node1" in said
        assert_nothing_credited_to(run, ["node1"])
        assert "Converge the replication jobs" in run.changed_tasks("node2"), run.changed_tasks()
        # The change committed on the three that answered; node1's disk still holds the old generation.
        configs = day.configs(["node2", "node3", "node4"])
        assert len({json.dumps(c, sort_keys=True) for c in configs.values()}) == 1
        added = [j for j in day.config("node2").jobs.values() if j.target == "node4"]
        assert len(added) == 1 and added[0].comment == "added while node1 was down"
        assert day.config("node2").generation == before + 1 and day.config("node1").generation == before
        # node2 still trusts node1's key, as recorded.
        assert lab.exec("node2", ["cat", "/root/.ssh/authorized_keys"]).stdout == trusted_before
    finally:
        lab.revive("node1")
    # Back, its runner adopts the newer configuration before it runs a job (and at least every peer_check_interval).
    code, result = runner(lab, "node1", "--id", [j.id for j in day.config("node1").jobs.values() if j.target == "node2"][0])
    assert code == 0, result
    assert any("adopted cluster configuration generation %d" % (before + 1) in w for w in result["warnings"]), result
    assert day.config("node1").content() == day.config("node2").content()
    Story.job_to_node4 = added[0].id


def test_site_with_two_of_four_nodes_down_is_refused_for_quorum(day):
    lab = day.lab
    before = day.configs()
    lab.kill("node1")
    lab.kill("node2")
    try:
        run = day.site(JOBS + [{"guest": GUEST, "target": "node4", "rate": 5}])
        assert run.rc != 0
        failures = [f for f in run.failures() if f["task"] != PING]
        assert [(f["host"], f["task"]) for f in failures] == [("node3", "Refuse without a majority of the nodes")], run.describe()
        message = " ".join(failures[0]["result"]["msg"].split())
        assert message.startswith("no quorum: 2 of 4 nodes of group replication_nodes can answer, a majority (3) is "
                                  "needed to change the cluster configuration. Nothing was changed on any node."), message
        assert "node1: " in message and "node2: " in message
        assert_nothing_credited_to(run, ["node1", "node2"])
        assert day.configs() == before
    finally:
        lab.revive("node1")
        lab.revive("node2")


def test_a_strict_run_refuses_with_one_node_down(day):
    lab = day.lab
    before = day.configs()
    lab.kill("node4")
    try:
        run = day.site(replication_strict=True)
        assert run.rc != 0
        failures = [f for f in run.failures() if f["task"] != PING]
        assert [(f["host"], f["task"]) for f in failures] == [("node1", "Refuse a strict run with a node down or left out")]
        assert "replication_strict is true and these nodes of group replication_nodes are not in this run: node4: " in \
            " ".join(failures[0]["result"]["msg"].split())
        assert day.configs() == before
    finally:
        lab.revive("node4")


# ---------------------------------------------------------------------------------------------------------------
# The run module's results

def test_the_run_module_returns_each_volume(day, tmp_path):
    job = Story.job_to_node4
    first = day.task(tmp_path, [{"name": "Run", "storage.replication.run": {"id": job}}])
    first.assert_ok()
    result = first.task_results("Run", "node1")[0]
    [volume] = result["result"]["volumes"]
    assert (volume["volume"], volume["mode"], volume["base"]) == ("%s:%s" % (cs.STORAGE, VOLUME), "full", None)
    assert volume["bytes"] > 2 << 20 and volume["seconds"] > 0
    assert result["log"][0] == "start replication job" and result["log"][-1] == "end replication job"
    assert "guest => service %d, running => 1" % GUEST in result["log"]
    assert "full sync '%s:%s' (__replicate_%s_%d__)" % (cs.STORAGE, VOLUME, job, result["result"]["start"]) in result["log"]

    cs.write_random(day.lab, "node1", VOLUME, "data.bin", 1)
    second = day.task(tmp_path, [{"name": "Run", "storage.replication.run": {"id": job}}])
    second.assert_ok()
    [volume] = second.task_results("Run", "node1")[0]["result"]["volumes"]
    assert (volume["mode"], volume["base"]) == ("incremental", "__replicate_%s_%d__" % (job, result["result"]["start"]))
    assert (1 << 20) <= volume["bytes"] < (2 << 20)


# ---------------------------------------------------------------------------------------------------------------
# Failover: credited to the coordinator, recorded; guest_info after it


def test_failover_is_credited_to_the_coordinator_and_recorded(day):
    lab = day.lab
    for job in (j.id for j in day.config("node1").jobs.values() if j.target in ("node2", "node3")):
        day.cli("node1", "run", "--id", job)
    lab.kill("node1")
    dry = day.playbook("failover", {"failed_node": "node1", "failed_node_is_off": True}, check=True)
    assert_ok_but_dead(dry, ["node1"])
    assert "did not get generation" not in output(dry) and "would adopt generation" in output(dry)
    assert dry.facts("node2")["replication_failover"]["check_mode"] is True

    run = day.playbook("failover", {"failed_node": "node1", "failed_node_is_off": True})
    assert_ok_but_dead(run, ["node1"])
    assert_nothing_credited_to(run, ["node1"])
    assert {"Make the destinations the owners and reverse the replication direction (the failed node is left behind)",
            "Start the guests on their new owners"} <= set(run.changed_tasks("node2")), run.changed_tasks()
    assert run.stats["node3"]["changed"] == 0 and run.stats["node4"]["changed"] == 0
    outcome = run.facts("node2")["replication_failover"]
    [guest] = outcome["guests"]
    assert (outcome["failed_node"], outcome["coordinator"], outcome["check_mode"]) == ("node1", "node2", False)
    assert (guest["guest"], guest["from"], guest["started"]) == (GUEST, "node1", True)
    assert guest["to"] in ("node2", "node3") and isinstance(guest["recovery_point"], int) and guest["recovery_point"] > 0
    assert sorted(guest["jobs_after"]) == sorted(j.id for j in day.config(guest["to"]).jobs.values())
    assert outcome["generation"] == day.config("node2").generation
    assert "guest %d runs on %s from the replica of" % (GUEST, guest["to"]) in output(run) and "; jobs now: " in output(run)
    Story.owner = guest["to"]


def test_guest_info_after_the_failover(day, tmp_path):
    owner = Story.owner
    info = day.task(tmp_path, [{"name": "Info", "storage.replication.guest_info": {
        "guest": GUEST, "query": "[?owner == '%s'].{id: id, running: running}" % owner}}], hosts="node4")
    info.assert_ok()
    result = info.task_results("Info", "node4")[0]
    [guest] = result["guests"]
    assert (guest["owner"], guest["owned_here"], guest["running"]) == (owner, False, None)
    assert result["query_result"] == [{"id": GUEST, "running": None}]
    assert sorted(result["unreachable_nodes"]) == ["node1"] and "unreachable" in result["unreachable_nodes"]["node1"]
    assert {j["target"] for j in guest["jobs"]} == {"node1", "node2", "node3", "node4"} - {owner}
    assert all(j["source"] == owner for j in guest["jobs"])
    other = ({"node2", "node3"} - {owner}).pop()
    assert sorted(guest["replicas"]) == sorted({other, "node4"}), guest["replicas"]
    assert guest["newest_replica"]["node"] in (other, "node4")
    assert all(r["complete"] and r["last_sync"] > 0 and r["time"] for r in guest["replicas"].values())

    on_owner = day.task(tmp_path, [{"name": "Info", "storage.replication.guest_info": {"guest": GUEST, "peers": False}}],
                        hosts=owner)
    on_owner.assert_ok()
    [guest] = on_owner.task_results("Info", owner)[0]["guests"]
    assert (guest["owned_here"], guest["running"], guest["replicas"]) == (True, True, {})


def test_the_drift_warning_is_one_line_and_says_how(day):
    lab = day.lab
    lab.revive("node1")
    code, result = runner(lab, "node1")
    assert code == 0, result
    run = day.site(JOBS + [ADDED_JOB])
    run.assert_ok()
    warnings = [line for line in (run.stdout + run.stderr).splitlines() if "moved by a migration or failover" in line]
    assert len(warnings) == 1, warnings
    assert re.search(r"left where they run now: %d on %s - .* to bring it in line set guest %d node: %s \(its jobs' "
                     r"targets: .*\) \(README: 'Bringing the inventory in line'\)" % (GUEST, Story.owner, GUEST, Story.owner),
                     warnings[0]), warnings[0]


def test_migrate_back_records_where_the_jobs_go(day):
    owner = Story.owner
    back = [j for j in day.config(owner).jobs.values() if j.target == "node1"]
    assert len(back) == 1
    day.cli(owner, "run", "--id", back[0].id)
    run = day.playbook("migrate", {"guest": GUEST, "target": "node1"})
    run.assert_ok()
    moved = run.facts("node1")["replication_migration"]
    assert (moved["guest"], moved["from"], moved["to"], moved["mode"], moved["started"]) == (GUEST, owner, "node1", "delta", True)
    assert [v["mode"] for v in moved["last_delta"]["volumes"]] == ["incremental"]
    assert moved["jobs_after"][back[0].id] == "node1 -> %s" % owner
    jobs_now = ", ".join("%s %s" % item for item in sorted(moved["jobs_after"].items()))
    assert "jobs now: %s; running on node1" % jobs_now in output(run), output(run)[-2000:]
    assert day.config("node2").guests[GUEST].node == "node1"
