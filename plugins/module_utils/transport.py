# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Talking to peer nodes: the control channel and the data streams.

Control: one paramiko SSH connection per target and run (a runner pass lends its connections to its jobs one
after another: channels.py), or, where this node runs the connection keeper, a session it keeps open between runs
(kept.py, keeper.py); the receiver operations go through one `session` channel on it, or one exec
channel each (the peer's authorized_keys forces the `serve` command, which reads the operation
name from SSH_ORIGINAL_COMMAND and a JSON request from stdin, and answers one JSON line).
The host key is checked against the key the cluster configuration records for the node
(RejectPolicy; an unknown or changed key is refused).

Data: `zfs send` piped straight into the OpenSSH client (no Python in between unless a rate
limit is set), with a known_hosts file generated from the cluster configuration and
StrictHostKeyChecking=yes.  The receiving side counts the bytes it feeds to `zfs recv`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from ansible_collections.storage.replication.plugins.module_utils import kept
from ansible_collections.storage.replication.plugins.module_utils.files import atomic_write, copy_stream, write_all
from ansible_collections.storage.replication.plugins.module_utils.protocol import (
    INLINE_STREAM_MAX, MAX_REPLY, RECEIVE, SESSION, SESSION_STREAM_MAX, Lines, last_json_line, session_line,
    stream_chunks)

NODE_KEY = "/root/.ssh/id_ed25519"
CONNECT_TIMEOUT = 10
# Measured on the lab: aes128-gcm is the fastest cipher both ends offer (see docs/architecture.md).
DATA_CIPHERS = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com"
PUMP_CHUNK = 256 * 1024
# A limit that changes with the time (bandwidth windows) is looked up again this often within a transfer: a window's
# start or end takes effect within a second, for one lookup (a few dictionary reads) a second.
RATE_RECHECK_SECONDS = 1.0
# A peer that has not begun to answer an operation for this long is asked whether the link still carries anything
# (an OpenSSH keep-alive that wants an answer); no answer within as long again means the link is down.  A cut link
# ends a control call in about 20 s instead of at the operation's timeout (600 s for a run's operations).
LIVENESS_SECONDS = 10


class TransportError(Exception):
    """The peer could not be reached or refused us; the message names the cause and the fix."""

    def __init__(self, message, unreachable=False):
        super().__init__(message)
        self.unreachable = unreachable


class RemoteError(Exception):
    """The peer's receiver refused or failed an operation; carries its reply."""

    def __init__(self, node, operation, reply):
        self.node = node
        self.operation = operation
        self.reply = reply
        super().__init__(reply.get("error") or "%s on %s failed without a message" % (operation, node))


def known_hosts_text(nodes):
    """known_hosts lines keyed by node name (used with HostKeyAlias) for [(name, host_key)]."""
    return "".join("%s %s\n" % (name, key.strip()) for name, key in nodes if key)


def write_known_hosts(path, nodes):
    atomic_write(path, known_hosts_text(nodes).encode("utf-8"), 0o600)
    return path


def ssh_argv(node_name, address, known_hosts, command, key=NODE_KEY, port=22, cipher=DATA_CIPHERS, control=None):
    """OpenSSH client argv for a data stream to node_name (host key pinned via HostKeyAlias).  ``control``: the
    connection keeper's control master for this peer (kept.master_path), whose socket is there: no key exchange (the
    master pinned the same host key); OpenSSH connects on its own should nobody answer on it."""
    shared = ["-o", "ControlMaster=no", "-o", "ControlPath=%s" % control] if control else []
    return [
        "ssh", "-e", "none", "-T", "-x", "-a",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UserKnownHostsFile=%s" % known_hosts,
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "HostKeyAlias=%s" % node_name,
        "-o", "IdentitiesOnly=yes", "-i", key,
        "-o", "ConnectTimeout=%d" % CONNECT_TIMEOUT,
        "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3",
        "-o", "Compression=no", "-c", cipher,
    ] + shared + ["-p", str(port), "root@%s" % address, "--"] + list(command)


def explain_ssh_failure(node_name, address, stderr):
    """Turn OpenSSH's stderr into a message that names the cause and the fix."""
    text = stderr.strip()
    if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return host_key_message(node_name)
    if "Permission denied" in text:
        return auth_message(node_name)
    # "not responding": ServerAliveCountMax keep-alives went unanswered, i.e. the link was cut mid-stream.
    if any(s in text for s in ("Connection refused", "timed out", "No route to host", "Network is unreachable",
                               "Connection closed", "Connection reset", "not responding", "Broken pipe")):
        return unreachable_message(node_name, address, text.splitlines()[-1])
    return None


def unreachable_message(node_name, address, detail):
    # paramiko's NoValidConnectionsError reads "[Errno None] Unable to connect ...": the number says nothing.
    detail = str(detail).replace("[Errno None] ", "")
    return ("target node '%s' (%s) is unreachable: %s - check that the node is up, that sshd runs on it and that "
            "the network path works; the job is retried automatically" % (node_name, address, detail))


def host_key_message(node_name):
    return ("host key of target node '%s' does not match the key recorded in the cluster configuration - if the node "
            "was reinstalled, record its new host key (re-run the site playbook); otherwise investigate a possible "
            "man-in-the-middle" % node_name)


def auth_message(node_name):
    return ("target node '%s' refused this node's SSH key - install this node's replication key on it "
            "(re-run the site playbook / runner role)" % node_name)


@dataclasses.dataclass(eq=False)
class ControlChannel:
    """One authenticated SSH connection to a peer; `call` runs one receiver operation on it."""

    node_name: str
    address: str
    host_key: str
    key: str = NODE_KEY
    port: int = 22
    timeout: float = CONNECT_TIMEOUT
    client: object = dataclasses.field(default=None, init=False)
    # None: not opened yet; False: the peer has no sessions; else (channel, replies)
    session: object = dataclasses.field(default=None, init=False)
    # A call failed in a way that leaves the connection out of step with the peer (the link, a timeout, no answer or
    # half of one, a session the peer ended): nothing may be asked on it again (channels.py never lends it again).
    broken: bool = dataclasses.field(default=False, init=False)
    # The peer's session process was gone when a call expected its answer (it ended without one): a call sent on a
    # new connection can still succeed (channels.py: a pooled connection that sat idle).
    ended: bool = dataclasses.field(default=False, init=False)
    # The connection keeper's socket (kept.py): a session is borrowed there if a keeper answers, else this connects
    # on its own.  None: always on its own (the keeper's own connections).
    keeper: object = kept.KEEPER_SOCKET
    # The keeper lent a session that an earlier run used: should it have ended meanwhile, the first request goes
    # again once on a new one (as channels.Lent does for a pass's idle connections).
    kept_reused: bool = dataclasses.field(default=False, init=False)

    def connect(self):
        if self.keeper:
            session, answer = kept.lend(self.keeper, self)
            if session is not None:
                self.session, self.kept_reused = (session, session.makefile()), bool(answer.get("reused"))
                return self
            if answer and answer.get("kind") == "connect":
                raise TransportError(str(answer.get("error")), bool(answer.get("unreachable")))
        return self.connect_direct()

    def connect_direct(self):
        """Connect and authenticate on its own (no keeper)."""
        _import_paramiko_lean()
        import paramiko  # pylint: disable=import-outside-toplevel
        client = paramiko.SSHClient()
        keytype, _sep, blob = (self.host_key or "").strip().partition(" ")
        if not blob:
            raise TransportError("no host key recorded for node '%s' in the cluster configuration - add it "
                                 "(re-run the site playbook)" % self.node_name)
        lookup = self.address if self.port == 22 else "[%s]:%d" % (self.address, self.port)
        client.get_host_keys().add(lookup, keytype, paramiko.PKey.from_type_string(keytype, _b64(blob.split()[0])))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(self.address, port=self.port, username="root", key_filename=self.key, look_for_keys=False,
                           allow_agent=False, timeout=self.timeout, banner_timeout=self.timeout,
                           auth_timeout=self.timeout)
        except paramiko.BadHostKeyException as exc:
            raise TransportError(host_key_message(self.node_name)) from exc
        except paramiko.AuthenticationException as exc:
            raise TransportError(auth_message(self.node_name)) from exc
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise TransportError(host_key_message(self.node_name)) from exc
            raise TransportError(unreachable_message(self.node_name, self.address, str(exc)), True) from exc
        except (OSError, socket.timeout) as exc:
            raise TransportError(unreachable_message(self.node_name, self.address, str(exc) or type(exc).__name__),
                                 True) from exc
        transport = client.get_transport()
        transport.set_keepalive(10)
        self.client = client
        return self

    def call(self, operation, request, timeout=600):
        """Run a receiver operation; returns its JSON reply, raises RemoteError if it refused or failed.

        Operations go through one `session` channel (one process on the peer for the whole run); a peer whose
        receiver has no sessions gets one exec channel per operation."""
        return self._call(operation, request, timeout)

    def receive_inline(self, arguments, data, timeout=600):
        """A whole small stream (`data`, at most INLINE_STREAM_MAX bytes) into the peer's `receive` with `arguments`
        (the key=value words of the OpenSSH data path), through the session: no new handshake, no new process.
        Only for peers whose prepare reply says `inline_receive`."""
        return self._call(RECEIVE, {"arguments": list(arguments), "bytes": len(data)}, timeout, payload=data)

    def receive_chunked(self, arguments, chunks, timeout=600):
        """A stream in chunks (``chunks``: an iterable of framed chunks ending with protocol.STREAM_END) into the
        peer's `receive` with `arguments`, through the session, which pipes them into `zfs recv` as they arrive.
        Only for peers whose prepare reply says `chunked_receive`.  ``timeout``: how long the peer may take no byte
        of it (or take to answer at its end)."""
        return self._call(RECEIVE, {"arguments": list(arguments), "chunked": True}, timeout, payload=iter(chunks))

    def _call(self, operation, request, timeout, payload=None):
        if self.client is None and not self.session:
            self.connect()
        # (a stream in chunks is read as it goes: it cannot go again)
        retry, self.kept_reused = self.kept_reused and not _is_iterator(payload), False
        try:
            return self._send(operation, request, timeout, payload)
        except (TransportError, RemoteError):
            if not (retry and self.ended):
                raise
        # A kept session that ended while it sat idle, before it read this request: once more on a new one.
        self.close()
        self.broken = self.ended = False
        self.connect()
        return self._send(operation, request, timeout, payload)

    def _send(self, operation, request, timeout, payload):
        try:
            if self.session is not False:
                reply = self._session_call(operation, request, timeout, payload)
                if reply is not None:
                    return reply
            if payload is not None:
                raise TransportError("node '%s' has no receiver session for an inline stream - update the runner "
                                     "there (re-run the site playbook)" % self.node_name)
            return self._exec_call(operation, request, timeout)
        except RemoteError:
            raise  # the peer answered: the session is in step (_session_call marks it broken when it is not)
        except (OSError, EOFError, socket.timeout) as exc:
            self.broken = True
            raise TransportError(unreachable_message(self.node_name, self.address,
                                                     "connection lost during '%s': %s" % (operation, exc)), True) from exc
        except BaseException:
            self.broken = True  # cut off mid-call (the link, an interrupt): where the peer stands is unknown
            raise

    def _session_call(self, operation, request, timeout, payload=None):
        """One request (and its payload bytes, if any) on the session channel; None if the peer does not know
        sessions."""
        if self.session is None:
            if self.client is None:
                self.connect_direct()  # the keeper's session was closed (it ended)
            channel = self.client.get_transport().open_session(timeout=self.timeout)
            channel.exec_command(SESSION)
            self.session = (channel, Lines(channel.recv))
        channel, replies = self.session
        channel.settimeout(timeout)
        if channel.closed:
            self.ended = True  # the peer ended the session while it was idle (paramiko would say "Socket is closed")
        if _is_iterator(payload):
            self._send_stream(channel, [session_line(operation, request)], payload, operation, timeout)
        else:
            channel.sendall(session_line(operation, request))
            if payload:
                channel.sendall(payload)
        self._await_reply(channel, operation, timeout)
        line = replies.readline(MAX_REPLY)
        reply = last_json_line(line.decode("utf-8", "replace"))
        if isinstance(reply, dict) and reply.get("reason") == "invalid-operation" and "'session'" in reply.get("error", ""):
            self._close_session()
            self.session = False
            return None
        if isinstance(reply, dict) and reply.get("reason") == kept.LINK_DOWN:
            self.broken = True
            self._close_session()
            raise TransportError(unreachable_message(self.node_name, self.address, str(reply.get("error"))), True)
        if not isinstance(reply, dict) or not line.endswith(b"\n"):
            # No answer, or not a whole one: what the peer did with the request, and what it sends next, is unknown.
            self.broken, self.ended = True, self.ended or not line
            err = channel.makefile_stderr("rb").read(MAX_REPLY) if channel.exit_status_ready() else b""
            self._close_session()
            return parse_reply(self.node_name, operation, line, err, "closed")
        if reply.get("reason") == "stream-framing":
            self.broken = True  # the peer ended the session after this answer (serve.session)
        if not reply.get("ok"):
            raise RemoteError(self.node_name, operation, reply)
        return reply

    def _exec_call(self, operation, request, timeout):
        if self.client is None:
            self.connect_direct()  # a peer without sessions, found through the keeper: one exec channel per call
        channel = self.client.get_transport().open_session(timeout=self.timeout)
        channel.settimeout(timeout)
        channel.exec_command(operation)
        channel.sendall(json.dumps(request).encode("utf-8"))
        channel.shutdown_write()
        self._await_reply(channel, operation, timeout)
        out = _read_all(channel.makefile("rb"))
        err = _read_all(channel.makefile_stderr("rb"))
        status = channel.recv_exit_status()
        channel.close()
        return parse_reply(self.node_name, operation, out, err, status)

    def _await_reply(self, channel, operation, timeout):
        """Return once the peer's answer begins (or the channel closes); TransportError (unreachable) as soon as the
        link stops carrying keep-alives, socket.timeout after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("no answer within %d s" % timeout)
            ready, _w, _x = select.select([channel], [], [], min(LIVENESS_SECONDS, remaining))
            if ready:
                return
            if self.client is not None and not self.link_alive():  # a kept session: the keeper watches the link
                raise TransportError(unreachable_message(
                    self.node_name, self.address, "the link went down during '%s' (no answer to keep-alives for %d s)"
                    % (operation, LIVENESS_SECONDS)), True)

    def _send_stream(self, channel, request, chunks, operation, timeout):
        """Send a request and its stream's chunks while the peer takes them; a peer that takes nothing for
        ``timeout`` s ends it as a timeout, a link found down by the SendWatch as unreachable."""
        channel.settimeout(timeout)
        # The keeper watches its own links (keeper.relay); a connection of this run's own is watched here.
        watch = None if self.client is None else SendWatch(self.link_alive, self.client.close)
        try:
            for chunk in itertools.chain(request, chunks):
                with watch.sending() if watch is not None else contextlib.nullcontext():
                    channel.sendall(chunk)
        except (OSError, EOFError) as exc:
            if watch is not None and watch.link_down:
                raise TransportError(unreachable_message(
                    self.node_name, self.address, "the link went down during '%s' (no answer to keep-alives for %d "
                    "s)" % (operation, LIVENESS_SECONDS)), True) from exc
            raise
        finally:
            if watch is not None:
                watch.stop()

    def link_alive(self):
        transport = self.client.get_transport()
        # paramiko waits for a global request's answer without a time limit: the probe waits in a thread of its own,
        # which ends when the connection is closed.
        probe = threading.Thread(target=transport.global_request, args=("keepalive@openssh.com",),
                                 kwargs={"wait": True}, daemon=True)
        probe.start()
        probe.join(LIVENESS_SECONDS)
        return not probe.is_alive()

    def reusable(self):
        """Whether another job may ask on this connection: open, in step with its peer (no call failed or was cut
        on it), its session process still there and silent.  What the peer wrote on stderr meanwhile is dropped
        (unread, it would fill the channel's window over the jobs of a long pass)."""
        if self.broken or (self.client is None and not self.session):
            return False
        transport = self.client.get_transport() if self.client is not None else None
        if self.client is not None and (transport is None or not transport.is_active()):
            return False
        if self.session:
            channel, replies = self.session  # pylint: disable=unpacking-non-sequence
            if (channel.closed or channel.eof_received or channel.exit_status_ready() or channel.recv_ready()
                    or replies.pending):  # an answer nobody asked for, read with the last one
                return False
            while channel.recv_stderr_ready():
                channel.recv_stderr(PUMP_CHUNK)
        return True

    def _close_session(self):
        if self.session:
            channel = self.session[0]  # (channel, replies): pylint reads the field's default None as its type
            channel.shutdown_write()
            channel.close()
        self.session = None

    def close(self):
        if self.session and isinstance(self.session[0], kept.KeptSession):
            if self.reusable():
                self.session[0].release()  # every request answered, nothing unasked pending: it may be lent again
            else:
                self._close_session()
            self.session = None
        if self.client is not None:
            if self.session:
                self._close_session()
            self.client.close()
            self.client = None

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()


def _import_paramiko_lean():
    """paramiko imports `invoke` only to run `Match exec` lines of OpenSSH client configurations, which the engine
    never reads (it trusts the host keys of the cluster configuration alone); `invoke` was 40 of paramiko's 110 ms
    of import time on the lab, seconds on slow CPUs, in every run that connects.  A None in sys.modules makes that
    optional import fail as paramiko expects it may; a process that imported invoke already keeps it."""
    sys.modules.setdefault("invoke", None)


def preload_paramiko():
    """Import paramiko as a connect does, for the preloaded engine (preload.py)."""
    _import_paramiko_lean()
    import paramiko  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import


class SendWatch:
    """A watch on a connection's link while data goes out on it (a thread of its own until ``stop``): whenever a
    send has made no progress for LIVENESS_SECONDS it probes the link (``alive()``), and once the link is found down
    it calls ``cut()`` (close the connection: paramiko's write to a link gone down waits for ever, whatever the
    channel's timeout; closed, it ends with EOFError) and sets ``link_down``."""

    def __init__(self, alive, cut):
        self.alive = alive
        self.cut = cut
        self.since = None  # when the send under way began (None: no send under way)
        self.link_down = False
        self.stopped = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    @contextlib.contextmanager
    def sending(self):
        self.since = time.monotonic()
        try:
            yield
        finally:
            self.since = None

    def _watch(self):
        while not self.stopped.wait(LIVENESS_SECONDS / 2):
            since = self.since
            if since is not None and time.monotonic() - since >= LIVENESS_SECONDS and not self.alive():
                self.link_down = True
                self.cut()
                return

    def stop(self):
        self.stopped.set()


def _is_iterator(payload):
    return payload is not None and not isinstance(payload, (bytes, bytearray, memoryview))


def _b64(text):
    import base64  # pylint: disable=import-outside-toplevel
    return base64.b64decode(text)


def _read_all(handle):
    data = handle.read(MAX_REPLY + 1)
    return data[:MAX_REPLY]


def parse_reply(node_name, operation, out, err, status):
    """A receiver reply is one JSON object on stdout; anything else is reported with stderr."""
    text = out.decode("utf-8", "replace").strip()
    try:
        reply = json.loads(text.splitlines()[-1]) if text else None
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        detail = (err.decode("utf-8", "replace").strip() or text or "no output").splitlines()[-1]
        raise RemoteError(node_name, operation, {
            "ok": False, "error": "'%s' on node '%s' gave no valid reply (exit code %s): %s" % (
                operation, node_name, status, detail)})
    if not reply.get("ok"):
        raise RemoteError(node_name, operation, reply)
    return reply


# ---------------------------------------------------------------- data streams

class TokenBucket:
    """Rate limiter: at most `rate` bytes per second on average, bursts bounded by `burst` bytes.

    `rate` is a number, or a function of no argument that returns the limit now (None: no limit for now), asked
    again every `recheck` seconds of `clock` (bandwidth windows: the limit changes within a running transfer).
    """

    def __init__(self, rate, burst=None, clock=time.monotonic, sleep=time.sleep, recheck=RATE_RECHECK_SECONDS):
        self.limit = rate if callable(rate) else None
        self.fixed_burst = burst
        self.clock = clock
        self.sleep = sleep
        self.recheck = recheck
        self.tokens = 0.0
        self.last = self.checked = clock()
        self.rate = self.burst = None
        self._set_rate(rate() if self.limit else rate)

    def _set_rate(self, rate):
        """A new limit: saved tokens beyond the new burst go (a lower limit starts at once); none while unlimited."""
        self.rate = None if rate is None else float(rate)
        self.burst = float(self.fixed_burst if self.fixed_burst is not None else max(PUMP_CHUNK, (self.rate or 0) / 10.0))
        self.tokens = 0.0 if self.rate is None else min(self.tokens, self.burst)

    def take(self, amount):
        """Account for `amount` bytes, sleeping off any debt: the average is exact, a burst at most `burst`."""
        now = self.clock()
        if self.rate is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.limit is not None and now - self.checked >= self.recheck:
            self.checked = now
            rate = self.limit()
            if rate != self.rate:
                self._set_rate(rate)
        if self.rate is None:
            return
        self.tokens -= amount
        if self.tokens < 0:
            self.sleep(-self.tokens / self.rate)


def pump(source_fd, sink_fd, bucket, chunk=PUMP_CHUNK):
    """Copy source to sink through the token bucket; returns bytes copied."""
    size = min(chunk, int(bucket.burst))
    total = 0
    while True:
        data = os.read(source_fd, size)
        if not data:
            return total
        bucket.take(len(data))
        view = memoryview(data)
        while view:
            written = os.write(sink_fd, view)
            view = view[written:]
        total += len(data)


class StreamResult:
    def __init__(self, reply, seconds, send_rc, send_err, inline=False):
        self.reply = reply
        self.seconds = seconds
        self.send_rc = send_rc
        self.send_err = send_err
        self.inline = inline  # carried on the control connection, not by a new OpenSSH connection
        self.shared = False  # carried by the connection keeper's OpenSSH master, not by a connection of its own

    @property
    def bytes(self):
        return int(self.reply.get("bytes", 0))


def stream(send_argv, ssh_command, node_name, address, rate_bps=None, on_start=None, inline=None, chunked=None):
    """Run `send_argv | [rate pump] | ssh_command`; returns a StreamResult with the receiver's JSON reply.

    `rate_bps` is a limit in bytes per second, or a function returning the limit now (see TokenBucket).

    With `chunked` (a function chunks -> reply, e.g. ControlChannel.receive_chunked), the first SESSION_STREAM_MAX + 1
    bytes are read first: a stream that ends within them goes through `chunked` (on the control connection, in
    chunks) instead of a new OpenSSH connection; a bigger one is spliced on into ssh after them.  `inline` (a
    function data -> reply, ControlChannel.receive_inline) does the same for a peer that takes only whole streams of
    at most INLINE_STREAM_MAX.  Without a rate limit and without either the two processes are joined by a pipe and
    Python stays out of the data path.
    """
    env = dict(os.environ, LC_ALL="C")
    start = time.monotonic()
    # pylint: disable-next=ansible-bad-function
    send = subprocess.Popen(send_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    bucket = TokenBucket(rate_bps) if rate_bps else None
    head = None
    if chunked is not None or inline is not None:
        most = SESSION_STREAM_MAX if chunked is not None else INLINE_STREAM_MAX
        head = _read_head(send.stdout.fileno(), most + 1)
        if len(head) <= most:
            return _session_stream(send, head, inline, chunked, bucket, node_name, start)
    feeder = None
    if head is not None or bucket is not None:
        read_fd, write_fd = os.pipe()
        # pylint: disable-next=ansible-bad-function
        ssh = subprocess.Popen(ssh_command, stdin=read_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        os.close(read_fd)
        feeder = threading.Thread(target=_feed_and_close, args=(head or b"", send.stdout, write_fd, bucket), daemon=True)
        feeder.start()
    else:
        # pylint: disable-next=ansible-bad-function
        ssh = subprocess.Popen(ssh_command, stdin=send.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env)
        send.stdout.close()
    if on_start is not None:
        on_start(send, ssh)
    ssh_out, ssh_err, send_err = _collect(ssh, send)
    if feeder is not None:
        feeder.join()
    send.wait()
    seconds = time.monotonic() - start
    return _stream_outcome(node_name, address, send, ssh, ssh_out, ssh_err, send_err, seconds)


def _read_head(fd, size):
    """Up to `size` bytes from fd; fewer only at end of stream."""
    chunks, have = [], 0
    while have < size:
        data = os.read(fd, size - have)
        if not data:
            break
        chunks.append(data)
        have += len(data)
    return b"".join(chunks)


def _session_stream(send, data, inline, chunked, bucket, node_name, start):
    """The whole stream is in `data`: once zfs send has ended well, it goes in chunks (each through the token
    bucket, so that a limit and its windows hold within it) or whole to `inline`."""
    send.stdout.close()
    send_err = send.stderr.read().decode("utf-8", "replace")
    send.wait()
    _check_send(send, send_err, node_name)
    if chunked is not None:
        reply = chunked(_metered(stream_chunks(data), bucket))
    else:
        if bucket is not None:
            bucket.take(len(data))
        reply = inline(data)
    return StreamResult(reply, time.monotonic() - start, send.returncode, send_err, inline=True)


def _metered(chunks, bucket):
    for chunk in chunks:
        if bucket is not None:
            bucket.take(len(chunk))
        yield chunk


def _feed_and_close(head, source, write_fd, bucket):
    """ssh's stdin: the bytes read ahead, then the rest of the stream (through the token bucket if limited)."""
    try:
        view = memoryview(head)
        for start in range(0, len(view), PUMP_CHUNK):  # a piece at a time: the limit holds within the head too
            if bucket is not None:
                bucket.take(min(PUMP_CHUNK, len(view) - start))
            write_all(write_fd, view[start:start + PUMP_CHUNK])
        if bucket is not None:
            pump(source.fileno(), write_fd, bucket)
        else:
            copy_stream(source.fileno(), write_fd)
    except BrokenPipeError:
        pass  # the receiver went away; its own exit status tells why
    finally:
        os.close(write_fd)
        source.close()


def _collect(ssh, send):
    """Read ssh stdout/stderr and zfs send stderr until all are closed (no deadlock on full pipes)."""
    buffers = {ssh.stdout: [], ssh.stderr: [], send.stderr: []}
    open_files = list(buffers)
    while open_files:
        ready, _w, _x = select.select(open_files, [], [])
        for handle in ready:
            data = os.read(handle.fileno(), 65536)
            if data:
                buffers[handle].append(data)
            else:
                open_files.remove(handle)
    ssh.wait()
    return tuple(b"".join(buffers[h]).decode("utf-8", "replace") for h in (ssh.stdout, ssh.stderr, send.stderr))


def _stream_outcome(node_name, address, send, ssh, ssh_out, ssh_err, send_err, seconds):
    """The cause of a failed stream, in order: zfs send itself, the receiver's answer, then ssh."""
    reply = last_json_line(ssh_out)
    refused = isinstance(reply, dict) and not reply.get("ok", False)
    # A receiver that failed (a full pool, say) closes the pipe: zfs-fuse's send then exits 1 saying "Broken pipe",
    # and the receiver's answer is the cause worth reporting.
    if send.returncode != -signal.SIGPIPE and not (refused and "Broken pipe" in send_err):
        _check_send(send, send_err, node_name)
    if refused:
        raise RemoteError(node_name, RECEIVE, reply)
    if not isinstance(reply, dict) or send.returncode != 0:
        explained = explain_ssh_failure(node_name, address, ssh_err)
        if explained:
            raise TransportError(explained, explained.startswith("target node '%s' (" % node_name))
        raise TransportError("data stream to '%s' ended without a result (ssh %s)%s - what it held of this volume "
                             "before is unchanged; the next run retries" % (
                                 node_name, _exit_text(ssh.returncode),
                                 (": " + ssh_err.strip().splitlines()[-1]) if ssh_err.strip() else ""))
    return StreamResult(reply, seconds, send.returncode, send_err)


def _check_send(send, send_err, node_name):
    if send.returncode != 0:
        detail = (": " + send_err.strip().splitlines()[-1]) if send_err.strip() else ""
        raise TransportError("'%s' failed on this node (%s)%s - what '%s' held of this volume before is unchanged; "
                             "the next run retries" % (" ".join(send.args), _exit_text(send.returncode), detail,
                                                       node_name))


def _exit_text(code):
    return "killed by signal %d" % -code if code < 0 else "exit code %d" % code
