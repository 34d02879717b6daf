# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""`storage-replication serve`: the only thing a peer node may run here.

authorized_keys pins the peers' keys to the forced command `/opt/storage-replication/bin/storage-replication serve
--peer <node>`, which calls ``main()``.  It reads what the peer wants from SSH_ORIGINAL_COMMAND (protocol.py: one
operation, `receive` with its stream, or a session of several), hands it to the operation, and answers one JSON line
per request; a refusal or a failure is an answer too, never a traceback.

A web service's key is pinned to `serve --peer <node> --read-only`: ``main(operations=...)`` is then given the only
operations that key may run (nodeview.OPERATIONS), and no stream is received for it.
"""

from __future__ import annotations

import os
import sys

from ansible_collections.storage.replication.plugins.module_utils import cluster
from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils.protocol import (
    DROP_COPY, INLINE_STREAM_MAX, MAKE_ROOM, PLAN, POINTS, RECEIVE, SEND_POINT, SESSION, SET_STATE, Refused,
    check_request_keys, decode_request, read_request, read_request_line, reply_line)
from ansible_collections.storage.replication.plugins.module_utils.receive_stream import ChunkedStream, SessionInput
from ansible_collections.storage.replication.plugins.module_utils.receiver import Receiver
from ansible_collections.storage.replication.plugins.module_utils.settings import DEFAULT_SETTINGS, SettingsError
from ansible_collections.storage.replication.plugins.module_utils.zfs import ZfsError

CONTROL_OPERATIONS = {
    "prepare": Receiver.prepare,
    # run --check: what prepare would do, changing nothing.
    PLAN: Receiver.plan,
    "finalize": Receiver.finalize,
    "list": Receiver.list_replicas,
    # OpenZFS: drop an interrupted receive the source cannot resume.
    "abort-resume": Receiver.abort_resume,
    # The cluster configuration (cluster.py): its generation and files, and the quorum acceptor's four steps.
    cluster.GET_CONFIG: cluster.serve_get_config,
    **{operation: cluster.serve_quorum(operation) for operation in cluster.QUORUM_FIELDS},
    # Migration (migrate.py): the new owner receives the guest's job states (pvesr set-state).
    SET_STATE: Receiver.set_state,
    # Migration to a node without a replica: the copy is complete there, the one-off copy job's traces go.
    DROP_COPY: Receiver.drop_migration_copy,
    # Restore points: what this node holds of a guest (read-only); a full pool makes room for the next point.
    POINTS: Receiver.list_points,
    MAKE_ROOM: Receiver.make_room,
}


def handle(command, receiver, stdin, operations=None):
    """Dispatch one SSH_ORIGINAL_COMMAND; returns the reply dict. ``operations``: what this key may run, if not every
    control operation and `receive`."""
    tokens = (command or "").split()
    if not tokens:
        raise Refused("no operation given: this key may only run the replication receiver", "invalid-operation")
    operation, arguments = tokens[0], tokens[1:]
    if operation == RECEIVE and operations is None:
        return receiver.receive(arguments, stdin)
    if operation not in _table(operations) or arguments:
        raise Refused("operation %r is not allowed: this key may only run the replication receiver's operations "
                      "(%s)" % (command[:80], allowed(operations, SESSION)), "invalid-operation")
    return control(receiver, operation, read_request(stdin), operations)


def _table(operations):
    return CONTROL_OPERATIONS if operations is None else operations


def allowed(operations, *more):
    """The names a key may send, for a refusal's message."""
    names = list(operations) if operations is not None else list(CONTROL_OPERATIONS) + [RECEIVE, SEND_POINT]
    return ", ".join(sorted(names + list(more)))


def control(receiver, operation, request, operations=None):
    """One control operation; whatever it is, the key must name a node and the request may not claim another."""
    receiver.caller(request)
    return _table(operations)[operation](receiver, request)


def answer(receiver, work):
    """Run work() -> reply dict and turn refusals and failures into the reply peers understand."""
    receiver.log = []
    try:
        reply = work()
        reply.update({"ok": True})
    except Refused as exc:
        reply = dict(exc.extra, ok=False, error=str(exc), reason=exc.reason)
    except (ZfsError, configmod.ConfigError, OSError) as exc:
        reply = {"ok": False, "error": "node '%s': %s" % (receiver.node, exc), "reason": "error"}
    except Exception as exc:  # pylint: disable=broad-exception-caught
        # A defect here must still reach the caller's run log as an answer, not as a traceback it cannot read.
        reply = {"ok": False, "reason": "internal-error",
                 "error": "node '%s': internal error of the receiver (%s: %s) - the request stopped there; please "
                          "report it with this message" % (receiver.node, type(exc).__name__, exc)}
    finally:
        receiver.forget_config()  # a session's next request (or a set-config) must see the file as it is now
    reply.update({"log": receiver.log, "node": receiver.node})
    return reply


def session(receiver, stdin, stdout, operations=None):
    """Several operations in one process (one per JSON line: {"operation", "request"}), so that a run pays for one
    process start on the target instead of one per operation.  A `receive` request is followed by its stream, in
    chunks or (an older source) whole (protocol.py).  Ends at end of input, or after a request whose stream cannot
    be framed."""
    while True:
        line = read_request_line(stdin)
        if not line:
            return 0
        reply = answer(receiver, lambda: session_request(receiver, line, stdin, operations))
        stdout.write(reply_line(reply))
        stdout.flush()
        if reply.get("reason") == "stream-framing":
            return 1


def session_request(receiver, line, stdin, operations=None):
    message = decode_request(line)
    operation = message.get("operation") if isinstance(message, dict) else None
    if not isinstance(operation, str):
        raise Refused("operation %r is not an operation name: refused" % (str(operation)[:80],), "invalid-operation")
    if operation == RECEIVE and operations is None:
        return receive_inline(receiver, message.get("request"), stdin)
    if operation not in _table(operations):
        raise Refused("operation %r is not allowed in a session (%s)" % (str(operation)[:80], allowed(operations)),
                      "invalid-operation")
    return control(receiver, operation, message.get("request"), operations)


def receive_inline(receiver, request, stdin):
    """`receive` of a stream that follows the request in the session, with the checks of the OpenSSH data path.  A
    stream that cannot be framed ends the session (the bytes that follow could not be told from the next request)."""
    if isinstance(request, dict) and request.get("chunked") is True:
        return receive_chunked(receiver, request, stdin)
    size = request.get("bytes") if isinstance(request, dict) else None
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= INLINE_STREAM_MAX:
        raise Refused("invalid inline stream size %r (at most %d bytes): refused, session ended" % (
            size, INLINE_STREAM_MAX), "stream-framing")
    data = stdin.read(size)
    if len(data) != size:
        raise Refused("the inline stream ended after %d of %d bytes: refused, session ended" % (len(data), size),
                      "stream-framing")
    check_request_keys(request, ("arguments", "bytes"))
    return receiver.receive(_receive_arguments(request), data)


def receive_chunked(receiver, request, stdin):
    """A stream in chunks, piped into `zfs recv` as they arrive.  Whatever the receive answers (a refusal before
    its first byte, a full pool mid-way), the rest of the stream is read to its end first, so that the session stays
    in step; a stream that stalls or cannot be framed ends the session."""
    stream = ChunkedStream(stdin, _stall_seconds(receiver))
    try:
        check_request_keys(request, ("arguments", "chunked"))
        return receiver.receive(_receive_arguments(request), stream)
    finally:
        stream.drain()  # a stream that cannot be read to its end: its refusal (stream-framing) is the answer


def _receive_arguments(request):
    arguments = request.get("arguments")
    if not isinstance(arguments, list) or not all(isinstance(a, str) for a in arguments):
        raise Refused("invalid receive arguments %r: refused" % (arguments,), "invalid-argument")
    return arguments


def _stall_seconds(receiver):
    """The node's stall deadline for a stream (its settings; their default if the file cannot be read, which the
    receive itself then reports)."""
    try:
        return receiver.node_settings()["receive_stall_seconds"]
    except (SettingsError, OSError):
        return DEFAULT_SETTINGS["receive_stall_seconds"]


def main(argv=None, environ=None, stdin=None, stdout=None, receiver=None, peer=None, operations=None,
         stream_out=None):
    """The `serve` entry point: one operation, or a session of control operations, per SSH session.  ``peer`` is the
    calling node, from the key's forced command (`serve --peer <node>`); ``operations``, if given, is all this key
    may run (`serve --read-only`)."""
    del argv
    environ = os.environ if environ is None else environ
    stdout = stdout or sys.stdout
    receiver = receiver or Receiver(peer=peer)
    command = environ.get("SSH_ORIGINAL_COMMAND", "")
    if command.strip() == SESSION:
        return session(receiver, stdin or SessionInput(sys.stdin.fileno()), stdout, operations)
    stdin = stdin or sys.stdin.buffer
    if command.split()[:1] == [SEND_POINT] and operations is None:
        # stdout carries the stream: the answer of a refusal goes to stderr.  A read-only key never gets here.
        reply = answer(receiver, lambda: receiver.send_point(command.split()[1:],
                                                             (stream_out or sys.stdout.buffer).fileno()))
        if not reply["ok"]:
            sys.stderr.write(reply_line(reply))
        return 0 if reply["ok"] else 1
    reply = answer(receiver, lambda: handle(command, receiver, stdin, operations))
    stdout.write(reply_line(reply))
    stdout.flush()
    return 0 if reply["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
