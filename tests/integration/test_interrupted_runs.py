# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A run cut down at every step recovers by itself (DESIGN.md safety rule 6, issue 13), for real on the lab.

A guest with two volumes; its job's run is killed with SIGKILL (no clean-up at all: failpoints.py) before, between
and after the volumes' streams, in the middle of the second stream, before the sync is recorded, and before, during
(while this node does its own clean-up) and after the target's finalize; once for the first sync and once for an
incremental run.  The next run must succeed without anyone touching anything, both replicas must equal the source at
its snapshot (checksums), and the run after that must be incremental with exactly one replication snapshot left on
each side.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

import cluster_setup as cs
from test_replicate import Cluster, job_snapshots

pytestmark = pytest.mark.lab

POINTS = ["before-volume-0", "after-volume-0", "mid-stream-1", "after-volume-1", "before-record", "before-finalize",
          "while-finalize", "after-finalize"]


@pytest.fixture(scope="module")
def cluster(module_lab):
    """A lab of this module's own: the tests kill node1's daemon after each crash."""
    return Cluster(module_lab)


def run_until_killed(cluster, job_id, point):
    """Run the job on node1 and cut it down at ``point``: a failpoint, or (mid-stream-1) SIGKILL to the runner while
    the second volume's rate-limited stream flows.  Returns the exit status (always -9)."""
    argv = cluster.lab.exec_argv("node1", ["env", "PYTHONPATH=" + cs.PYTHONPATH, "SR_FAILPOINT=" + point, str(cs.PYTHON),
                                           "-m", "ansible_collections.storage.replication.plugins.module_utils.replicate",
                                           job_id])
    runner = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if point == "mid-stream-1":
        stream = "zfs send -R .*rpool/data/vm-%s-disk-1 " % job_id.split("-")[0]
        deadline = time.monotonic() + 60
        while not _running(stream) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _running(stream), "the second volume's stream never started"
        time.sleep(0.5)
        engine = subprocess.run(["pgrep", "-f", "module_utils.replicate %s$" % job_id], capture_output=True, text=True,
                                check=False).stdout.split()
        for pid in engine:
            subprocess.run(["kill", "-KILL", pid], check=False)
    runner.communicate(timeout=120)
    return runner.returncode


def _running(pattern):
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True, check=False).returncode == 0


def assert_replicas(cluster, names, job_id, only=True):
    """Each replica equals the source at the newest snapshot; with ``only``, that is the job's one snapshot on both
    sides (after a recovering run the source may still hold a leftover of the cut run: its next prepare drops it)."""
    for name in names:
        snap = cluster.assert_replica("node2", name)
        assert job_snapshots(cluster.lab, "node2", name, job_id) == [snap]
        source = job_snapshots(cluster.lab, "node1", name, job_id)
        assert source[-1] == snap and (source == [snap] or not only)


@pytest.mark.parametrize("first_sync", [True, False], ids=["first-sync", "incremental"])
@pytest.mark.parametrize("point", POINTS)
def test_a_run_killed_at_any_step_recovers_by_itself(cluster, point, first_sync):
    guest = 160 + POINTS.index(point) + (0 if first_sync else 10)
    job_id = "%d-0" % guest
    names = ["vm-%d-disk-0" % guest, "vm-%d-disk-1" % guest]
    cluster.guest(guest, names)
    cluster.job(job_id, "node2", rate=10)
    cluster.push()
    cs.write_random(cluster.lab, "node1", names[0], "a.bin", 1)
    cs.write_random(cluster.lab, "node1", names[1], "a.bin", 1)
    if not first_sync:
        synced = cluster.run(job_id)
        assert synced["ok"], synced["error"]
    cs.write_random(cluster.lab, "node1", names[0], "b.bin", 2)
    cs.write_random(cluster.lab, "node1", names[1], "b.bin", 24)

    assert run_until_killed(cluster, job_id, point) == -signal.SIGKILL
    # zfs-fuse's daemon keeps a killed client's send going, and its snapshot busy, until the daemon restarts.
    cluster.lab.kill("node1")
    cluster.lab.revive("node1")

    recovered = cluster.run(job_id)
    assert recovered["ok"], "\n".join(recovered["log"])
    assert_replicas(cluster, names, job_id, only=False)
    cs.write_random(cluster.lab, "node1", names[1], "c.bin", 1)
    after = cluster.run(job_id)
    assert after["ok"], after["error"]
    assert [v["mode"] for v in after["volumes"]] == ["incremental", "incremental"]
    assert_replicas(cluster, names, job_id)
