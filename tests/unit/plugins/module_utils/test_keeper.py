# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The connection keeper's edge cases (keeper.py, kept.py, ControlChannel's use of them), over a real Unix socket with
a scripted peer: the session processes of the peer are threads on socket pairs.  The keeper against real nodes
(sshd, serve, kill -9, a cut link) is tests/integration/test_keeper_lab.py."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time

import pytest

from ansible_collections.storage.replication.plugins.module_utils import keeper as keepermod
from ansible_collections.storage.replication.plugins.module_utils import kept
from ansible_collections.storage.replication.plugins.module_utils import transport as transportmod
from ansible_collections.storage.replication.plugins.module_utils.protocol import stream_chunks
from ansible_collections.storage.replication.plugins.module_utils.transport import ControlChannel, TransportError, ssh_argv

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJiK4nz/cnY3cyAUYjpq4W13HzgqcR6J+KIvhTohaTcD"


class ScriptedChannel:
    """A paramiko session channel whose far end is a thread answering each request line with one JSON line (what it
    was asked, and which session answered); the request `die` ends the session without an answer, `twice` answers
    twice (a peer out of step)."""

    opened = 0
    stuck = False  # the link is down: a write waits until the connection is closed, then EOFError (as paramiko's)

    def __init__(self, control=None):
        self.control = control
        ScriptedChannel.opened += 1
        self.number = ScriptedChannel.opened
        self.near, far = socket.socketpair()
        self.closed = False
        threading.Thread(target=self._serve, args=(far,), daemon=True).start()

    @staticmethod
    def _serve(far):
        lines = far.makefile("rb")
        for line in lines:
            message = json.loads(line)
            payload = lines.read(message["request"].get("bytes", 0)) if message["request"].get("bytes") else b""
            if message["operation"] == "die":
                break
            reply = {"ok": True, "operation": message["operation"], "payload": len(payload)}
            far.sendall((json.dumps(reply) + "\n").encode() * (2 if message["operation"] == "twice" else 1))
        far.close()

    def exec_command(self, command):
        assert command == "session"

    def fileno(self):
        return self.near.fileno()

    def settimeout(self, timeout):
        self.near.settimeout(timeout)

    def recv(self, size):
        data = self.near.recv(size)
        self.closed = self.closed or not data
        return data

    def sendall(self, data):
        while ScriptedChannel.stuck:
            if self.control.client is None:
                raise EOFError()
            time.sleep(0.02)
        self.near.sendall(data)

    def recv_ready(self):
        return bool(select.select([self.near], [], [], 0)[0])

    @property
    def eof_received(self):
        return self.closed

    def exit_status_ready(self):
        return self.closed

    @staticmethod
    def recv_stderr_ready():
        return False

    def close(self):
        self.closed = True
        self.near.close()


class ScriptedControl:
    """What the keeper uses of a ControlChannel: connect, the transport, a liveness probe, close."""

    connects = []
    refuse = None  # a TransportError the next connects raise

    def __init__(self, node_name, address, host_key, key=None, port=22, keeper="unset"):
        assert keeper is None, "the keeper's own connections never ask a keeper"
        self.node_name, self.address, self.host_key, self.key, self.port = node_name, address, host_key, key, port
        self.timeout = 10
        self.client = None
        self.alive = True

    def connect(self):
        if ScriptedControl.refuse is not None:
            raise ScriptedControl.refuse
        ScriptedControl.connects.append(self)
        self.client = self
        return self

    def get_transport(self):
        return self

    def is_active(self):
        return self.client is not None

    def open_session(self, timeout):
        del timeout
        return ScriptedChannel(self)

    def link_alive(self):
        return self.alive

    def close(self):
        self.client = None


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture(name="keeper")
def keeper_fixture(tmp_path, monkeypatch):
    ScriptedControl.connects, ScriptedControl.refuse = [], None
    clock = Clock()
    path = str(tmp_path / "run" / "keeper.sock")
    server = keepermod.Keeper(path, connect=ScriptedControl, clock=clock, uid=os.getuid(), masters=False).listen()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    monkeypatch.setattr(ControlChannel, "connect_direct", lambda self: pytest.fail("connected on its own"))
    server.clock_ = clock
    yield server
    server.stop()
    thread.join(10)
    assert not os.path.exists(path), "the keeper removes its socket when it stops"


def channel(keeper, **fields):
    values = {"node_name": "node2", "address": "10.0.0.2", "host_key": HOST_KEY, "keeper": keeper.path}
    values.update(fields)
    return ControlChannel(**values)


def on_its_own(monkeypatch):
    """The channels that connect on their own from now on (ControlChannel.connect_direct only records them)."""
    direct = []

    def connect_direct(self):
        direct.append(self)
    monkeypatch.setattr(ControlChannel, "connect_direct", connect_direct)
    return direct


def settle(keeper, idle=None, connections=None, deadline=5.0):
    """Wait until the keeper holds ``idle`` idle sessions, ``connections`` connections (what a run let go of is handled
    by the keeper's thread, after the run goes on)."""
    wanted = {name: value for name, value in (("idle_sessions", idle), ("connections", connections)) if value is not None}

    def reached():
        status = keeper.status()
        return all(status[name] == value for name, value in wanted.items())
    for _attempt in range(int(deadline / 0.01)):
        if reached():
            return
        threading.Event().wait(0.01)
    assert reached(), (keeper.status(), wanted)


def test_frames_split_anywhere_and_the_release():
    frames = keepermod.FrameReader()
    stream = kept.FRAME_HEADER.pack(5) + b"hello" + kept.FRAME_HEADER.pack(2) + b"ab" + kept.RELEASE
    got = []
    for byte in range(len(stream)):
        got += list(frames.feed(stream[byte:byte + 1]))
    assert got == [b"hello", b"ab", None] and frames.empty()
    with pytest.raises(ValueError):
        list(keepermod.FrameReader().feed(kept.FRAME_HEADER.pack(kept.FRAME_MAX + 1)))


def test_a_released_session_is_lent_again_and_answers_in_step(keeper):
    with channel(keeper) as first:
        assert first.call("prepare", {})["operation"] == "prepare"
        assert first.receive_inline(["job=1"], b"x" * (3 * kept.FRAME_MAX + 7))["payload"] == 3 * kept.FRAME_MAX + 7
        assert not first.kept_reused
    settle(keeper, 1)
    with channel(keeper) as second:
        assert second.kept_reused and second.reusable()
        assert second.call("finalize", {})["operation"] == "finalize"
    settle(keeper, 1)
    assert ScriptedChannel.opened >= 1 and len(ScriptedControl.connects) == 1
    assert keeper.status()["reused"] == 1


def test_a_session_not_released_in_step_is_closed_never_lent_again(keeper):
    broken = channel(keeper).connect()
    broken.call("prepare", {})
    broken.broken = True  # a call cut mid-way: where the peer stands is unknown
    broken.close()
    gone = channel(keeper).connect()
    gone.session[0].sock.close()  # a run killed: no release either
    settle(keeper, 0)
    with channel(keeper) as fresh:
        assert not fresh.kept_reused and fresh.call("prepare", {})["ok"]


def test_a_session_with_an_answer_nobody_asked_for_is_not_released(keeper):
    with channel(keeper) as first:
        assert first.call("twice", {})["ok"]
        for _attempt in range(500):
            if first.session[0].recv_ready():
                break
            threading.Event().wait(0.01)
        assert not first.reusable()
    settle(keeper, 0)
    with channel(keeper) as second:
        assert not second.kept_reused, "the session out of step was closed, not lent again"


def test_a_kept_session_that_ended_while_idle_is_replaced_for_the_first_request(keeper):
    with channel(keeper) as first:
        first.call("prepare", {})
    settle(keeper, 1)
    with channel(keeper) as second:
        assert second.kept_reused
        before = ScriptedChannel.opened
        with pytest.raises(Exception):
            second.call("die", {})  # the borrowed session ends without an answer (as one that died while idle)
        assert ScriptedChannel.opened == before + 1, "the first request went once more, on a new session"
    opened = ScriptedChannel.opened
    with channel(keeper) as third:
        # the keeper lends nothing it sees ended; a new session answers
        assert third.call("prepare", {})["ok"] and ScriptedChannel.opened == opened + 1


def test_nothing_older_than_max_age_or_idle_too_long_is_kept(keeper):
    with channel(keeper) as first:
        first.call("prepare", {})
    settle(keeper, 1)
    keeper.clock_.now += keepermod.IDLE_SECONDS + 1
    keeper.reap()
    assert keeper.status() == {"connections": 0, "idle_sessions": 0, "lent": 1, "reused": 0}
    with channel(keeper) as second:
        second.call("prepare", {})
    keeper.clock_.now += keepermod.MAX_AGE_SECONDS + 1
    with channel(keeper) as third:
        assert not third.kept_reused
    assert len(ScriptedControl.connects) == 3, "a connection older than MAX_AGE_SECONDS is not used for new sessions"


def test_a_changed_host_key_gets_a_connection_of_its_own(keeper):
    with channel(keeper) as first:
        first.call("prepare", {})
    with channel(keeper, host_key=HOST_KEY.replace("AAAAI", "AAAAJ")) as other:
        assert not other.kept_reused
    assert [c.host_key for c in ScriptedControl.connects] == [HOST_KEY, HOST_KEY.replace("AAAAI", "AAAAJ")]


def test_the_keeper_reports_a_peer_it_cannot_reach_as_a_run_would(keeper):
    ScriptedControl.refuse = TransportError("target node 'node2' (10.0.0.2) is unreachable: refused", True)
    with pytest.raises(TransportError) as caught:
        channel(keeper).connect()
    assert caught.value.unreachable and "unreachable: refused" in str(caught.value)


def test_a_cut_link_under_a_request_ends_the_call_as_unreachable(keeper, monkeypatch):
    monkeypatch.setattr(keepermod, "LIVENESS_SECONDS", 0)
    with channel(keeper) as first:
        first.call("prepare", {})
    ScriptedControl.connects[0].alive = False
    cut = channel(keeper).connect()
    with pytest.raises(TransportError) as caught:
        cut.call("die", {})  # no answer ever: the keeper probes the link, finds it down
    assert caught.value.unreachable and "link went down" in str(caught.value) and cut.broken
    cut.close()
    settle(keeper, connections=0)


def test_a_stream_whose_link_goes_down_under_the_keeper_ends_the_run_as_unreachable(keeper, monkeypatch):
    """The keeper's write of a stream to a link gone down would wait for ever: its watch probes the link, cuts the
    connection, and the run's stream ends as unreachable."""
    monkeypatch.setattr(transportmod, "LIVENESS_SECONDS", 0.2)
    with channel(keeper) as first:
        first.call("prepare", {})
    control = ScriptedControl.connects[0]
    control.alive = False
    monkeypatch.setattr(ScriptedChannel, "stuck", True)
    run = channel(keeper).connect()
    started = time.monotonic()
    with pytest.raises(TransportError) as caught:
        run.receive_chunked(["job=100-0"], stream_chunks(b"x" * (4 << 20)), timeout=30)
    assert caught.value.unreachable and run.broken and time.monotonic() - started < 5, caught.value
    assert control.client is None, "the keeper closed the connection its write waited on"
    run.close()
    settle(keeper, connections=0)


def test_more_runs_at_once_than_sessions_connect_on_their_own(keeper, monkeypatch):
    monkeypatch.setattr(keepermod, "MAX_SESSIONS", 1)
    held = channel(keeper).connect()
    direct = on_its_own(monkeypatch)
    channel(keeper).connect()
    assert len(direct) == 1
    held.close()


def test_garbage_and_strangers_are_turned_away(keeper):
    for hello in (b"\x00\xff\n", b'{"node": "node2"}\n', json.dumps(
            {"node": "node2", "address": "a", "port": "22", "host_key": HOST_KEY, "key": "k"}).encode() + b"\n"):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(keeper.path)
            sock.sendall(hello)
            answer = json.loads(sock.makefile("rb").readline())
        assert not answer["ok"] and answer["kind"] == "keeper" and "not a hello" in answer["error"], hello
    keeper.uid = os.getuid() + 1
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(keeper.path)
        answer = json.loads(sock.makefile("rb").readline())
    assert answer == {"ok": False, "kind": "keeper", "error": "only root may use the connection keeper"}
    assert ScriptedControl.connects == []


def test_no_keeper_or_a_stale_socket_means_connecting_on_its_own(tmp_path, monkeypatch):
    direct = on_its_own(monkeypatch)
    missing = ControlChannel("node2", "10.0.0.2", HOST_KEY, keeper=str(tmp_path / "none.sock"))
    missing.connect()
    stale_path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(stale_path)
    stale.close()  # a socket file nobody listens on (a keeper killed with -9)
    ControlChannel("node2", "10.0.0.2", HOST_KEY, keeper=stale_path).connect()
    assert direct == [missing, direct[1]] and len(direct) == 2


def test_a_second_keeper_does_not_take_over_a_live_socket(keeper):
    with pytest.raises(keepermod.KeeperError, match="already listens"):
        keepermod.Keeper(keeper.path, connect=ScriptedControl).listen()
    assert oct(os.stat(os.path.dirname(keeper.path)).st_mode & 0o777) == "0o700"
    assert oct(os.stat(keeper.path).st_mode & 0o777) == "0o600"


def test_a_master_is_named_by_all_a_connect_checks_and_a_stream_joins_it():
    where = ("node2", "10.0.0.2", 22, HOST_KEY, "/root/.ssh/id_ed25519")
    path = kept.master_path(kept.KEEPER_SOCKET, where)
    assert path.startswith("/run/storage-replication/ssh-") and path == kept.master_path(kept.KEEPER_SOCKET, where)
    for index, other in enumerate(("node3", "10.0.0.3", 2222, HOST_KEY.replace("AAAAI", "AAAAJ"), "/root/other")):
        changed = list(where)
        changed[index] = other
        assert kept.master_path(kept.KEEPER_SOCKET, tuple(changed)) != path, "a changed %s is another master" % index
    argv = ssh_argv("node2", "10.0.0.2", "/known", ["receive", "job=1"], control=path)
    destination = argv.index("root@10.0.0.2")
    assert argv[destination - 6:destination - 2] == ["-o", "ControlMaster=no", "-o", "ControlPath=%s" % path]
    assert argv[destination:] == ["root@10.0.0.2", "--", "receive", "job=1"]
    assert not any(word.startswith("Control") for word in ssh_argv("node2", "10.0.0.2", "/known", ["receive"]))


def test_a_master_is_started_only_beside_a_kept_connection_and_once(keeper, monkeypatch):
    started = []
    monkeypatch.setattr(keeper, "_start_master", lambda where: started.append(where) or "/run/m")
    where = ("node2", "10.0.0.2", 22, HOST_KEY, "/root/.ssh/id_ed25519")
    assert not kept.want_master(keeper.path, where), "the keeper's masters are off in this fixture"
    keeper.masters = True
    assert not kept.want_master(keeper.path, where) and started == [], "no kept connection to node2 yet"
    with channel(keeper, key="/root/.ssh/id_ed25519") as first:
        first.call("prepare", {})
    assert kept.want_master(keeper.path, where) and kept.want_master(keeper.path, where)
    assert started == [where], "one master per connection"
    assert not kept.want_master(str(keeper.path) + ".none", where), "no keeper: nothing"
