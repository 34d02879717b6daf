# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The test workload: a `service` guest whose process appends a record to a file in its dataset every 100 ms.

    recorder.py start  --dir /rpool/data/svc-100 --pidfile /var/lib/storage-replication/workload-100.pid
    recorder.py stop   --pidfile ...      (SIGTERM; the last record is complete and fsynced)
    recorder.py status --pidfile ...      (exit 0 running, 3 stopped: the LSB convention)
    recorder.py read   --dir ...          (the valid records as JSON lines)

A record is one line "<seq> <node> <epoch seconds> <checksum>\n", the checksum being the first 16 hex digits of the
sha256 of the rest of the line; each record is fsynced before the next, so what a crash loses is exactly the
records after the last snapshot. `start` continues the sequence after the last valid record of the file and
drops a torn last line (a crash or a snapshot taken in the middle of a write). The node name comes from the host
name, so the records say where the guest ran. The pid file lives outside the dataset (it must not be replicated).
"""

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

RECORDS = "records.log"
STOPPED = 3


def checksum(body):
    return hashlib.sha256(body.encode("ascii")).hexdigest()[:16]


def parse(line):
    """(seq, node, time) of a valid record line, else None."""
    fields = line.rstrip("\n").split(" ")
    if not line.endswith("\n") or len(fields) != 4 or checksum(" ".join(fields[:3])) != fields[3]:
        return None
    return int(fields[0]), fields[1], float(fields[2])


def valid_prefix(path):
    """The valid records of the file and the byte length they occupy (what follows is torn)."""
    records, length = [], 0
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                record = parse(raw.decode("ascii", "replace"))
                if record is None:
                    break
                records.append(record)
                length += len(raw)
    except FileNotFoundError:
        pass
    return records, length


def running_pid(pidfile):
    try:
        with open(pidfile, encoding="ascii") as handle:
            pid = int(handle.read().strip() or "0")
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            cmdline = handle.read()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid if b"recorder.py" in cmdline and b"\0run\0" in cmdline else None


def run(args):
    """The service itself (started detached by `start`)."""
    path = os.path.join(args.dir, RECORDS)
    records, length = valid_prefix(path)
    seq = records[-1][0] if records else 0
    node = socket.gethostname()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    with open(path, "ab") as handle:
        handle.truncate(length)
        tmp = args.pidfile + ".tmp"
        with open(tmp, "w", encoding="ascii") as pid_handle:
            pid_handle.write("%d\n" % os.getpid())
        os.replace(tmp, args.pidfile)
        deadline = time.monotonic()
        while not stopping:
            seq += 1
            body = "%d %s %.3f" % (seq, node, time.time())
            handle.write(("%s %s\n" % (body, checksum(body))).encode("ascii"))
            handle.flush()
            os.fsync(handle.fileno())
            deadline += args.interval
            time.sleep(max(0.0, deadline - time.monotonic()))
    os.unlink(args.pidfile)
    return 0


def wait_for(condition, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def start(args):
    if running_pid(args.pidfile):
        print("already running")
        return 0
    os.makedirs(os.path.dirname(args.pidfile), exist_ok=True)
    argv = [sys.executable, os.path.abspath(__file__), "run", "--dir", args.dir, "--pidfile", args.pidfile,
            "--interval", str(args.interval)]
    with open(os.devnull, "r+b") as null:
        subprocess.Popen(argv, stdin=null, stdout=null, stderr=null, start_new_session=True, close_fds=True)  # pylint: disable=consider-using-with
    if not wait_for(lambda: running_pid(args.pidfile), 10):
        print("the recorder did not start (no pid file %s)" % args.pidfile, file=sys.stderr)
        return 1
    print("started, pid %d" % running_pid(args.pidfile))
    return 0


def stop(args):
    pid = running_pid(args.pidfile)
    if not pid:
        print("not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: running_pid(args.pidfile) is None, 10):
        print("the recorder (pid %d) did not stop" % pid, file=sys.stderr)
        return 1
    print("stopped")
    return 0


def status(args):
    pid = running_pid(args.pidfile)
    print("running, pid %d" % pid if pid else "stopped")
    return 0 if pid else STOPPED


def read(args):
    records, _length = valid_prefix(os.path.join(args.dir, RECORDS))
    for seq, node, stamp in records:
        print(json.dumps({"seq": seq, "node": node, "time": stamp}))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("command", choices=["start", "stop", "status", "read", "run"])
    parser.add_argument("--dir", help="the guest's dataset mount point")
    parser.add_argument("--pidfile", help="where the running recorder keeps its pid (outside the dataset)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between records (default 0.1)")
    args = parser.parse_args(argv)
    return {"start": start, "stop": stop, "status": status, "read": read, "run": run}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
