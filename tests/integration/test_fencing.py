# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Self-fencing on the lab (issue 15): node1 is cut off (its link goes down), alive, its guest writing records.

Its fence stops the guest after fence_after seconds without quorum and refuses to start it; a node that is back
before fence_after keeps its guest; the failover playbook refuses to start the guest on a survivor until the
survivor's own fence has seen node1 unreachable for fence_after plus the margin, and the records show that the
guest never ran on two nodes at once.

The tests build on each other, in order. Run with SR_LAB_NAME=srfence (this module partitions node1).
"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import cluster_setup as cs
from ansible_runner import run_playbook
from ansible_collections.storage.replication.plugins.module_utils import fence
from workload.guest import config_of, serve_guest, setup_cluster

pytestmark = pytest.mark.lab

GUEST = 500
JOB = "%d-0" % GUEST
FENCE_AFTER = 6
INTERVAL = 1
# Long enough for the two playbook runs that must be refused first: each waits for SSH timeouts to node1 (the
# ping, the survey's control channel), about 45 s here.
FAILOVER_FENCE_AFTER = 50
STATE = "/var/lib/storage-replication/" + fence.STATE_FILE
PLAN_TASK = "Plan the failover (quorum, destinations, recovery points)"


@pytest.fixture(scope="module")
def lab(module_lab):
    return module_lab


@pytest.fixture(scope="module")
def service(lab):
    guest = serve_guest(lab, setup_cluster(lab), GUEST, ["node2"])
    yield guest
    for node in lab.nodes:
        lab.heal(node)
        guest.stop(node)
        lab.exec(node, ["rm", "-f", STATE])


def fence_once(lab, node, fence_after=FENCE_AFTER):
    proc = lab.exec(node, [cs.LAUNCHER, "fence", "--once", "--fence-after", fence_after, "--interval", INTERVAL,
                           "--output-format", "json"])
    return json.loads(proc.stdout)


def start_refusal(lab, node):
    """failover.set_guest_running(GUEST, True) on node (what guest_service, migrate and failover use)."""
    code = ("from ansible_collections.storage.replication.plugins.module_utils import failover\n"
            "print(failover.set_guest_running(%d, True))" % GUEST)
    return lab.exec(node, ["env", "PYTHONPATH=" + cs.PYTHONPATH, str(cs.PYTHON), "-c", code], check=False)


def fresh_start(lab, guest):
    for node in lab.nodes:
        lab.exec(node, ["rm", "-f", STATE])
    if not guest.running("node1"):
        guest.start("node1")
    guest.wait_records("node1", 3)


def test_a_node_back_before_fence_after_keeps_its_guest(lab, service):
    fresh_start(lab, service)
    long_enough = 20  # room for the two ticks while cut off (each waits for the probe timeout)
    assert fence_once(lab, "node1", long_enough)["quorate"]
    lab.partition("node1")
    cut = time.monotonic()
    try:
        for tick in (1, 2):
            state = fence_once(lab, "node1", long_enough)
            assert not state["quorate"] and state["votes"] == 1 and not state["fenced"], (tick, state)
    finally:
        lab.heal("node1")
    assert time.monotonic() - cut < long_enough
    deadline = time.monotonic() + 10
    while not (state := fence_once(lab, "node1", long_enough))["quorate"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert state["quorate"] and not state["fenced"] and state["since"] is None, state
    assert service.running("node1")
    service.wait_records("node1", 2)


def test_a_cut_off_node_stops_its_guest_after_fence_after_and_refuses_to_start_it(lab, service):
    fresh_start(lab, service)
    assert fence_once(lab, "node1")["quorate"]
    lab.partition("node1")
    cut = time.time()
    try:
        while not (state := fence_once(lab, "node1"))["fenced"]:
            assert time.time() - cut < FENCE_AFTER + 30, state
        stopped_after = time.time() - cut
        print("fence: guest %d on node1 stopped %.1f s after the partition (fence_after %d s)"
              % (GUEST, stopped_after, FENCE_AFTER))
        assert state["fenced"]["guests"][str(GUEST)]["result"] == "stopped", state
        assert stopped_after >= FENCE_AFTER - INTERVAL
        assert not service.running("node1")
        last = service.records("node1")[-1]["time"]
        assert last <= time.time()
        refused = start_refusal(lab, "node1")
        assert refused.returncode != 0 and "this node is fenced" in refused.stderr, refused.stderr
        assert not service.running("node1")
        status = lab.exec("node1", [cs.LAUNCHER, "fence-status"]).stdout
        assert "FENCED since" in status and "guest %d: stopped" % GUEST in status, status
    finally:
        lab.heal("node1")
    deadline = time.monotonic() + 10
    while not (state := fence_once(lab, "node1"))["quorate"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert state["quorate"] and state["fenced"] is None and state["unfenced"]["guests"] == [str(GUEST)], state
    assert not service.running("node1"), "quorum back restarts nothing (the survivors may have taken the guest)"
    started = start_refusal(lab, "node1")
    assert started.returncode == 0 and service.running("node1"), started.stderr


def failover(lab, check=False, **extra):
    return run_playbook(lab.inventory_path, "playbooks/failover.yml", check=check, extra_vars=extra)


def test_failover_waits_for_the_fence_of_a_cut_off_node_and_the_guest_never_runs_twice(lab, service):
    fresh_start(lab, service)
    replica = cs.run_job(lab, "node1", JOB)
    assert replica["ok"], replica
    loops = [subprocess.Popen(lab.exec_argv(node, [cs.LAUNCHER, "fence", "--fence-after", FAILOVER_FENCE_AFTER,
                                                   "--interval", INTERVAL]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for node in lab.nodes]
    try:
        time.sleep(3 * INTERVAL + 1)  # every loop has seen every peer
        seen = json.loads(lab.exec("node2", ["cat", STATE]).stdout)["last_seen"]
        assert sorted(seen) == ["node1", "node3"], seen
        lab.partition("node1")
        cut = time.time()

        with ThreadPoolExecutor(2) as both:  # read-only both, and each waits for the SSH timeouts to node1
            dry, refused = both.map(lambda check: failover(lab, check=check, failed_node="node1"), (True, False))
        plan = dry.task_results(PLAN_TASK)[0]
        assert dry.rc == 0 and not plan["fence"]["fenced"] and plan["fence"]["left"] > 0, dry.describe()
        assert "fence: NOT YET" in plan["summary"][1] and "s left" in plan["summary"][1], plan["summary"]

        assert refused.rc != 0 and "refusing to start the guests of node1 elsewhere yet" in refused.stdout, refused.describe()
        assert "s left" in refused.stdout
        assert config_of(lab, "node2").guests[GUEST].node == "node1" and not service.running("node2")

        needed = FAILOVER_FENCE_AFTER + fence.margin(INTERVAL)
        assert time.time() - cut < needed, "the refused runs took too long to prove anything: raise FAILOVER_FENCE_AFTER"
        time.sleep(max(0.0, cut + needed + 1 - time.time()))
        assert not service.running("node1"), "node1 fenced itself"
        run = failover(lab, failed_node="node1")
        assert run.rc == 0, run.describe()
        plan = run.task_results(PLAN_TASK)[0]
        assert plan["fence"]["by"] == "waited", plan["fence"]
        print("failover: refused until node1 had been unreachable from node2 for %d s; started %.1f s after the "
              "partition" % (plan["fence"]["needed"], time.time() - cut))
        assert service.running("node2")
        service.wait_records("node2", 3)
    finally:
        for loop in loops:
            loop.terminate()
            loop.wait(timeout=10)
        lab.heal("node1")
    on_node1 = service.records("node1")
    on_node2 = [r for r in service.records("node2") if r["node"] == "node2"]
    assert on_node1[-1]["node"] == "node1" and on_node2
    assert on_node1[-1]["time"] < on_node2[0]["time"], "the guest ran on two nodes at once"
    print("the last record on node1 is %.1f s older than the first on node2"
          % (on_node2[0]["time"] - on_node1[-1]["time"]))
