# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bandwidth windows on the lab: a window that ends a few seconds after a full sync starts changes the limit of the
running transfer.  The bytes the data stream's ssh client reads (its /proc/<pid>/io rchar, sampled five times a
second) give the throughput before and after the window's end: each within 5% of its limit.  The replica then holds
exactly the source's snapshot (sha256 over the file tree).  About 20 s."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

import cluster_setup as cs
from ansible_collections.storage.replication.plugins.module_utils import config as configmod

pytestmark = pytest.mark.lab

GUEST = 700
JOB = "%d-0" % GUEST
VOLUME = "vm-%d-disk-0" % GUEST
MEGABYTES = 64
WINDOW_RATE, RATE = 3, 9  # MB/s: in the window (the first seconds), then the job's rate outside it
WINDOW_SECONDS = 8  # from the start of the run to the window's end
TOLERANCE = 0.05


def seconds_windows(start, end, rate):
    """Windows (UTC) that hold the seconds [start, end): one per minute they touch, as 'H:M:S1..S2 UTC: rate'."""
    windows = []
    while start < end:
        stop = min(end, (start // 60 + 1) * 60)
        hour, minute, second = time.gmtime(start)[3:6]
        windows.append("%d:%d:%d..%d UTC: %s" % (hour, minute, second, second + stop - start - 1, rate))
        start = stop
    return "; ".join(windows)


def stream_ssh_pid(lab, runner):
    """The pid of the ssh client that carries the job's data stream, once it runs (None if the run ended first).
    Only node1's processes: another lab's test may run a job of the same ID at the same time."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and runner.poll() is None:
        for pid, argv in lab.processes("node1").items():
            if argv and argv[0].endswith("ssh") and "job=" + JOB in argv:
                return pid
        time.sleep(0.05)
    return None


def read_bytes(pid):
    """rchar of the process (what it read: the stream from the rate pump, plus a few KB of its own), None once gone."""
    try:
        with open("/proc/%d/io" % pid, encoding="ascii") as handle:
            return int(next(line for line in handle if line.startswith("rchar:")).split()[1])
    except (OSError, StopIteration):
        return None


def throughput(samples, begin, end):
    """MB/s between the samples nearest after ``begin`` and before ``end`` (wall-clock seconds)."""
    inside = [(t, n) for t, n in samples if begin <= t <= end]
    assert len(inside) >= 10, (begin, end, samples)
    (t0, n0), (t1, n1) = inside[0], inside[-1]
    return (n1 - n0) / (t1 - t0) / 1e6


def test_a_window_that_ends_changes_the_limit_of_the_running_transfer(lab):
    cfg = cs.setup(lab)
    for node in lab.nodes:
        cs.destroy(lab, node, cs.dataset(VOLUME))
    cs.create_volume(lab, "node1", VOLUME)
    cs.write_random(lab, "node1", VOLUME, "a.bin", MEGABYTES)
    cfg.guests[GUEST] = configmod.Guest(id=GUEST, type="vm", node="node1", volumes=["%s:%s" % (cs.STORAGE, VOLUME)])
    now = int(time.time())
    boundary = now + WINDOW_SECONDS
    windows = seconds_windows(now - 5, boundary, WINDOW_RATE)
    cfg.jobs[JOB] = configmod.Job(id=JOB, target="node2", rate=RATE, rate_windows=windows)
    cfg.generation += 1
    cs.write_config(lab, cfg)

    runner = subprocess.Popen(lab.exec_argv("node1", [  # pylint: disable=consider-using-with
        "env", "PYTHONPATH=" + cs.PYTHONPATH, str(cs.PYTHON), "-m",
        "ansible_collections.storage.replication.plugins.module_utils.replicate", JOB]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = stream_ssh_pid(lab, runner)
    samples = []
    while pid is not None:
        count = read_bytes(pid)
        if count is None:
            break
        samples.append((time.time(), count))
        time.sleep(0.2)
    out, err = runner.communicate(timeout=120)
    result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"ok": False, "error": err}
    assert result["ok"], result["error"]
    assert pid is not None and samples, "the data stream's ssh was never seen"

    assert time.time() > boundary + 3, "the transfer ended too soon after the window to measure it"
    started = next(t for t, n in samples if n > 1e6)  # the stream flows (ssh's own reads are a few KB)
    finished = next(t for t, n in samples if n == samples[-1][1])  # all of it read; ssh waits for the reply
    before = throughput(samples, started + 0.5, boundary - 0.3)
    # the limit is asked once a second: the new one holds from at most a second after the window's end
    after = throughput(samples, boundary + 1.3, finished - 0.3)
    print("window %s MB/s: measured %.3f MB/s (%+.1f%%); after it %s MB/s: measured %.3f MB/s (%+.1f%%)" % (
        WINDOW_RATE, before, 100 * (before / WINDOW_RATE - 1), RATE, after, 100 * (after / RATE - 1)))
    assert abs(before / WINDOW_RATE - 1) < TOLERANCE, before
    assert abs(after / RATE - 1) < TOLERANCE, after

    log = cs.run_log(lab, "node1", JOB)
    assert "rate limit: %d MByte/s (window '" % WINDOW_RATE in log
    assert "the bandwidth limit changes to %d MByte/s (outside every window: the job's rate" % RATE in log
    snap = [s for s in cs.snapshots(lab, "node2", VOLUME) if s.startswith("__replicate_%s_" % JOB)][-1]
    assert cs.tree_checksum(lab, "node2", VOLUME, snap) == cs.tree_checksum(lab, "node1", VOLUME, snap)

    status = json.loads(cs.sr(lab, "node1", "status", "--output-format", "json").stdout)
    job = next(j for j in status if j["id"] == JOB)
    assert (job["rate_now"], job["rate_window"], job["rate_windows"]) == (RATE, None, windows)
