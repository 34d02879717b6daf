# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Receives left running on a target by a run that died mid-stream.

When the link to the source goes down during a transfer, the source's run ends (its SSH keep-alives time out), but
the target's `zfs recv` does not notice: its connection never closed.  It keeps the dataset busy and, once the link
is back and the source's last packets arrive, it even moves its saved receive state on, so that a resume token read
before it ended no longer matches (OpenZFS then refuses the resumed stream).  The source holds the guest's lock for a
whole run, so a receive by this engine's receiver into one of a job's datasets that is running when the next run of
that job starts can only be such a leftover: the receiver ends it, and its session unless that finishes by itself,
before it reads any token.  Receives started by anything else are never touched, nor
are those of another node sharing this kernel (the lab's nodes share one PID namespace: not their network one).
"""

from __future__ import annotations

import os
import signal
import time

PROC = "/proc"
GRACE_SECONDS = 30.0
SESSION_GRACE_SECONDS = 5.0
POLL_SECONDS = 0.2


class StillRunning(Exception):
    """A leftover receive survived SIGTERM and SIGKILL (stuck in the kernel)."""


def leftover_receives(datasets, proc_root=PROC):
    """{pid: (dataset, session pid)} of the `zfs recv` processes a receiver session of this node runs into one of
    datasets."""
    wanted = set(datasets)
    found = {}
    for entry in os.listdir(proc_root):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        argv = _cmdline(proc_root, entry)
        if not (len(argv) >= 3 and os.path.basename(argv[0]) == "zfs" and argv[1] in ("recv", "receive")
                and argv[-1] in wanted):
            continue
        session = parent_of(int(entry), proc_root)
        if is_receiver_session(session, proc_root) and same_node(int(entry), proc_root) and alive(int(entry), proc_root):
            found[int(entry)] = (argv[-1], session)
    return found


def parent_of(pid, proc_root=PROC):
    """The parent's pid (0 if the process is gone)."""
    stat = _read(proc_root, str(pid), "stat")
    # The command name in parentheses may contain spaces: the fields after its closing one are fixed.
    return int(stat.rpartition(")")[2].split()[1]) if stat else 0


def is_receiver_session(pid, proc_root=PROC):
    """Whether pid is this engine's receiver (`storage-replication serve [--peer <node>]`)."""
    argv = _cmdline(proc_root, str(pid))
    return argv[-1:] == ["serve"] or argv[-3:-1] == ["serve", "--peer"]


def same_node(pid, proc_root=PROC):
    """Whether pid lives in this process's network and mount namespaces (unreadable: not ours to judge)."""
    try:
        return all(os.readlink(os.path.join(proc_root, str(pid), "ns", ns)) ==
                   os.readlink(os.path.join(proc_root, "self", "ns", ns)) for ns in ("net", "mnt"))
    except OSError:
        return False


def end(pid, proc_root=PROC, grace=GRACE_SECONDS):
    """SIGTERM, then SIGKILL after grace seconds; returns once pid is gone.  StillRunning if it outlives both."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_gone(pid, grace, proc_root):
            return
    raise StillRunning("process %d ignores SIGKILL (blocked in the kernel)" % pid)


def wait_gone(pid, timeout, proc_root=PROC):
    deadline = time.monotonic() + timeout
    while alive(pid, proc_root):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def alive(pid, proc_root=PROC):
    """Running (a zombie has ended: only its parent has not collected it yet)."""
    stat = _read(proc_root, str(pid), "stat")
    return bool(stat) and stat.rpartition(")")[2].split()[0] != "Z"


def _cmdline(proc_root, pid):
    text = _read(proc_root, pid, "cmdline")
    return text.rstrip("\0").split("\0") if text else []


def _read(proc_root, pid, name):
    try:
        with open(os.path.join(proc_root, pid, name), "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except OSError:  # the process ended meanwhile, or is not ours to read
        return ""
