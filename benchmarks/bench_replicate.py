# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Replication speed on the lab: the engine against the raw `zfs send | ssh | zfs recv` pipeline.

Brings up its own lab `srbench` ($SR_LAB_NAME if set; 2 nodes, 4G pools), fills a volume with 1 GiB of random data,
then measures, on the same nodes and data:
  raw       zfs send -R vol@s | ssh node2 zfs recv   (OpenSSH defaults, as an operator would type it)
  engine    a full run of job 900-0 (everything: prepare, snapshot, stream, finalize)
  delta     an incremental run after 10 MiB were overwritten: bytes vs `zfs send -i` of the same change
  idle      incremental runs with nothing changed, in a fresh process and again in the same process: the fixed
            cost of a run (the engine's run_job, which opens its own control connection)
  single    the same through the runner, as `storage-replication run <id>` does it, twice in one process a second
            apart: the runner first asks its peers for their generation (a safety check) and the job then goes
            over that connection; the job's own seconds and the whole run's
  mid       incrementals of 2-16 MiB with the keeper, in the control connection's session (in chunks) and over
            OpenSSH (the keeper's master), side by side: where the session's limit (SESSION_STREAM_MAX) belongs
  idle and single are measured twice: with node1's connection keeper running (`storage-replication keep`, as the
  role installs it: runs borrow its connection and session, kept from the run before), and without it (each run
  connects on its own)
  command   `storage-replication run <id>` as the command an operator or the timer starts (its process start and
            imports included), with the keeper, with and without the preloaded engine (`storage-replication
            preload` on both nodes, as the role installs it)
Prints a table and writes build/bench/bench_replicate.json.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "build" / "collections"), str(ROOT), str(ROOT / "tests" / "integration")]

import cluster_setup as cs  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.storage.replication.plugins.module_utils import config as configmod  # noqa: E402
from lab import Lab  # noqa: E402

LAB_NAME = os.environ.get("SR_LAB_NAME", "srbench")  # a lab of its own beside other runs
VOLUME = "vm-900-disk-0"
JOB = "900-0"
SIZE_MIB = 1024
DELTA_MIB = 10
OUT = ROOT / "build" / "bench" / "bench_replicate.json"


def raw_trust(lab, cfg):
    """An unrestricted key from node1 to node2 for the raw pipeline (the engine's key may only run `serve`)."""
    lab.exec("node1", ["sh", "-c", "test -f /root/.ssh/bench_raw || ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/bench_raw"])
    public = lab.exec("node1", ["cat", "/root/.ssh/bench_raw.pub"]).stdout
    lab.exec("node2", ["sh", "-c", "cat >> /root/.ssh/authorized_keys"], input=public)
    known_hosts = lab.private_path("node1", "/var/lib/storage-replication") / "bench_known_hosts"
    known_hosts.write_text("node2 %s\n" % cfg.nodes["node2"].host_key)


def raw_pipeline(lab, snap):
    """zfs send | ssh | zfs recv from node1 to node2 (OpenSSH defaults); returns (bytes, seconds)."""
    target = "rpool/bench-raw"
    cs.destroy(lab, "node2", target)
    ssh = ["ssh", "-i", "/root/.ssh/bench_raw", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", "UserKnownHostsFile=/var/lib/storage-replication/bench_known_hosts", "-o", "HostKeyAlias=node2",
           "root@%s" % lab.address("node2"), "--", "zfs", "recv", target]
    started = time.monotonic()
    send = subprocess.Popen(lab.exec_argv("node1", ["zfs", "send", "-R", "%s@%s" % (cs.dataset(VOLUME), snap)]),
                            stdout=subprocess.PIPE)
    recv = subprocess.run(lab.exec_argv("node1", ssh), stdin=send.stdout, capture_output=True, check=False)
    send.stdout.close()
    send.wait()
    seconds = time.monotonic() - started
    if send.returncode or recv.returncode:
        raise SystemExit("raw pipeline failed: %s" % recv.stderr.decode())
    cs.destroy(lab, "node2", target)
    return stream_bytes(lab, None, snap), seconds


def stream_bytes(lab, base, snap):
    """Bytes of `zfs send -R snap` (base None) or `zfs send -i base snap` on node1."""
    argv = ["zfs", "send"] + (["-i", "%s@%s" % (cs.dataset(VOLUME), base)] if base else ["-R"])
    send = subprocess.Popen(lab.exec_argv("node1", argv + ["%s@%s" % (cs.dataset(VOLUME), snap)]),
                            stdout=subprocess.PIPE)
    size = 0
    for block in iter(lambda: send.stdout.read(1 << 20), b""):
        size += len(block)
    send.wait()
    return size


RUN_TWICE = """
import json
import os
from ansible_collections.storage.replication.plugins.module_utils import config, replicate
print(json.dumps([replicate.run_job(config.load(), %r) for _ in range(2)]))
""" % JOB


def run(lab):
    """One run in a fresh process (what the CLI does for a single due job); returns (result, stream seconds)."""
    return checked(cs.run_job(lab, "node1", JOB, timeout=900))


RUN_SINGLE = """
import json, time
from ansible_collections.storage.replication.plugins.module_utils import runner, settings
paths = settings.Paths()
timings = []
for _ in range(2):
    time.sleep(1)
    began = time.monotonic()
    result = runner.run(paths, settings.load_settings(paths.settings_file), %r)
    job = result["jobs"][0]
    assert job["ok"], job["error"]
    timings.append({"job_s": job["seconds"], "run_s": round(time.monotonic() - began, 3), "start": job["start"]})
print(json.dumps(timings))
""" % JOB


# Mid-sized incrementals through the session's chunks and over OpenSSH (the keeper's master), side by side: each size
# twice, the two paths in turn.  transport.SESSION_STREAM_MAX is what the run reads to choose; -1 sends even an
# empty stream over OpenSSH.
MID_SIZED_MIB = (2, 4, 8, 12, 16)
MID_SIZED = """
import json, subprocess
from ansible_collections.storage.replication.plugins.module_utils import config, replicate, transport
session_max = transport.SESSION_STREAM_MAX
figures = []
for mib in %r:
    for path, most in (("session", session_max), ("openssh", -1), ("openssh", -1), ("session", session_max)):
        transport.SESSION_STREAM_MAX = most
        subprocess.run(["dd", "if=/dev/urandom", "of=/%s/data.bin", "bs=1M", "count=%%d" %% mib, "seek=300",
                        "conv=notrunc", "status=none"], check=True)
        result = replicate.run_job(config.load(), %r)
        assert result["ok"], result["error"]
        volume = result["volumes"][0]
        figures.append({"mib": mib, "path": path, "bytes": volume["bytes"], "stream_s": volume["seconds"],
                        "run_s": result["duration"], "start": result["start"]})
print(json.dumps(figures))
"""


def mid_sized(lab):
    """{mib: {path: (mean stream seconds, mean run seconds)}} of MID_SIZED, the last replica checked."""
    script = MID_SIZED % (MID_SIZED_MIB, cs.dataset(VOLUME), JOB)
    out = lab.exec("node1", ["env", "PYTHONPATH=" + cs.PYTHONPATH, str(cs.PYTHON), "-c", script], timeout=900)
    runs = json.loads(out.stdout.strip().splitlines()[-1])
    last = "__replicate_%s_%d__" % (JOB, runs[-1]["start"])
    assert cs.tree_checksum(lab, "node2", VOLUME, last) == cs.tree_checksum(lab, "node1", VOLUME, last)
    figures = {}
    for mib in MID_SIZED_MIB:
        for path in ("session", "openssh"):
            mine = [r for r in runs if r["mib"] == mib and r["path"] == path]
            figures.setdefault(mib, {})[path] = (sum(r["stream_s"] for r in mine) / len(mine),
                                                 sum(r["run_s"] for r in mine) / len(mine))
    return figures


def run_single_twice(lab):
    """Two `run <id>` through the runner in one process; the second's timings (warm)."""
    out = lab.exec("node1", ["env", "PYTHONPATH=" + cs.PYTHONPATH, str(cs.PYTHON), "-c", RUN_SINGLE], timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])[-1]


def run_twice(lab):
    """Two runs in one process: the second is warm (imports done), like the runner's later jobs in one tick."""
    out = lab.exec("node1", ["env", "PYTHONPATH=" + cs.PYTHONPATH, str(cs.PYTHON), "-c", RUN_TWICE], timeout=900)
    return [checked(result) for result in json.loads(out.stdout.strip().splitlines()[-1])]


def start_keeper(lab):
    """node1's connection keeper, and one run through it so that it holds a session (as the previous tick left it)."""
    keeper = subprocess.Popen(lab.exec_argv("node1", [cs.LAUNCHER, "keep"]), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    if "keeping connections" not in keeper.stdout.readline():
        raise SystemExit("the connection keeper did not start")
    run(lab)
    return keeper


def start_preloads(lab):
    """`storage-replication preload` on both nodes, as the role runs it."""
    preloads = []
    for node in ("node1", "node2"):
        preload = subprocess.Popen(lab.exec_argv(node, [cs.LAUNCHER, "preload"]), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        if "preloaded at" not in preload.stdout.readline():
            raise SystemExit("the preload did not start on %s" % node)
        preloads.append(preload)
    return preloads


def command_seconds(lab, times=5):
    """The median wall seconds of `storage-replication run <id>` started as a command in node1 (nothing to send).
    Each starts a second after the last: two runs of a job within one second wait for the next (pvesr's rule)."""
    script = ('sleep 1.1; s=$(date +%%s.%%N); %s run --id %s >/dev/null; e=$(date +%%s.%%N); echo "$s $e"'
              % (cs.LAUNCHER, JOB))
    seconds = []
    for _time in range(times):
        began, ended = (float(word) for word in lab.exec("node1", ["sh", "-c", script]).stdout.split())
        seconds.append(ended - began)
    return sorted(seconds)[len(seconds) // 2]


def idle_figures(lab):
    """(cold, warm, single) runs with nothing changed, each replica checked against the source."""
    (idle_cold, _cold_seconds), (idle, _warm_seconds) = run_twice(lab)
    assert cs.tree_checksum(lab, "node2", VOLUME, "__replicate_%s_%d__" % (JOB, idle["start"])) == \
        cs.tree_checksum(lab, "node1", VOLUME, "__replicate_%s_%d__" % (JOB, idle["start"]))
    single = run_single_twice(lab)
    assert cs.tree_checksum(lab, "node2", VOLUME, "__replicate_%s_%d__" % (JOB, single["start"])) == \
        cs.tree_checksum(lab, "node1", VOLUME, "__replicate_%s_%d__" % (JOB, single["start"]))
    return idle_cold, idle, single


def checked(result):
    if not result["ok"]:
        raise SystemExit("engine run failed: %s" % result["error"])
    return result, sum(v["seconds"] for v in result["volumes"])


def main():
    lab = Lab(LAB_NAME)
    lab.up(nodes=2, pool_size="4G")
    try:
        cfg = cs.setup(lab)
        cs.destroy(lab, "node1", cs.dataset(VOLUME))
        cs.destroy(lab, "node2", cs.dataset(VOLUME))
        cs.create_volume(lab, "node1", VOLUME)
        cs.write_random(lab, "node1", VOLUME, "data.bin", SIZE_MIB)
        cfg.guests[900] = configmod.Guest(id=900, type="vm", node="node1", volumes=["%s:%s" % (cs.STORAGE, VOLUME)])
        cfg.jobs[JOB] = configmod.Job(id=JOB, target="node2")
        cfg.generation += 1
        cs.write_config(lab, cfg)

        cs.zfs(lab, "node1", "snapshot", "%s@raw" % cs.dataset(VOLUME))
        raw_trust(lab, cfg)
        # read the data once so that neither contender gets a colder cache than the other
        subprocess.run(lab.exec_argv("node1", ["zfs", "send", "%s@raw" % cs.dataset(VOLUME)]),
                       stdout=subprocess.DEVNULL, check=True)
        raw_bytes, raw_seconds = raw_pipeline(lab, "raw")
        cs.zfs(lab, "node1", "destroy", "%s@raw" % cs.dataset(VOLUME))

        full, full_stream = run(lab)
        base = "__replicate_%s_%d__" % (JOB, full["start"])

        cs.write_random(lab, "node1", VOLUME, "data.bin", DELTA_MIB, offset_mb=100)
        cs.zfs(lab, "node1", "snapshot", "%s@probe" % cs.dataset(VOLUME))
        expected = stream_bytes(lab, base, "probe")
        cs.zfs(lab, "node1", "destroy", "%s@probe" % cs.dataset(VOLUME))
        delta, _seconds = run(lab)
        direct_cold, direct, direct_single = idle_figures(lab)
        keeper = start_keeper(lab)
        try:
            idle_cold, idle, single = idle_figures(lab)
            mids = mid_sized(lab)
            command = command_seconds(lab)
            preloads = start_preloads(lab)
            try:
                command_preloaded = command_seconds(lab)
            finally:
                for preload in preloads:
                    preload.terminate()
                    preload.wait(timeout=60)
            last = cs.snapshots(lab, "node1", VOLUME)
            snap = [s for s in last if s.startswith("__replicate_")][-1]
            assert cs.tree_checksum(lab, "node2", VOLUME, snap) == cs.tree_checksum(lab, "node1", VOLUME, snap)
        finally:
            keeper.terminate()
            keeper.wait(timeout=60)
    finally:
        lab.down()

    raw_rate = raw_bytes / raw_seconds
    full_rate = full["bytes"] / full["duration"]
    figures = {
        "full_sync_ratio": round(full_rate / raw_rate, 3),
        "incremental_bytes_ratio": round(delta["bytes"] / expected, 4),
        # the fixed cost of a run = a whole incremental run with nothing changed (control connection, prepare,
        # snapshot, the stream (inline in the session), finalize); warm = a later run in the same process (the
        # runner's later jobs in one tick), cold = a fresh process (imports etc.); with the keeper, the connection
        # and the target's session process are borrowed from it; direct = without a keeper
        "incremental_overhead_s": idle["duration"],
        "incremental_overhead_cold_s": idle_cold["duration"],
        "incremental_overhead_direct_s": direct["duration"],
        "incremental_overhead_direct_cold_s": direct_cold["duration"],
        # through the runner: the job over the peer check's connection, and the whole run with that check
        "run_single_job_s": single["job_s"], "run_single_s": single["run_s"],
        "run_single_direct_job_s": direct_single["job_s"], "run_single_direct_s": direct_single["run_s"],
        # `run <id>` as a command, with the keeper: its process start and imports, then the run; preloaded: forked
        # from `storage-replication preload`
        "command_run_single_s": round(command, 3), "command_run_single_preloaded_s": round(command_preloaded, 3),
        "raw_pipeline_bytes": raw_bytes, "raw_pipeline_s": round(raw_seconds, 3),
        "raw_pipeline_MBps": round(raw_rate / 1e6, 1),
        "engine_full_bytes": full["bytes"], "engine_full_run_s": full["duration"],
        "engine_full_stream_s": round(full_stream, 3), "engine_full_MBps": round(full_rate / 1e6, 1),
        "engine_incremental_bytes": delta["bytes"], "zfs_send_i_bytes": expected,
        "engine_incremental_run_s": delta["duration"],
    }
    rows = [
        ("full sync 1 GiB: raw zfs send | ssh | zfs recv", "%.1f MB/s (%.1f s)" % (raw_rate / 1e6, raw_seconds)),
        ("full sync 1 GiB: engine run", "%.1f MB/s (%.1f s)" % (full_rate / 1e6, full["duration"])),
        ("full_sync_ratio (target >= 0.9)", "%.3f" % figures["full_sync_ratio"]),
        ("incremental 10 MiB: engine bytes / zfs send -i", "%d / %d" % (delta["bytes"], expected)),
        ("incremental_bytes_ratio (target within 5%)", "%.4f" % figures["incremental_bytes_ratio"]),
        ("incremental_overhead_s (target <= 0.2 s), keeper, warm process", "%.3f" % figures["incremental_overhead_s"]),
        ("  same, fresh process", "%.3f" % figures["incremental_overhead_cold_s"]),
        ("  without the keeper, warm process", "%.3f" % figures["incremental_overhead_direct_s"]),
        ("  without the keeper, fresh process (imports paramiko etc.)",
         "%.3f" % figures["incremental_overhead_direct_cold_s"]),
        ("run <id> through the runner, keeper, warm: the job", "%.3f" % figures["run_single_job_s"]),
        ("  the whole run (its peer check first)", "%.3f" % figures["run_single_s"]),
        ("  without the keeper: the job / the whole run",
         "%.3f / %.3f" % (figures["run_single_direct_job_s"], figures["run_single_direct_s"])),
        ("`storage-replication run <id>` as a command, keeper: started on its own / preloaded",
         "%.3f / %.3f" % (figures["command_run_single_s"], figures["command_run_single_preloaded_s"])),
    ]
    for mib, paths in mids.items():
        rows.append(("incremental %d MiB, keeper: in the session / over OpenSSH (stream s; run s)" % mib,
                     "%.3f / %.3f; %.3f / %.3f" % (paths["session"][0], paths["openssh"][0], paths["session"][1],
                                                   paths["openssh"][1])))
        figures["mid_%dmib_session_stream_s" % mib] = round(paths["session"][0], 3)
        figures["mid_%dmib_openssh_stream_s" % mib] = round(paths["openssh"][0], 3)
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print("%-*s  %s" % (width, name, value))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
