# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Per-node job state (pvesr's replication-state.json), next_sync and back-off, job order, locks.

The state file has pvesr's shape ``{"<vmid>": {"local/<target>": {...}}}``. Writers hold an flock on
``replication-state.lck``; every write goes to a temporary file that is fsynced and renamed over the old one,
so readers never lock and never see half a file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
import time

from ansible_collections.storage.replication.plugins.module_utils.schedule import DEFAULT_SCHEDULE, parse as parse_schedule

DEFAULT_STATEDIR = "/var/lib/storage-replication"
STATE_FILE = "replication-state.json"
STATE_LOCK_FILE = "replication-state.lck"
LOCK_DIR = "lock"
LOCAL_NODE_FILE = "local-node"

STATE_LOCK_TIMEOUT = 10
GUEST_LOCK_TIMEOUT = 2
MAX_STATE_SIZE = 1024 * 1024

# Back-off after failures, pvesr ReplicationState.pm: 5, 10, 15 minutes, then every 30 minutes.
BACKOFF_STEP = 5 * 60
BACKOFF_STEPS = 3
BACKOFF_MAX = 30 * 60
# pvesr never retries a failed job while its target is offline; we retry at this interval and say so.
TARGET_WAIT_RETRY = 30 * 60

# Job status words shown by status commands and modules.
STATUS_OK = "ok"
STATUS_RUNNING = "running"
STATUS_ERROR = "error"
STATUS_WAITING = "waiting for target"
STATUS_DISABLED = "disabled"
STATUS_REMOVING = "removal pending"

_POLL_MIN = 0.01
_POLL_MAX = 0.2


class LockError(RuntimeError):
    """A lock could not be taken in time; the message names the lock, its holder and what to do."""


class StateError(RuntimeError):
    """The state file cannot be read; the message names the file and what to do."""


# ---------------------------------------------------------------------------------------------------------------
# Files: atomic writes and locks (config.py uses them too)

def fsync_dir(path):
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path, data, mode=0o644):
    """Write ``data`` (str or bytes) to a new file ``path`` and fsync it (no rename: the caller commits)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, data, mode=0o644):
    """Replace ``path`` with ``data`` atomically: temporary file in the same directory, fsync, rename, fsync dir."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".tmp-", dir=directory)
    os.close(fd)
    os.unlink(tmp)
    try:
        write_synced(tmp, data, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def _lock_holder(fd):
    """The pid the current holder wrote into the lock file, or None if unknown."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def file_lock(path, timeout, what, hint="try again later"):
    """Hold an exclusive flock on ``path`` (created if missing) for the ``with`` block.

    ``timeout`` is in seconds; 0 means one non-blocking attempt. The holder writes its pid into the file so that
    the timeout message can name it. Raises LockError naming ``what`` is locked, by whom, and ``hint``.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path, timeout, what, hint)
        os.ftruncate(fd, 0)
        os.pwrite(fd, ("%d\n" % os.getpid()).encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _acquire(fd, path, timeout, what, hint):
    deadline = time.monotonic() + timeout
    pause = _POLL_MIN
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            holder = _lock_holder(fd)
            by = " by pid %d" % holder if holder else ""
            raise LockError("can't lock file '%s' - got timeout after %gs: %s is held%s; %s"
                            % (path, timeout, what, by, hint))
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, _POLL_MAX)


def lock_path(statedir, name):
    return os.path.join(statedir, LOCK_DIR, name + ".lock")


def runner_lock(statedir=DEFAULT_STATEDIR):
    """The node-wide runner lock, non-blocking: a second runner fails at once with a LockError."""
    return file_lock(lock_path(statedir, "runner"), 0, "the replication runner of this node",
                     "another 'storage-replication run' is active; this one exits and the next run picks up due jobs")


def guest_lock(guest, statedir=DEFAULT_STATEDIR, timeout=GUEST_LOCK_TIMEOUT):
    """The per-guest lock held by a job run or a migration of ``guest`` (pvesr: pve-migrate-<vmid>, 2 s)."""
    return file_lock(lock_path(statedir, "guest-%d" % int(guest)), timeout, "guest '%d'" % int(guest),
                     "a replication or migration of this guest is running; the job is retried at the next run")


def read_local_node(statedir=DEFAULT_STATEDIR):
    """This node's name in the cluster: the local-node file, else the short host name (as pvesr)."""
    try:
        with open(os.path.join(statedir, LOCAL_NODE_FILE), encoding="utf-8") as handle:
            name = handle.read().strip()
    except FileNotFoundError:
        name = ""
    return name or socket.gethostname().split(".")[0]
