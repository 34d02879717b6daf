# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The connection keeper (`storage-replication keep`, the storage-replication-keeper service).

A run is a short process (the timer starts one a minute), so on its own it opens an SSH connection to each target and
the target starts a `serve` process for it, every time: on the lab 0.14 s of the 0.33 s a run costs with nothing to
send, and seconds on slow hardware.  The keeper is a long-running process that holds those connections and session
processes between runs and lends them (kept.py is the run's end of its socket):

- a connection is keyed by everything a run's own connect would check: node name, address, port, the host key the
  cluster configuration records, and the key file.  A configuration that changes any of them gets a new connection,
  verified as a run's own (ControlChannel, RejectPolicy on the recorded host key);
- a session is lent to one run at a time; it comes back only when the run released it after whole answers to all
  of its requests and the peer has nothing pending on it.  A run that went away otherwise (an error, kill -9, a
  garbled frame) leaves a session in an unknown state: closed, as a cut connection would be;
- nothing is lent that is older than MAX_AGE_SECONDS, and nothing idle stays longer than IDLE_SECONDS: an engine
  upgraded on the peer, or this node's key removed there, takes effect within MAX_AGE_SECONDS;
- while a request waits for its answer, the link is probed every LIVENESS_SECONDS as a run's own connection does; a
  link that went down ends the run's call as unreachable (a LINK_DOWN line) and the connection with all its sessions;
- only root may use the socket (it is root's SSH key that the keeper holds open): the directory is 0700, the socket
  0600, and a client whose peer credentials are not root's is turned away;
- beside a connection to a peer that gets data streams over OpenSSH, an OpenSSH control master to it (same pinned
  host key, key and cipher as a stream's own connection), started when a stream there had to connect on its own
  (a `want: master` hello): later streams bigger than the session takes inline start their `ssh` over it
  (transport.ssh_argv's ``control``) instead of a key exchange of their own.  It retires with its connection, by
  `ssh -O stop`: its socket goes at once (later streams connect on their own), the streams on it finish.

The keeper keeps nothing of a request: every request is judged by the peer on its own, as in a runner pass where one
session serves many jobs (channels.py).  Without a keeper, runs connect on their own, as before.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import threading
import time

from ansible_collections.storage.replication.plugins.module_utils import kept, localsocket
from ansible_collections.storage.replication.plugins.module_utils.protocol import SESSION
from ansible_collections.storage.replication.plugins.module_utils.transport import (
    LIVENESS_SECONDS, PUMP_CHUNK, ControlChannel, SendWatch, TransportError, ssh_argv, write_known_hosts)

IDLE_SECONDS = 120
MAX_AGE_SECONDS = 300
# How often idle sessions and connections are looked at (and closed when idle too long or too old).
REAP_SECONDS = 5
HELLO_SECONDS = 5
# A send to the peer that makes no progress this long (its window stays full) ends the session.
SEND_SECONDS = 60
# Sessions lent at once on one connection; more runs at once connect on their own.  sshd's MaxSessions is 10 by
# default, and a connection also carries the idle sessions.
MAX_SESSIONS = 8
HELLO_FIELDS = {"node": str, "address": str, "port": int, "host_key": str, "key": str, "want": str}
WANTS = ("session", "master")


class KeeperError(Exception):
    """The keeper cannot start (its socket)."""


class Peer:
    """One kept connection and its sessions not lent now."""

    def __init__(self, control, opened, master=None):
        self.control = control
        self.opened = opened
        self.master = master  # the control socket's path, or None
        self.idle = []  # [(paramiko channel, when it was opened, since when it is idle)]
        self.lent = 0
        self.down = False
        self.probing = threading.Lock()  # paramiko answers one global request at a time

    def link_alive(self):
        with self.probing:
            return self.control.client is not None and self.control.link_alive()

    def cut(self):
        """The link is down: close the connection (a write blocked on it ends) and retire it when given back."""
        self.down = True
        self.control.close()

    def usable(self, now, max_age):
        transport = self.control.client.get_transport() if self.control.client is not None else None
        return (not self.down and transport is not None and transport.is_active()
                and now - self.opened < max_age)


class Keeper:
    """``Keeper(path).serve()``: lend kept sessions to the runs of this node until stopped (``stop``)."""

    def __init__(self, path=kept.KEEPER_SOCKET, connect=ControlChannel, clock=time.monotonic,
                 idle_seconds=IDLE_SECONDS, max_age=MAX_AGE_SECONDS, uid=0, masters=True):
        self.path = path
        self.masters = masters
        self.connect = connect
        self.clock = clock
        self.idle_seconds = idle_seconds
        self.max_age = max_age
        self.uid = uid
        self.peers = {}  # where -> Peer
        self.lock = threading.Lock()
        self.connecting = {}  # where -> lock: one connect at a time to one peer
        self.stopped = threading.Event()
        self.listener = None
        self.inode = None
        self.lent_total = self.reused_total = 0

    # ------------------------------------------------------------ the socket

    def listen(self):
        already = ("a connection keeper already listens at %s - stop it first (systemctl stop "
                   "storage-replication-keeper)" % self.path)
        if localsocket.answers(self.path):
            raise KeeperError(already)
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        for name in os.listdir(directory):
            if name.startswith(kept.MASTER_PREFIX) and not name.endswith(".hosts"):
                _stop_master(os.path.join(directory, name), wait=True)  # a dead keeper's: no new stream on it
        try:
            self.listener, self.inode = localsocket.bind_private(self.path, already)
        except RuntimeError as exc:
            raise KeeperError(str(exc)) from None
        self.listener.settimeout(1.0)
        return self

    def serve(self):
        """Accept runs until ``stop``; each gets a thread of its own."""
        if self.listener is None:
            self.listen()
        reaper = threading.Thread(target=self._reap_loop, daemon=True)
        reaper.start()
        try:
            while not self.stopped.is_set():
                try:
                    conn, _address = self.listener.accept()
                except socket.timeout:
                    continue
                threading.Thread(target=self.client, args=(conn,), daemon=True).start()
        finally:
            localsocket.unbind(self.listener, self.path, self.inode)
            self.close_all()

    def stop(self):
        self.stopped.set()

    # ------------------------------------------------------------ one run

    def client(self, conn):
        """One run's use of the keeper: hello, a session lent, the relay, the session back (or closed)."""
        try:
            if localsocket.peer_uid(conn) != self.uid:
                _answer(conn, {"ok": False, "kind": "keeper", "error": "only root may use the connection keeper"})
                return
            where, want = self._hello(conn)
            if where is None:
                return
            if want == "master":
                _answer(conn, {"ok": self.want_master(where)})
                return
            try:
                peer, channel, reused = self.lend(where)
            except TransportError as exc:
                _answer(conn, {"ok": False, "kind": "connect", "error": str(exc), "unreachable": exc.unreachable})
                return
            except KeeperError as exc:
                _answer(conn, {"ok": False, "kind": "keeper", "error": str(exc)})
                return
            released = False
            try:
                _answer(conn, {"ok": True, "reused": reused})
                released = self.relay(conn, peer, channel)
            finally:
                self.give_back(peer, channel, released)
        except (OSError, EOFError, ValueError):
            # the run went away, or sent what no run sends, or the link went down under its stream (SendWatch):
            # its session (if it had one) was closed above
            pass
        finally:
            conn.close()

    def _hello(self, conn):
        conn.settimeout(HELLO_SECONDS)
        line = b""
        while not line.endswith(b"\n") and len(line) < kept.HELLO_MAX:
            data = conn.recv(kept.HELLO_MAX - len(line))
            if not data:
                return None, None
            line += data
        try:
            hello = json.loads(line.decode("utf-8"))
        except ValueError:
            hello = None
        if not (isinstance(hello, dict) and set(hello) == set(HELLO_FIELDS)
                and all(type(hello[name]) is kind for name, kind in HELLO_FIELDS.items())  # pylint: disable=unidiomatic-typecheck
                and hello["want"] in WANTS):
            _answer(conn, {"ok": False, "kind": "keeper", "error": "not a hello: one JSON line with %s"
                           % ", ".join(sorted(HELLO_FIELDS))})
            return None, None
        conn.settimeout(None)
        return tuple(hello[name] for name in kept.WHERE), hello["want"]

    def lend(self, where):
        """(peer, session channel, reused): an idle session of a usable connection, else a new session (on a new
        connection if need be).  TransportError when the peer cannot be reached or trusted; KeeperError when the
        keeper has no session to give (the run then connects on its own)."""
        with self.lock:
            gate = self.connecting.setdefault(where, threading.Lock())
        with gate:
            now = self.clock()
            with self.lock:
                peer = self.peers.get(where)
                if peer is not None and not peer.usable(now, self.max_age):
                    self._retire(where, peer)
                    peer = None
                while peer is not None and peer.idle:
                    channel, opened, _since = peer.idle.pop()
                    if _session_alive(channel) and now - opened < self.max_age:
                        peer.lent += 1
                        self.lent_total += 1
                        self.reused_total += 1
                        return peer, channel, True
                    channel.close()
                if peer is not None and peer.lent >= MAX_SESSIONS:
                    raise KeeperError("%d sessions to node '%s' are lent" % (peer.lent, where[0]))
            if peer is None:
                node, address, port, host_key, key = where
                control = self.connect(node, address, host_key, key=key, port=port, keeper=None)
                control.connect()
                peer = Peer(control, now)
                with self.lock:
                    self.peers[where] = peer
            with self.lock:
                peer.lent += 1  # held for this run: the reaper does not close the connection under it
        # the session outside the gate: runs that need one each to the same peer do not wait for one another
        try:
            channel = peer.control.client.get_transport().open_session(timeout=peer.control.timeout)
            channel.exec_command(SESSION)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            with self.lock:
                peer.lent -= 1
                self._retire(where, peer)
            raise KeeperError("node '%s' opened no session on the kept connection: %s" % (where[0], exc)) from exc
        channel.opened_at = now
        with self.lock:
            self.lent_total += 1
        return peer, channel, False

    def relay(self, conn, peer, channel):
        """Frames from the run to the peer's session, its bytes back, until the run lets go; True when it released
        the session in step."""
        channel.settimeout(SEND_SECONDS)
        watch = SendWatch(peer.link_alive, peer.cut)  # a stream's write on a link gone down would wait for ever
        try:
            return self._relay(conn, peer, channel, watch)
        finally:
            watch.stop()

    def _relay(self, conn, peer, channel, watch):
        frames = FrameReader()
        waiting_since = None  # a request went to the peer and no byte of an answer came back yet
        while True:
            ready, _w, _x = select.select([conn, channel], [], [], 1.0)
            while channel.recv_stderr_ready():
                channel.recv_stderr(PUMP_CHUNK)  # the run's own connection drops it too (ControlChannel.reusable)
            if channel in ready:
                data = channel.recv(PUMP_CHUNK)
                if not data:
                    return False  # the peer ended the session: the run sees the end of its answer
                conn.sendall(data)
                waiting_since = None
            if conn in ready:
                data = conn.recv(PUMP_CHUNK)
                if not data:
                    return False  # gone without a release
                for frame in frames.feed(data):
                    if frame is None:
                        return frames.empty() and waiting_since is None and _session_alive(channel)
                    with watch.sending():
                        channel.sendall(frame)
                    waiting_since = waiting_since or self.clock()
            if waiting_since is not None and self.clock() - waiting_since >= LIVENESS_SECONDS:
                if not peer.link_alive():
                    peer.down = True
                    _answer(conn, {"ok": False, "reason": kept.LINK_DOWN,
                                   "error": "the link went down (no answer to keep-alives for %d s)" % LIVENESS_SECONDS})
                    return False
                waiting_since = self.clock()

    def give_back(self, peer, channel, released):
        with self.lock:
            peer.lent -= 1
            if released and not peer.down and not self.stopped.is_set():
                peer.idle.append((channel, channel.opened_at, self.clock()))
                return
        channel.close()
        if peer.down:
            with self.lock:
                self._retire(None, peer)

    # ------------------------------------------------------------ housekeeping

    def want_master(self, where):
        """A control master beside the kept connection to ``where`` (started now if it has none): True if there is
        one.  Only beside a kept connection, so that it retires with it; only for peers that get streams over
        OpenSSH (a cluster's other peers get the connection of the runs' peer checks alone)."""
        with self.lock:
            peer = self.peers.get(where)
            if not self.masters or peer is None or peer.down:
                return False
            if peer.master is None:
                # under the lock, so that a retire cannot miss it (it waits only for a master left at its path)
                self._start_master(where)
                peer.master = kept.master_path(self.path, where)
            return True

    def _start_master(self, where):
        """An OpenSSH control master for the data streams to ``where``, started in the background (a stream that
        comes before it is up connects on its own)."""
        node, address, port, host_key, key = where
        path = kept.master_path(self.path, where)
        _stop_master(path, wait=True)  # one of an earlier connection to the same peer, whatever state it is in
        known_hosts = write_known_hosts(path + ".hosts", [(node, host_key)])
        argv = ssh_argv(node, address, known_hosts, [], key=key, port=port)[:-1]  # no command: "--" goes
        argv[1:1] = ["-M", "-N", "-o", "ControlPath=%s" % path]
        # pylint: disable-next=ansible-bad-function,consider-using-with
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _retire(self, where, peer):
        """Forget a connection (the lock is held): its idle sessions close now, the connection once none is lent;
        its control master takes no new stream."""
        for key, known in list(self.peers.items()):
            if known is peer and (where is None or key == where):
                del self.peers[key]
        for channel, _opened, _since in peer.idle:
            channel.close()
        peer.idle = []
        peer.down = True
        if peer.master is not None:
            _stop_master(peer.master)
            peer.master = None
        if peer.lent <= 0:
            peer.control.close()

    def reap(self):
        """Close what sat idle too long or grew too old, and connections left with nothing."""
        now = self.clock()
        with self.lock:
            for where, peer in list(self.peers.items()):
                keep = []
                for channel, opened, since in peer.idle:
                    if now - since < self.idle_seconds and now - opened < self.max_age and _session_alive(channel):
                        keep.append((channel, opened, since))
                    else:
                        channel.close()
                peer.idle = keep
                if not peer.usable(now, self.max_age) or (not keep and peer.lent <= 0):
                    self._retire(where, peer)

    def _reap_loop(self):
        while not self.stopped.wait(REAP_SECONDS):
            self.reap()

    def close_all(self):
        with self.lock:
            for where, peer in list(self.peers.items()):
                self._retire(where, peer)

    def status(self):
        with self.lock:
            return {"connections": len(self.peers), "idle_sessions": sum(len(p.idle) for p in self.peers.values()),
                    "lent": self.lent_total, "reused": self.reused_total}


class FrameReader:
    """The run's frames out of the bytes it sent: data, or None for the release.  ValueError on a frame longer than
    a run ever sends (the session's state is then unknown: it is closed)."""

    def __init__(self):
        self.buffer = b""

    def feed(self, data):
        self.buffer += data
        while len(self.buffer) >= kept.FRAME_HEADER.size:
            (size,) = kept.FRAME_HEADER.unpack_from(self.buffer)
            if size > kept.FRAME_MAX:
                raise ValueError("frame of %d bytes" % size)
            end = kept.FRAME_HEADER.size + size
            if len(self.buffer) < end:
                return
            frame, self.buffer = self.buffer[kept.FRAME_HEADER.size:end], self.buffer[end:]
            yield frame if size else None

    def empty(self):
        return not self.buffer


def _session_alive(channel):
    return not (channel.closed or channel.eof_received or channel.exit_status_ready() or channel.recv_ready())


def _answer(conn, reply):
    conn.sendall((json.dumps(reply, sort_keys=True) + "\n").encode("utf-8"))


def _stop_master(path, wait=False):
    """Have the OpenSSH control master at ``path`` take no new stream (its socket goes at once; it ends after its
    last stream).  A socket nobody answers on (its master killed) is removed."""
    if os.path.exists(path):
        argv = ["ssh", "-o", "ControlPath=%s" % path, "-O", "stop", "keeper"]
        # pylint: disable-next=ansible-bad-function,consider-using-with
        stop = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            try:
                stop.wait(10)
            except subprocess.TimeoutExpired:
                stop.kill()
            if os.path.exists(path):
                os.unlink(path)
    if os.path.exists(path + ".hosts"):
        os.unlink(path + ".hosts")
