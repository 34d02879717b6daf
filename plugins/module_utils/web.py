# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The read-only web views of replication: ``storage-replication web``.

Proxmox VE's three replication panels as pages (docs/architecture.md, "The web views"): the cluster (every job of
every node, and which nodes did not answer), a node, and a guest (its jobs, its restore points, its jobs' last
runs' logs), plus a page per job with its logs. Each page refreshes itself (a small script served from here, or
a meta refresh without JavaScript); nothing is loaded from anywhere else. The same data as JSON under ``/api/``.

Where the data come from: every node, asked over the nodes' SSH trust with this service's own key, which each
node binds to ``serve --peer <node> --read-only`` (nodeview.py: one operation, ``node-status``, that reads). The
service reads no file of the runner's, not even on its own node: under systemd it runs as a dynamic user with its
key, TLS key and password file handed over as credentials, so a flaw in it reveals what the pages show and
changes nothing anywhere.

Safe by default: it listens on loopback; on any other address it refuses to start without TLS and authentication
(a bearer token, or basic authentication with a file of bcrypt or scrypt password hashes). On loopback it answers
only requests that name a loopback host (a web page elsewhere cannot reach it through DNS rebinding).

Why the standard library's HTTP server (docs/architecture.md says more): the pages are read-only, small and few,
behind authentication when they leave the node; the runner's venv stays as it is (no new dependency to pin, ship
and patch on every node), and the service is hardened where the standard server is weak: a limit on connections,
a deadline on every connection (the TLS handshake included, done in the connection's thread), no request bodies,
no files served from disk, GET and HEAD only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import ipaddress
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, wait
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils.bandwidth import format_number
from ansible_collections.storage.replication.plugins.module_utils.names import GUEST_ID_MAX, GUEST_ID_MIN, JOB_ID_RE, NODE_RE
from ansible_collections.storage.replication.plugins.module_utils.nodeview import NODE_STATUS
from ansible_collections.storage.replication.plugins.module_utils.transport import ControlChannel, RemoteError, TransportError

DEFAULT_PORT = 8099
DEFAULT_LISTEN = "127.0.0.1:%d" % DEFAULT_PORT
WEB_DIR = "/etc/storage-replication/web"
WEB_KEY = WEB_DIR + "/id_ed25519"
REFRESH_SECONDS = 5
# A node that has not answered within this time is shown as not answering (its answer is used when it comes).
ANSWER_SECONDS = 4
CONNECT_SECONDS = 5
# A session on a node is reopened after this long, so that an updated engine there is used.
CHANNEL_SECONDS = 600
# The job page shows every kept run; the guest page the last few.
GUEST_LOG_RUNS = 3
JOB_LOG_RUNS = 100
MAX_CONNECTIONS = 32
IDLE_SECONDS = 30
HANDSHAKE_SECONDS = 10
# A successful password check is remembered (its cost is deliberate) for this long.
AUTH_CACHE_SECONDS = 600
SCRYPT_N_LOG2, SCRYPT_R, SCRYPT_P = 15, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
MIN_TOKEN_LENGTH = 16
GUEST_TYPES = {"vm": "VM", "ct": "CT", "service": "Service"}


class WebError(Exception):
    """The service cannot start as configured; the message says what to change."""


# ---------------------------------------------------------------------------------------------------------------
# Where to listen, and what that requires

def parse_listen(text):
    """``HOST:PORT`` (an IP address, ``[v6]:port`` or ``localhost``) -> (address, port, is_loopback)."""
    host, sep, port = (text or "").rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise WebError("listen address %r must be HOST:PORT, e.g. %s or [::1]:%d or 192.0.2.10:8443"
                       % (text, DEFAULT_LISTEN, DEFAULT_PORT))
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise WebError("listen address %r: %r is not an IP address (give the address to listen on, e.g. 127.0.0.1, "
                       "::1, 192.0.2.10 or 0.0.0.0)" % (text, host)) from None
    return str(address), int(port), address.is_loopback


def listening_problem(loopback, tls, auth):
    """Why the service must not start this way, or None: off loopback it needs TLS and authentication."""
    if loopback:
        return None
    missing = [what for what, present in (("TLS (--tls-cert and --tls-key)", tls),
                                          ("authentication (--token-file or --password-file)", auth)) if not present]
    if not missing:
        return None
    return ("refusing to listen on a non-loopback address without %s: the pages would be open to anyone on the "
            "network - configure them, or listen on 127.0.0.1 (the default) and reach it through an SSH tunnel"
            % " and ".join(missing))


def tls_context(cert, key):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise WebError("cannot load the TLS certificate %s with its key %s: %s - give a PEM certificate (chain) and "
                       "its unencrypted PEM private key" % (cert, key, exc)) from None
    return context


# ---------------------------------------------------------------------------------------------------------------
# Authentication: a bearer token, or basic authentication against bcrypt or scrypt hashes

def _b64(data):
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text):
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password, salt=None):
    """A scrypt hash line value: ``$scrypt$ln=15,r=8,p=1$<salt>$<hash>`` (base64 without padding)."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2 ** SCRYPT_N_LOG2, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=SCRYPT_MAXMEM, dklen=32)
    return "$scrypt$ln=%d,r=%d,p=%d$%s$%s" % (SCRYPT_N_LOG2, SCRYPT_R, SCRYPT_P, _b64(salt), _b64(digest))


SCRYPT_RE = re.compile(r"^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$")
BCRYPT_RE = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
USER_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


def _check_scrypt(stored, password):
    ln, r, p, salt, digest = SCRYPT_RE.match(stored).groups()
    expected = _unb64(digest)
    computed = hashlib.scrypt(password.encode("utf-8"), salt=_unb64(salt), n=2 ** int(ln), r=int(r), p=int(p),
                              maxmem=SCRYPT_MAXMEM, dklen=len(expected))
    return hmac.compare_digest(computed, expected)


def _check_bcrypt(stored, password):
    import bcrypt  # pylint: disable=import-outside-toplevel  # paramiko's dependency: in the runner's venv
    return bcrypt.checkpw(password.encode("utf-8"), stored.encode("ascii"))


def _read_text(path, what):
    """The text of a file the web service is given; WebError naming ``what`` it is when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise WebError("cannot read the %s %s: %s" % (what, path, exc)) from None


def read_password_file(path):
    """{user: hash} from lines ``user:hash`` (``#`` comments and blank lines skipped); WebError naming the line."""
    lines = _read_text(path, "password file").splitlines()
    users = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, stored = line.strip().partition(":")
        where = "%s line %d" % (path, number)
        if not sep or not USER_RE.match(user):
            raise WebError("%s is not 'user:hash' with a user name of letters, digits and ._@- (make a line with "
                           "'storage-replication web-password USER')" % where)
        if user in users:
            raise WebError("%s: user '%s' appears twice" % (where, user))
        if SCRYPT_RE.match(stored):
            try:
                _unb64(SCRYPT_RE.match(stored).group(4))
                _unb64(SCRYPT_RE.match(stored).group(5))
            except (binascii.Error, ValueError):
                raise WebError("%s: the scrypt hash of '%s' is damaged" % (where, user)) from None
        elif BCRYPT_RE.match(stored):
            try:
                import bcrypt  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
            except ImportError:
                raise WebError("%s: a bcrypt hash needs the Python module bcrypt (the runner's venv has it: run the "
                               "web service with the runner's storage-replication command)" % where) from None
        else:
            raise WebError("%s: the password of '%s' is not a bcrypt ($2y$, 'htpasswd -B') or scrypt ($scrypt$, "
                           "'storage-replication web-password') hash; plain, MD5, SHA-1 and crypt() passwords are "
                           "refused" % (where, user))
        users[user] = stored
    if not users:
        raise WebError("the password file %s names no user (make a line with 'storage-replication web-password USER')"
                       % path)
    return users


def read_token(path):
    token = _read_text(path, "token file").strip()
    if len(token) < MIN_TOKEN_LENGTH or not token.isascii() or not token.isprintable() or " " in token:
        raise WebError("the token in %s must be one word of at least %d printable ASCII characters (e.g. from "
                       "'openssl rand -hex 32')" % (path, MIN_TOKEN_LENGTH))
    return token


class Auth:
    """Who may look: ``check(authorization header) -> True/False``. A token is accepted as ``Bearer <token>`` and,
    for browsers, as the basic-authentication password of any user name."""

    def __init__(self, token=None, users=None, clock=time.monotonic):
        self.token = token
        self.users = users or {}
        self.clock = clock
        self.verified = {}  # sha256 of "user:password" -> when it was checked
        self.lock = threading.Lock()  # one deliberate slow hash at a time: a flood cannot take every core

    @property
    def enabled(self):
        return bool(self.token or self.users)

    def check(self, header):
        if not self.enabled:
            return True
        scheme, _sep, value = (header or "").strip().partition(" ")
        if scheme.lower() == "bearer" and self.token:
            return hmac.compare_digest(value.strip().encode("utf-8"), self.token.encode("utf-8"))
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            return False
        if not sep:
            return False
        if self.token and hmac.compare_digest(password.encode("utf-8"), self.token.encode("utf-8")):
            return True
        return self._password_ok(user, password)

    def _password_ok(self, user, password):
        stored = self.users.get(user)
        if stored is None:
            return False
        key = hashlib.sha256(("%s:%s:%s" % (user, stored, password)).encode("utf-8")).hexdigest()
        with self.lock:
            seen = self.verified.get(key)
            if seen is not None and self.clock() - seen < AUTH_CACHE_SECONDS:
                return True
            good = (_check_scrypt if stored.startswith("$scrypt$") else _check_bcrypt)(stored, password)
            if good:
                self.verified = {k: t for k, t in self.verified.items() if self.clock() - t < AUTH_CACHE_SECONDS}
                self.verified[key] = self.clock()
            return good


# ---------------------------------------------------------------------------------------------------------------
# Asking the nodes

def read_cluster_nodes(path):
    """{name: configmod.Node} and the generation from a ``cluster.json`` (where the service starts from; the nodes'
    answers keep it current)."""
    try:
        with open(path, encoding="utf-8") as handle:
            cfg = configmod.parse_model(handle.read(), path)
    except (OSError, configmod.ConfigError) as exc:
        raise WebError("cannot read the cluster's nodes from %s: %s - give the cluster configuration's cluster.json "
                       "(--cluster-file)" % (path, str(exc).split("\n", maxsplit=1)[0])) from None
    return cfg.nodes, cfg.generation


def read_node_name(path):
    try:
        with open(path, encoding="utf-8") as handle:
            name = handle.read().strip()
    except OSError as exc:
        raise WebError("cannot read this node's name from %s: %s (--local-node-file)" % (path, exc)) from None
    if not NODE_RE.match(name):
        raise WebError("%s does not hold a node name (%r)" % (path, name[:80]))
    return name


def _failure_text(node, exc):
    if isinstance(exc, RemoteError):
        return "refused: %s" % exc
    text = str(exc).split("\n", maxsplit=1)[0]
    if isinstance(exc, TransportError) and not exc.unreachable and "refused this node's SSH key" in text:
        return ("refused the web service's key - re-run the runner role on every node (it installs the key of every "
                "node with runner_web_listen, bound to read-only access)")
    if isinstance(exc, TransportError):
        return text.replace("target node '%s'" % node, "node '%s'" % node)
    return "%s: %s" % (type(exc).__name__, text)


class Nodes:
    """Every node's answer to ``node-status``, asked in parallel over one kept connection per node.

    ``snapshot(max_age)`` returns the answers, asking again when the last round is older than ``max_age``; a node
    that has not answered within ``answer_seconds`` is shown as not answering, and its answer is taken when it
    arrives (a dead node never holds a page up for longer)."""

    def __init__(self, local_node, nodes, generation, key=WEB_KEY, connect=ControlChannel, answer_seconds=ANSWER_SECONDS,
                 clock=time.time):
        self.local_node = local_node
        self.nodes = dict(nodes)
        self.generation = generation
        self.key = key
        self.connect = connect
        self.answer_seconds = answer_seconds
        self.clock = clock
        self.channels = {}  # name -> (channel, opened at)
        self.node_locks = {}
        self.locks_lock = threading.Lock()
        self.pending = {}  # name -> Future of the status round in flight
        self.answers = {}  # name -> {"time", "reply"} or {"time", "error"}
        self.round_lock = threading.Lock()
        self.taken = 0.0
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ask")

    def snapshot(self, max_age):
        with self.round_lock:
            if self.clock() - self.taken >= max_age:
                self._round()
                self.taken = self.clock()
            return {name: dict(self.answers[name]) for name in sorted(self.nodes) if name in self.answers}

    def logs(self, node, jobs, runs):
        """The last ``runs`` runs' logs of ``jobs`` on ``node``: ({job: [{run, lines}]}, None) or ({}, error text)."""
        if node not in self.nodes:
            return {}, "node '%s' is not in the cluster configuration" % node
        future = self.pool.submit(self._ask, node, {"source": self.local_node, "logs": {"jobs": list(jobs), "runs": runs}})
        done, _pending = wait([future], timeout=self.answer_seconds)
        if not done:
            return {}, "node '%s' did not answer within %d s" % (node, self.answer_seconds)
        answer = future.result()
        return answer.get("reply", {}).get("logs", {}), answer.get("error")

    def _round(self):
        for name in self.nodes:
            if name not in self.pending or self.pending[name].done():
                self.pending[name] = self.pool.submit(self._ask, name, {"source": self.local_node})
        started = self.clock()
        wait([self.pending[name] for name in self.nodes], timeout=self.answer_seconds)
        for name in list(self.nodes):
            future = self.pending[name]
            if future.done():
                self.answers[name] = future.result()
            else:
                self.answers[name] = {"time": started, "error": "did not answer within %d s (still asking)"
                                                                % self.answer_seconds}
        self._adopt_newer_nodes()

    def _adopt_newer_nodes(self):
        """The nodes of the newest configuration any node answered with (a node added or removed since start)."""
        replies = [a["reply"] for a in self.answers.values() if "reply" in a and "nodes" in a["reply"]]
        newest = max(replies, key=lambda r: r.get("generation", -1), default=None)
        if newest is None or newest.get("generation", -1) <= self.generation:
            return
        nodes = {}
        for name, node in newest["nodes"].items():
            if NODE_RE.match(name) and isinstance(node, dict):
                nodes[name] = configmod.Node(name=name, address=str(node.get("address")), host_key=str(node.get("host_key")),
                                             port=int(node.get("port") or 22))
        for name in set(self.nodes) | set(nodes):
            if self.nodes.get(name) != nodes.get(name):
                self._drop_channel(name)
                self.answers.pop(name, None)
        self.nodes, self.generation = nodes, newest["generation"]

    def _lock(self, name):
        """One call at a time per node: a connection carries one request at a time."""
        with self.locks_lock:
            return self.node_locks.setdefault(name, threading.Lock())

    def _ask(self, name, request):
        """One call to ``name``; never raises: {"time", "reply"} or {"time", "error"}."""
        lock = self._lock(name)
        asked = self.clock()
        if not lock.acquire(timeout=2 * self.answer_seconds):
            return {"time": asked, "error": "busy with an earlier request that has not ended"}
        try:
            return {"time": asked, "reply": self._channel(name).call(NODE_STATUS, request, timeout=60)}
        except (TransportError, RemoteError, OSError, ValueError) as exc:
            self._drop_channel(name)
            return {"time": asked, "error": _failure_text(name, exc)}
        except Exception as exc:  # pylint: disable=broad-exception-caught
            # A defect must show on the page as this node's error, not end the service's thread silently.
            self._drop_channel(name)
            return {"time": asked, "error": "internal error while asking: %s: %s" % (type(exc).__name__, exc)}
        finally:
            lock.release()

    def _channel(self, name):
        held = self.channels.get(name)
        if held is not None and self.clock() - held[1] < CHANNEL_SECONDS:
            return held[0]
        self._drop_channel(name)
        node = self.nodes[name]
        channel = self.connect(node.name, node.address, node.host_key, key=self.key, port=node.port,
                               timeout=CONNECT_SECONDS)
        channel.connect()
        self.channels[name] = (channel, self.clock())
        return channel

    def _drop_channel(self, name):
        held = self.channels.pop(name, None)
        if held is not None:
            try:
                held[0].close()
            except Exception:  # pylint: disable=broad-exception-caught
                pass  # a connection that is already gone closes with an error: nothing to do about it

    def close(self):
        for name in list(self.channels):
            self._drop_channel(name)
        self.pool.shutdown(wait=False)


# ---------------------------------------------------------------------------------------------------------------
# What the pages show (the JSON of /api/... is exactly this)

def _newest(snapshot):
    """The answer with the newest configuration: where the cluster's guests and jobs are read from."""
    replies = [a["reply"] for a in snapshot.values() if "config_jobs" in a.get("reply", {})]
    return max(replies, key=lambda r: r.get("generation", -1), default={})


def node_summary(name, answer):
    reply = answer.get("reply", {})
    fence = reply.get("fence") or {}
    fenced = fence.get("fenced") or {}
    peer_check = reply.get("peer_check") or {}
    problems = [reply[key] for key in ("config_error", "state_error", "fence_error") if reply.get(key)]
    return {"name": name, "answered": "reply" in answer, "asked": int(answer["time"]), "error": answer.get("error"),
            "problems": problems, "generation": reply.get("generation"),
            "quorate": fence.get("quorate"), "votes": fence.get("votes"), "fence_tick": fence.get("tick"),
            "fenced": sorted(fenced.get("guests", {})) if fenced else [],
            "conflict": peer_check.get("conflict") or [], "refusal": peer_check.get("error"),
            "jobs": len(reply.get("jobs", [])), "failing": sum(1 for j in reply.get("jobs", []) if j.get("fail_count"))}


def status_text(row):
    """The Status column of Proxmox VE's replication panels: Removal Scheduled, the error, or OK."""
    if row.get("remove_job"):
        return "Removal Scheduled"
    if not row.get("answered"):
        return "unknown: %s" % row.get("unanswered")
    if row.get("status") == "interrupted":
        return row.get("state")
    return row.get("error") or "OK"


def _row(job, guests, figures=None, owner_answer=None):
    """A job's row: its configuration, and what its owner said about it (``figures``, report.job_report)."""
    guest = guests.get(str(job["guest"]), {})
    row = dict(job, guest_type=guest.get("type"), owner=guest.get("node"))
    if figures is not None:
        row.update(figures, answered=True)
    else:
        row["answered"] = False
        row["unanswered"] = ("node '%s' did not answer: %s" % (row["owner"], owner_answer.get("error"))
                             if owner_answer is not None and "reply" not in owner_answer
                             else "node '%s' did not report it" % row["owner"])
    row["status_text"] = status_text(row)
    row["running"] = row.get("state") == "SYNCING"
    return row


def _rows(snapshot, jobs, guests):
    reported = {}
    for name, answer in snapshot.items():
        for figures in answer.get("reply", {}).get("jobs", []):
            reported[(name, figures["id"])] = figures
    rows = []
    for job in jobs:
        owner = guests.get(str(job["guest"]), {}).get("node")
        rows.append(_row(job, guests, reported.get((owner, job["id"])), snapshot.get(owner)))
    return rows


def cluster_view(snapshot, served_by, now):
    newest = _newest(snapshot)
    nodes = [node_summary(name, answer) for name, answer in sorted(snapshot.items())]
    return {"time": int(now), "served_by": served_by, "generation": newest.get("generation"),
            "nodes": nodes, "unanswered": [n["name"] for n in nodes if not n["answered"]],
            "jobs": _rows(snapshot, newest.get("config_jobs", []), newest.get("guests", {}))}


def node_view(snapshot, served_by, now, node):
    if node not in snapshot:
        return None
    newest = _newest(snapshot)
    guests = newest.get("guests", {})
    mine = [j for j in newest.get("config_jobs", []) if guests.get(str(j["guest"]), {}).get("node") == node]
    replicas = [dict(record, guest=int(guest)) for guest, record in
                sorted(snapshot[node].get("reply", {}).get("replicas", {}).items(), key=lambda item: int(item[0]))]
    return {"time": int(now), "served_by": served_by, "node": node_summary(node, snapshot[node]),
            "nodes": sorted(snapshot), "jobs": _rows(snapshot, mine, guests), "replicas": replicas}


def restore_points(snapshot, guest):
    """Where the guest's replicas are, and their newest replication snapshot (each job keeps its newest one)."""
    points = []
    for name, answer in sorted(snapshot.items()):
        record = answer.get("reply", {}).get("replicas", {}).get(str(guest))
        if record:
            points.append(dict(record, node=name))
    return points


def guest_view(snapshot, served_by, now, guest, logs):
    newest = _newest(snapshot)
    guests = newest.get("guests", {})
    if str(guest) not in guests:
        return None
    jobs = [j for j in newest.get("config_jobs", []) if j["guest"] == guest]
    rows = _rows(snapshot, jobs, guests)
    found, error = logs(guests[str(guest)]["node"], [row["id"] for row in rows], GUEST_LOG_RUNS) if rows else ({}, None)
    return {"time": int(now), "served_by": served_by, "nodes": sorted(snapshot),
            "guest": dict(guests[str(guest)], id=guest), "jobs": rows, "restore_points": restore_points(snapshot, guest),
            "logs": {row["id"]: found.get(row["id"], []) for row in rows}, "logs_error": error}


def job_view(snapshot, served_by, now, job_id, logs):
    newest = _newest(snapshot)
    jobs = [j for j in newest.get("config_jobs", []) if j["id"] == job_id]
    if not jobs:
        return None
    guests = newest.get("guests", {})
    row = _rows(snapshot, jobs, guests)[0]
    found, error = logs(row["owner"], [job_id], JOB_LOG_RUNS)
    return {"time": int(now), "served_by": served_by, "nodes": sorted(snapshot), "job": row,
            "logs": found.get(job_id, []), "logs_error": error}


# ---------------------------------------------------------------------------------------------------------------
# The pages

def _e(value):
    return html.escape("" if value is None else str(value), quote=True)


def time_text(epoch):
    """A point in time as the panels show it (this server's local time); '-' for never."""
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def duration_text(seconds):
    """1.2s (a float), 12s (whole seconds), 4m 05s, 3h 07m, 2d 04h: as long as it takes to say."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return "%ds" % seconds if isinstance(seconds, int) else "%.1fs" % seconds
    seconds = int(seconds)
    for unit, size, rest_unit, rest_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return "%d%s %02d%s" % (seconds // size, unit, (seconds % size) // rest_size, rest_unit)
    return "%ds" % seconds


def _time_cell(epoch):
    if not epoch:
        return "-"
    return '<time datetime="%s">%s</time>' % (time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(epoch)), _e(time_text(epoch)))


def _status_class(row):
    if row.get("remove_job"):
        return "removal"
    if not row.get("answered"):
        return "unknown"
    if row["status_text"] == "OK":
        return "ok"
    return "error"


def _rate_cell(row):
    """pvesr's column (the job's MB/s); a job with bandwidth windows shows the limit in effect now and its windows."""
    if not row.get("rate_windows"):
        return "%s MB/s" % _e(row["rate"]) if row.get("rate") else "-"
    now = "%s MB/s" % _e(format_number(row["rate_now"])) if row.get("rate_now") else "no limit"
    return "%s now (windows: %s)" % (now, _e(row["rate_windows"]))


def _cells(row, now):
    """Every column a job's row can have, as HTML: Proxmox VE's column names and renderings."""
    if not row.get("answered"):
        last_sync = next_sync = duration = lag = fails = "?"
    else:
        last_sync = "syncing" if row["running"] else _time_cell(row.get("last_sync"))
        due = row.get("next_sync")
        next_sync = "-" if not due else "pending" if due <= now else _time_cell(due)
        duration = _e(duration_text(row.get("duration")))
        lag = "no replica yet" if row.get("lag") is None else _e(duration_text(row["lag"]))
        fails = _e(row.get("fail_count", 0))
    return {
        "Enabled": "Yes" if row.get("enabled") else "No",
        "Guest": '<a href="/guest/%d">%s %d</a>' % (row["guest"], _e(GUEST_TYPES.get(row.get("guest_type"), "")), row["guest"]),
        "Job": '<a href="/job/%s">%s</a>' % (_e(row["id"]), _e(row["id"])),
        "Source": '<a href="/node/%s">%s</a>' % (_e(row.get("owner")), _e(row.get("owner"))) if row.get("owner") else "-",
        "Target": '<a href="/node/%s">%s</a>' % (_e(row["target"]), _e(row["target"])),
        "Status": '<span class="status %s">%s</span>' % (_status_class(row), _e(row["status_text"])),
        "Last Sync": last_sync,
        "Duration": duration,
        "Next Sync": next_sync,
        "Lag": lag,
        "Fail Count": fails,
        "Schedule": _e(row.get("schedule")),
        "Rate limit": _rate_cell(row),
        "Comment": _e(row.get("comment") or ""),
        "Log": '<a href="/job/%s#logs">log</a>' % _e(row["id"]),
    }


CLUSTER_COLUMNS = ("Enabled", "Guest", "Job", "Source", "Target", "Status", "Last Sync", "Lag", "Next Sync", "Schedule",
                   "Rate limit", "Comment", "Log")
NODE_COLUMNS = ("Enabled", "Guest", "Job", "Target", "Status", "Last Sync", "Duration", "Next Sync", "Lag", "Fail Count",
                "Schedule", "Rate limit", "Comment", "Log")
GUEST_COLUMNS = ("Enabled", "Job", "Source", "Target", "Status", "Last Sync", "Duration", "Next Sync", "Lag", "Fail Count",
                 "Schedule", "Rate limit", "Comment", "Log")


def jobs_table(rows, columns, now, empty="No replication jobs."):
    if not rows:
        return '<p class="empty">%s</p>' % _e(empty)
    head = "".join("<th>%s</th>" % _e(c) for c in columns)
    body = []
    for row in rows:
        cells = _cells(row, now)
        body.append('<tr id="job-%s" class="%s">%s</tr>' % (
            _e(row["id"]), _status_class(row), "".join('<td data-column="%s">%s</td>' % (_e(c), cells[c]) for c in columns)))
    return '<table class="jobs"><thead><tr>%s</tr></thead><tbody>%s</tbody></table>' % (head, "".join(body))


def _banners(node):
    """What is wrong with a node, one line each, for the top of a page."""
    lines = []
    if not node["answered"]:
        lines.append("Node %s did not answer: %s" % (node["name"], node["error"]))
    lines += ["Node %s: %s" % (node["name"], p) for p in node["problems"]]
    if node["conflict"]:
        lines.append("Node %s: configuration conflict with %s - it runs nothing until 'storage-replication "
                     "resolve-conflict'" % (node["name"], ", ".join(node["conflict"])))
    elif node["refusal"]:
        lines.append("Node %s runs no job: %s" % (node["name"], node["refusal"]))
    if node["fenced"]:
        lines.append("Node %s is fenced: it lost quorum and stopped guest(s) %s" % (node["name"], ", ".join(node["fenced"])))
    elif node["quorate"] is False:
        lines.append("Node %s has no quorum (%s votes)" % (node["name"], node["votes"]))
    return lines


def _banner_html(lines):
    return "".join('<p class="banner">%s</p>' % _e(line) for line in lines)


def _nav(nodes, view):
    links = ['<a href="/cluster">Datacenter</a>'] + ['<a href="/node/%s">%s</a>' % (_e(n), _e(n)) for n in nodes]
    return ('<nav>%s</nav><p class="updated">Updated <span id="updated">%s</span> by %s</p>'
            % (" · ".join(links), _e(time_text(view["time"])), _e(view["served_by"])))


def cluster_page(view):
    now = view["time"]
    rows = []
    for node in view["nodes"]:
        quorum = "-" if node["quorate"] is None else "yes" if node["quorate"] else "NO"
        rows.append('<tr id="node-%s" class="%s"><td><a href="/node/%s">%s</a></td><td>%s</td><td>%s</td><td>%s</td>'
                    '<td>%s</td><td>%s</td><td>%s</td></tr>'
                    % (_e(node["name"]), "ok" if node["answered"] else "error", _e(node["name"]), _e(node["name"]),
                       "yes" if node["answered"] else "NO: %s" % _e(node["error"]), _e(node["generation"]), quorum,
                       _e(", ".join(node["fenced"]) or "-"), node["jobs"], node["failing"]))
    nodes_table = ('<table class="nodes"><thead><tr><th>Node</th><th>Answered</th><th>Generation</th><th>Quorum</th>'
                   '<th>Fenced guests</th><th>Jobs</th><th>Failing</th></tr></thead><tbody>%s</tbody></table>' % "".join(rows))
    banners = [line for node in view["nodes"] for line in _banners(node)]
    body = ("%s<h1>Datacenter → Replication</h1>%s<h2>Nodes</h2>%s<h2>Jobs</h2>%s"
            % (_nav([n["name"] for n in view["nodes"]], view), _banner_html(banners), nodes_table,
               jobs_table(view["jobs"], CLUSTER_COLUMNS, now)))
    return "Datacenter → Replication", body


def node_page(view):
    node = view["node"]
    replicas = "".join('<tr><td><a href="/guest/%d">%d</a></td><td>%s</td><td>%s</td><td>%s</td><td><code>%s</code></td></tr>'
                       % (r["guest"], r["guest"], _e(r["job"]), _e(r.get("source")), _time_cell(r["last_sync"]),
                          _e(r["snapshot"])) for r in view["replicas"])
    replicas = ('<table class="replicas"><thead><tr><th>Guest</th><th>Job</th><th>From</th><th>Replica of</th>'
                '<th>Snapshot</th></tr></thead><tbody>%s</tbody></table>' % replicas if replicas
                else '<p class="empty">No replicas on this node.</p>')
    fence = ("-" if node["quorate"] is None else "quorate (%s votes)" % node["votes"] if node["quorate"]
             else "NO QUORUM (%s votes)" % node["votes"])
    body = ('%s<h1>Node %s → Replication</h1>%s<p class="facts">Configuration generation %s · quorum: %s · fence '
            'last checked %s</p><h2>Jobs this node runs</h2>%s<h2>Replicas held here</h2>%s'
            % (_nav(view["nodes"], view), _e(node["name"]), _banner_html(_banners(node)), _e(node["generation"]),
               _e(fence), _e(time_text(node["fence_tick"])), jobs_table(view["jobs"], NODE_COLUMNS, view["time"]), replicas))
    return "Node %s → Replication" % node["name"], body


def _log_html(job, runs, open_latest=True):
    if not runs:
        return '<p class="empty">No log of %s on its source node yet.</p>' % _e(job)
    blocks = []
    for run in reversed(runs):  # the latest first
        label = "latest run" if run["run"] == 0 else "%d run(s) before the latest" % -run["run"]
        first = run["lines"][0][:19] if run["lines"] else ""
        blocks.append('<details id="log-%s-run%d"%s><summary>%s%s</summary><pre class="log">%s</pre></details>'
                      % (_e(job), -run["run"], " open" if open_latest and run["run"] == 0 else "", _e(label),
                         " (started %s)" % _e(first) if first else "", _e("\n".join(run["lines"]))))
    return "".join(blocks)


def guest_page(view):
    guest = view["guest"]
    points = "".join('<tr><td><a href="/node/%s">%s</a></td><td>%s</td><td>%s</td><td><code>%s</code></td><td>%s</td></tr>'
                     % (_e(p["node"]), _e(p["node"]), _e(p["job"]), _time_cell(p["last_sync"]), _e(p["snapshot"]),
                        _e(", ".join(p.get("volumes") or [])))
                     for p in view["restore_points"])
    points = ('<table class="restore-points"><thead><tr><th>Node</th><th>Job</th><th>Point in time</th><th>Snapshot</th>'
              '<th>Volumes</th></tr></thead><tbody>%s</tbody></table>' % points if points
              else '<p class="empty">No replica of this guest on any node that answered.</p>')
    logs = "".join('<section class="job-log" id="logs-%s"><h3>Job <a href="/job/%s">%s</a></h3>%s</section>'
                   % (_e(job), _e(job), _e(job), _log_html(job, runs)) for job, runs in view["logs"].items())
    if view["logs_error"]:
        logs = '<p class="banner">Logs: %s</p>%s' % (_e(view["logs_error"]), logs)
    title = "Guest %s %d → Replication" % (GUEST_TYPES.get(guest["type"], guest["type"]), guest["id"])
    body = ('%s<h1>%s</h1><p class="facts">On node <a href="/node/%s">%s</a> · volumes: %s</p><h2>Jobs</h2>%s'
            '<h2>Restore points</h2><p class="note">Each job keeps its newest replica on its target: the point a '
            'failover starts from.</p>%s<h2 id="logs">Last runs</h2>%s'
            % (_nav(view["nodes"], view), _e(title), _e(guest["node"]), _e(guest["node"]), _e(", ".join(guest["volumes"])),
               jobs_table(view["jobs"], GUEST_COLUMNS, view["time"]), points, logs))
    return title, body


def job_page(view):
    row = view["job"]
    logs = _log_html(row["id"], view["logs"])
    if view["logs_error"]:
        logs = '<p class="banner">Logs: %s</p>%s' % (_e(view["logs_error"]), logs)
    title = "Job %s → Replication" % row["id"]
    body = ('%s<h1>%s</h1>%s<h2 id="logs">Runs kept on node %s</h2>%s'
            % (_nav(view["nodes"], view), _e(title), jobs_table([row], GUEST_COLUMNS, view["time"]), _e(row.get("owner")),
               logs))
    return title, body


def not_found_page(view, what):
    return "Not found", "%s<h1>Not found</h1><p class=\"banner\">%s</p>" % (_nav(view.get("nodes", []), view), _e(what))


def html_document(title, body, refresh, api):
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1"><title>%s - storage.replication</title>'
            '<link rel="stylesheet" href="/static/web.css"><script src="/static/web.js" defer></script>'
            '<noscript><meta http-equiv="refresh" content="%d"></noscript></head><body>'
            '<p id="offline" class="banner" hidden></p><main id="main" data-refresh="%d">%s</main>'
            '<footer>storage.replication · read-only · the same as JSON: <a href="%s">%s</a></footer></body></html>\n'
            % (_e(title), refresh, refresh, body, _e(api), _e(api)))


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }
nav { margin: 1em 0 0; } nav a { margin-right: .3em; }
h1 { font-size: 1.4em; margin: .4em 0; } h2 { font-size: 1.15em; margin: 1.2em 0 .4em; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr.error td { background: #fff0f0; } tr.removal td { background: #fff8e0; } tr.unknown td { background: #f4f4f4; }
.status.ok { color: #176f17; } .status.error { color: #b00; font-weight: bold; } .status.removal { color: #8a5a00; }
.status.unknown { color: #666; font-style: italic; }
.banner { background: #fde2e2; border: 1px solid #e99; padding: .4em .6em; margin: .4em 0; }
.updated, .facts, .note, footer { color: #555; } footer { margin-top: 2em; font-size: .9em; }
pre.log { background: #f7f7f7; border: 1px solid #ddd; padding: .5em; overflow-x: auto; white-space: pre-wrap; }
details { margin: .3em 0; } .empty { color: #666; }
"""

# The page refreshes its <main> from the same URL every data-refresh seconds; the open log sections stay open.
# Without JavaScript the <noscript> meta refresh reloads the whole page.
SCRIPT = """
(function () {
  "use strict";
  var main = document.getElementById("main");
  var offline = document.getElementById("offline");
  if (!main || !window.fetch || !window.DOMParser) { return; }
  var seconds = parseInt(main.getAttribute("data-refresh"), 10) || 5;
  function openSections() {
    var open = {};
    main.querySelectorAll("details[id]").forEach(function (d) { open[d.id] = d.open; });
    return open;
  }
  function refresh() {
    fetch(window.location.href, {cache: "no-store", credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("main");
        if (!fresh) { throw new Error("no page content"); }
        var open = openSections();
        fresh.querySelectorAll("details[id]").forEach(function (d) {
          if (Object.prototype.hasOwnProperty.call(open, d.id)) { d.open = open[d.id]; }
        });
        main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes).map(function (n) {
          return document.importNode(n, true);
        }));
        offline.hidden = true;
      })
      .catch(function (error) {
        offline.textContent = "Not updated since the last refresh: " + error.message + " (retrying every " + seconds + " s)";
        offline.hidden = false;
      })
      .finally(function () { window.setTimeout(refresh, seconds * 1000); });
  }
  window.setTimeout(refresh, seconds * 1000);
}());
"""


# ---------------------------------------------------------------------------------------------------------------
# Serving them

SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    # Nothing from elsewhere, no inline script or style: what the page runs is /static/web.js alone.
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
)
STATIC = {"/static/web.css": ("text/css; charset=utf-8", STYLE), "/static/web.js": ("text/javascript; charset=utf-8", SCRIPT)}
API_INDEX = {
    "/api/cluster": "every job of the cluster with its owner's figures, every node and whether it answered",
    "/api/node/<node>": "the jobs a node runs, the replicas it holds, its quorum and fence state",
    "/api/guest/<id>": "a guest's jobs, restore points and the last runs' logs",
    "/api/job/<id>": "one job and the logs of every run its source node keeps",
}
PAGE_RE = re.compile(r"^/(api/)?(cluster|node|guest|job)(?:/([^/]+))?/?$")
# Unset: no such argument; each page's key is checked against its own pattern.
KEY_CHECKS = {"node": NODE_RE.match, "job": JOB_ID_RE.match,
              "guest": lambda key: key.isdigit() and GUEST_ID_MIN <= int(key) <= GUEST_ID_MAX}


class Response:
    def __init__(self, status, content_type, body, headers=()):
        self.status = status
        self.content_type = content_type
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.headers = list(headers)


def _host_name(host_header):
    host = (host_header or "").strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class App:
    """Routes a GET to a page, its JSON, a static file or an error; knows nothing of sockets."""

    def __init__(self, nodes, served_by, refresh=REFRESH_SECONDS, auth=None, loopback=True, allowed_hosts=(),
                 clock=time.time):
        self.nodes = nodes
        self.served_by = served_by
        self.refresh = refresh
        self.auth = auth or Auth()
        self.loopback = loopback
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.clock = clock

    def host_allowed(self, host_header):
        """On loopback only requests naming a loopback host are answered: a web page that makes the browser send
        its own host name to 127.0.0.1 (DNS rebinding) gets nothing."""
        if not self.loopback:
            return True
        host = _host_name(host_header)
        if host == "localhost" or host in self.allowed_hosts:
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def respond(self, path, headers):
        if not self.host_allowed(headers.get("Host")):
            return Response(421, "text/plain; charset=utf-8", "this service answers only requests for localhost or "
                            "a loopback address (start it with --allow-host NAME to add a name)\n")
        if not self.auth.check(headers.get("Authorization")):
            return Response(401, "text/plain; charset=utf-8", "authentication required\n",
                            [("WWW-Authenticate", 'Basic realm="storage-replication", charset="UTF-8"')])
        path = urlsplit(path).path
        if path == "/":
            return Response(303, "text/plain; charset=utf-8", "see /cluster\n", [("Location", "/cluster")])
        if path in STATIC:
            content_type, text = STATIC[path]
            return Response(200, content_type, text)
        if path in ("/api", "/api/"):
            return self._json(200, {"urls": API_INDEX})
        match = PAGE_RE.match(path)
        if match is None:
            return Response(404, "text/plain; charset=utf-8", "no such page: the pages are /cluster, /node/<node>, "
                            "/guest/<id>, /job/<id>, and their JSON under /api/\n")
        api, page, key = match.groups()
        if (page == "cluster") != (key is None) or (key is not None and not KEY_CHECKS[page](key)):
            return self._not_found(api, {}, "no such %s: %r" % (page, key))
        view = self.view(page, key)
        if view.get("missing"):
            return self._not_found(api, view, view["missing"])
        if api:
            return self._json(200, view)
        title, body = {"cluster": cluster_page, "node": node_page, "guest": guest_page, "job": job_page}[page](view)
        return Response(200, "text/html; charset=utf-8", html_document(title, body, self.refresh, "/api" + path))

    def view(self, page, key):
        snapshot = self.nodes.snapshot(max_age=1.0)
        now = self.clock()
        if page == "cluster":
            return cluster_view(snapshot, self.served_by, now)
        if page == "node":
            view = node_view(snapshot, self.served_by, now, key)
        elif page == "guest":
            view = guest_view(snapshot, self.served_by, now, int(key), self.nodes.logs)
        else:
            view = job_view(snapshot, self.served_by, now, key, self.nodes.logs)
        if view is None:
            newest = _newest(snapshot)
            return {"time": int(now), "served_by": self.served_by, "nodes": sorted(snapshot),
                    "missing": "no %s %s in the cluster configuration (generation %s)"
                               % (page, key, newest.get("generation", "unknown"))}
        return view

    def _not_found(self, api, view, what):
        if api:
            return self._json(404, {"error": what})
        view = dict(view, time=int(self.clock()), served_by=self.served_by)
        title, body = not_found_page(view, what)
        return Response(404, "text/html; charset=utf-8", html_document(title, body, self.refresh, "/api"))

    @staticmethod
    def _json(status, data):
        return Response(status, "application/json", json.dumps(data, indent=1, sort_keys=True) + "\n")


class Handler(BaseHTTPRequestHandler):
    """GET and HEAD; every other method is answered 405. No request body is ever read."""

    server_version = "storage-replication-web"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = IDLE_SECONDS

    def do_GET(self):  # noqa: N802 (the standard library's name)
        self._answer(head=False)

    def do_HEAD(self):  # noqa: N802
        self._answer(head=True)

    def _refuse_method(self):
        self.close_connection = True
        self._send(Response(405, "text/plain; charset=utf-8", "read-only: GET and HEAD only\n", [("Allow", "GET, HEAD")]))

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815

    def _answer(self, head):
        if self.headers.get("Content-Length", "0") not in ("", "0") or self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # a body is never read: the connection cannot carry another request
        try:
            response = self.server.app.respond(self.path, self.headers)
        except Exception:  # pylint: disable=broad-exception-caught
            traceback.print_exc(file=sys.stderr)
            response = Response(500, "text/plain; charset=utf-8", "internal error of the web service (its log has the "
                                "traceback)\n")
        self._send(response, head)

    def _send(self, response, head=False):
        self.send_response(response.status)
        for name, value in SECURITY_HEADERS + tuple(response.headers):
            self.send_header(name, value)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    def log_request(self, code="-", size="-"):
        if isinstance(code, int) and code >= 400 and code not in (401, 404):
            super().log_request(code, size)

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        sys.stderr.write("%s %s\n" % (self.address_string(), format % args))


class Server(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once (more are closed at once), each with a deadline;
    TLS is negotiated in the connection's own thread, so a slow handshake holds up no one else."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, app, tls=None, max_connections=MAX_CONNECTIONS):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self.tls = tls
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, Handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request, client_address):
        connection = request
        try:
            if self.tls is not None:
                request.settimeout(HANDSHAKE_SECONDS)
                connection = self.tls.wrap_socket(request, server_side=True)
            self.RequestHandlerClass(connection, client_address, self)
        except (ssl.SSLError, OSError):
            pass  # a client that went away or spoke no TLS: nothing to answer
        finally:
            if connection is not request:
                connection.close()


def _say(line):
    """The service's start line, for its journal (stdout, at once)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def serve(listen, key=WEB_KEY, cluster_file=None, local_node_file=None, tls_cert=None, tls_key=None, token_file=None,
          password_file=None, refresh=REFRESH_SECONDS, allowed_hosts=(), check_only=False, out=None):
    """Check the configuration (WebError: it must not start), then serve until killed; ``check_only``: return the
    line that says how it would serve instead (the runner role checks this before it starts the service)."""
    address, port, loopback = parse_listen(listen)
    if bool(tls_cert) != bool(tls_key):
        raise WebError("TLS needs both --tls-cert and --tls-key")
    auth = Auth(token=read_token(token_file) if token_file else None,
                users=read_password_file(password_file) if password_file else None)
    problem = listening_problem(loopback, bool(tls_cert), auth.enabled)
    if problem:
        raise WebError("%s: %s" % (listen, problem))
    tls = tls_context(tls_cert, tls_key) if tls_cert else None
    if not os.access(key, os.R_OK):
        raise WebError("cannot read the web service's SSH key %s (--key): the runner role creates it when "
                       "runner_web_listen is set" % key)
    local_node = read_node_name(local_node_file)
    nodes, generation = read_cluster_nodes(cluster_file)
    summary = ("storage-replication web: serving %s://%s/ (read-only, %s) for node %s"
               % ("https" if tls else "http", listen, "authentication required" if auth.enabled else "no authentication",
                  local_node))
    if check_only:
        return summary.replace("serving", "would serve")
    app = App(Nodes(local_node, nodes, generation, key=key), local_node, refresh, auth, loopback, allowed_hosts)
    try:
        server = Server((address, port), app, tls)
    except OSError as exc:
        raise WebError("cannot listen on %s: %s" % (listen, exc)) from None
    (out or _say)(summary)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        app.nodes.close()
    return summary
