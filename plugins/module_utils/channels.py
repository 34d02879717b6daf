# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The control connections of a runner pass, shared by its jobs (issue 19).

A job used to open its own SSH connection to its target, and the target its own `serve` session process for it: on
the lab about half of a small job's fixed cost (README, "Measured").  A pass now keeps the connections it opened:
a job borrows an idle one to its target, or opens a new one when all of them are lent (so there are at most as
many as jobs run at once, max_parallel), and gives it back when it ends; the pass closes them all when it ends,
however it ends.

One session can serve jobs one after another: every request names its job, guest, generation and source and is
judged on its own, and the target's receiver keeps nothing of one request for the next (serve.answer empties its
log and forgets the configuration and the storages it read; a receive's lock lasts as long as the receive).  A
connection whose state is unknown is never lent again: one on which a call failed without a whole answer (the
link, a timeout, a session that ended, ControlChannel.broken), and one whose job ended with an exception.  A
connection that sat idle may have lost its session meanwhile (the target's process was killed, or the node
restarted): checked when it is lent (ControlChannel.reusable), and should the job's first request still find it
gone, that request goes again once on a new connection (Lent).  A target that a job found unreachable (a connect
that failed, a call that lost the link) is not tried again in the same pass: its later jobs fail at once as waiting
for their target, as they would have after their own connect timeout.

The runner's peer check (cluster.catch_up, before any job) hands its connections to the pool (``adopt``), so a run
opens one connection to a target for both, `run <id>` included.  A migration and a plan open their own
(replicate.Context.channel).
"""

from __future__ import annotations

import contextlib
import threading
import time

from ansible_collections.storage.replication.plugins.module_utils.transport import (
    NODE_KEY, ControlChannel, TransportError, unreachable_message)


class ChannelPool:
    """``with ChannelPool() as pool``: control connections by target, lent to one job at a time (``borrow``).
    ``opened`` counts the connections opened per target node (the run's result reports it)."""

    def __init__(self, connect=ControlChannel, clock=time.monotonic):
        self.connect = connect
        self.clock = clock
        self.opened = {}
        # where -> when a job of this pass found it unreachable (a connect, or a call that lost the link): the
        # pass's later jobs to it fail at once as waiting for their target, instead of each waiting out its own
        # connect timeout (200 jobs to a dead node, 4 at a time: 500 s)
        self._unreachable = {}
        self._lock = threading.Lock()
        self._idle = {}  # (node name, address, port, host key, key) -> [ControlChannel] not lent now
        self._open = set()  # every connection opened and not closed yet, lent or idle
        self._closed = False

    @contextlib.contextmanager
    def borrow(self, node_name, address, host_key, key=NODE_KEY, port=22):
        """The control connection to a node for one job (Lent, as ControlChannel's ``call``/``receive_inline``),
        given back when the block ends well; closed when it ends with an exception (its state is unknown)."""
        where = (node_name, address, port, host_key, key)
        lent = Lent(self, where, *self._take(where))
        try:
            yield lent
        except BaseException as exc:
            if isinstance(exc, TransportError) and exc.unreachable:
                self._found_unreachable(where)
            self.discard(lent.channel)
            raise
        self._give_back(where, lent.channel)

    def _take(self, where):
        """(channel, reused): an idle connection that is still usable, else a new one."""
        while True:
            with self._lock:
                idle = self._idle.get(where)
                channel = idle.pop() if idle else None
            if channel is None:
                return self.open(where), False
            if channel.reusable():
                return channel, True
            self.discard(channel)

    def open(self, where):
        """A new connection to ``where`` (connected outside the lock: a key exchange must not hold up other jobs)."""
        node_name, address, port, host_key, key = where
        with self._lock:
            failed_at = self._unreachable.get(where)
        if failed_at is not None:
            raise TransportError(unreachable_message(
                node_name, address, "an earlier job of this pass could not reach it %d s ago, so this one did not "
                "try" % (self.clock() - failed_at)), True)
        channel = self.connect(node_name, address, host_key, key=key, port=port)
        try:
            channel.connect()
        except TransportError as exc:
            if exc.unreachable:
                self._found_unreachable(where)
            raise
        with self._lock:
            self.opened[node_name] = self.opened.get(node_name, 0) + 1
            self._open.add(channel)
        return channel

    def adopt(self, channel):
        """Keep a connection opened elsewhere in this run (the peer check's, cluster.catch_up) for the jobs: idle,
        counted as opened, if it is still in step with its peer; else, or once the pool is closed, closed."""
        where = (channel.node_name, channel.address, channel.port, channel.host_key, channel.key)
        with self._lock:
            if not self._closed and channel.reusable():
                self.opened[channel.node_name] = self.opened.get(channel.node_name, 0) + 1
                self._open.add(channel)
                self._idle.setdefault(where, []).append(channel)
                return
        _close(channel)

    def _found_unreachable(self, where):
        with self._lock:
            self._unreachable.setdefault(where, self.clock())

    def _give_back(self, where, channel):
        """Idle again, if it is still usable and the pass goes on (after ``close``, a give-back closes it)."""
        with self._lock:
            if not self._closed and channel.reusable():
                self._idle.setdefault(where, []).append(channel)
                return
        self.discard(channel)

    def discard(self, channel):
        """Close a connection for good (it is lent to no one, or its borrower lets go of it)."""
        with self._lock:
            self._open.discard(channel)
        _close(channel)

    def close(self):
        """Close every connection, idle or lent (the end of the pass); later give-backs close theirs."""
        with self._lock:
            self._closed = True
            channels, self._open, self._idle = list(self._open), set(), {}
        for channel in channels:
            _close(channel)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Lent:
    """A pooled connection as one job holds it.  A connection that sat idle may have lost its session without this
    node seeing it yet: if the job's first request finds the session gone before any answer (ControlChannel.ended),
    it is sent once more, on a new connection.  Sending it again is safe: a session that ended without answering
    either never read the request, or was cut within it, and every receiver operation is one a cut run leaves for
    the next run to repeat (a job's first request is its prepare)."""

    def __init__(self, pool, where, channel, reused):
        self.pool = pool
        self.where = where
        self.channel = channel
        self.reused = reused

    def call(self, operation, request, timeout=600):
        return self._first_or_plain(lambda channel: channel.call(operation, request, timeout))

    def receive_inline(self, arguments, data, timeout=600):
        return self._first_or_plain(lambda channel: channel.receive_inline(arguments, data, timeout))

    def receive_chunked(self, arguments, chunks, timeout=600):
        self.reused = False  # never sent twice: its chunks are read as they go (and it is never a job's first request)
        return self.channel.receive_chunked(arguments, chunks, timeout)

    def _first_or_plain(self, work):
        reused, self.reused = self.reused, False
        try:
            return work(self.channel)
        except Exception:  # pylint: disable=broad-exception-caught
            if not (reused and self.channel.ended):
                raise
        self.pool.discard(self.channel)
        self.channel = self.pool.open(self.where)
        return work(self.channel)


def _close(channel):
    try:
        channel.close()
    except Exception:  # pylint: disable=broad-exception-caught
        pass  # a connection that is already gone closes with an error: nothing is left to release
