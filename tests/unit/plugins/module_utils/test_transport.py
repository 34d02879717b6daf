# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the transport layer: the rate limiter's exactness, ssh argv, failure messages, reply parsing, the
choice between an inline and an OpenSSH data stream (local processes stand in for zfs send and ssh), and when the
control channel is still fit for another job (a fake paramiko session stands in for the peer)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import sys
import time

import pytest

from ansible_collections.storage.replication.plugins.module_utils.protocol import (
    CHUNK_HEADER, SESSION_STREAM_MAX, STREAM_CHUNK, STREAM_END, stream_chunks)
from ansible_collections.storage.replication.plugins.module_utils import transport as transportmod
from ansible_collections.storage.replication.plugins.module_utils.transport import (
    INLINE_STREAM_MAX, PUMP_CHUNK, ControlChannel, RemoteError, TokenBucket, TransportError, explain_ssh_failure, known_hosts_text,
    parse_reply, ssh_argv, stream, unreachable_message)

# stands in for `zfs send`: writes N deterministic bytes
SEND = [sys.executable, "-c", "import sys; n = int(sys.argv[1]); sys.stdout.buffer.write(bytes(i % 251 for i in range(n)))"]
# stands in for ssh + receive: answers with the count and digest of what it got, as the receiver answers
RECEIVE = [sys.executable, "-c", "import hashlib, json, sys; d = sys.stdin.buffer.read(); "
           "print(json.dumps({'ok': True, 'bytes': len(d), 'sha': hashlib.sha256(d).hexdigest()}))"]
NEVER = [sys.executable, "-c", "raise SystemExit('ssh must not run')"]


def expected(size):
    return hashlib.sha256(bytes(i % 251 for i in range(size))).hexdigest()


def inline_receiver(calls):
    def receive(data):
        calls.append(data)
        return {"ok": True, "bytes": len(data), "sha": hashlib.sha256(data).hexdigest()}
    return receive


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.mark.parametrize("rate", [1_000_000, 10_000_000, 123_456_789])
def test_token_bucket_average_and_bursts(rate):
    """30 s of a limited transfer average within 5% of the limit and never exceed 2x in any 1-s window."""
    clock = FakeClock()
    bucket = TokenBucket(rate, clock=clock, sleep=clock.sleep)
    chunk = min(PUMP_CHUNK, int(bucket.burst))
    passed = []  # (time, bytes)
    start = clock()
    while clock() - start < 30:
        bucket.take(chunk)
        passed.append((clock(), chunk))
    elapsed = passed[-1][0] - start
    average = sum(b for _t, b in passed) / elapsed
    assert abs(average - rate) / rate < 0.05
    end, window = 0, 0
    for t0, first in passed:  # every 1-s window starting at a chunk (sliding, two pointers)
        while end < len(passed) and passed[end][0] < t0 + 1.0:
            window += passed[end][1]
            end += 1
        assert window <= 2 * rate
        window -= first


def test_token_bucket_follows_a_changing_limit_within_a_second():
    """A limit that changes with the time (bandwidth windows), the source able to give 20 MB/s: 2 MB/s, then 8 MB/s
    from t=10, unlimited from t=20, 1 MB/s from t=25.  Each stretch averages within 5% of its limit, counted from one
    second after the change (the limit is asked once a second, no more often)."""
    clock = FakeClock()
    start = clock()
    asked = []

    def limit():
        asked.append(clock())
        elapsed = clock() - start
        return 2_000_000 if elapsed < 10 else 8_000_000 if elapsed < 20 else None if elapsed < 25 else 1_000_000

    bucket = TokenBucket(limit, clock=clock, sleep=clock.sleep)
    passed = []  # (time after the chunk, bytes)
    while clock() - start < 35:
        clock.sleep(PUMP_CHUNK / 20_000_000)  # the source's own pace
        bucket.take(PUMP_CHUNK)
        passed.append((clock() - start, PUMP_CHUNK))

    def average(begin, end):
        inside = [(t, b) for t, b in passed if begin < t <= end]
        return sum(b for _t, b in inside) / (inside[-1][0] - begin)

    for (begin, end), rate in {(1, 10): 2e6, (11, 20): 8e6, (21, 25): 20e6, (26, 35): 1e6}.items():
        assert abs(average(begin, end) - rate) / rate < 0.05, (begin, end, average(begin, end))
    gaps = [later - earlier for earlier, later in zip(asked, asked[1:])]
    assert min(gaps) >= 1.0 and max(gaps) < 1.3 and len(asked) <= 36


def test_ssh_argv_pins_host_key_and_never_disables_checking():
    argv = ssh_argv("node2", "10.0.0.2", "/var/lib/storage-replication/known_hosts", ["receive", "job=100-0"])
    assert "StrictHostKeyChecking=yes" in argv and "HostKeyAlias=node2" in argv and "BatchMode=yes" in argv
    assert "UserKnownHostsFile=/var/lib/storage-replication/known_hosts" in argv
    assert not any("StrictHostKeyChecking=no" in a for a in argv)
    assert argv[-4:] == ["root@10.0.0.2", "--", "receive", "job=100-0"]


def test_known_hosts_text_keys_by_node_name():
    assert known_hosts_text([("node1", "ssh-ed25519 AAAA "), ("node2", "")]) == "node1 ssh-ed25519 AAAA\n"


@pytest.mark.parametrize("stderr, expected", [
    ("Host key verification failed.\n", "host key of target node 'node2' does not match"),
    ("root@10.0.0.2: Permission denied (publickey).\n", "refused this node's SSH key"),
    ("ssh: connect to host 10.0.0.2 port 22: Connection refused\n", "is unreachable"),
    ("ssh: connect to host 10.0.0.2 port 22: Connection timed out\n", "check that the node is up"),
    # A link cut mid-stream: the keep-alives go unanswered; the job then waits for its target, without back-off.
    ("Timeout, server 10.0.0.2 not responding.\n", "is unreachable: Timeout, server 10.0.0.2 not responding."),
    ("something else\n", None),
])
def test_ssh_failures_name_cause_and_fix(stderr, expected):
    message = explain_ssh_failure("node2", "10.0.0.2", stderr)
    assert (message is None) if expected is None else (expected in message)


def test_unreachable_message_drops_paramikos_empty_errno():
    message = unreachable_message("node2", "10.0.0.2", "[Errno None] Unable to connect to port 22 on 10.0.0.2")
    assert "is unreachable: Unable to connect to port 22 on 10.0.0.2 - check" in message and "Errno" not in message


def test_parse_reply():
    assert parse_reply("node2", "prepare", b'noise\n{"ok": true, "volumes": {}}\n', b"", 0)["volumes"] == {}
    with pytest.raises(RemoteError, match="guest 100 is owned"):
        parse_reply("node2", "prepare", b'{"ok": false, "error": "guest 100 is owned by node2"}\n', b"", 1)
    with pytest.raises(RemoteError, match=r"gave no valid reply \(exit code 127\): sh: command not found"):
        parse_reply("node2", "prepare", b"", b"sh: command not found\n", 127)


@pytest.mark.parametrize("size", [0, 2292, INLINE_STREAM_MAX])
def test_small_stream_goes_inline_without_ssh(size):
    calls = []
    result = stream(SEND + [str(size)], NEVER, "node2", "10.0.0.2", inline=inline_receiver(calls))
    assert result.inline and len(calls) == 1
    assert result.bytes == size and result.reply["sha"] == expected(size)


@pytest.mark.parametrize("rate", [None, 10 ** 9])
def test_big_stream_goes_through_ssh_whole_and_in_order(rate):
    calls = []
    size = INLINE_STREAM_MAX + 3 * PUMP_CHUNK + 17
    result = stream(SEND + [str(size)], RECEIVE, "node2", "10.0.0.2", rate_bps=rate, inline=inline_receiver(calls))
    assert not result.inline and calls == []
    assert result.bytes == size and result.reply["sha"] == expected(size)


def chunked_receiver(calls):
    """What a receiver's session reads of a stream in chunks: the frames, checked, joined."""
    def receive(chunks):
        frames = list(chunks)
        assert frames[-1] == STREAM_END and all(
            CHUNK_HEADER.unpack(f[:4])[0] == len(f) - 4 <= STREAM_CHUNK for f in frames)
        data = b"".join(f[4:] for f in frames)
        calls.append(len(frames))
        return {"ok": True, "bytes": len(data), "sha": hashlib.sha256(data).hexdigest()}
    return receive


@pytest.mark.parametrize("size", [0, INLINE_STREAM_MAX + 1, 5 * STREAM_CHUNK + 3, SESSION_STREAM_MAX])
def test_a_stream_up_to_the_session_maximum_goes_in_chunks_without_ssh(size):
    calls = []
    result = stream(SEND + [str(size)], NEVER, "node2", "10.0.0.2", inline=inline_receiver([]),
                    chunked=chunked_receiver(calls))
    assert result.inline and calls == [-(-size // STREAM_CHUNK) + 1]
    assert result.bytes == size and result.reply["sha"] == expected(size)


def test_a_bigger_stream_goes_through_ssh_whole_and_in_order():
    calls = []
    size = SESSION_STREAM_MAX + 17
    result = stream(SEND + [str(size)], RECEIVE, "node2", "10.0.0.2", chunked=chunked_receiver(calls))
    assert not result.inline and calls == []
    assert result.bytes == size and result.reply["sha"] == expected(size)


def test_a_stream_in_chunks_keeps_its_rate_limit():
    size, rate = 6 * STREAM_CHUNK, 4 * STREAM_CHUNK  # 1.5 s at the limit, less at most a burst
    started = time.monotonic()
    result = stream(SEND + [str(size)], NEVER, "node2", "10.0.0.2", rate_bps=rate, chunked=chunked_receiver([]))
    assert result.bytes == size and 0.4 <= time.monotonic() - started < 3


# stands in for ssh + receive: the most bytes that came within any 0.25 s
WINDOWED = [sys.executable, "-c", "import json, sys, time\nseen = []\nwhile True:\n"
            "    d = sys.stdin.buffer.read1(65536)\n    if not d: break\n    seen.append((time.monotonic(), len(d)))\n"
            "most = max(sum(n for u, n in seen if t <= u < t + 0.25) for t, _n in seen)\n"
            "print(json.dumps({'ok': True, 'bytes': sum(n for _t, n in seen), 'most': most}))"]


def test_a_limited_stream_too_big_for_the_session_keeps_its_limit_from_its_first_byte():
    """The bytes read ahead to choose the path go out at the limit too, not in one burst."""
    size, rate = SESSION_STREAM_MAX + STREAM_CHUNK, 12 * (1 << 20)
    result = stream(SEND + [str(size)], WINDOWED, "node2", "10.0.0.2", rate_bps=rate, chunked=chunked_receiver([]))
    assert not result.inline and result.bytes == size
    assert result.reply["most"] <= rate * 0.25 + 2 * PUMP_CHUNK + rate / 10, result.reply


def test_failed_send_is_not_received_inline():
    calls = []
    with pytest.raises(TransportError, match=r"failed on this node \(exit code 3\): no such snapshot"):
        stream(["sh", "-c", "printf abc; echo no such snapshot >&2; exit 3"], NEVER, "node2", "10.0.0.2",
               inline=inline_receiver(calls))
    assert calls == []


def test_refused_inline_receive_is_a_remote_error():
    def refuse(data):
        raise RemoteError("node2", "receive", {"ok": False, "error": "pool full (%d bytes)" % len(data)})
    with pytest.raises(RemoteError, match=r"pool full \(10 bytes\)"):
        stream(SEND + ["10"], NEVER, "node2", "10.0.0.2", inline=refuse)


# ---------------------------------------------------------------- the control channel's health (channels.py lends it)

class FakeSession:
    """paramiko's Channel for a `session`: the peer's answers are ``replies`` (bytes); select() sees a readable fd."""

    def __init__(self, replies):
        self.read_fd, self.write_fd = os.pipe()
        os.write(self.write_fd, b"x")
        self.replies = io.BytesIO(replies)
        self.sent = []
        self.closed = self.eof_received = self.ended = False
        self.stderr = [b"a warning on stderr\n"]
        self.stuck = None
        self.timeout = None
        self.client = None

    def fileno(self):
        return self.read_fd

    def exec_command(self, command):
        assert command == "session"

    def makefile(self, mode):
        assert mode == "rb"
        return self.replies

    def recv(self, size):
        """One answer at a time, as a peer sends them (each after its request)."""
        return self.replies.readline(size)

    def makefile_stderr(self, mode):
        return io.BytesIO(b"")

    def settimeout(self, seconds):
        self.timeout = seconds

    def sendall(self, data):
        """``stuck``: "window" - the peer takes nothing (socket.timeout after the channel's timeout, as paramiko);
        "link" - the link is down (paramiko's write waits until its connection is closed, then EOFError)."""
        if self.closed:
            raise OSError("Socket is closed")
        if self.stuck == "window":
            time.sleep(self.timeout)
            raise socket.timeout()
        while self.stuck == "link":
            if not self.client.active:
                raise EOFError()
            time.sleep(0.02)
        self.sent.append(data)

    def exit_status_ready(self):
        return self.ended

    def recv_ready(self):
        return False

    def recv_stderr_ready(self):
        return bool(self.stderr)

    def recv_stderr(self, size):
        return self.stderr.pop(0)[:size]

    def shutdown_write(self):
        pass

    def close(self):
        if not self.closed:
            os.close(self.read_fd)
            os.close(self.write_fd)
        self.closed = True


class FakeClient:
    def __init__(self, session):
        self.session = session
        self.active = True
        self.link_up = True
        session.client = self

    def get_transport(self):
        return self

    def open_session(self, timeout):
        del timeout
        return self.session

    def is_active(self):
        return self.active

    def global_request(self, kind, wait):
        """A keep-alive: answered while the link is up, else never (paramiko then waits for ever)."""
        assert kind == "keepalive@openssh.com" and wait
        deadline = time.monotonic() + 5  # (a test's thread does not outlive it by much)
        while not self.link_up and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self):
        self.active = False


def channel_answering(*replies):
    channel = ControlChannel("node2", "10.0.0.2", "ssh-ed25519 AAAA")
    channel.client = FakeClient(FakeSession(b"".join(replies)))
    return channel


def test_a_refusal_leaves_the_session_in_step_and_reusable():
    channel = channel_answering(b'{"ok": false, "error": "refused", "reason": "owner"}\n', b'{"ok": true}\n')
    with pytest.raises(RemoteError, match="refused"):
        channel.call("prepare", {})
    assert channel.reusable() and channel.call("finalize", {})["ok"]
    assert channel.client.session.stderr == []  # drained: unread, it would fill the channel's window


def test_a_stream_in_chunks_goes_on_the_session_and_leaves_it_in_step():
    channel = channel_answering(b'{"ok": true, "bytes": 300000}\n', b'{"ok": true}\n')
    data = os.urandom(300000)
    assert channel.receive_chunked(["job=100-0"], stream_chunks(data))["bytes"] == 300000
    sent = b"".join(channel.client.session.sent)
    request, _newline, chunks = sent.partition(b"\n")
    assert json.loads(request) == {"operation": "receive", "request": {"arguments": ["job=100-0"], "chunked": True}}
    assert chunks == b"".join(stream_chunks(data))
    assert channel.reusable() and channel.call("finalize", {})["ok"]


def test_a_stream_in_chunks_whose_link_goes_down_ends_as_unreachable(monkeypatch):
    monkeypatch.setattr(transportmod, "LIVENESS_SECONDS", 0.2)
    channel = channel_answering(b'{"ok": true}\n')
    client = channel.client
    client.session.stuck, client.link_up = "link", False
    started = time.monotonic()
    with pytest.raises(TransportError, match="is unreachable: the link went down during 'receive'") as info:
        channel.receive_chunked(["job=100-0"], stream_chunks(b"x" * 5000))
    assert info.value.unreachable and channel.broken and time.monotonic() - started < 3
    assert not client.active, "the watch closed the connection that the write waited on"


def test_a_stream_in_chunks_that_the_peer_stops_taking_times_out(monkeypatch):
    monkeypatch.setattr(transportmod, "LIVENESS_SECONDS", 0.1)
    channel = channel_answering(b'{"ok": true}\n')
    channel.client.session.stuck = "window"  # the link is up: the receiver takes nothing
    with pytest.raises(TransportError, match="connection lost during 'receive'"):
        channel.receive_chunked(["job=100-0"], stream_chunks(b"x" * 5000), timeout=0.5)
    assert channel.broken


def test_an_answer_nobody_asked_for_read_with_the_last_one_makes_the_session_not_reusable():
    """A peer out of step (or hostile) sends a second line with its answer: read in the same chunk, it would be the
    next job's answer on a lent connection; it is seen, and the connection is not lent again."""
    channel = channel_answering(b'{"ok": true}\n{"ok": true, "unasked": 1}\n')
    channel.client.session.recv = channel.client.session.replies.read  # both lines in one read
    assert channel.call("prepare", {}) == {"ok": True}
    assert not channel.reusable()


@pytest.mark.parametrize("reply, ended", [
    (b"", True),  # the session process ended without an answer (killed, say)
    (b'{"ok": true', False),  # half an answer: the link was cut within it
    (b'{"ok": false, "error": "the inline stream ended", "reason": "stream-framing"}\n', False),  # the peer ends it
])
def test_a_call_without_a_whole_answer_breaks_the_connection(reply, ended):
    channel = channel_answering(reply)
    with pytest.raises(RemoteError):
        channel.call("prepare", {})
    assert channel.broken and channel.ended == ended and not channel.reusable()


def test_a_session_the_peer_closed_while_idle_is_not_reusable_and_a_call_on_it_says_it_ended():
    channel = channel_answering(b'{"ok": true}\n')
    channel.call("prepare", {})
    channel.client.session.eof_received = True
    assert not channel.reusable()
    channel.client.session.close()
    with pytest.raises(TransportError, match="connection lost during 'finalize'"):
        channel.call("finalize", {})
    assert channel.broken and channel.ended


def test_an_interrupted_call_breaks_the_connection():
    channel = channel_answering(b'{"ok": true}\n')

    def interrupted(_data):
        raise KeyboardInterrupt
    channel.client.session.sendall = interrupted
    with pytest.raises(KeyboardInterrupt):
        channel.call("prepare", {})
    assert channel.broken and not channel.ended and not channel.reusable()


LEAN_IMPORT = """
import sys
from ansible_collections.storage.replication.plugins.module_utils.transport import ControlChannel, TransportError
channel = ControlChannel("node2", "127.0.0.1", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJiK4nz/cnY3cyAUYjpq4W13HzgqcR6J+KIvhTohaTcD",
                         port=1, timeout=2, keeper=None)
try:
    channel.connect()
except TransportError as exc:
    assert exc.unreachable, exc
loaded = [name for name, module in sys.modules.items() if name.partition(".")[0] == "invoke" and module is not None]
print(loaded, "paramiko" in sys.modules)
"""


def test_a_connect_imports_paramiko_without_invoke():
    """paramiko's `invoke` (for OpenSSH configs' `Match exec`, never read here) stays out of the process: a connect
    (here refused: nothing listens on port 1) leaves no invoke module loaded, and paramiko works without it."""
    import subprocess  # pylint: disable=import-outside-toplevel
    proc = subprocess.run([sys.executable, "-c", LEAN_IMPORT], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "True"]
