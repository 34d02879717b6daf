# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A ZFS stream into `zfs recv` on the receiving side: the bytes copied (in the kernel where it can: splice) and
counted, a receive that hears nothing for ``stall_seconds`` ended by itself, and a failed receive explained with its
cause and what happens next.

Why a receive ends itself: when the link to the source goes down mid-stream, the source's run ends (its SSH
keep-alives time out) but nothing tells this side; its connection never closes, so without a deadline `zfs recv`
would keep the dataset busy, and once the link is back the source's last packets could even move its saved receive
state on after the next run read it (OpenZFS then refuses the resumed stream).  So the copy gives up after
``stall_seconds`` without a byte and closes `zfs recv`'s input: the receive fails as any cut stream does (OpenZFS
keeps what arrived for a resume, zfs-fuse's partial first copy is removed by the receiver), and the process ends.

While it runs, a receive holds the volume's receive lock (``receive_lock``).  The source holds the guest's lock for
a whole run, so when the next run's prepare finds that lock held, it is a receive such a cut left behind: prepare
waits for it (at most ``stall_seconds`` and RECEIVE_END_GRACE), so that what it reads no longer changes under it.
"""

from __future__ import annotations

import os
import select
import subprocess

from ansible_collections.storage.replication.plugins.module_utils.files import (
    StreamStalled, copy_stream, file_lock, is_locked, write_all)
from ansible_collections.storage.replication.plugins.module_utils.protocol import (
    CHUNK_HEADER, STREAM_CHUNK, Refused)
from ansible_collections.storage.replication.plugins.module_utils.state import lock_path

# What a receive needs after its stream stopped to end: `zfs recv` failing, the partial dataset removed (zfs-fuse
# answers "dataset is busy" for a moment after a receive: zfs.BUSY_RETRY_SECONDS), the reply written.
RECEIVE_END_GRACE = 30


def feed_zfs_recv(argv, stream, node, volume, stall_seconds=None):
    """Run ``argv`` (a `zfs recv`) fed from ``stream`` (a binary file, a session's ChunkedStream, or the whole stream
    as bytes when it came inline in a session); returns the bytes fed.  Refused ("receive-failed") with a precise
    cause on failure, ("stream-stalled") when the stream brought nothing for ``stall_seconds``, and
    ("stream-framing") when a session's chunks could not be read."""
    env = dict(os.environ, LC_ALL="C")
    # pylint: disable-next=ansible-bad-function
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    stalled = framing = None
    try:
        if isinstance(stream, bytes):
            total = write_all(proc.stdin.fileno(), stream)
        elif isinstance(stream, ChunkedStream):
            total = stream.copy_to(proc.stdin.fileno())
        else:
            total = copy_stream(stream.fileno(), proc.stdin.fileno(), stall_seconds)
    except BrokenPipeError:
        total = None
    except StreamStalled as exc:
        total, stalled = None, exc
    except Refused as exc:
        total, framing = None, exc
    _out, err = proc.communicate()  # closes zfs recv's stdin: end of stream (a cut one, if it stalled)
    if framing is not None:
        raise framing
    if stalled is not None:
        raise Refused("the stream into volume '%s' on node '%s' brought nothing for %d s after %d bytes: the receive "
                      "ended itself - the source's run was cut off (its link went down or its process ended); the "
                      "replica is as it was before, and the next run resumes or sends again"
                      % (volume, node, stall_seconds, stalled.copied), "stream-stalled")
    if proc.returncode != 0 or total is None:
        raise Refused(explain_recv_failure(node, volume, argv, proc.returncode, err.decode("utf-8", "replace")),
                      "receive-failed")
    return total


def receive_lock(statedir, volume, timeout):
    """The lock a receive into ``volume`` holds while it runs; ``timeout`` seconds to wait for one still running."""
    return file_lock(receive_lock_path(statedir, volume), timeout, "volume '%s' (a receive into it)" % volume,
                     "a receive left by an interrupted run does not end - if it persists, end it (its pid is in the "
                     "lock file) or reboot this node; the next run retries")


def receive_running(statedir, volume):
    """Whether a receive into ``volume`` runs now (its lock is held), found without writing anything (a plan)."""
    return is_locked(receive_lock_path(statedir, volume))


def receive_lock_path(statedir, volume):
    return lock_path(statedir, "receive-" + volume)


def leftover_wait(stall_seconds):
    """How long prepare waits for a receive left by a cut run: it ends itself within its stall deadline."""
    return stall_seconds + RECEIVE_END_GRACE


def explain_recv_failure(node, volume, argv, rc, stderr):
    """What went wrong in a receive, for the source's run log: a full pool says so, anything else names the command
    and ZFS's last word; either way the previous replica is intact."""
    if stderr.strip():
        detail = stderr.strip().splitlines()[-1]
    elif rc == 0:
        # seen once, under heavy load on zfs-fuse: the stream's end was never read, so the receive is not trusted
        detail = "it ended with exit code 0 before it had read the whole stream"
    else:
        detail = "killed by signal %d" % -rc if rc < 0 else "exit code %s" % rc
    if "out of space" in stderr or "No space left" in stderr:
        return ("the pool on node '%s' is full: cannot receive volume '%s' (%s) - free space on that pool or enlarge "
                "it; the previous replica is intact and the next run resumes from it" % (node, volume, detail))
    return ("'%s' failed on node '%s' for volume '%s': %s - the previous replica is intact; the next run retries"
            % (" ".join(argv), node, volume, detail))


class SessionInput:
    """A session's input read from its descriptor with a buffer of its own, so that a stream's chunks can wait for
    data with a deadline (a source whose link went down sends nothing and never closes)."""

    def __init__(self, fd):
        self.fd = fd
        self.buffer = bytearray()
        self.ended = False

    def _fill(self, timeout=None):
        """Read what the descriptor has (waiting at most ``timeout`` s: StreamStalled)."""
        if timeout is not None and not select.select([self.fd], [], [], timeout)[0]:
            raise StreamStalled(0, timeout)
        data = os.read(self.fd, 256 * 1024)
        self.ended = not data
        self.buffer += data

    def readline(self, limit):
        while self.buffer.find(b"\n", 0, limit) < 0 and len(self.buffer) < limit and not self.ended:
            self._fill()
        end = self.buffer.find(b"\n", 0, limit)
        return self._take(end + 1 if end >= 0 else limit)

    def read(self, size, timeout=None):
        """``size`` bytes, fewer only at the end of the input."""
        while len(self.buffer) < size and not self.ended:
            self._fill(timeout)
        return self._take(size)

    def _take(self, size):
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


class ChunkedStream:
    """A stream that follows a session's `receive` request in chunks (protocol.CHUNK_HEADER).  ``stall_seconds``:
    how long a chunk may keep the receive waiting (only where the input is a SessionInput, i.e. a real session)."""

    def __init__(self, stdin, stall_seconds):
        self.stdin = stdin
        self.stall_seconds = stall_seconds
        self.received = 0
        self.done = False
        self.failure = None  # why the chunks cannot be read on (Refused): the session cannot go on either

    def chunks(self):
        """The stream's bytes, chunk by chunk, to its end; Refused ("stream-framing") when it cannot be read."""
        while not self.done:
            if self.failure is not None:
                raise self.failure
            size, data = self._next_chunk()
            self.done = size == 0
            self.received += size
            if size:
                yield data

    def _next_chunk(self):
        try:
            header = self._read(CHUNK_HEADER.size)
            size = CHUNK_HEADER.unpack(header)[0] if len(header) == CHUNK_HEADER.size else None
            if size is None or size > STREAM_CHUNK:
                raise self._failure("the stream in the session ended after %d bytes without its end, or a chunk said "
                                    "%r bytes (at most %d): refused, session ended"
                                    % (self.received, size, STREAM_CHUNK))
            data = self._read(size) if size else b""
        except StreamStalled:
            raise self._failure("the stream in the session brought nothing for %d s after %d bytes: the receive ended "
                                "itself - the source's run was cut off (its link went down or its process ended); the "
                                "replica is as it was before, and the next run resumes or sends again"
                                % (self.stall_seconds, self.received)) from None
        if len(data) != size:
            raise self._failure("the stream in the session ended after %d bytes within a chunk: refused, session "
                                "ended" % (self.received + len(data)))
        return size, data

    def _failure(self, message):
        """The refusal that ends the stream, and with it the session (every later read raises it again)."""
        self.failure = Refused(message, "stream-framing")
        return self.failure

    def _read(self, size):
        if isinstance(self.stdin, SessionInput):
            return self.stdin.read(size, self.stall_seconds)
        return self.stdin.read(size)

    def copy_to(self, fd):
        """Write every chunk to ``fd`` (a `zfs recv`'s input); returns the bytes.  (Its stall deadline is its own:
        the rest of a stream is read with it after a refusal too.)"""
        for data in self.chunks():
            write_all(fd, data)
        return self.received

    def drain(self):
        """Read what is left of the stream (a receive that was refused, or failed, before its end), so that the
        session's next request is read from where it starts; Refused ("stream-framing") if that cannot be."""
        for _data in self.chunks():
            pass
