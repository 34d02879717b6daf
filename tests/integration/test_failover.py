# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Failover on the lab with a running workload: node1 dies, node2 takes over from the last replica, node1 comes
back stale and becomes the target; then two of three nodes die and only a forced quorum recovers the guest.

The tests of this module build on each other, in order (one story, as an operator lives it).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import cluster_setup as cs
from ansible_runner import ansible_environment, run_playbook
from workload.guest import assert_continuous, config_of, runner, serve_guest, setup_cluster

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(module_lab):
    """This module kills nodes and rewrites the whole cluster configuration: a lab of its own, not the session's."""
    return module_lab


GUEST = 400
JOB_TO_NODE2, JOB_TO_NODE3 = "%d-0" % GUEST, "%d-1" % GUEST
SCHEDULE_SECONDS = 60  # schedule "*/1": every minute
PROMOTE_TASK = "Bring each replica to its last replication snapshot (anything written since is kept aside)"
PLAN_TASK = "Plan the failover (quorum, destinations, recovery points)"


class Story:
    """What the earlier steps saw, for the later ones."""
    replica_start = None
    kill_time = None
    generation = None


@pytest.fixture(scope="module")
def service(lab):
    guest = serve_guest(lab, setup_cluster(lab), GUEST, ["node2", "node3"])
    yield guest
    for node in lab.nodes:
        lab.revive(node)
        guest.stop(node)


PING_TASK = "See which nodes answer"


def failover(lab, check=False, **extra):
    # lab.kill kills every process of the node, its guests too: what failed_node_is_off states (test_fencing.py
    # covers the wait for a node that is cut off instead).
    extra.setdefault("failed_node_is_off", True)
    return run_playbook(lab.inventory_path, "playbooks/failover.yml", check=check, extra_vars=extra)


def assert_ok(run, dead):
    """The playbook succeeded; the only unreachable results are the dead nodes' answers to the ping (ignored)."""
    unexpected = [r for r in run.failures() if not (r["task"] == PING_TASK and r["host"] in dead)]
    assert run.rc == 0 and not unexpected, run.describe()


def generations(lab, nodes):
    return {node: config_of(lab, node).generation for node in nodes}


def replica_snapshot(start):
    return "__replicate_%s_%d__" % (JOB_TO_NODE2, start)


def start_on(lab, node, guest_id):
    """The guest_service module run by Ansible on one node (what a person or a stale playbook might try)."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [str(Path(sys.executable).with_name("ansible")), "-i", str(lab.inventory_path), node, "-m",
                "storage.replication.guest_service", "-a", "guest=%d state=started" % guest_id]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                              env=ansible_environment(str(Path(tmp) / "results.json")))


def test_failover_of_a_dead_node_starts_the_guest_from_the_last_replica(lab, service):
    for job in (JOB_TO_NODE3, JOB_TO_NODE2):  # node2 gets the newest replica
        result = cs.run_job(lab, "node1", job)
        assert result["ok"], result
        # Replica times are whole seconds: on a fast machine both runs fit in one, and a tie is not "newest".
        time.sleep(max(0.0, result["start"] + 1.05 - time.time()))
    Story.replica_start = result["start"]
    duration = time.time() - result["start"]  # one run
    service.wait_records("node1", 15)  # writes after the replica: these are lost
    Story.kill_time = time.time()
    lab.kill("node1")
    before = generations(lab, ["node2", "node3"])

    dry = failover(lab, check=True, failed_node="node1")
    assert_ok(dry, ["node1"])
    plan = dry.task_results(PLAN_TASK)[0]
    assert [(g["guest"], g["to"], g["recovery_point"]) for g in plan["guests"]] == [(GUEST, "node2", Story.replica_start)]
    assert generations(lab, ["node2", "node3"]) == before and not service.running("node2")

    run = failover(lab, failed_node="node1")
    assert_ok(run, ["node1"])
    Story.generation = before["node2"] + 1
    assert generations(lab, ["node2", "node3"]) == {"node2": Story.generation, "node3": Story.generation}
    cfg = config_of(lab, "node2")
    assert cfg.guests[GUEST].node == "node2"
    assert (cfg.jobs[JOB_TO_NODE2].source, cfg.jobs[JOB_TO_NODE2].target) == ("node2", "node1")
    assert (cfg.jobs[JOB_TO_NODE3].source, cfg.jobs[JOB_TO_NODE3].target) == ("node2", "node3")
    promoted = run.task_results(PROMOTE_TASK)[0]["results"][0]
    assert promoted["recovery_point"] == Story.replica_start
    assert "runs on node2 from the replica of" in run.stdout
    window = Story.kill_time - Story.replica_start
    assert window <= SCHEDULE_SECONDS + duration, (window, duration)

    assert service.running("node2")
    replica = service.records_at("node2", replica_snapshot(Story.replica_start))
    service.wait_records("node2", 5)
    now = service.records("node2")
    assert_continuous(now)
    assert now[:len(replica)] == replica  # the guest continues from the replica's content
    assert {r["node"] for r in now[len(replica):]} == {"node2"}


def test_the_revived_node_adopts_keeps_its_writes_aside_and_becomes_the_target(lab, service):
    lab.revive("node1")
    assert not service.running("node1"), "nothing may restart the guest on the stale node"
    assert config_of(lab, "node1").generation == Story.generation - 1

    code, result = runner(lab, "node1")
    assert code == 0, result
    assert any("adopted cluster configuration generation %d" % Story.generation in w for w in result["warnings"]), result
    assert result["jobs"] == []
    assert config_of(lab, "node1").guests[GUEST].node == "node2"
    refused = start_on(lab, "node1", GUEST)
    assert refused.returncode != 0 and "owned by node 'node2', not by this node ('node1')" in refused.stdout, refused.stdout
    assert not service.running("node1") and service.running("node2")

    # The recovery point, read before the run that makes it obsolete (a successful run drops the job's older snapshots).
    replica = service.records_at("node2", replica_snapshot(Story.replica_start))
    first = cs.run_job(lab, "node2", JOB_TO_NODE2)
    assert first["ok"], first
    volume = first["volumes"][0]
    assert (volume["mode"], volume["base"]) == ("incremental", replica_snapshot(Story.replica_start))
    assert volume["bytes"] * 20 < service.full_send_bytes("node2", replica_snapshot(first["start"]))
    assert len(volume["kept"]) == 1 and "-diverged-" in volume["kept"][0]

    kept = service.records("node1", "/" + volume["kept"][0])
    lost = kept[len(replica):]
    assert kept[:len(replica)] == replica and lost, "node1's writes after the replica are kept, and only they are lost"
    assert {r["node"] for r in lost} == {"node1"}
    assert all(Story.replica_start <= r["time"] <= Story.kill_time + 1 for r in lost)
    on_node1 = service.records_at("node1", replica_snapshot(first["start"]))
    node2_records = [r for r in on_node1 if r["node"] == "node2"]
    assert node2_records[0]["seq"] == len(replica) + 1
    assert node2_records[0]["time"] > lost[-1]["time"], "the guest ran on two nodes at once"
    print("failover figures: %d records lost (%.1f s of writes), recovery window %.1f s, resync %d bytes"
          % (len(lost), lost[-1]["time"] - lost[0]["time"], Story.kill_time - Story.replica_start, volume["bytes"]))

    second = cs.run_job(lab, "node2", JOB_TO_NODE2)
    assert second["ok"] and second["volumes"][0]["mode"] == "incremental" and not second["volumes"][0]["kept"], second


def test_failover_without_quorum_is_refused_then_forced(lab, service):
    lab.kill("node2")
    lab.kill("node3")
    before = config_of(lab, "node1").generation

    refused = failover(lab, failed_node="node2")
    assert refused.rc != 0 and "no quorum: only 1 of 3 nodes answer (node1), 2 are needed" in refused.stdout, refused.describe()
    assert config_of(lab, "node1").generation == before and not service.running("node1")

    forced = failover(lab, failed_node="node2", force_quorum=True)
    assert_ok(forced, ["node2", "node3"])
    assert "QUORUM FORCED" in forced.stdout
    cfg = config_of(lab, "node1")
    assert cfg.generation == before + 1 and cfg.guests[GUEST].node == "node1"
    assert service.running("node1")

    for node in ("node2", "node3"):
        lab.revive(node)
        assert not service.running(node)
    code, result = runner(lab, "node2")
    assert code == 0 and config_of(lab, "node2").guests[GUEST].node == "node1", result
    assert not service.running("node2")
