# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A session borrowed from this node's connection keeper (keeper.py): the client's end of the keeper's socket.

The keeper holds SSH connections to the peers and their `serve` session processes between runs, so that a run does not
pay a key exchange and a process start on the peer (issue 19: on the lab about half of a run with nothing to send).
A run asks for a session to one peer (a hello line naming it the way the cluster configuration does, host key
included); the keeper answers with one JSON line, and from then on relays: what the run sends, in frames, goes to the
peer's session unchanged, and the peer's reply lines come back unchanged.  A run ends by releasing the session (an
empty frame), which it does only when every request it sent has had its whole answer; a run that ends any other way
(an error, kill -9) leaves the keeper a session in an unknown state, which it closes.

Frames (run -> keeper): 4 bytes of length (big-endian), then that many bytes.  Length 0 is the release.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import struct

from ansible_collections.storage.replication.plugins.module_utils.protocol import Lines

KEEPER_SOCKET = "/run/storage-replication/keeper.sock"
FRAME_HEADER = struct.Struct(">I")
FRAME_MAX = 256 * 1024
RELEASE = FRAME_HEADER.pack(0)
HELLO_MAX = 64 * 1024
# The keeper answers a hello within its own connect timeout (a new connection) plus this margin.
HELLO_MARGIN_SECONDS = 5
# The keeper's OpenSSH control masters (for the data streams) live beside its socket, named by this and a digest.
MASTER_PREFIX = "ssh-"
# The reason of the line the keeper sends instead of an answer when the link to the peer went down under a request.
LINK_DOWN = "keeper-link-down"


def master_path(keeper_path, where):
    """The OpenSSH control socket of the keeper at ``keeper_path`` for ``where`` (node, address, port, host key, key
    file): named by a digest of all of it, so that a changed host key (or address, or key) is another master."""
    digest = hashlib.sha256(json.dumps(list(where)).encode("utf-8")).hexdigest()[:24]
    return os.path.join(os.path.dirname(keeper_path), MASTER_PREFIX + digest)


WHERE = ("node", "address", "port", "host_key", "key")


def where_of(channel):
    """What the keeper keys a connection by, of a ControlChannel."""
    return (channel.node_name, channel.address, channel.port, channel.host_key, channel.key)


def hello(where, want="session"):
    """The hello line asking for a session to the peer ``where`` names, or (want "master") for an OpenSSH control
    master beside the keeper's connection to it."""
    fields = dict(zip(WHERE, where), want=want)
    return (json.dumps(fields, sort_keys=True) + "\n").encode("utf-8")


def want_master(path, where):
    """Ask the keeper at ``path`` for a control master to ``where`` (a stream just paid a connection of its own); True
    if it has one or starts one.  Nothing happens without a keeper or a connection it keeps there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(HELLO_MARGIN_SECONDS)
        sock.connect(path)
        sock.sendall(hello(where, "master"))
        answer = json.loads(Lines(sock.recv).readline(HELLO_MAX).decode("utf-8"))
    except (OSError, ValueError):
        return False
    finally:
        sock.close()
    return isinstance(answer, dict) and bool(answer.get("ok"))


def lend(path, channel):
    """A KeptSession to ``channel``'s peer from the keeper listening at ``path``, with the keeper's answer; (None, None)
    when no keeper answers there as one (the run then connects on its own), (None, answer) when the keeper could not
    reach or trust the peer (answer names why, as a direct connect would have)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(channel.timeout + HELLO_MARGIN_SECONDS)
        sock.connect(path)
        sock.sendall(hello(where_of(channel)))
        session = KeptSession(sock)
        answer = json.loads(session.lines.readline(HELLO_MAX).decode("utf-8"))
    except (OSError, ValueError):
        sock.close()  # no keeper, a stale socket, or one that does not answer as a keeper: nothing was lent
        return None, None
    if not isinstance(answer, dict) or not answer.get("ok"):
        sock.close()
        return None, answer if isinstance(answer, dict) else None
    return session, answer


class KeptSession:
    """The session channel as ControlChannel uses it (the few methods of a paramiko channel it calls), over the
    keeper's socket."""

    def __init__(self, sock):
        self.sock = sock
        self.lines = Lines(sock.recv)
        self.closed = False

    def fileno(self):
        return self.sock.fileno()

    def settimeout(self, timeout):
        self.sock.settimeout(timeout)

    def sendall(self, data):
        view = memoryview(data)
        for start in range(0, len(view), FRAME_MAX):
            piece = view[start:start + FRAME_MAX]
            self.sock.sendall(FRAME_HEADER.pack(len(piece)) + piece.tobytes())

    def makefile(self, _mode="rb"):
        return self.lines

    def recv_ready(self):
        """Whether the keeper sent something (a byte, or its end) that no request asked for."""
        return not self.closed and (bool(self.lines.pending) or bool(select.select([self.sock], [], [], 0)[0]))

    def exit_status_ready(self):
        return False  # the keeper relays no exit status (nor stderr): a session that ended shows as the socket's end

    @property
    def eof_received(self):
        return self.closed

    def recv_stderr_ready(self):
        return False  # the keeper drops the peer's stderr

    def release(self):
        """Give the session back to the keeper (every request answered, nothing more to read) and close."""
        if not self.closed:
            try:
                self.sock.sendall(RELEASE)
            except OSError:
                pass  # the keeper is gone: so is the session
        self.close()

    def shutdown_write(self):
        """Without a release: the keeper closes the session (its state is unknown)."""

    def close(self):
        if not self.closed:
            self.closed = True
            self.sock.close()
