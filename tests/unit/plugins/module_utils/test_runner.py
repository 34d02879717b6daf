# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the runner: order, parallelism, guest exclusion, lock, notifications, logs, metrics, settings.

The replication itself is replaced by a function that records its calls in the real state file and takes its time
in virtual time (VirtualClock): a "130 s" job ends at once, in the order real time would give (the lab tests in
tests/integration/test_runner_lab.py run real jobs)."""

from __future__ import annotations

import base64
import datetime
import json
import math
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED

import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as C
from ansible_collections.storage.replication.plugins.module_utils import joblog, metrics, notify
from ansible_collections.storage.replication.plugins.module_utils import report as reportmod
from ansible_collections.storage.replication.plugins.module_utils import settings as settingsmod
from ansible_collections.storage.replication.plugins.module_utils import runner as R
from ansible_collections.storage.replication.plugins.module_utils.state import StateFile, runner_lock

KEY = "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))).decode()
NOW = 1767225600  # 2026-01-01 00:00:00 UTC


def test_notification_cadence_is_pvesr_s():
    assert [n for n in range(0, 2000) if notify.should_notify(n)] == [1, 2, 3, 48, 96, 192, 384, 768, 1536]


def make_config(guests=(100,), jobs_per_guest=1):
    cfg = C.ClusterConfig(generation=1)
    for number, name in enumerate(("node1", "node2", "node3"), 1):
        cfg.nodes[name] = C.Node(name, "10.0.0.%d" % number, KEY)
    cfg.storages["local-zfs"] = C.Storage("local-zfs")
    for guest in guests:
        cfg.guests[guest] = C.Guest(guest, "vm", "node1", ["local-zfs:vm-%d-disk-0" % guest])
        for jobnum in range(jobs_per_guest):
            cfg.jobs["%d-%d" % (guest, jobnum)] = C.Job("%d-%d" % (guest, jobnum), ("node2", "node3")[jobnum], source="node1")
    return cfg


def jobstate(last_iteration=0, last_try=0, fail_count=0):
    return {"last_iteration": last_iteration, "last_try": last_try, "last_sync": last_try, "fail_count": fail_count}


def test_due_jobs_come_in_pvesr_order():
    cfg = make_config(guests=(300, 100, 200), jobs_per_guest=2)
    state = {
        "100": {"local/node2": jobstate(10, NOW - 3600), "local/node3": jobstate(0, NOW - 3600)},
        "200": {"local/node2": jobstate(0, NOW - 7200), "local/node3": jobstate(NOW, NOW - 7200)},  # ran in this iteration
        "300": {"local/node2": jobstate(0, NOW), "local/node3": jobstate(0, NOW - 600, fail_count=4)},  # ran now; back-off 30 min
    }
    due = R.due_in_order(list(cfg.jobs.values()), state, NOW, NOW)
    # last_iteration first, then next_sync (*/15 after last_try), then guest, then job ID
    assert [j.id for j in due] == ["200-0", "100-1", "100-0"]


def test_job_report_and_metrics(tmp_path):
    cfg = make_config(guests=(100, 200))
    cfg.jobs["200-0"].disable = True
    state = {"100": {"local/node2": dict(jobstate(NOW - 300, NOW - 300), duration=2.5, bytes_sent=1048576)},
             "200": {"local/node2": dict(jobstate(NOW - 60, NOW - 60, fail_count=2), last_sync=0, error="target down")}}
    report = reportmod.job_report(cfg, state, "node1", NOW)
    assert [(j["id"], j["enabled"], j["lag"], j["state"], j["next_sync"]) for j in report] == [
        ("100-0", True, 300, "OK", NOW), ("200-0", False, None, "target down", None)]
    text = metrics.format_metrics(report, "node1", 7, NOW, guest_types={100: "vm", 200: "ct"})
    expected = [
        'storage_replication_job_last_sync_timestamp_seconds{id="100-0",guest="100",target="node2",node="node1"} %d' % (NOW - 300),
        'storage_replication_job_lag_seconds{id="100-0",guest="100",target="node2",node="node1"} 300',
        'storage_replication_job_lag_seconds{id="200-0",guest="200",target="node2",node="node1"} +Inf',
        'storage_replication_job_last_duration_seconds{id="100-0",guest="100",target="node2",node="node1"} 2.5',
        'storage_replication_job_last_bytes_sent{id="100-0",guest="100",target="node2",node="node1"} 1048576',
        'storage_replication_job_fail_count{id="200-0",guest="200",target="node2",node="node1"} 2',
        'storage_replication_job_next_sync_timestamp_seconds{id="100-0",guest="100",target="node2",node="node1"} %d' % NOW,
        'storage_replication_job_enabled{id="200-0",guest="200",target="node2",node="node1"} 0',
        'storage_replication_runner_last_tick_timestamp_seconds{node="node1"} %d' % NOW,
        'storage_replication_config_generation{node="node1"} 7',
        'storage_replication_config_conflict{node="node1"} 0',
        'storage_replication_job_schedule_interval_seconds{id="100-0",guest="100",target="node2",node="node1"} 900',
        # prometheus-pve-exporter's series, its names and labels; what the job has not (a duration, a next sync of
        # a disabled job) is left out, as Proxmox's API leaves it out
        'pve_replication_info{id="100-0",type="local",source="node/node1",target="node/node2",guest="qemu/100"} 1',
        'pve_replication_info{id="200-0",type="local",source="node/node1",target="node/node2",guest="lxc/200"} 1',
        'pve_replication_duration_seconds{id="100-0"} 2.5',
        'pve_replication_last_sync_timestamp_seconds{id="100-0"} %d' % (NOW - 300),
        'pve_replication_last_sync_timestamp_seconds{id="200-0"} 0',
        'pve_replication_last_try_timestamp_seconds{id="200-0"} %d' % (NOW - 60),
        'pve_replication_next_sync_timestamp_seconds{id="100-0"} %d' % NOW,
        'pve_replication_failed_syncs{id="200-0"} 2',
    ]
    lines = text.splitlines()
    assert [line for line in expected if line not in lines] == []
    assert not any(line.startswith(('pve_replication_duration_seconds{id="200-0"}',
                                    'pve_replication_next_sync_timestamp_seconds{id="200-0"}')) for line in lines)
    assert sum(1 for line in lines if not line.startswith("#")) == 12 * 2 + 2 + 8 + 5


def test_restore_points_in_the_report_and_the_metrics():
    """What the last finalize reported (count, oldest, bytes) and the points deleted for lack of space; before any
    report, the newest replica is the one point, its space not known."""
    cfg = make_config(guests=(100, 200))
    cfg.jobs["100-0"].keep = "last=4,daily=7"
    state = {"100": {"local/node2": dict(jobstate(NOW - 300, NOW - 300), space_pruned=["__replicate_100-0_5__"],
                                         points={"count": 9, "oldest": NOW - 86400, "newest": NOW - 300,
                                                 "bytes": 123456})},
             "200": {"local/node2": jobstate(NOW - 60, NOW - 60)}}
    report = {job["id"]: job for job in reportmod.job_report(cfg, state, "node1", NOW)}
    keys = ("keep", "restore_points", "oldest_point", "oldest_point_age", "points_bytes", "space_pruned")
    assert {k: report["100-0"][k] for k in keys} == {
        "keep": "last=4,daily=7", "restore_points": 9, "oldest_point": NOW - 86400, "oldest_point_age": 86400,
        "points_bytes": 123456, "space_pruned": ["__replicate_100-0_5__"]}
    assert (report["200-0"]["restore_points"], report["200-0"]["oldest_point_age"], report["200-0"]["points_bytes"]) \
        == (1, 60, None)
    lines = metrics.format_metrics(list(report.values()), "node1", 7, NOW).splitlines()
    labels = '{id="100-0",guest="100",target="node2",node="node1"}'
    for line in ("storage_replication_job_restore_points%s 9" % labels,
                 "storage_replication_job_oldest_point_age_seconds%s 86400" % labels,
                 "storage_replication_job_points_bytes%s 123456" % labels,
                 "storage_replication_job_points_pruned_for_space%s 1" % labels):
        assert line in lines


def test_logs_keep_the_last_n_runs(tmp_path):
    for run in range(1, 6):
        joblog.rotate_logs(str(tmp_path), "100-0", 3)
        (tmp_path / "100-0.log").write_text("run %d\n" % run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["100-0.log", "100-0.log.1", "100-0.log.2"]
    assert joblog.read_logs(str(tmp_path), "100-0", 10) == [(2, ["run 3"]), (1, ["run 4"]), (0, ["run 5"])]
    joblog.rotate_logs(str(tmp_path), "100-0", 1)  # a smaller setting drops the older runs
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("settings, message", [
    ({"max_parallel": 0}, "'max_parallel' must be a whole number >= 1, not 0"),
    ({"notify_command": "mail -s x root"}, "'notify_command' must be an argv list"),
    ({"metrics_file": "relative.prom"}, "'metrics_file' must be an absolute path or null"),
    ({"receive_stall_seconds": 5}, "'receive_stall_seconds' must be a whole number >= 10, not 5"),
    ({"paralel": 2}, "unknown setting 'paralel'; the settings are: fence_after, fence_interval, log_runs, max_parallel"),
])
def test_bad_settings_are_named(tmp_path, settings, message):
    path = tmp_path / "runner.json"
    path.write_text(json.dumps(settings))
    with pytest.raises(settingsmod.SettingsError, match="%s: %s" % (path, _escape(message))):
        settingsmod.load_settings(str(path))


def _escape(text):
    import re  # pylint: disable=import-outside-toplevel
    return re.escape(text)


def test_missing_settings_file_means_defaults(tmp_path):
    assert settingsmod.load_settings(str(tmp_path / "none.json")) == settingsmod.DEFAULT_SETTINGS


# ---------------------------------------------------------------------------------------------------------------
# The run, with a fake replication in virtual time

class VirtualClock:
    """Time for the runner and its fake jobs in which nothing really waits.

    A fake job's ``sleep(seconds)`` blocks its thread until the virtual time has reached its wake-up. The runner's
    ``wait`` (concurrent.futures.wait) lets the time move only once every running job sleeps or is done, and then to
    the earliest wake-up, or to the wait's timeout if that comes first: events happen in the order and at the times
    real time would give them, without the waiting."""

    def __init__(self, start=NOW):
        self.time = float(start)
        self.wakeups = {}  # thread -> virtual time it sleeps until
        self.changed = threading.Condition()

    def now(self):
        with self.changed:
            return self.time

    def sleep(self, seconds):
        with self.changed:
            if threading.current_thread() is threading.main_thread():  # `run --id`: the job runs in the runner's thread
                self.time += seconds
                return
            me = threading.get_ident()
            self.wakeups[me] = self.time + seconds
            self.changed.notify_all()
            self.changed.wait_for(lambda: self.time >= self.wakeups[me])
            del self.wakeups[me]

    def _settled(self, futures):
        """Every job not done sleeps (a thread whose wake-up has come is running until it deletes its entry)."""
        sleeping = sum(wakeup > self.time for wakeup in self.wakeups.values())
        return sum(not future.done() for future in futures) == sleeping

    def wait(self, futures, timeout=None, return_when=FIRST_COMPLETED):
        assert return_when == FIRST_COMPLETED, "the runner waits for the first job to end"
        for future in futures:
            future.add_done_callback(lambda _future: self._notify())
        deadline = math.inf if timeout is None else self.time + timeout
        with self.changed:
            while True:
                # A job thread just started or just woken runs for real until it sleeps again or ends.
                assert self.changed.wait_for(lambda: self._settled(futures), timeout=30), "a fake job neither slept nor ended"
                done = {future for future in futures if future.done()}
                if done or self.time >= deadline:
                    return done, set(futures) - done
                self.time = min([deadline] + list(self.wakeups.values()))
                self.changed.notify_all()

    def _notify(self):
        with self.changed:
            self.changed.notify_all()


class Node:
    """A node's directories with config, settings and a fake run_job that records into the real state file."""

    def __init__(self, tmp_path, cfg, settings=None, durations=None, failing=(), start=NOW):
        self.paths = settingsmod.Paths(str(tmp_path / "conf"), str(tmp_path / "state"), str(tmp_path / "log"))
        (tmp_path / "state").mkdir()
        (tmp_path / "state" / "local-node").write_text("node1\n")
        C.save(cfg, self.paths.confdir)
        self.settings = dict(settingsmod.DEFAULT_SETTINGS, metrics_file=str(tmp_path / "metrics.prom"), **(settings or {}))
        self.durations = durations or {}
        self.failing = set(failing)
        self.lock = threading.Lock()
        self.active, self.events, self.overlaps = {}, [], []
        self.peer_checks = 0
        self.conflicts = []
        self.channels = []  # what each job was given to reach its target (the pass's ChannelPool, or None)
        self.zfs = []  # and its ZFS layer (the pass's, or None)
        self.kept = []  # what each peer check was told to hand its connections to
        self.virtual = VirtualClock(start)
        self.clock = self.virtual.now

    def run_job(self, cfg, job_id, node, statedir, logdir, confdir, echo, channels=None, zfs=None):
        del node, logdir, confdir, echo
        self.channels.append(channels)
        self.zfs.append(zfs)
        job = cfg.jobs[job_id]
        state = StateFile(statedir)
        start = int(self.clock())
        state.record_job_start(job, start)
        with self.lock:
            if job.guest in self.active.values():
                self.overlaps.append(job_id)
            self.active[job_id] = job.guest
            self.events.append(("start", job_id, self.virtual.now()))
        self.virtual.sleep(self.durations.get(job_id, 0.05))
        with self.lock:
            del self.active[job_id]
            self.events.append(("end", job_id, self.virtual.now()))
        error = "target node2 is down" if job_id in self.failing else None
        state.record_job_end(job, start, 0.1, error, bytes_sent=4096)
        return {"job": job_id, "ok": error is None, "error": error, "start": start, "bytes": 4096}

    def catch_up(self, confdir, statedir, current=None, keep=None):
        del statedir
        self.kept.append(keep)
        # the runner hands over the configuration it loaded (the peers to ask), not a stale one
        assert current is not None and current.generation == C.load(confdir).generation
        self.peer_checks += 1
        return type("Found", (), {"adopted": None, "source": None, "unreachable": {}, "generation": 1,
                                  "conflicts": list(self.conflicts)})()

    def runner(self, notify=False, **fakes):
        """A Runner on this node's directories with its fakes (``fakes`` replace some or add others)."""
        fakes = dict({"now": self.clock, "wait": self.virtual.wait, "run_job": self.run_job, "catch_up": self.catch_up}, **fakes)
        return R.Runner(self.paths, self.settings, notify=notify, **fakes)

    def run(self, job_id=None, notify=False):
        return self.runner(notify).run(job_id)

    def finished(self, job_id):
        return next(t for kind, j, t in self.events if kind == "end" and j == job_id)

    def started(self, job_id):
        return next(t for kind, j, t in self.events if kind == "start" and j == job_id)


def test_a_long_job_does_not_hold_back_the_others(tmp_path):
    cfg = make_config(guests=(100, 200, 300, 400, 500, 600))
    node = Node(tmp_path, cfg, {"max_parallel": 4}, durations={"100-0": 1.0})
    result = node.run()
    assert sorted(j["job"] for j in result["jobs"]) == sorted(cfg.jobs)
    assert all(node.finished(j) < node.finished("100-0") for j in cfg.jobs if j != "100-0")
    assert node.peer_checks == 1


def test_the_heartbeat_goes_on_while_a_long_job_runs(tmp_path):
    """A first full sync may run for hours: the runner's tick in the metrics file must not stop meanwhile, or the
    stale-runner alert would fire for a runner that works."""
    cfg = make_config(guests=(100,))
    node = Node(tmp_path, cfg, durations={"100-0": 150})
    seen = []
    run_job = node.run_job

    def long_job(*args, **kwargs):
        outcome = run_job(*args, **kwargs)
        seen.append((tmp_path / "metrics.prom").read_text())  # before the runner writes it after the job
        return outcome
    node.run_job = long_job
    node.run()
    tick = [line for line in seen[0].splitlines() if line.startswith("storage_replication_runner_last_tick")]
    assert tick and float(tick[0].split()[-1]) >= NOW + 60


def test_a_job_that_becomes_due_during_a_long_job_starts_on_time(tmp_path):
    cfg = make_config(guests=(100, 200))
    due = NOW + 2
    cfg.jobs["200-0"].schedule = "*:*:%02d" % (due % 60)  # next event after last_try = NOW: `due`
    node = Node(tmp_path, cfg, durations={"100-0": 3.5})
    StateFile(node.paths.statedir).set_fields(cfg.jobs["200-0"], last_try=NOW, last_sync=NOW)
    result = node.run()
    assert sorted(j["job"] for j in result["jobs"]) == ["100-0", "200-0"]
    # started at its due time (not at the 10 s recheck), while the long job was still running
    assert node.started("100-0") == NOW and due <= node.started("200-0") <= due + 0.1
    assert node.finished("200-0") < node.finished("100-0") == NOW + 3.5
    assert StateFile(node.paths.statedir).read()["200"]["local/node2"]["last_try"] == due


def test_while_a_long_job_runs_a_new_iteration_begins_every_minute(tmp_path):
    """The timer starts no second runner while this one is busy: the runner acts as its ticks would."""
    cfg = make_config(guests=(100, 200))
    cfg.jobs["200-0"].schedule = "minutely"
    node = Node(tmp_path, cfg, durations={"100-0": 130})
    result = node.run()
    assert sorted(j["job"] for j in result["jobs"]) == ["100-0", "200-0", "200-0", "200-0"]
    starts = [round(t - NOW) for kind, j, t in node.events if kind == "start" and j == "200-0"]
    assert starts == [0, 60, 120] and node.finished("100-0") == NOW + 130


def test_max_parallel_one_runs_jobs_one_after_another_in_order(tmp_path):
    cfg = make_config(guests=(300, 100, 200))
    node = Node(tmp_path, cfg, {"max_parallel": 1})
    node.run()
    starts = [j for kind, j, _t in node.events if kind == "start"]
    assert starts == ["100-0", "200-0", "300-0"]
    for earlier, later in zip(starts, starts[1:]):
        assert node.finished(earlier) <= node.started(later)


def test_two_jobs_of_one_guest_never_run_at_once(tmp_path):
    cfg = make_config(guests=(100, 200), jobs_per_guest=2)
    node = Node(tmp_path, cfg, {"max_parallel": 4}, durations={"100-0": 0.3, "100-1": 0.3})
    result = node.run()
    assert sorted(j["job"] for j in result["jobs"]) == ["100-0", "100-1", "200-0", "200-1"]
    assert node.overlaps == []
    assert node.finished("100-0") <= node.started("100-1")


def test_the_jobs_of_a_pass_share_its_connections_which_close_when_it_ends(tmp_path, monkeypatch):
    """Every job of a pass gets the run's one ChannelPool (channels.py), closed when the run ends, also when it ends
    with an exception, and its one ZFS layer; the run's result counts the connections it opened.  The peer check
    before the jobs hands its connections to that pool; a single job (`run <id>`) gets it too."""
    closed = []

    def close(pool):
        closed.append(pool)
    monkeypatch.setattr(R.ChannelPool, "close", close)
    cfg = make_config(guests=(100, 200, 300, 400, 500, 600))
    node = Node(tmp_path, cfg, {"max_parallel": 4})
    result = node.run()
    assert len(node.channels) == 6 and isinstance(node.channels[0], R.ChannelPool)
    assert all(pool is node.channels[0] for pool in node.channels)
    assert closed == [node.channels[0]] and result["connections"] is node.channels[0].opened
    assert node.kept == [node.channels[0].adopt]
    assert node.zfs[0] is not None and all(zfs is node.zfs[0] for zfs in node.zfs)  # features asked once a pass
    node.channels.clear()
    node.zfs.clear()
    StateFile(node.paths.statedir).schedule_now(cfg.jobs["100-0"])
    single = node.run("100-0")
    assert [j["job"] for j in single["jobs"]] == ["100-0"] and node.zfs == [None]
    assert len(node.channels) == 1 and isinstance(node.channels[0], R.ChannelPool) and closed[-1] is node.channels[0]
    assert node.kept[-1] == node.channels[0].adopt and single["connections"] is node.channels[0].opened

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt
    for job in cfg.jobs.values():
        StateFile(node.paths.statedir).schedule_now(job)
    with pytest.raises(KeyboardInterrupt):
        node.runner(run_job=interrupted).run()
    assert len(closed) == 3


def test_an_idle_run_runs_nothing_and_asks_no_peer(tmp_path):
    cfg = make_config(guests=(100,))
    node = Node(tmp_path, cfg)
    node.run()
    assert [j for kind, j, _t in node.events if kind == "start"] == ["100-0"] and node.peer_checks == 1
    second = node.run()  # the job ran in this quarter hour; the peers were asked less than 10 minutes ago
    assert second["jobs"] == [] and node.peer_checks == 1
    metrics = (tmp_path / "metrics.prom").read_text()
    assert 'storage_replication_runner_last_tick_timestamp_seconds{node="node1"} %d' % second["iteration"] in metrics


def test_schedule_now_right_after_a_run_in_the_same_second_is_seen(tmp_path):
    cfg = make_config(guests=(100,))
    node = Node(tmp_path, cfg)
    node.clock = lambda: NOW + 0.5
    assert [j["job"] for j in node.run()["jobs"]] == ["100-0"]
    StateFile(node.paths.statedir).schedule_now(cfg.jobs["100-0"])
    assert [j["job"] for j in node.run()["jobs"]] == ["100-0"]  # pvesr's whole-second iteration would skip it


def test_a_second_runner_exits_at_once(tmp_path):
    node = Node(tmp_path, make_config())
    with runner_lock(node.paths.statedir):
        began = time.monotonic()
        with pytest.raises(R.RunnerBusy, match="another 'storage-replication run' is active"):
            node.run()
        assert time.monotonic() - began < 1
    assert node.events == []


def test_run_single_job_checks_pvesr_preconditions(tmp_path):
    cfg = make_config(guests=(100,))
    cfg.guests[200] = C.Guest(200, "vm", "node2", ["local-zfs:vm-200-disk-0"])
    cfg.jobs["200-0"] = C.Job("200-0", "node1", source="node2")
    cfg.jobs["100-1"] = C.Job("100-1", "node3", source="node1", disable=True)
    node = Node(tmp_path, cfg)
    for job_id, message in (("100-9", "no such job '100-9'"), ("100-1", "job '100-1' is disabled"),
                            ("200-0", "guest '200' is not on local node - it runs on 'node2'")):
        with pytest.raises(R.RunnerRefused, match=message):
            node.run(job_id)
    assert node.events == []
    assert [j["job"] for j in node.run("100-0")["jobs"]] == ["100-0"]


def notify_script(tmp_path):
    out = tmp_path / "messages.jsonl"
    script = tmp_path / "notify.py"
    script.write_text("import sys\nwith open(%r, 'a') as f:\n    f.write(sys.stdin.read().strip() + '\\n')\n" % str(out))
    return [sys.executable, str(script)], out


def test_failure_notifications_follow_the_cadence_and_recovery_is_reported(tmp_path):
    command, out = notify_script(tmp_path)
    # started at the wall clock's time: a message's timestamp is the wall clock's
    node = Node(tmp_path, make_config(), {"notify_command": command}, failing={"100-0"}, start=time.time())
    state = StateFile(node.paths.statedir)
    job = C.load(node.paths.confdir).jobs["100-0"]
    notified = []
    for fail_count in range(0, 50):
        state.set_fields(job, last_try=0, last_iteration=0, fail_count=fail_count)
        if fail_count == 49:
            node.failing.clear()
        result = node.run(notify=True)
        notified += [fail_count + 1 for j in result["jobs"] if j["notified"] == "failure"]
    messages = [json.loads(line) for line in out.read_text().splitlines()]
    assert notified == [1, 2, 3, 48]
    assert [m["event"] for m in messages] == ["failure"] * 4 + ["recovered"]
    first = messages[0]
    assert first["subject"] == "Replication Job: '100-0' failed"
    assert (first["job-id"], first["job-target"], first["failure-count"], first["error"]) == ("100-0", "node2", 1, "target node2 is down")
    assert 290 <= first["next-sync"] - first["timestamp"] <= 300  # back-off after the first failure: 5 minutes
    assert "Next sync try: " in first["body"] and "never" not in first["body"].split("Next sync try: ")[1]
    assert "reported at failure counts 48, 96, 192" in messages[2]["body"]
    assert messages[4]["previous-failure-count"] == 49 and messages[4]["failure-count"] == 0


def test_without_mail_no_notification_is_sent(tmp_path):
    command, out = notify_script(tmp_path)
    node = Node(tmp_path, make_config(), {"notify_command": command}, failing={"100-0"})
    result = node.run(notify=False)
    assert result["jobs"][0]["ok"] is False and not out.exists()


@pytest.mark.parametrize("job_id", [None, "100-0"], ids=["timer", "run --id"])
def test_a_configuration_conflict_stops_every_job_and_is_reported(tmp_path, job_id):
    """Only a forced change makes two contents under one generation: the node acts on neither (issue 14)."""
    node = Node(tmp_path, make_config(guests=(100, 200)))
    node.conflicts = ["node2", "node3"]
    if job_id:
        with pytest.raises(R.RunnerRefused, match="configuration conflict: node.s. node2, node3 hold another content"):
            node.run(job_id)
    else:
        result = node.run()
        assert result["jobs"] == [] and "resolve-conflict" in result["peer_check"]["error"]
    assert node.events == []
    assert R.last_peer_check(node.paths.statedir)["conflict"] == ["node2", "node3"]
    assert "storage_replication_config_conflict{node=\"node1\"} 1" in (tmp_path / "metrics.prom").read_text()


def test_an_idle_tick_with_ten_thousand_jobs_starts_no_process_and_opens_no_connection(tmp_path, monkeypatch):
    """Issue 19: a node with 10,000 jobs, none due, peers asked a minute ago. The tick is the real Runner (the real
    run_job, catch_up and ZFS), so any ZFS or SSH command, any process at all, or any network connection fails
    the test; it still writes every job's metrics. (Its speed is benchmarks/bench_runner.py's, not a test's.)"""
    import socket  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    now = int(time.time())
    cfg = make_config(guests=range(1000, 11000))
    for job in cfg.jobs.values():
        job.schedule = "%d:%02d" % divmod((now // 60 + 90) % 1440, 60)  # once a day, 90 minutes from now (UTC)
    node = Node(tmp_path, cfg)
    state = {str(job.guest): {job.target_id: jobstate(now, now)} for job in cfg.jobs.values()}
    (tmp_path / "state" / "replication-state.json").write_text(json.dumps(state))
    (tmp_path / "state" / R.PEER_CHECK_FILE).write_text(json.dumps({"time": now - 60, "generation": 1}))
    attempts = []

    def refuse(what):
        def refused(*args, **_kwargs):
            attempts.append((what, args[1:2]))
            raise AssertionError("an idle tick %s: %r" % (what, args[1:2]))
        return refused
    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse("started a process"))
    monkeypatch.setattr(socket.socket, "connect", refuse("opened a connection"))
    monkeypatch.setattr(socket, "create_connection", refuse("opened a connection"))
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        result = R.Runner(node.paths, node.settings, now=lambda: now + 1).run()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert result["jobs"] == [] and result["warnings"] == [] and result["peer_check"] is None and attempts == []
    metrics = (tmp_path / "metrics.prom").read_text()
    assert metrics.count("storage_replication_job_enabled{") == 10000


@pytest.mark.parametrize("schedule, when, interval", [
    ("*/15", "2026-12-07 10:07", 900),
    ("*/1", "2026-12-07 10:07", 60),
    ("*:*:0/20", "2026-12-07 10:07", 60),  # more often than the runner's tick: the tick
    ("daily", "2026-12-07 10:07", 86400),
    # a workday schedule: half an hour on Monday morning, the whole weekend on Saturday (no alert every weekend)
    ("mon..fri 8..17:00/30", "2026-12-07 08:05", 1800),
    ("mon..fri 8..17:00/30", "2026-12-05 12:00", (2 * 86400 + 14.5 * 3600)),
    ("0 3 * * *", "2026-12-07 10:07", 86400),
    ("2020-01-01 00:00", "2026-12-07 10:07", 0),  # runs no more
])
def test_the_schedule_interval_is_the_gap_around_now(monkeypatch, schedule, when, interval):
    monkeypatch.setenv("TZ", "UTC")
    now = int(datetime.datetime.strptime(when, "%Y-%m-%d %H:%M").replace(tzinfo=datetime.timezone.utc).timestamp())
    assert metrics.schedule_interval(schedule, now) == interval
