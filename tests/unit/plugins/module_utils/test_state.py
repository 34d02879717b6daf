# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the job state: pvesr's fields and lifecycle, next_sync and back-off, job order, atomic writes, locks."""

from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest

from ansible_collections.storage.replication.plugins.module_utils import files as F
from ansible_collections.storage.replication.plugins.module_utils import state as S
from ansible_collections.storage.replication.plugins.module_utils.config import ClusterConfig, Guest, Job, Node, Storage


def job(job_id="100-0", target="node2", **options):
    return Job(job_id, target, **options)


@pytest.fixture()
def statefile(tmp_path):
    (tmp_path / S.LOCAL_NODE_FILE).write_text("node1\n", encoding="utf-8")
    return S.StateFile(str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# next_sync and back-off

def test_a_new_job_is_due_at_the_first_event_after_the_epoch():
    assert S.next_sync(job(), {"last_try": 0, "fail_count": 0}, tz="UTC") == 900
    assert S.next_sync(job(schedule="*/5"), {}, tz="UTC") == 300


def test_schedule_counts_from_last_try_not_last_sync():
    state = {"last_try": 1700000000, "last_sync": 1600000000, "fail_count": 0}
    assert S.next_sync(job(schedule="*/15"), state, tz="UTC") == 1700000100  # 22:15:00 after 22:13:20
    assert S.next_sync(job(schedule="daily"), state, tz="UTC") == 1700006400


def test_a_schedule_without_further_events_is_never_due():
    assert S.next_sync(job(schedule="2015-10-21"), {"last_try": 1700000000}, tz="UTC") == 0


@pytest.mark.parametrize("fail_count, delay", [(1, 300), (2, 600), (3, 900), (4, 1800), (5, 1800), (6, 1800)])
def test_backoff_table(fail_count, delay):
    assert S.backoff_delay(fail_count) == delay
    assert S.next_sync(job(schedule="*/1"), {"last_try": 1000, "fail_count": fail_count}) == 1000 + delay


def test_the_upstream_golden_trace_of_a_job_that_always_fails(statefile):
    """pve-manager replication_test4.log: ticks every 60 s from 1000, the job fails every time it runs."""
    j = job()
    attempts = []
    for now in range(1000, 6401, 60):
        entry = statefile.job_state(j)
        if now >= S.next_sync(j, entry, target_online=True):
            statefile.record_job_start(j, now)
            statefile.record_job_end(j, now, 0.5, error="ssh: connect to host 10.0.0.2 port 22: No route to host\n")
            attempts.append((now, S.next_sync(j, statefile.job_state(j), target_online=True)))
    assert attempts == [(1000, 1300), (1300, 1900), (1900, 2800), (2800, 4600), (4600, 6400), (6400, 8200)]
    assert statefile.job_state(j)["error"] == "ssh: connect to host 10.0.0.2 port 22: No route to host"


def test_a_job_marked_for_removal_is_always_due():
    assert S.next_sync(job(remove_job="full"), {"last_try": 5000, "fail_count": 7}) == 1
    assert S.next_sync(job(remove_job="local", disable=True), {}) == 1


def test_waiting_for_the_target_retries_every_30_minutes():
    failed = {"last_try": 1000, "fail_count": 1, "waiting_for_target": True}
    assert S.next_sync(job(), failed) == 1000 + 1800
    assert S.job_status(job(), failed) == S.STATUS_WAITING
    # Known to be back online: pvesr's back-off applies again.
    assert S.next_sync(job(), failed, target_online=True) == 1300
    assert S.job_status(job(), failed, target_online=True) == S.STATUS_ERROR
    # Known to be offline, whatever the last error was.
    other = {"last_try": 1000, "fail_count": 2}
    assert S.next_sync(job(), other, target_online=False) == 2800
    assert S.job_status(job(), other, target_online=False) == S.STATUS_WAITING
    # A healthy job is attempted on schedule even if the target is offline (pvesr: only failed jobs wait).
    assert S.next_sync(job(), {"last_try": 1000, "fail_count": 0}, target_online=False, tz="UTC") == 1800


def test_status_words(statefile):
    assert S.job_status(job(), {}) == S.STATUS_OK
    assert S.job_status(job(disable=True), {}) == S.STATUS_DISABLED
    assert S.job_status(job(remove_job="full"), {"fail_count": 3}) == S.STATUS_REMOVING
    assert S.job_status(job(), {"fail_count": 1}) == S.STATUS_ERROR
    running = statefile.record_job_start(job(), 1000)
    assert S.job_status(job(), running) == S.STATUS_RUNNING
    # pid reused by another process: the recorded run is gone without having ended
    assert S.job_status(job(), dict(running, ptime=running["ptime"] + 1)) == S.STATUS_INTERRUPTED


# ---------------------------------------------------------------------------------------------------------------
# Lifecycle and file shape

def test_lifecycle_of_a_successful_run(statefile):
    j = job()
    entry = statefile.record_job_start(j, 1700000000, iteration=1699999990)
    assert entry["pid"] == os.getpid() and entry["ptime"] == S.process_start_time(os.getpid())
    assert S.job_is_running(entry)
    statefile.set_fields(j, storeid_list=["local-zfs"])
    statefile.record_sync_end(j, 1700000000, ["local-zfs:vm-100-disk-1", "local-zfs:vm-100-disk-0"])
    statefile.record_job_end(j, 1700000000, 3.412771, bytes_sent=1048576)
    assert json.loads(open(statefile.path, encoding="utf-8").read()) == {"100": {"local/node2": {
        "last_iteration": 1699999990, "last_try": 1700000000, "last_sync": 1700000000, "fail_count": 0,
        "last_node": "node1", "storeid_list": ["local-zfs"], "duration": 3.412771, "bytes_sent": 1048576,
        "synced_volumes": ["local-zfs:vm-100-disk-0", "local-zfs:vm-100-disk-1"]}}}


def test_fields_already_held_are_not_written_again(statefile):
    j = job()
    statefile.record_job_start(j, 1700000000)
    statefile.set_fields(j, storeid_list=["local-zfs"], points={"count": 1})
    written = os.stat(statefile.path).st_ino
    entry = statefile.set_fields(j, storeid_list=["local-zfs"], points={"count": 1})  # a run with the same storages
    assert os.stat(statefile.path).st_ino == written and entry["storeid_list"] == ["local-zfs"]
    assert entry == S.job_state_in(statefile.read(), j)
    statefile.set_fields(j, storeid_list=["local-zfs"], points={"count": 2})  # one value differs: written
    assert os.stat(statefile.path).st_ino != written and statefile.job_state(j)["points"] == {"count": 2}
    other = S.StateFile(statefile.statedir)
    other.set_fields(job("200-0"), storeid_list=[])  # a job without an entry gets one, even with the default value
    assert statefile.read()["200"] == {"local/node2": dict(S.JOB_STATE_DEFAULTS, storeid_list=[])}


def test_a_failure_then_a_success_clears_the_error(statefile):
    j = job()
    statefile.record_job_start(j, 1000)
    statefile.record_job_end(j, 1000, 1.0, error="target unreachable\n", target_unreachable=True)
    entry = statefile.job_state(j)
    assert (entry["fail_count"], entry["error"], entry["waiting_for_target"], entry["last_sync"]) == (1, "target unreachable", True, 0)
    assert "pid" not in entry and "ptime" not in entry
    statefile.record_job_start(j, 2800)
    statefile.record_job_end(j, 2800, 2.0)
    entry = statefile.job_state(j)
    assert (entry["fail_count"], entry["last_sync"], entry["last_try"]) == (0, 2800, 2800)
    assert "error" not in entry and "waiting_for_target" not in entry


def test_a_finished_removal_deletes_the_entry(statefile):
    keep, gone = job("100-1", "node3"), job(remove_job="full")
    statefile.record_job_start(keep, 1000)
    statefile.record_job_start(gone, 1000)
    assert statefile.record_job_end(gone, 1000, 0.1) is None
    assert list(statefile.read()["100"]) == ["local/node3"]
    statefile.record_job_end(job("100-1", "node3", remove_job="local"), 1000, 0.1)
    assert statefile.read() == {}


def test_schedule_now_and_guest_state_transfer(statefile):
    j = job()
    statefile.record_job_start(j, 5000)
    statefile.record_job_end(j, 5000, 1.0)
    assert statefile.schedule_now(j)["last_try"] == 0
    assert S.next_sync(j, statefile.job_state(j), tz="UTC") == 900
    moved = S.transfer_state(statefile.guest_states(100), "node2", "node1")
    assert list(moved) == ["local/node1"] and moved["local/node1"]["last_sync"] == 5000
    statefile.set_guest_states(100, moved)
    assert list(statefile.read()["100"]) == ["local/node1"]
    statefile.set_guest_states(100, {})
    assert statefile.read() == {}


def test_purge_keeps_only_jobs_of_guests_on_this_node(statefile):
    cfg = ClusterConfig(nodes={n: Node(n, "10.0.0.%s" % n[-1]) for n in ("node1", "node2", "node3")},
                        storages={"local-zfs": Storage("local-zfs")})
    cfg.guests[100] = Guest(100, "vm", "node1", ["local-zfs:vm-100-disk-0"])
    cfg.guests[200] = Guest(200, "vm", "node2", ["local-zfs:vm-200-disk-0"])
    cfg.add_job(job("100-0", "node2"))
    cfg.add_job(job("200-0", "node3"))
    for j in (job("100-0", "node2"), job("100-9", "node3"), job("200-0", "node3")):
        statefile.set_fields(j, last_sync=1)
    assert sorted(statefile.purge_old_states(cfg, "node1")) == ["100/local/node3", "200/local/node3"]
    assert statefile.read() == {"100": {"local/node2": dict(S.JOB_STATE_DEFAULTS, last_sync=1)}}


def test_reading_missing_empty_and_broken_files(statefile):
    assert statefile.read() == {} and statefile.job_state(job()) == S.JOB_STATE_DEFAULTS
    for data, problem in ((b"", "is empty"), (b'{"100": ', "is not valid JSON"), (b"garbage", "is not valid JSON"),
                          (b"\xff\xfe\x00", "is not valid JSON"), (b"[]", "does not hold an object of guests"),
                          (b'{"100": 7}', "does not hold an object of guests")):
        with open(statefile.path, "wb") as handle:
            handle.write(data)
        with pytest.raises(S.StateError) as info:
            statefile.read()
        assert str(info.value).startswith("state file %s %s" % (statefile.path, problem)) and "\n" not in str(info.value)
        assert str(info.value).endswith("the runner keeps it aside and rebuilds it from the replication snapshots at "
                                        "its next run ('storage-replication run')")


def test_local_node_name(tmp_path):
    assert S.read_local_node(str(tmp_path)) == os.uname().nodename.split(".")[0]
    (tmp_path / "local-node").write_text("node7\n", encoding="utf-8")
    assert S.read_local_node(str(tmp_path)) == "node7"


# ---------------------------------------------------------------------------------------------------------------
# Job order

def test_jobs_to_run_and_the_order_of_a_run():
    cfg = ClusterConfig(nodes={n: Node(n, "10.0.0.%s" % n[-1]) for n in ("node1", "node2", "node3")},
                        storages={"local-zfs": Storage("local-zfs")})
    for guest in (200, 1000, 300):
        cfg.guests[guest] = Guest(guest, "vm", "node1", ["local-zfs:vm-%d-disk-0" % guest])
    cfg.guests[400] = Guest(400, "vm", "node2", ["local-zfs:vm-400-disk-0"])
    for j in (job("1000-0", "node2"), job("200-1", "node2"), job("200-0", "node3"), job("300-0", "node2", disable=True),
              job("300-1", "node3", remove_job="full", disable=True), job("400-0", "node1")):
        cfg.add_job(j)
    runnable = S.jobs_to_run(cfg, "node1")
    assert [j.id for j in runnable] == ["1000-0", "200-1", "200-0", "300-1"]
    state = {"200": {"local/node2": {"last_try": 0}, "local/node3": {"last_try": 0}},
             "1000": {"local/node2": {"last_try": 0}}}
    order = []
    iteration = now = 1000
    while True:
        due = S.next_due_job(runnable, state, iteration, now)
        if due is None:
            break
        order.append(due.id)
        state.setdefault(str(due.guest), {})[due.target_id] = {"last_iteration": iteration, "last_try": now}
    # Removal first (next_sync 1), then by next_sync (all 900), then numeric guest (200 before 1000), then job ID.
    assert order == ["300-1", "200-0", "200-1", "1000-0"]
    scheduled = [j for j in runnable if not j.remove_job]
    assert S.next_due_job(scheduled, state, 1799, 1799, tz="UTC") is None  # next event after last_try 1000 is 1800
    assert S.next_due_job(scheduled, state, 1800, 1800, tz="UTC").id == "200-0"
    assert S.next_due_job(runnable, state, 1799, 1799).id == "300-1"  # a removal is due at every run


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes

def test_a_failed_write_leaves_the_old_file_and_no_temporary(statefile, monkeypatch):
    statefile.set_fields(job(), last_sync=1)
    before = open(statefile.path, "rb").read()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(S.os, "replace", broken_replace)
    with pytest.raises(OSError):
        statefile.set_fields(job(), last_sync=2)
    assert open(statefile.path, "rb").read() == before
    assert sorted(os.listdir(statefile.statedir)) == ["local-node", "replication-state.json", "replication-state.lck"]


def _write_many(statedir, rounds):
    statefile = S.StateFile(statedir)
    for i in range(rounds):
        statefile.set_fields(job(), last_sync=i, storeid_list=["x" * 1000] * 50)


def test_readers_never_see_a_partial_file(tmp_path):
    writer = multiprocessing.get_context("fork").Process(target=_write_many, args=(str(tmp_path), 200))
    writer.start()
    statefile = S.StateFile(str(tmp_path))
    seen = set()
    deadline = time.monotonic() + 30
    while writer.is_alive() and time.monotonic() < deadline:
        entry = statefile.job_state(job())  # raises StateError on a torn file
        seen.add(entry["last_sync"])
    writer.join(30)
    assert writer.exitcode == 0
    assert statefile.job_state(job())["last_sync"] == 199
    assert len(seen) > 1


def _increment(statedir, key, rounds):
    statefile = S.StateFile(statedir)
    for _round in range(rounds):
        statefile._change_job(job(), lambda e: dict(e, **{key: e.get(key, 0) + 1}))


def test_concurrent_writers_lose_no_update(tmp_path):
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_increment, args=(str(tmp_path), "counter", 25)) for _writer in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0, 0]
    assert S.StateFile(str(tmp_path)).job_state(job())["counter"] == 50


# ---------------------------------------------------------------------------------------------------------------
# Locks between processes

def _hold(lock_factory, held, release):
    with lock_factory():
        held.set()
        release.wait(30)


def _contend(lock_factory):
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(lock_factory, held, release))
    holder.start()
    assert held.wait(10)
    return holder, release


def test_a_second_runner_exits_at_once(tmp_path):
    holder, release = _contend(lambda: S.runner_lock(str(tmp_path)))
    try:
        started = time.monotonic()
        with pytest.raises(F.LockError) as info:
            with S.runner_lock(str(tmp_path)):
                pass
        assert time.monotonic() - started < 0.5
        assert str(info.value) == (
            "can't lock file '%s/lock/runner.lock' - got timeout after 0s: the replication runner of this node is held by"
            " pid %d; another 'storage-replication run' is active; this one exits and the next run picks up due jobs"
            % (tmp_path, holder.pid))
    finally:
        release.set()
        holder.join(10)
    with S.runner_lock(str(tmp_path)):
        pass


def test_guest_lock_waits_then_names_the_guest(tmp_path):
    holder, release = _contend(lambda: S.guest_lock(100, str(tmp_path)))
    try:
        started = time.monotonic()
        with pytest.raises(F.LockError) as info:
            with S.guest_lock(100, str(tmp_path), timeout=0.3):
                pass
        assert 0.3 <= time.monotonic() - started < 1.5
        assert "guest '100' is held by pid %d; a replication or migration of this guest is running" % holder.pid in str(info.value)
        with S.guest_lock(200, str(tmp_path), timeout=0):  # other guests are independent
            pass
    finally:
        release.set()
        holder.join(10)


def test_state_writes_wait_for_the_lock_and_then_proceed(tmp_path):
    statefile = S.StateFile(str(tmp_path), lock_timeout=5)
    holder, release = _contend(lambda: S.StateFile(str(tmp_path)).locked())
    try:
        short = S.StateFile(str(tmp_path), lock_timeout=0.2)
        with pytest.raises(F.LockError) as info:
            short.set_fields(job(), last_sync=1)
        assert "the job state file %s/replication-state.json is held by pid %d" % (tmp_path, holder.pid) in str(info.value)
        assert short.read() == {}  # the holder writes {} at its end; the reader never waited
    finally:
        release.set()
    statefile.set_fields(job(), last_sync=2)
    holder.join(10)
    assert statefile.job_state(job())["last_sync"] == 2
