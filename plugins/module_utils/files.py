# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Files and file descriptors: the bottom layer (imports nothing of ours), used by every other part of the engine.

Durable writes (a file is written, fsynced and renamed into place, and its directory fsynced, so that a reader
sees the old or the new content, never half of either), exclusive locks that name their holder, JSON-object files,
and moving bytes between file descriptors (the sending and the receiving side alike).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import tempfile
import time

SPLICE_CHUNK = 1 << 20
_POLL_MIN = 0.01
_POLL_MAX = 0.2


class LockError(RuntimeError):
    """A lock could not be taken in time; the message names the lock, its holder and what to do."""


class StreamStalled(Exception):
    """No byte arrived for ``seconds`` while a stream was copied; ``copied`` bytes had come before."""

    def __init__(self, copied, seconds):
        super().__init__("no data for %g s after %d bytes" % (seconds, copied))
        self.copied = copied
        self.seconds = seconds


# ---------------------------------------------------------------------------------------------------------------
# Durable writes

def fsync_dir(path):
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced_fd(fd, data, mode):
    """Write ``data`` (str or bytes, or a list or generator of them: written one after another, never joined: the
    metrics of ten thousand jobs are megabytes, made block by block as they are written) to ``fd``, set ``mode`` and
    fsync."""
    for chunk in [data] if isinstance(data, (str, bytes)) else data:
        write_all(fd, chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
    os.fchmod(fd, mode)
    os.fsync(fd)


def write_synced(path, data, mode=0o644):
    """Write ``data`` to a new file ``path`` and fsync it (no rename: the caller commits)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        _write_synced_fd(fd, data, mode)
    finally:
        os.close(fd)


def atomic_write(path, data, mode=0o644):
    """Replace ``path`` with ``data`` (str, bytes or a list or generator of them) atomically: temporary file in the
    same directory, fsync, rename, fsync dir."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".tmp-", dir=directory)
    try:
        try:
            _write_synced_fd(fd, data, mode)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def read_json_object(path):
    """The JSON object in ``path``; None if there is no such file; ValueError (saying why) if it holds anything else."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


# ---------------------------------------------------------------------------------------------------------------
# Locks

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


def is_locked(path):
    """Whether something holds the lock ``path`` (file_lock) now, found without creating or writing anything."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return True
    finally:
        os.close(fd)  # and with it the shared lock, if it was taken


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


# ---------------------------------------------------------------------------------------------------------------
# Moving bytes

def copy_stream(source_fd, sink_fd, idle_timeout=None):
    """Copy until EOF, in the kernel (splice) where Python and the descriptors allow it; returns bytes.

    With ``idle_timeout`` (seconds), StreamStalled when nothing arrives for that long: a source that is gone without
    closing its end (a peer whose link went down) does not keep the copy waiting for ever."""
    total = 0
    poller = None
    if idle_timeout is not None:
        poller = select.poll()
        poller.register(source_fd, select.POLLIN)

    def wait_for_data():
        if poller is not None and not poller.poll(idle_timeout * 1000):
            raise StreamStalled(total, idle_timeout)
    splice = getattr(os, "splice", None)
    while splice is not None:
        wait_for_data()
        try:
            moved = splice(source_fd, sink_fd, SPLICE_CHUNK)
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            break  # EINVAL: neither end is a pipe; fall back to read/write
        if moved == 0:
            return total
        total += moved
    while True:
        wait_for_data()
        data = os.read(source_fd, SPLICE_CHUNK)
        if not data:
            return total
        total += write_all(sink_fd, data)


def write_all(fd, data):
    """Write all of data (os.write may write less); returns its length."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return len(data)
