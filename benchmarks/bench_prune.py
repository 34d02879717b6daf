# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: pruning a job with 1,000 restore points on its target (the figure prune_1000_points_s).

Brings up its own lab `srprune` (2 nodes), replicates a small volume once with job 910-0 (keep
last=4,hourly=24,daily=7,weekly=4,monthly=6), then gives the replica on node2 1,000 restore points of that job, one
every 15 minutes back from the replica (about ten days), and times the target's finalize (`storage-replication
finalize-local-job`, the step every successful run ends with: list the points, apply the grid, destroy what it
drops), in a new process as a run's receiver is. Checks that exactly the grid's points are left. Also times the
grid's decision alone (retention.select over the 1,000 points, no ZFS). Prints a table and writes
build/bench/bench_prune.json.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "build" / "collections"), str(ROOT), str(ROOT / "tests" / "integration")]

import cluster_setup as cs  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.storage.replication.plugins.module_utils import config as configmod  # noqa: E402
from ansible_collections.storage.replication.plugins.module_utils import retention  # noqa: E402
from ansible_collections.storage.replication.plugins.module_utils.names import replication_snapshot  # noqa: E402
from lab import Lab  # noqa: E402

LAB_NAME = "srprune"
GUEST, JOB = 910, "910-0"
VOLUME = "vm-910-disk-0"
POINTS = 1000
STEP = 15 * 60
KEEP = "last=4,hourly=24,daily=7,weekly=4,monthly=6"
OUT = ROOT / "build" / "bench" / "bench_prune.json"


def make_points(lab, base_epoch):
    """POINTS - 1 restore points of the job on node2's replica, 15 minutes apart, older than its replica."""
    epochs = [base_epoch - STEP * k for k in range(1, POINTS)]
    script = "for e in %s; do zfs snapshot %s@__replicate_%s_${e}__ || exit 1; done" % (
        " ".join(map(str, epochs)), cs.dataset(VOLUME), JOB)
    started = time.monotonic()
    lab.exec("node2", ["sh", "-c", script], timeout=3600)
    return epochs, time.monotonic() - started


def grid_seconds(points):
    keep = retention.parse(KEEP)
    timings = []
    for attempt in range(5):
        started = time.perf_counter()
        retention.select(points, keep)
        timings.append(time.perf_counter() - started)
        del attempt
    return min(timings)


def main():
    lab = Lab(LAB_NAME)
    lab.up(nodes=2, pool_size="1G")
    try:
        cfg = cs.setup(lab)
        cfg.guests[GUEST] = configmod.Guest(id=GUEST, type="vm", node="node1", volumes=["%s:%s" % (cs.STORAGE, VOLUME)])
        cfg.jobs[JOB] = configmod.Job(id=JOB, target="node2", keep=KEEP)
        cfg.generation += 1
        cs.write_config(lab, cfg)
        for node in lab.nodes:
            cs.destroy(lab, node, cs.dataset(VOLUME))
        cs.create_volume(lab, "node1", VOLUME)
        cs.write_random(lab, "node1", VOLUME, "data.bin", 1)
        first = cs.run_job(lab, "node1", JOB)
        if not first["ok"]:
            raise SystemExit("the first run failed: %s" % first["error"])
        epochs, made_s = make_points(lab, first["start"])
        points = {replication_snapshot(JOB, e): e for e in epochs + [first["start"]]}
        expected = set(retention.select(points, retention.parse(KEEP)).kept)
        started = time.monotonic()
        lab.exec("node2", [cs.LAUNCHER, "finalize-local-job", JOB, "%s:%s" % (cs.STORAGE, VOLUME),
                           "--last_sync", str(first["start"])], timeout=3600)
        prune_s = time.monotonic() - started
        left = {s for s in cs.snapshots(lab, "node2", VOLUME) if s.startswith("__replicate_")}
        if left != expected:
            raise SystemExit("the target kept %d points, the grid wants %d: %s" % (
                len(left), len(expected), sorted(left ^ expected)[:5]))
        select_s = grid_seconds(points)
    finally:
        lab.down()
    figures = {"prune_1000_points_s": round(prune_s, 2), "prune_1000_points_destroyed": POINTS - len(expected),
               "prune_1000_points_kept": len(expected), "grid_select_1000_points_ms": round(select_s * 1000, 2),
               "make_1000_points_s": round(made_s, 1)}
    print("%-46s %s" % ("figure", "value"))
    print("%-46s %.2f s (%d destroyed, %d kept)" % (
        "prune_1000_points_s (finalize on the target)", prune_s, POINTS - len(expected), len(expected)))
    print("%-46s %.2f ms" % ("grid_select_1000_points_ms (the decision alone)", select_s * 1000))
    print("%-46s %.1f s" % ("making the 1,000 points (zfs snapshot, one each)", made_s))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
