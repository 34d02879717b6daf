# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The wire between a node and its peers' receivers: operation names, framing, sizes, the refusal, the shape of a
request.  The sending side (transport.py) and the receiving side (serve.py, receiver.py) both build on it, so the
two ends cannot drift apart.  Imports nothing of ours but names.py.

A peer's key runs `serve --peer <node>` (authorized_keys' forced command); SSH_ORIGINAL_COMMAND says what it wants:

- ``receive key=value ...``: the ZFS stream follows on stdin (RECEIVE_KEYS; a flag is 0 or 1);
- ``<operation>``: one JSON request object on stdin (at most MAX_REQUEST bytes);
- ``session``: one JSON line per request, ``{"operation": ..., "request": ...}``; a ``receive`` request
  ``{"arguments": [key=value, ...], "chunked": true}`` is followed by its stream in chunks (CHUNK_HEADER: a 4-byte
  big-endian length, then that many bytes, at most STREAM_CHUNK; a length of 0 ends the stream), an older source's
  ``{"arguments": [...], "bytes": n}`` by exactly n bytes (at most INLINE_STREAM_MAX).

Every answer is one JSON line: ``{"ok": true, ...}`` or ``{"ok": false, "error": "<what failed and what to do>",
"reason": "<code>"}``, with the receiver's ``log`` lines and its ``node`` name.
"""

from __future__ import annotations

import json
import struct

RECEIVE = "receive"
SESSION = "session"
SET_STATE = "set-state"
PLAN = "plan"
DROP_COPY = "drop-migration-copy"
# Restore points (points.py, rollback.py): list a guest's, make room on a full pool, pull one back to the owner.
POINTS = "points"
MAKE_ROOM = "make-room"
SEND_POINT = "send-point"
SEND_POINT_KEYS = ("job", "guest", "volume", "snapshot", "generation", "source")

MAX_REQUEST = 4 * 1024 * 1024
MAX_REPLY = 16 * 1024 * 1024
# A stream up to this size goes inline in a session, on the control connection that is already open: an OpenSSH
# handshake and a receiver process cost more than it (measured ~0.5 s).
INLINE_STREAM_MAX = 1024 * 1024
# A stream up to this size goes in a session in chunks, which the receiver pipes into `zfs recv` as they arrive: a
# receiver process of its own and an OpenSSH channel cost more than the session's slower relay of such a stream
# (measured, bench_replicate.py: the session wins to 12 MiB on the lab, ties at 16; in emulated OpenZFS guests it
# wins at 3 MiB and ties at 10).  The source reads this much ahead to know that the stream fits; a bigger one goes
# over OpenSSH, whose throughput is beyond the session's.
SESSION_STREAM_MAX = 8 * 1024 * 1024
STREAM_CHUNK = 128 * 1024
CHUNK_HEADER = struct.Struct(">I")
STREAM_END = CHUNK_HEADER.pack(0)

# The key=value arguments of `receive`, and those of them that are flags (0 or 1).
RECEIVE_KEYS = ("job", "guest", "volume", "snapshot", "generation", "source", "base", "resume", "raw")
FLAGS = ("resume", "raw")


class Refused(Exception):
    """A request this node will not carry out; the message says why and what to do, ``reason`` is the code peers
    act on, ``extra`` more fields of the reply."""

    def __init__(self, message, reason="refused", **extra):
        super().__init__(message)
        self.reason = reason
        self.extra = extra


def parse_json(text):
    """json.loads that refuses a duplicate key: another parser would keep the first where Python keeps the last, and
    the receiver must act on exactly what every reader of the request sees (ValueError, as json's own errors)."""
    def unique(pairs):
        keys = [key for key, _value in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate key %r" % next(k for k in keys if keys.count(k) > 1))
        return dict(pairs)
    return json.loads(text, object_pairs_hook=unique)


def decode_request(data):
    """The request in ``data`` (bytes, at most MAX_REQUEST; empty means {}); Refused if it is too large or not JSON."""
    if len(data) > MAX_REQUEST:
        raise Refused("request larger than %d bytes: refused" % MAX_REQUEST, "invalid-argument")
    try:
        return parse_json(data.decode("utf-8") or "{}")
    except ValueError as exc:  # UnicodeDecodeError is one
        raise Refused("the request is not valid JSON (%s): refused" % exc, "invalid-argument") from exc


def stream_chunks(data):
    """``data`` (bytes) as a session's chunked stream: its chunks, each with its header, then the end."""
    view = memoryview(data)
    for start in range(0, len(view), STREAM_CHUNK):
        piece = view[start:start + STREAM_CHUNK]
        yield CHUNK_HEADER.pack(len(piece)) + piece.tobytes()
    yield STREAM_END


def read_request(stream):
    """The one JSON request of an operation, from a binary file (its whole content)."""
    return decode_request(stream.read(MAX_REQUEST + 1))


def read_request_line(stream):
    """The next line of a session (b"" at its end); one longer than MAX_REQUEST is cut there, and refused by
    decode_request."""
    return stream.readline(MAX_REQUEST + 1)


def check_request_keys(request, allowed):
    """The request must be a JSON object with no field but ``allowed``."""
    if not isinstance(request, dict):
        raise Refused("the request is not a JSON object: refused", "invalid-argument")
    unknown = sorted(set(request) - set(allowed))
    if unknown:
        raise Refused("unknown request field(s) %s: refused" % ", ".join(unknown), "invalid-argument")


def receive_arguments(**values):
    """``receive``'s key=value words (RECEIVE_KEYS; a value of None is left out, True/False are flags 1/0)."""
    unknown = sorted(set(values) - set(RECEIVE_KEYS))
    if unknown:
        raise ValueError("not a receive argument: %s" % ", ".join(unknown))
    return ["%s=%s" % (key, int(values[key]) if isinstance(values[key], bool) else values[key])
            for key in RECEIVE_KEYS if values.get(key) is not None]


def parse_arguments(tokens, allowed=RECEIVE_KEYS):
    """['job=100-0', ...] -> dict; only the allowed keys, each once, printable ASCII; a flag is 0 or 1."""
    result = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or key not in allowed or key in result or not (token.isascii() and token.isprintable()) \
                or (key in FLAGS and value not in ("0", "1")):
            raise Refused("invalid argument %r: refused" % token, "invalid-argument")
        result[key] = value
    return result


def session_line(operation, request):
    """One request of a session, as it travels."""
    return (json.dumps({"operation": operation, "request": request}) + "\n").encode("utf-8")


def reply_line(reply):
    """One answer, as it travels."""
    return json.dumps(reply) + "\n"


class Lines:
    """Lines as they come from ``recv`` (a socket's or a paramiko channel's ``recv``), what was read past the last
    line returned kept in view (``pending``): a reply nobody asked for is seen by who checks a session before
    lending it again, not left in a file object's buffer."""

    def __init__(self, recv, chunk=256 * 1024):
        self.recv = recv
        self.chunk = chunk
        self.pending = bytearray()

    def readline(self, limit):
        """The next line (with its newline), at most ``limit`` bytes; shorter without a newline at the end."""
        searched = 0
        while True:
            end = self.pending.find(b"\n", searched)
            if end >= 0 or len(self.pending) >= limit:
                end = min(end + 1 if end >= 0 else limit, limit)
                break
            searched = len(self.pending)
            data = self.recv(self.chunk)
            if not data:
                end = len(self.pending)
                break
            self.pending += data
        line = bytes(self.pending[:end])
        del self.pending[:end]
        return line


def last_json_line(text):
    """The last line of ``text`` that is JSON (what came before it is a shell's or sshd's noise), or None."""
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None
