# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: the runner and the status commands with 10,000 configured jobs, none of them due (issue 19).

A node owns 10,000 guests with one job each (five different schedules), all of which ran at their last scheduled
time, so none is due. Measured end to end as an operator or the timer starts them (a new Python process each):
one `storage-replication run`, `status` and `list`. The run must issue no ZFS and no SSH command: `zfs`, `zpool`
and `ssh` on its PATH are stubs that record every call and fail, and the peers' addresses point at a local TCP
listener that counts connections (the control channel is paramiko, not the ssh binary). The first run of a
peer-check interval asks the peers for their generation (safety rule 2); the measured runs are the ones after it,
as every other run of the interval. The runner's peak memory is the largest resident set of the runs (the
kernel's ru_maxrss of the waited children, read before `status` and `list` start). Targets: an idle run and
`status` in at most 0.5 s, the runner in at most 100 MB. `BENCH_JOBS=N` measures another count (figures keyed by
it). Prints a table and writes build/bench/bench_runner.json.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "build" / "collections"), str(ROOT)]

from ansible_collections.storage.replication.plugins.module_utils import config as configmod  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.storage.replication.plugins.module_utils.schedule import parse  # noqa: E402  pylint: disable=wrong-import-position

JOBS = int(os.environ.get("BENCH_JOBS", "10000"))
REPEAT = 5
LIMIT_S = 0.5
LIMIT_RSS_MB = 100
QUIET_S = 600  # no job may become due while the benchmark runs (a due job would run, against the stubs)
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
STUB = "#!/bin/sh\necho \"$0 $*\" >> \"%s\"\nexit 1\n"


class ConnectionCounter:
    """A TCP listener that accepts and closes connections, counting them."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            self.count += 1
            conn.close()


def quiet_schedules(now):
    """Five kinds of schedules (hourly at a minute, daily, weekdays, a weekly day, twice a day) whose next event is
    at least half an hour after ``now``: a job that became due during the measured runs would make them runs."""
    later = time.localtime(now + 1800)
    minute, hour = later.tm_min, later.tm_hour
    schedules = ("*:%02d" % minute, "%d:%02d" % (hour, minute), "mon..fri %d:%02d" % (hour, minute),
                 "%s %d:%02d" % (("mon", "tue", "wed", "thu", "fri", "sat", "sun")[later.tm_wday], hour, minute),
                 "%d,%d:%02d" % (hour, (hour + 12) % 24, minute))
    assert all(parse(text).next_event(now) > now + QUIET_S for text in schedules), schedules
    return schedules


def build_node(root, port, now):
    """Config, state and settings of a node with JOBS jobs, none due at ``now``."""
    cfg = configmod.ClusterConfig(generation=1)
    for number, name in enumerate(("node1", "node2", "node3"), 1):
        cfg.nodes[name] = configmod.Node(name=name, address="127.0.0.%d" % number, host_key=HOST_KEY, port=port)
    cfg.storages["local-zfs"] = configmod.Storage(id="local-zfs")
    state = {}
    schedules = quiet_schedules(now)
    for index in range(JOBS):
        guest = 1000 + index
        schedule = schedules[index % len(schedules)]
        cfg.guests[guest] = configmod.Guest(id=guest, type="vm", node="node1", volumes=["local-zfs:vm-%d-disk-0" % guest])
        cfg.jobs["%d-0" % guest] = configmod.Job(id="%d-0" % guest, target="node2", schedule=schedule, source="node1")
        last_try = now - index % 50
        if parse(schedule).next_event(last_try) <= now + QUIET_S:
            last_try = now  # it ran at its last event: not due before the next one
        state[str(guest)] = {"local/node2": {"last_try": last_try, "last_sync": last_try, "last_iteration": last_try,
                                             "fail_count": 0, "duration": 1.5, "bytes_sent": 4096, "last_node": "node1",
                                             "storeid_list": ["local-zfs"]}}
    dirs = {name: root / name for name in ("conf", "state", "log", "bin")}
    for path in dirs.values():
        path.mkdir()
    configmod.save(cfg, str(dirs["conf"]))
    (dirs["state"] / "replication-state.json").write_text(json.dumps(state))
    (dirs["state"] / "local-node").write_text("node1\n")
    (dirs["conf"] / "runner.json").write_text(json.dumps({"metrics_file": str(root / "metrics" / "sr.prom")}))
    calls = root / "stub-calls.log"
    for command in ("zfs", "zpool", "ssh"):
        stub = dirs["bin"] / command
        stub.write_text(STUB % calls)
        stub.chmod(0o755)
    return dirs, calls


def timed(argv, env):
    """Wall and CPU seconds and peak resident memory (MB) of one command (CPU too: this machine is shared, wall time
    depends on the load); its output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)  # pylint: disable=consider-using-with
        _pid, status, usage = os.wait4(proc.pid, 0)  # the usage of this one process, not of all children
        seconds = time.monotonic() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit("%s failed (%d): %s" % (" ".join(argv[3:]), proc.returncode, err.read().decode()))
        return (seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024), out.read().decode()


def fastest(argv, env):
    """(wall, CPU) of the fastest of REPEAT runs, and the largest peak memory of them."""
    runs = [timed(argv, env)[0] for _repeat in range(REPEAT)]
    return min(run[:2] for run in runs), max(run[2] for run in runs)


def main():
    counter = ConnectionCounter()
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as tmp:
        root = pathlib.Path(tmp)
        dirs, calls = build_node(root, counter.port, int(time.time()))
        env = dict(os.environ, PATH="%s:%s" % (dirs["bin"], os.environ.get("PATH", "")),
                   PYTHONPATH="%s:%s" % (ROOT / "build" / "collections", ROOT),
                   STORAGE_REPLICATION_CONFDIR=str(dirs["conf"]), STORAGE_REPLICATION_STATEDIR=str(dirs["state"]),
                   STORAGE_REPLICATION_LOGDIR=str(dirs["log"]))
        cli = [sys.executable, "-m", "ansible_collections.storage.replication.plugins.module_utils.cli"]
        (_wall, _cpu, check_rss_mb), _out = timed(cli + ["run"], env)  # the interval's first run: asks the peers
        peer_check_connections = counter.count
        before = counter.count
        figures, rss = {}, {}
        for name, argv in (("run", ["run", "--output-format", "json"]), ("status", ["status"]), ("list", ["list"])):
            figures[name], rss[name] = fastest(cli + argv, env)
        _seconds, result = timed(cli + ["run", "--output-format", "json"], env)
        ran = len(json.loads(result)["jobs"])
        connections = counter.count - before
        stub_calls = calls.read_text().splitlines() if calls.exists() else []
        metrics = (root / "metrics" / "sr.prom").read_text()
    rows = [("run, %d jobs, none due" % JOBS, figures["run"]), ("status, %d jobs" % JOBS, figures["status"]),
            ("list, %d jobs" % JOBS, figures["list"])]
    print("%-28s %10s %10s %8s" % ("command (new process each)", "seconds", "CPU s", "<= %.1f s" % LIMIT_S))
    for label, (seconds, cpu) in rows:
        print("%-28s %10.3f %10.3f %8s" % (label, seconds, cpu, "yes" if seconds <= LIMIT_S else "no (wall)"))
    rss_mb = max(rss["run"], check_rss_mb)
    print("runner peak resident memory: %.1f MB (target <= %d MB): %.1f MB in an idle run, %.1f MB in the "
          "interval's first run (the peer generation check); status %.1f MB"
          % (rss_mb, LIMIT_RSS_MB, rss["run"], check_rss_mb, rss["status"]))
    load = os.getloadavg()[0]
    # On a machine busier than its CPUs, a wall time mostly measures the wait for a CPU; the CPU time is what the
    # command costs, and what a quiet node's wall time comes close to.
    oversubscribed = load > os.cpu_count()
    verdict = "; oversubscribed: judged by CPU s" if oversubscribed else ""
    print("load average while measuring: %.1f (%d CPUs)%s" % (load, os.cpu_count(), verdict))
    print("jobs run: %d; ZFS/ssh commands issued by the measured runs: %d; SSH connections: %d "
          "(the interval's first run made %d: its peer generation check)" % (ran, len(stub_calls), connections, peer_check_connections))
    print("metrics file: %d job series per metric" % metrics.count("storage_replication_job_enabled{"))
    out = ROOT / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_runner.json").write_text(json.dumps({
        "idle_run_s_%d_jobs" % JOBS: round(figures["run"][0], 3), "status_s_%d_jobs" % JOBS: round(figures["status"][0], 3),
        "list_s_%d_jobs" % JOBS: round(figures["list"][0], 3), "idle_run_cpu_s_%d_jobs" % JOBS: round(figures["run"][1], 3),
        "status_cpu_s_%d_jobs" % JOBS: round(figures["status"][1], 3), "list_cpu_s_%d_jobs" % JOBS: round(figures["list"][1], 3),
        "runner_rss_mb_%d_jobs" % JOBS: round(rss_mb, 1), "idle_run_rss_mb_%d_jobs" % JOBS: round(rss["run"], 1),
        "runner_bench_load_average": round(load, 1), "idle_run_zfs_ssh_commands": len(stub_calls),
        "idle_run_ssh_connections": connections}, indent=2, sort_keys=True) + "\n")
    # `list` has no target of its own: it is shown, not judged
    fast = all(wall <= LIMIT_S or (oversubscribed and cpu <= LIMIT_S) for _l, (wall, cpu) in rows[:2])
    healthy = ran == 0 and not stub_calls and connections == 0 and fast and rss_mb <= LIMIT_RSS_MB
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
