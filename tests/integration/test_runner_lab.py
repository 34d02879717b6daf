# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The runner on the lab: a long initial sync does not delay other guests' syncs past their schedule; failure
notifications with pvesr's cadence and a recovery notification; the metrics file matches the state."""

from __future__ import annotations

import json
import subprocess
import time

import cluster_setup as cs
import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as configmod

pytestmark = pytest.mark.lab

SMALL = (501, 502, 503, 504, 505)
BIG = 500
# The 1 GiB initial sync, scaled down to the same shape: 20 MiB at 1 MB/s (pvesr's smallest rate) is a
# sync of about 21 s. It starts LEAD seconds before the small guests' jobs are due again, so they become due while
# it runs (max_parallel 4: three of them at once beside it, then the other two). Their schedule fires every PERIOD
# seconds, so that the test waits for the next PERIOD boundary, not for a minute's. The scheduling rules themselves
# (and the runner's minutely iterations while a job runs long) are proven in virtual time, without waiting, by
# tests/unit/plugins/module_utils/test_runner.py; here the real runner replicates real guests at once.
BIG_MIB, BIG_RATE = 20, 1
PERIOD = 20
SMALL_SCHEDULE = "*:*:0/%d" % PERIOD
LEAD = 4
NOTIFIED = 601
METRICS = "/var/lib/storage-replication/metrics.prom"
NOTIFY_LOG = "/var/log/storage-replication/notify.jsonl"
NOTIFY_SCRIPT = "/opt/storage-replication/notify.py"


def sr(lab, node, *argv, check=True, timeout=180):
    proc = lab.exec(node, [cs.LAUNCHER] + list(argv), check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError("%s on %s failed (%d): %s%s" % (argv, node, proc.returncode, proc.stdout, proc.stderr))
    return proc


def write_on(lab, node, path, text):
    lab.exec(node, ["sh", "-c", 'cat > "$1"', "sh", path], input=text)


@pytest.fixture(scope="module", name="cluster")
def cluster_fixture(lab):
    keys = {node: cs.install_node(lab, node) for node in lab.nodes}
    for node in lab.nodes:
        cs.trust_peers(lab, node, keys)
    cfg = cs.base_config(lab)
    existing = [configmod.load(str(lab.private_path(n, "/etc/storage-replication"))).generation for n in lab.nodes]
    cfg.generation = max(existing) + 1
    for guest in (BIG,) + SMALL + (NOTIFIED,):
        cfg.guests[guest] = configmod.Guest(guest, "vm", "node1", ["%s:vm-%d-disk-0" % (cs.STORAGE, guest)])
        cs.create_volume(lab, "node1", "vm-%d-disk-0" % guest)
    cs.write_config(lab, cfg)
    write_on(lab, "node1", NOTIFY_SCRIPT, "import sys\nwith open(%r, 'a') as f:\n    f.write(sys.stdin.read().strip() + '\\n')\n" % NOTIFY_LOG)
    write_on(lab, "node1", "/etc/storage-replication/runner.json", json.dumps({
        "max_parallel": 4, "metrics_file": METRICS, "notify_command": [str(cs.PYTHON), NOTIFY_SCRIPT]}))
    yield lab
    lab.revive("node3")


def state_of(lab, guest, target="node2"):
    return cs.local_state(lab, "node1").get(str(guest), {}).get("local/" + target, {})


def next_event(epoch):
    """The small jobs' next schedule event after ``epoch``."""
    return (int(epoch) // PERIOD + 1) * PERIOD


def wait_until(epoch):
    """Sleep until the wall clock reaches ``epoch`` (a point in time, not a guessed duration)."""
    while time.time() < epoch:
        time.sleep(min(1.0, epoch - time.time()))


def align_small_jobs(lab, margin):
    """The time at which the small jobs are due next, at least ``margin`` seconds away. If their next due time is
    too close, let it pass and sync them then, so that none is already due when the long run starts."""
    while True:
        # the first of them (a run that spanned a boundary leaves some due a period earlier than others)
        due = min(next_event(state_of(lab, g)["last_try"]) for g in SMALL)
        if due - time.time() >= margin:
            return due
        wait_until(due + 1)
        sr(lab, "node1", "run")


def test_a_long_initial_sync_does_not_delay_other_guests(cluster):
    lab = cluster
    for guest in SMALL:
        cs.write_random(lab, "node1", "vm-%d-disk-0" % guest, "data", 1)
        sr(lab, "node1", "create-local-job", "%d-0" % guest, "node2", "--schedule", SMALL_SCHEDULE)
    sr(lab, "node1", "run")  # the small guests' initial syncs, in parallel
    assert all(state_of(lab, g).get("last_sync") and not state_of(lab, g).get("fail_count") for g in SMALL)
    cs.write_random(lab, "node1", "vm-%d-disk-0" % BIG, "data", BIG_MIB)

    due = align_small_jobs(lab, margin=LEAD + 8)  # time to write the small deltas and create the big job
    for guest in SMALL:
        cs.write_random(lab, "node1", "vm-%d-disk-0" % guest, "more", 1)
    sr(lab, "node1", "create-local-job", "%d-0" % BIG, "node2", "--rate", str(BIG_RATE))
    wait_until(due - LEAD)
    runner = subprocess.run(lab.exec_argv("node1", [cs.LAUNCHER, "run", "--output-format", "json"]), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=600, check=False, text=True)
    assert runner.returncode == 0, runner.stderr

    big = state_of(lab, BIG)
    assert big["fail_count"] == 0 and big["last_sync"] < due, big  # it succeeded, and was running when the others fell due
    big_end = big["last_sync"] + big["duration"]
    small = {g: state_of(lab, g) for g in SMALL}
    starts = sorted(s["last_sync"] for s in small.values())
    # the slots beside the big sync (max_parallel - 1) started the moment the small jobs were due ...
    assert due <= starts[0] and starts[2] <= due + 3, (due, starts)
    for guest, entry in small.items():
        # ... and every small sync ended before the big one, and before the jobs' next schedule event
        assert entry["fail_count"] == 0 and entry["last_sync"] + entry["duration"] < min(big_end, due + PERIOD), (guest, due, big_end, entry)
        snap = "__replicate_%d-0_%d__" % (guest, entry["last_sync"])
        name = "vm-%d-disk-0" % guest
        assert cs.tree_checksum(lab, "node1", name, snap) == cs.tree_checksum(lab, "node2", name, snap)
    snap = "__replicate_%d-0_%d__" % (BIG, big["last_sync"])
    assert cs.tree_checksum(lab, "node1", "vm-%d-disk-0" % BIG, snap) == cs.tree_checksum(lab, "node2", "vm-%d-disk-0" % BIG, snap)
    ran = [job["job"] for job in json.loads(runner.stdout)["jobs"]]
    assert sorted(ran) == sorted("%d-0" % g for g in (BIG,) + SMALL)
    print("small syncs started %s s after they fell due and took %s s; the big sync took %.0f s"
          % ([s - due for s in starts], sorted(round(e["duration"], 1) for e in small.values()), big["duration"]))


def notifications(lab, job_id):
    """The messages about ``job_id`` (the small guests' jobs of the test above run beside it)."""
    path = lab.private_path("node1", "/var/log/storage-replication") / "notify.jsonl"
    messages = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [m for m in messages if m["job-id"] == job_id]


def failing_run(lab, job_id):
    sr(lab, "node1", "schedule-now", job_id)
    return sr(lab, "node1", "run", "--mail")


def test_notifications_follow_pvesr_cadence_and_report_recovery(cluster):
    lab = cluster
    job_id = "%d-0" % NOTIFIED
    cs.write_random(lab, "node1", "vm-%d-disk-0" % NOTIFIED, "data", 1)
    sr(lab, "node1", "create-local-job", job_id, "node3", "--schedule", "daily")
    lab.kill("node3")
    for _attempt in range(4):
        failing_run(lab, job_id)
    assert state_of(lab, NOTIFIED, "node3")["fail_count"] == 4
    messages = notifications(lab, job_id)
    assert [(m["event"], m["failure-count"]) for m in messages] == [("failure", 1), ("failure", 2), ("failure", 3)]
    assert messages[0]["job-target"] == "node3" and "node3" in messages[0]["error"]
    assert messages[0]["next-sync"] > messages[0]["timestamp"] and "Next sync try: 20" in messages[0]["body"]

    entry = dict(state_of(lab, NOTIFIED, "node3"), fail_count=46)
    sr(lab, "node1", "set-state", str(NOTIFIED), json.dumps({"local/node3": entry}))
    failing_run(lab, job_id)  # 47: silent
    failing_run(lab, job_id)  # 48: reported
    assert [m["failure-count"] for m in notifications(lab, job_id)] == [1, 2, 3, 48]

    lab.revive("node3")
    failing_run(lab, job_id)
    recovered = notifications(lab, job_id)[-1]
    assert recovered["event"] == "recovered" and recovered["previous-failure-count"] == 48
    assert state_of(lab, NOTIFIED, "node3")["fail_count"] == 0

    metrics = (lab.private_path("node1", "/var/lib/storage-replication") / "metrics.prom").read_text().splitlines()
    state = state_of(lab, NOTIFIED, "node3")
    labels = 'id="%s",guest="%d",target="node3",node="node1"' % (job_id, NOTIFIED)
    assert "storage_replication_job_last_sync_timestamp_seconds{%s} %d" % (labels, state["last_sync"]) in metrics
    assert "storage_replication_job_fail_count{%s} 0" % labels in metrics
    assert "storage_replication_job_last_bytes_sent{%s} %d" % (labels, state["bytes_sent"]) in metrics
    assert "storage_replication_job_enabled{%s} 1" % labels in metrics
    status = json.loads(sr(lab, "node1", "status", "--guest", str(NOTIFIED), "--output-format", "json").stdout)
    assert [(j["id"], j["last_sync"], j["fail_count"], j["bytes_sent"]) for j in status] == [
        (job_id, state["last_sync"], 0, state["bytes_sent"])]
    log = sr(lab, "node1", "log", job_id, "--runs", "3").stdout
    assert log.count("start replication job") == 3 and "end replication job\n" in log + "\n"
