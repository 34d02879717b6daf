# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Restore points on the lab: the "ransomware" run (a guest's files overwritten with garbage, and the damage
replicated), then the guest brought back to the point before it - by rollback.yml on the owner, from a point only
the replica node holds, and by failover.yml -e point=... after the owner died - with the data equal to what it was
before the damage, the damaged state kept aside, and the jobs continuing incrementally.

The tests of this module build on each other, in order.
"""

from __future__ import annotations

import json
import time

import pytest

import cluster_setup as cs
from ansible_runner import run_playbook
from workload.guest import assert_continuous, config_of, serve_guest, setup_cluster

pytestmark = pytest.mark.lab

ROLLED, FAILED, FULL = 500, 600, 700  # rolled back on its owner; failed over to a point; replicated to a full pool
FILLER = "rpool/sr-test-space"
KEEP = "last=3,hourly=3"
GARBAGE = r"""
import os, sys
for directory, _dirs, files in os.walk(sys.argv[1]):
    for name in files:
        path = os.path.join(directory, name)
        size = os.path.getsize(path)
        with open(path, "r+b") as handle:
            handle.write(os.urandom(max(size, 1)))
            handle.flush()
            os.fsync(handle.fileno())
"""
PLAN_TASK = "Plan (the point, where it comes from, what each volume goes back to and is kept aside as)"
ROLLBACK_TASK = "Keep the volumes aside and bring them to the point"
FAILOVER_PLAN_TASK = "Plan the failover (quorum, destinations, recovery points)"
PROMOTE_TASK = "Bring each replica to its last replication snapshot (anything written since is kept aside)"


@pytest.fixture(scope="module")
def lab(module_lab):
    """This module kills a node and rewrites the cluster configuration: a lab of its own."""
    return module_lab


class Story:
    """What the earlier steps saw, for the later ones."""
    good = {}      # guest: (start of the point before the damage, tree checksum then, records then)
    bad = {}       # guest: start of the first run that replicated the damage
    damaged = {}   # guest: tree checksum of the damaged volume


@pytest.fixture(scope="module")
def guests(lab):
    cfg = setup_cluster(lab)
    rolled = serve_guest(lab, cfg, ROLLED, ["node2"])
    failed = serve_guest(lab, cfg, FAILED, ["node2", "node3"])
    full = serve_guest(lab, cfg, FULL, ["node3"])
    yield {ROLLED: rolled, FAILED: failed, FULL: full}
    for node in lab.nodes:
        lab.revive(node)
        for guest in (rolled, failed, full):
            guest.stop(node)
    cs.destroy(lab, "node3", FILLER)


def cli(lab, node, *argv):
    proc = lab.exec(node, [cs.LAUNCHER] + list(argv) + ["--output-format", "json"], check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def run(lab, node, job):
    result = cs.run_job(lab, node, job)
    assert result["ok"], result
    time.sleep(1.1)  # the next run's snapshot gets a later second
    return result


def ransomware(lab, guest, node="node1"):
    lab.exec(node, ["python3", "-c", GARBAGE, guest.mountpoint])


def ballast(lab, node, guest, dataset=None):
    """sha256 of the guest's ballast file (the recorder never writes it) in its live volume (or in ``dataset``)."""
    path = "/%s/ballast.bin" % (dataset or cs.dataset(guest.name))
    return lab.exec(node, ["sha256sum", path]).stdout.split()[0]


def prepare_damage(lab, guest, jobs):
    """Points while the guest runs, then the good point (guest stopped: its data is fixed), then the damage,
    replicated by every job. Records Story.good, Story.bad, Story.damaged."""
    for job in jobs:
        run(lab, "node1", job)
    guest.stop("node1")
    good_sum, good_ballast, good_records = (cs.tree_checksum(lab, "node1", guest.name), ballast(lab, "node1", guest),
                                            guest.records("node1"))
    starts = [run(lab, "node1", job)["start"] for job in jobs]
    ransomware(lab, guest)
    Story.damaged[guest.id] = cs.tree_checksum(lab, "node1", guest.name)
    assert Story.damaged[guest.id] != good_sum and ballast(lab, "node1", guest) != good_ballast
    bad = [run(lab, "node1", job)["start"] for job in jobs]
    for job in jobs:
        run(lab, "node1", job)
    Story.good[guest.id] = (starts[0], good_sum, good_ballast, good_records)
    Story.bad[guest.id] = bad[0]


def test_a_job_keeps_its_restore_points_by_its_grid(lab, guests):
    """keep set by the CLI (a cluster-wide change); the target keeps the grid's points, the source only the newest
    (no keep_source); restore-points shows them per node and volume."""
    done = cli(lab, "node1", "update", "%d-0" % ROLLED, "--keep", "hourly=3, last=3")
    assert done["changed"] and config_of(lab, "node3").jobs["%d-0" % ROLLED].keep == KEEP
    assert "keep" not in (lab.private_path("node2", "/etc/storage-replication") / "replication.cfg").read_text()
    starts = [run(lab, "node1", "%d-0" % ROLLED)["start"] for run_number in range(5)]
    on_target = sorted(s for s in cs.snapshots(lab, "node2", guests[ROLLED].name) if s.startswith("__replicate_"))
    # last=3 keeps the three newest; hourly=3 adds the newest of earlier hours, and these runs are in one or two hours
    assert on_target[-3:] == ["__replicate_%d-0_%d__" % (ROLLED, s) for s in starts[-3:]]
    assert len(on_target) <= 4
    on_source = [s for s in cs.snapshots(lab, "node1", guests[ROLLED].name) if s.startswith("__replicate_")]
    assert on_source == ["__replicate_%d-0_%d__" % (ROLLED, starts[-1])]
    listed = cli(lab, "node1", "restore-points", str(ROLLED))
    node2 = listed["nodes"]["node2"]
    assert node2["reachable"] and [p["snapshot"] for p in node2["points"]][:3] == on_target[::-1][:3]
    assert all(p["complete"] and p["volumes"][guests[ROLLED].volume]["referenced"] > 0 for p in node2["points"])
    text = lab.exec("node1", [cs.LAUNCHER, "restore-points", str(ROLLED)]).stdout
    assert "node2" in text and "node1 (owner)" in text and on_target[-1] in text
    status = {job["id"]: job for job in cli(lab, "node1", "status")}["%d-0" % ROLLED]
    assert status["restore_points"] == len(on_target) and status["points_bytes"] > 0
    assert status["oldest_point"] == int(on_target[0][len("__replicate_%d-0_" % ROLLED):-2])


def test_ransomware_then_rollback_to_the_point_before_pulled_from_the_replica(lab, guests):
    guest = guests[ROLLED]
    prepare_damage(lab, guest, ["%d-0" % ROLLED])
    good_start, good_sum, good_ballast, good_records = Story.good[ROLLED]
    point = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(good_start))  # the damage came a second or more later
    good = "__replicate_%d-0_%d__" % (ROLLED, good_start)

    dry = run_playbook(lab.inventory_path, "playbooks/rollback.yml", check=True,
                       extra_vars={"guest": ROLLED, "point": point})
    dry.assert_ok()
    plan = dry.task_results(PLAN_TASK)[0]
    assert (plan["point"]["snapshot"], plan["from"], plan["local"]) == (good, "node2", False)
    assert cs.tree_checksum(lab, "node1", guest.name) == Story.damaged[ROLLED]  # --check changed nothing

    done = run_playbook(lab.inventory_path, "playbooks/rollback.yml", extra_vars={"guest": ROLLED, "point": point})
    done.assert_ok()
    result = done.task_results(ROLLBACK_TASK)[0]
    kept = result["volumes"][guest.volume]["kept"]
    assert result["volumes"][guest.volume]["restored"] == good
    # the data is what it was before the damage: the restored volume's point, and the live file nothing rewrote since
    assert cs.tree_checksum(lab, "node1", guest.name, good) == good_sum
    assert ballast(lab, "node1", guest) == good_ballast
    assert guest.running("node1")
    guest.wait_records("node1", 3)
    now = guest.records("node1")
    assert now[:len(good_records)] == good_records  # the guest went on from the point's content
    assert_continuous(now)
    # the damaged state is kept aside on the owner, whole: its data and the point that replicated the damage
    assert ballast(lab, "node1", guest, kept) != good_ballast
    assert "__replicate_%d-0_%d__" % (ROLLED, Story.bad[ROLLED]) not in cs.snapshots(lab, "node1", guest.name)
    aside = lab.exec("node1", ["python3", "-c", cs.CHECKSUM_SCRIPT, "/" + kept]).stdout.strip()
    assert aside == Story.damaged[ROLLED]

    again = run(lab, "node1", "%d-0" % ROLLED)  # the job continues incrementally from the point
    assert [(v["mode"], v["base"]) for v in again["volumes"]] == [("incremental", good)]
    assert again["volumes"][0]["kept"], "node2 keeps its newer points aside before it rolls back to the point"
    newer = again["volumes"][0]["kept"][0]
    assert cs.exists(lab, "node2", "%s@__replicate_%d-0_%d__" % (newer, ROLLED, Story.bad[ROLLED]))
    assert cs.tree_checksum(lab, "node2", guest.name, "__replicate_%d-0_%d__" % (ROLLED, again["start"])) == \
        cs.tree_checksum(lab, "node1", guest.name, "__replicate_%d-0_%d__" % (ROLLED, again["start"]))


def leave_free(lab, node, megabytes):
    """Reserve all but about ``megabytes`` of the node's pool (a dataset with a reservation)."""
    cs.destroy(lab, node, FILLER)
    available = int(cs.zfs(lab, node, "get", "-Hp", "-o", "value", "available", "rpool").stdout)
    cs.zfs(lab, node, "create", "-o", "reservation=%d" % (available - megabytes * (1 << 20)), "-o", "mountpoint=none",
           FILLER)


def test_a_full_target_gives_up_its_oldest_points_never_the_base_and_says_so(lab, guests):
    """Each run overwrites 6 MiB, so each older point holds 6 MiB of its own on the target. With 3 MiB free the
    receive fails for lack of space; the target deletes its oldest point (never the newest, the base), the volume
    is sent again and the run succeeds, reporting the point it lost. With no point left to give up, the run fails
    and says that this point cannot be kept there."""
    guest, job = guests[FULL], "%d-0" % FULL
    cli(lab, "node1", "update", job, "--keep", "last=4")
    for megabytes in (6, 6, 6, 6):
        cs.write_random(lab, "node1", guest.name, "ballast.bin", megabytes)
        run(lab, "node1", job)
    points = sorted(s for s in cs.snapshots(lab, "node3", guest.name) if s.startswith("__replicate_"))
    assert len(points) == 4
    leave_free(lab, "node3", 3)
    cs.write_random(lab, "node1", guest.name, "ballast.bin", 6)
    result = run(lab, "node1", job)
    assert result["space_pruned"] and set(result["space_pruned"]) <= set(points[:-1]), result
    assert points[0] in result["space_pruned"]  # the oldest first
    log = "\n".join(result["log"])
    assert "deleted the oldest restore point '%s'" % points[0] in log
    assert "restore point(s) deleted on 'node3' for lack of space" in log
    after = sorted(s for s in cs.snapshots(lab, "node3", guest.name) if s.startswith("__replicate_"))
    assert after[-1] == "__replicate_%s_%d__" % (job, result["start"]) and points[-1] in after  # the base stayed
    status = {j["id"]: j for j in cli(lab, "node1", "status")}[job]
    assert status["space_pruned"] == result["space_pruned"]

    lab.fill("node3")
    try:  # 20 MiB more than the three older points hold together (18 MiB): even without them it does not fit
        cs.write_random(lab, "node1", guest.name, "ballast.bin", 20)
        outcome = cs.run_job(lab, "node1", job)
        assert not outcome["ok"] and "is full" in outcome["error"], outcome
        assert any("this run's point cannot be kept there" in line for line in outcome["log"]), outcome["log"]
        left = [s for s in cs.snapshots(lab, "node3", guest.name) if s.startswith("__replicate_")]
        assert left == ["__replicate_%s_%d__" % (job, result["start"])]  # only the base is left: never deleted
        assert sorted(outcome["space_pruned"]) == sorted(set(after) - set(left))  # each loss is reported
        status = {j["id"]: j for j in cli(lab, "node1", "status")}[job]
        assert status["space_pruned"] == sorted(outcome["space_pruned"]) and status["fail_count"] == 1
    finally:
        lab.unfill("node3")
        cs.destroy(lab, "node3", FILLER)
    assert run(lab, "node1", job)["ok"]


def test_ransomware_then_failover_to_the_point_before_after_the_owner_died(lab, guests):
    """keep and keep_source on the job to node2, a pvesr job to node3: both targets hold the point (the source's
    points travel in the pvesr job's replication stream); the owner dies after the damage was replicated."""
    guest = guests[FAILED]
    job, other = "%d-0" % FAILED, "%d-1" % FAILED
    cli(lab, "node1", "update", job, "--keep", "last=6", "--keep-source", "last=6")
    prepare_damage(lab, guest, [job, other])
    good_start, good_sum, good_ballast, good_records = Story.good[FAILED]
    good = "__replicate_%s_%d__" % (job, good_start)
    lab.kill("node1")

    done = run_playbook(lab.inventory_path, "playbooks/failover.yml",
                        extra_vars={"failed_node": "node1", "guests": [FAILED], "point": str(good_start),
                                    "failed_node_is_off": True})
    unexpected = [r for r in done.failures() if r["host"] != "node1"]
    assert done.rc == 0 and not unexpected, done.describe()
    plan = done.task_results(FAILOVER_PLAN_TASK)[0]
    item = plan["guests"][0]
    assert (item["to"], item["point"]["snapshot"], item["recovery_point"]) == ("node2", good, good_start)
    promoted = done.task_results(PROMOTE_TASK)[0]["results"][0]
    kept = promoted["volumes"][guest.volume]["kept"]
    assert kept and "__replicate_%s_%d__" % (job, Story.bad[FAILED]) in promoted["volumes"][guest.volume]["newer"]
    assert cs.tree_checksum(lab, "node2", guest.name, good) == good_sum
    assert ballast(lab, "node2", guest) == good_ballast
    assert ballast(lab, "node2", guest, kept) != good_ballast  # the damaged state, kept aside
    assert guest.running("node2")
    guest.wait_records("node2", 3)
    assert guest.records("node2")[:len(good_records)] == good_records

    onward = run(lab, "node2", other)  # node2 -> node3: from the point, which node3 got through the pvesr job
    assert [(v["mode"], v["base"]) for v in onward["volumes"]] == [("incremental", good)]
    lab.revive("node1")
    back = run(lab, "node2", job)  # node2 -> node1 (reversed): node1 kept the point as the source (keep_source)
    assert [(v["mode"], v["base"]) for v in back["volumes"]] == [("incremental", good)]
    assert not guest.running("node1")
