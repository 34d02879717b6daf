# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A receive whose stream stops ends itself, and the next run's prepare waits for a receive a cut run left behind.

The streams here are real pipes whose writer stays open without writing (as sshd's end does when the source's link
went down), fed into a real process that reads them as `zfs recv` does.  The lab proves the whole of it with a cut
link (tests/integration/test_link_cut.py).
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from ansible_collections.storage.replication.plugins.module_utils import receiver as receivermod
from ansible_collections.storage.replication.plugins.module_utils.files import LockError, StreamStalled, copy_stream
from ansible_collections.storage.replication.plugins.module_utils.protocol import (
    CHUNK_HEADER, STREAM_CHUNK, Refused, stream_chunks)
from ansible_collections.storage.replication.plugins.module_utils.receive_stream import (
    RECEIVE_END_GRACE, ChunkedStream, SessionInput, feed_zfs_recv, leftover_wait, receive_lock, receive_running)

from test_receiver import ListingZfs, prepare_request, receiver, serve  # noqa: F401  pylint: disable=unused-import

# Reads its whole input, as `zfs recv` does, and fails as it does on a stream cut short.
RECV = [sys.executable, "-c", "import sys; data = sys.stdin.buffer.read(); "
        "sys.stderr.write('cannot receive: incomplete stream (%d bytes)' % len(data)); sys.exit(1)"]
CAT = [sys.executable, "-c", "import sys; sys.stdout.write(str(len(sys.stdin.buffer.read())))"]


def open_pipe(chunks, pause=0.0, close=False):
    """A pipe's read end as a file; a thread writes ``chunks`` (``pause`` s apart) and closes only with ``close``."""
    read_fd, write_fd = os.pipe()

    def write():
        for chunk in chunks:
            os.write(write_fd, chunk)
            time.sleep(pause)
        if close:
            os.close(write_fd)
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return os.fdopen(read_fd, "rb"), write_fd


def test_a_copy_that_hears_nothing_for_its_idle_timeout_stops():
    source, write_fd = open_pipe([b"x" * 100])
    sink = os.open(os.devnull, os.O_WRONLY)
    started = time.monotonic()
    try:
        with pytest.raises(StreamStalled) as info:
            copy_stream(source.fileno(), sink, idle_timeout=0.5)
    finally:
        os.close(sink)
        os.close(write_fd)
        source.close()
    assert info.value.copied == 100 and 0.5 <= time.monotonic() - started < 3


def test_a_receive_whose_stream_stops_ends_itself_and_says_why():
    source, write_fd = open_pipe([b"\0" * 4096])
    started = time.monotonic()
    try:
        with pytest.raises(Refused) as info:
            feed_zfs_recv(RECV, source, "node2", "local-zfs:vm-100-disk-0", stall_seconds=1)
    finally:
        os.close(write_fd)
        source.close()
    assert info.value.reason == "stream-stalled" and 1 <= time.monotonic() - started < 5
    assert str(info.value) == (
        "the stream into volume 'local-zfs:vm-100-disk-0' on node 'node2' brought nothing for 1 s after 4096 bytes: the "
        "receive ended itself - the source's run was cut off (its link went down or its process ended); the replica "
        "is as it was before, and the next run resumes or sends again")


def test_a_slow_stream_that_keeps_coming_is_received_whole():
    source, _write_fd = open_pipe([b"y" * 1000] * 6, pause=0.4, close=True)
    with source:
        assert feed_zfs_recv(CAT, source, "node2", "local-zfs:vm-100-disk-0", stall_seconds=1) == 6000


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "piped"])
def test_a_receive_that_ends_well_before_its_stream_did_is_not_trusted(inline):
    """`zfs recv` exiting 0 without reading the stream's end is a failure (seen once on zfs-fuse under load)."""
    data = b"z" * (1 << 20)  # more than a pipe holds: the writer is still writing when the reader has gone
    source, _write_fd = (None, None) if inline else open_pipe([data], close=True)
    with pytest.raises(Refused) as info:
        feed_zfs_recv(["true"], data if inline else source, "node2", "local-zfs:vm-100-disk-0")
    if source is not None:
        source.close()
    assert info.value.reason == "receive-failed"
    assert str(info.value) == ("'true' failed on node 'node2' for volume 'local-zfs:vm-100-disk-0': it ended with "
                               "exit code 0 before it had read the whole stream - the previous replica is intact; "
                               "the next run retries")


def test_prepare_waits_for_a_receive_a_cut_run_left_behind(receiver):  # noqa: F811
    receiver.zfs = ListingZfs()
    receiver.leftover_wait = 10
    held, release = threading.Event(), threading.Event()

    def leftover():
        with receive_lock(receiver.statedir, "local-zfs:vm-100-disk-0", 0):
            held.set()
            release.wait(10)
    thread = threading.Thread(target=leftover)
    thread.start()
    assert held.wait(5)
    threading.Timer(1.0, release.set).start()
    started = time.monotonic()
    reply = serve(receiver, "prepare", prepare_request())
    thread.join()
    assert reply["ok"] and time.monotonic() - started >= 0.9, reply


def test_a_receive_that_does_not_end_makes_prepare_refuse(receiver):  # noqa: F811
    """(A plan only says so: test_plan.py.)"""
    receiver.zfs = ListingZfs()
    receiver.leftover_wait = 0.3
    with receive_lock(receiver.statedir, "local-zfs:vm-100-disk-0", 0):
        reply = serve(receiver, "prepare", prepare_request())
    assert not reply["ok"] and reply["reason"] == "receive-busy"
    assert reply["error"].startswith("a receive into volume 'local-zfs:vm-100-disk-0' on node 'node2' left by an "
                                     "interrupted run is still running: can't lock file ")
    assert "is held by pid %d" % os.getpid() in reply["error"]


class ResumingZfs(ListingZfs):
    """Enough ZFS for a resumed receive (its stream goes where the first part went)."""

    @staticmethod
    def replica_identity(_dataset):
        return None, "77"

    @staticmethod
    def set_property(_dataset, _prop, _value):
        pass


def test_a_receive_holds_its_volumes_lock_while_the_stream_runs(receiver, monkeypatch):  # noqa: F811
    receiver.zfs = ResumingZfs()
    seen = []

    def feed(argv, stream, node, volume, stall):
        del argv, stream, node
        try:
            with receive_lock(receiver.statedir, volume, 0):
                seen.append("free")
        except LockError:
            seen.append("held")
        seen.append(stall)
        return 42
    monkeypatch.setattr(receivermod, "feed_zfs_recv", feed)
    reply = serve(receiver, "receive job=100-0 guest=100 volume=local-zfs:vm-100-disk-0 "
                            "snapshot=__replicate_100-0_5__ generation=7 source=node1 resume=1", raw=b"")
    assert reply["ok"] and reply["bytes"] == 42 and seen == ["held", 120]


def test_prepare_waits_at_most_the_stall_deadline_and_a_grace():
    assert leftover_wait(120) == 120 + RECEIVE_END_GRACE


def test_whether_a_receive_runs_is_seen_without_writing_anything(tmp_path):
    """A plan asks so: it must not create the lock file, nor write its holder's pid into it."""
    statedir, volume = str(tmp_path), "local-zfs:vm-100-disk-0"
    assert not receive_running(statedir, volume) and list(tmp_path.rglob("*")) == []
    with receive_lock(statedir, volume, 0):
        (path,) = (tmp_path / "lock").iterdir()
        before = (path.read_bytes(), path.stat().st_mtime_ns)
        assert receive_running(statedir, volume)
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert not receive_running(statedir, volume)


# ---------------------------------------------------------------- a stream in chunks, in a session

def session_input(data, pause_after=None):
    """A SessionInput over a real pipe holding ``data`` written in odd pieces (so chunks arrive split anywhere);
    with ``pause_after`` the writer stops after that many bytes and keeps its end open (a link gone down)."""
    read_fd, write_fd = os.pipe()
    shown = data if pause_after is None else data[:pause_after]

    def write():
        view = memoryview(shown)
        while view:
            view = view[os.write(write_fd, view[:7919]):]
        if pause_after is None:
            os.close(write_fd)
    threading.Thread(target=write, daemon=True).start()
    return SessionInput(read_fd), write_fd


def test_a_chunked_stream_is_copied_whole_and_leaves_the_next_request_where_it_starts():
    data = os.urandom(3 * STREAM_CHUNK + 1234)
    stdin, _write_fd = session_input(b"".join(stream_chunks(data)) + b'{"next": 1}\n')
    stream = ChunkedStream(stdin, stall_seconds=5)
    assert feed_zfs_recv(CAT, stream, "node2", "local-zfs:vm-100-disk-0") == len(data)
    stream.drain()  # at its end already: reads nothing more
    assert stream.done and stream.received == len(data)
    assert stdin.readline(1000) == b'{"next": 1}\n' and stdin.readline(1000) == b""


def test_a_chunked_stream_that_stops_ends_the_receive_and_says_why():
    data = b"".join(stream_chunks(b"\0" * 10000))
    stdin, write_fd = session_input(data, pause_after=5000)
    started = time.monotonic()
    try:
        with pytest.raises(Refused) as info:
            feed_zfs_recv(RECV, ChunkedStream(stdin, stall_seconds=1), "node2", "local-zfs:vm-100-disk-0")
    finally:
        os.close(write_fd)
    assert info.value.reason == "stream-framing" and 1 <= time.monotonic() - started < 5
    assert str(info.value).startswith("the stream in the session brought nothing for 1 s after 0 bytes: the "
                                      "receive ended itself")


@pytest.mark.parametrize("data, message", [
    [CHUNK_HEADER.pack(10) + b"x" * 10, "ended after 10 bytes without its end, or a chunk said None bytes"],
    [CHUNK_HEADER.pack(STREAM_CHUNK + 1) + b"x" * 10, "a chunk said %d bytes (at most %d)" % (STREAM_CHUNK + 1,
                                                                                              STREAM_CHUNK)],
    [CHUNK_HEADER.pack(10) + b"x" * 4, "ended after 4 bytes within a chunk"],
    [b"\0\0", "ended after 0 bytes without its end"],
], ids=["no-end", "oversized-chunk", "cut-chunk", "cut-header"])
def test_a_chunked_stream_that_cannot_be_framed_is_refused_and_not_received(data, message):
    stdin, _write_fd = session_input(data)
    stream = ChunkedStream(stdin, stall_seconds=5)
    with pytest.raises(Refused) as info:
        feed_zfs_recv(RECV, stream, "node2", "local-zfs:vm-100-disk-0")
    assert info.value.reason == "stream-framing" and message in str(info.value)
    with pytest.raises(Refused):
        stream.drain()  # the session cannot go on either


def test_a_receive_that_fails_mid_chunked_stream_leaves_the_rest_to_drain():
    data = os.urandom(1 << 20)  # more than a pipe holds: `true` is gone while chunks still come
    stdin, _write_fd = session_input(b"".join(stream_chunks(data)) + b"after\n")
    stream = ChunkedStream(stdin, stall_seconds=5)
    with pytest.raises(Refused) as info:
        feed_zfs_recv(["true"], stream, "node2", "local-zfs:vm-100-disk-0")
    assert info.value.reason == "receive-failed"
    stream.drain()
    assert stream.done and stream.received == len(data) and stdin.readline(100) == b"after\n"
