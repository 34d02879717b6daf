# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Cluster-wide configuration changes: one validated change, the same on every node, generation + 1.

``change_cluster(change)`` is the one function the CLI, the modules and the playbooks use:

1. load this node's configuration, apply ``change`` to a copy, validate the whole result (ConfigError: nothing
   was written anywhere);
2. ask every other node for its generation (receiver operation ``get-config``), all in parallel. A node that
   cannot be reached makes the change refused (ClusterError) unless ``force``; a node holding a newer
   generation makes it refused always, and this node adopts that newer configuration at once, so that the
   operator can look at it and repeat the command;
3. commit: write the result with generation + 1 here, then push it to every reachable node (operation
   ``set-config``); a node adopts a pushed configuration only if it is newer than its own.

A node that missed a change (it was down, and the change was forced) catches up with ``catch_up``: the runner
calls it before it acts, and adopts the newest configuration a peer holds (DESIGN.md, safety rule 2).

A node whose own configuration is damaged (configmod.ConfigCorrupt) changes nothing, serves nothing and adopts no
push; ``restore_config`` replaces it with the configuration a majority of its peers hold (safety rule 7).

The serving side of these operations is here too (``serve_get_config``, ``serve_quorum``); serve.py lists them in
its operations table. A request of the wrong shape is Refused (protocol.py), a refused change raises ConfigError;
serve.py answers either as an error reply.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import quorum
from ansible_collections.storage.replication.plugins.module_utils.files import atomic_write
from ansible_collections.storage.replication.plugins.module_utils.protocol import check_request_keys
from ansible_collections.storage.replication.plugins.module_utils.state import DEFAULT_STATEDIR, read_local_node
from ansible_collections.storage.replication.plugins.module_utils.transport import (
    NODE_KEY, ControlChannel, RemoteError, TransportError)

GET_CONFIG = "get-config"
# The acceptor's promise and accepted value for the next generation (quorum.py), beside the generations.
QUORUM_STATE_FILE = "quorum-state.json"
# A node that does not complete the SSH handshake in this time counts as unreachable; once connected, an
# operation (which may fsync a generation) gets longer, so that a busy peer is not mistaken for a dead one.
PEER_CONNECT_TIMEOUT = 15
PEER_CALL_TIMEOUT = 60
CONFIG_FILES = (configmod.JOBS_FILE, configmod.MODEL_FILE)

# What happened on each node, as reported in ClusterChange.nodes.
WRITTEN = "written"
UNCHANGED = "unchanged"
SKIPPED = "skipped"
FAILED = "failed"


class ClusterError(RuntimeError):
    """The change was refused or could not reach every node; the message names the nodes and what to do."""


class ClusterChange:
    """The outcome of ``change_cluster``.

    ``changed``: the configuration changed (in check mode: would change). ``generation``: the generation now in
    force. ``nodes``: ``{node: (status, detail)}`` with status written / unchanged / skipped / failed.
    ``before``/``after``: the configurations (for diffs). ``result``: what the change function returned.
    """

    def __init__(self, before, after, result, changed, check_mode=False):
        self.before = before
        self.after = after
        self.result = result
        self.changed = changed
        self.check_mode = check_mode
        self.forced = False  # committed without a majority (force_quorum)
        self.nodes = {}

    @property
    def generation(self):
        return self.after.generation

    @property
    def warnings(self):
        """One line per node the change did not (or, in check mode, would not) reach: it catches up later."""
        text = ("node '%s' does not answer (%s): it would adopt generation %d at its next run" if self.check_mode else
                "node '%s' did not get generation %d (%s): it adopts it from a peer at its next run")
        return [(text % (name, detail, self.generation) if self.check_mode else text % (name, self.generation, detail))
                for name, (status, detail) in sorted(self.nodes.items()) if status in (SKIPPED, FAILED)]

    def as_dict(self):
        return {"changed": self.changed, "generation": self.generation, "forced": self.forced,
                "nodes": {name: {"status": status, "detail": detail} for name, (status, detail) in sorted(self.nodes.items())}}


# ---------------------------------------------------------------------------------------------------------------
# Talking to the peers

def peer_nodes(cfg, local_node, extra=None):
    """The other nodes of ``cfg`` (and of ``extra``: nodes a change removes still hear of it), by name."""
    nodes = dict(extra.nodes) if extra is not None else {}
    nodes.update(cfg.nodes)
    return [nodes[name] for name in sorted(nodes) if name != local_node]


def connect_peer(node, key, connect):
    channel = connect(node.name, node.address, node.host_key, key=key, port=node.port, timeout=PEER_CONNECT_TIMEOUT)
    return channel.connect()


def on_every_peer(peers, work):
    """Run ``work(node)`` for every peer in parallel; returns ``{name: result or exception}``."""
    if not peers:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(peers))) as pool:
        futures = {node.name: pool.submit(_catching, work, node) for node in peers}
    return {name: future.result() for name, future in futures.items()}


def _catching(work, node):
    try:
        return work(node)
    except TransportError as exc:
        if not exc.unreachable:
            return exc
        # transport's own message speaks of replication targets; here any peer is meant.
        cause = exc.__cause__
        cause = (str(cause).replace("[Errno None] ", "") or type(cause).__name__) if cause is not None else "no answer"
        return TransportError("unreachable at %s port %d (%s)" % (node.address, node.port, cause), True)
    except (RemoteError, configmod.ConfigError) as exc:
        return exc


def ask_generation(channel, cfg, local_node, content=False):
    reply = channel.call(GET_CONFIG, {"source": local_node, "generation": cfg.generation, "content": content},
                         timeout=PEER_CALL_TIMEOUT)
    generation = reply.get("generation")
    if isinstance(generation, bool) or not isinstance(generation, int):
        raise configmod.ConfigError("node '%s' answered get-config without a generation" % channel.node_name)
    return reply


def _pushed_config(reply, node_name):
    """The configuration a peer sent (get-config with content); ConfigError if it does not parse cleanly."""
    files = reply.get("files")
    if not isinstance(files, dict) or not all(isinstance(files.get(name), str) for name in CONFIG_FILES):
        raise configmod.ConfigError("node '%s' sent no configuration files" % node_name)
    cfg = configmod.from_files(files[configmod.MODEL_FILE], files[configmod.JOBS_FILE], "node '%s'" % node_name)
    if cfg.warnings:
        raise configmod.ConfigError("the configuration from node '%s' has problems: %s" % (node_name, "; ".join(cfg.warnings)))
    cfg.validate()
    return cfg


def describe(exc):
    return str(exc).split("\n", maxsplit=1)[0]


# ---------------------------------------------------------------------------------------------------------------
# The change: a majority commits it (quorum.py), built on a named version

class _Calls:
    """``call(node, operation, request)`` for quorum.py: this node's acceptor directly, every other node over one
    control connection each, opened on first use and kept for the whole change."""

    def __init__(self, nodes, local_node, confdir, key, connect):
        self.nodes, self.local_node, self.confdir = nodes, local_node, confdir
        self.key, self.connect = key, connect
        self.channels, self.lock = {}, threading.Lock()
        self.import_error = None  # this Python lacks what the transport needs (paramiko): not a peer's fault

    def __call__(self, name, operation, request):
        if name == self.local_node:
            return serve_quorum_here(self.confdir, operation, request)
        channel = self._channel(name)
        try:
            return channel.call(operation, dict(request, source=self.local_node), timeout=PEER_CALL_TIMEOUT)
        except (TransportError, RemoteError) as exc:
            raise quorum.Unreachable(describe(_catching(lambda _node: _raise(exc), self.nodes[name]))) from exc

    def _channel(self, name):
        with self.lock:
            if name not in self.channels:
                self.channels[name] = None
                try:
                    channel = _catching(lambda node: connect_peer(node, self.key, self.connect), self.nodes[name])
                except ImportError as exc:
                    self.import_error, channel = exc, exc
                if isinstance(channel, Exception):
                    del self.channels[name]
                    raise quorum.Unreachable(describe(channel))
                self.channels[name] = channel
            return self.channels[name]

    def close(self, keep=None):
        """Close the connections, or hand them to ``keep`` (a run's ChannelPool.adopt, which keeps those still in
        step with their peer for the run's jobs)."""
        for channel in self.channels.values():
            if channel is None:
                continue
            if keep is None:
                channel.close()
            else:
                keep(channel)


def _raise(exc):
    raise exc


def change_cluster(change, confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR, force=False, check_mode=False,
                   key=NODE_KEY, connect=ControlChannel, force_quorum=False):
    """Apply ``change(cfg)`` to the cluster configuration by quorum; returns a ClusterChange.

    ``change`` edits the ClusterConfig it is given (its return value becomes ``ClusterChange.result``) and raises
    ConfigError for bad input. The change commits when a majority of the nodes accept it as generation + 1 of the
    version it was built on (quorum.py); if another change took that generation first, it is rebuilt on the new one
    and committed when it still applies (compare-and-swap), else refused. ``force`` lets it commit while a minority
    cannot be reached (they catch up later); ``force_quorum`` is the emergency override that commits with whatever
    answers (Proxmox's `pvecm expected 1`), recorded as forced. ``check_mode`` asks the nodes and writes nothing.
    Raises ConfigError (invalid change, nothing written) or ClusterError (refused).
    """
    local_node = read_local_node(statedir)
    before = configmod.load(confdir)
    after = copy.deepcopy(before)
    result = change(after)
    after.validate()
    outcome = ClusterChange(before, after, result, changed=not after.same_content(before), check_mode=check_mode)
    if not outcome.changed:
        return outcome
    if before.nodes and local_node not in before.nodes:
        raise ClusterError("this node ('%s') is not a node of the cluster configuration (%s) - run the command on a "
                           "cluster node, or fix /var/lib/storage-replication/local-node"
                           % (local_node, ", ".join(sorted(before.nodes))))
    after.generation = before.generation + 1
    nodes = {node.name: node for node in peer_nodes(after, local_node, before)}
    calls = _Calls(nodes, local_node, confdir, key, connect)
    try:
        if check_mode:
            _check_quorum(calls, sorted(nodes), local_node, before, force, force_quorum, outcome)
            return outcome
        # A change forced without a majority says so in the configuration itself, for as long as it is kept.
        built = _Built(change, local_node if force_quorum and not _has_majority(calls, sorted(nodes), local_node) else None)
        try:
            committed = quorum.propose(built, local_node, sorted(nodes), calls, allow_missing=force, force=force_quorum)
        except quorum.QuorumError as exc:
            if calls.import_error is not None:
                raise calls.import_error from None
            raise ClusterError(str(exc)) from exc
    finally:
        calls.close()
    return built.outcome(committed, outcome)


class _Built:
    """The change as quorum.py applies it: to the content of the version it is built on (rebuilt when another change
    took that generation first); keeps what the last build made, for the ClusterChange."""

    def __init__(self, change, forced_by=None):
        self.change, self.before, self.after, self.result = change, None, None, None
        self.forced_by = forced_by

    def __call__(self, content):
        before = _content_config(content, "the committed configuration")
        after = copy.deepcopy(before)
        self.result = self.change(after)
        after.validate()
        if after.same_content(before):
            return content
        after.generation = before.generation + 1
        if self.forced_by:
            after.forced = (after.forced + [{"generation": after.generation, "node": self.forced_by,
                                             "time": int(time.time())}])[-configmod.FORCED_KEPT:]
        self.before, self.after = before, after
        return after.content()

    def outcome(self, committed, outcome):
        """``outcome`` updated with what was committed, where."""
        if not committed.committed or self.after is None:
            outcome.changed = False
            outcome.after = outcome.before
            return outcome
        outcome.before, outcome.after, outcome.result = self.before, self.after, self.result
        outcome.forced = committed.forced
        for name, status in committed.nodes.items():
            detail = committed.details.get(name, "")
            outcome.nodes[name] = {quorum.COMMITTED: (WRITTEN, ""), quorum.CAUGHT_UP: (WRITTEN, "caught up"),
                                   quorum.UNREACHABLE: (SKIPPED, detail)}.get(status, (FAILED, detail or status))
        return outcome


def _check_quorum(calls, peers, local_node, before, force, force_quorum, outcome):
    """Check mode: what the change would meet, from every node's committed version; nothing is written."""
    replies = _statuses(calls, [local_node] + peers)
    missing = {n: describe(r) for n, r in replies.items() if isinstance(r, Exception)}
    newer = {n: quorum.Version.parse(r["version"]).generation for n, r in replies.items()
             if not isinstance(r, Exception) and quorum.Version.parse(r["version"]).generation > before.generation}
    if newer:
        name = max(newer, key=lambda n: (newer[n], n))
        raise ClusterError("node '%s' holds cluster configuration generation %d, newer than this node's %d - the "
                           "change would be built on it; nothing was changed" % (name, newer[name], before.generation))
    need = (len(peers) + 1) // 2 + 1
    if len(peers) + 1 - len(missing) < need and not force_quorum:
        raise ClusterError("no quorum: %d of %d nodes answer (need %d): %s" % (
            len(peers) + 1 - len(missing), len(peers) + 1, need, "; ".join("node '%s': %s" % i for i in sorted(missing.items()))))
    if missing and not (force or force_quorum):
        raise ClusterError("nothing was changed: %s - bring the node(s) back, or allow unreachable nodes (CLI "
                           "--allow-unreachable, module option allow_unreachable; a majority is still required)"
                           % "; ".join("node '%s': %s" % item for item in sorted(missing.items())))
    for name, detail in missing.items():
        outcome.nodes[name] = (SKIPPED, detail)


def _has_majority(calls, peers, local_node):
    answers = _statuses(calls, [local_node] + peers).values()
    return 2 * sum(1 for a in answers if not isinstance(a, Exception)) > len(peers) + 1


def _statuses(calls, names):
    """{name: quorum status reply, or the exception that stood for it} of every node, asked in parallel."""
    def status(name):
        try:
            return calls(name, quorum.STATUS, {})
        except (quorum.Unreachable, configmod.ConfigError) as exc:
            return exc
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(names)))) as pool:
        return dict(zip(names, pool.map(status, names)))


def _content_config(content, what):
    files = content if isinstance(content, dict) else {}
    if not all(isinstance(files.get(name), str) for name in CONFIG_FILES):
        raise configmod.ConfigError("%s has no configuration files" % what)
    cfg = configmod.from_files(files[configmod.MODEL_FILE], files[configmod.JOBS_FILE], what)
    if cfg.warnings:
        raise configmod.ConfigError("%s has problems: %s" % (what, "; ".join(cfg.warnings)))
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# Catching up (the runner, before it acts)

class CatchUp:
    """What ``catch_up`` found: ``adopted`` (generation taken over, or None), ``source`` (from which node),
    ``unreachable`` ({node: message}), ``generation`` (this node's generation now) and ``conflicts`` (nodes holding
    another content under this generation: only a forced change makes that, see ``resolve-conflict``)."""

    def __init__(self, generation):
        self.generation = generation
        self.adopted = None
        self.source = None
        self.unreachable = {}
        self.conflicts = []


def catch_up(confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR, key=NODE_KEY, connect=ControlChannel,
             check_mode=False, current=None, keep=None):
    """Adopt the newest committed configuration any peer holds, and finish a change a dead proposer left accepted
    but uncommitted (quorum.catch_up).  ``check_mode`` writes nothing: it says what would be adopted.  ``current``:
    this node's configuration as the caller has just loaded it (the runner), which names the peers to ask; the
    versions compared are what each node's acceptor answers, this node's own read from its files under the lock.
    ``keep``: what takes the peer connections when it is done (the runner's ChannelPool.adopt), else they close."""
    local_node = read_local_node(statedir)
    current = configmod.load(confdir) if current is None else current
    nodes = {node.name: node for node in peer_nodes(current, local_node)}
    calls = _Calls(nodes, local_node, confdir, key, connect)
    if check_mode:
        try:
            return _would_catch_up(calls, local_node, sorted(nodes), current)
        finally:
            calls.close()
    try:
        found = quorum.catch_up(local_node, sorted(nodes), calls)
    except quorum.QuorumError as exc:
        raise ClusterError("catching up with the peers failed: %s - this node does not act on a configuration it "
                           "cannot confirm" % exc) from exc
    finally:
        calls.close(keep)
    result = CatchUp(found.version.generation if found.version else current.generation)
    result.unreachable = dict(found.unreachable)
    result.conflicts = list(found.conflicts)
    if found.adopted is not None:
        result.adopted, result.source = found.adopted.generation, found.source
    return result


def _would_catch_up(calls, local_node, peers, current):
    """What catch_up would adopt, from every node's committed version; nothing is written."""
    replies = _statuses(calls, [local_node] + peers)
    result = CatchUp(current.generation)
    result.unreachable = {n: describe(r) for n, r in replies.items() if isinstance(r, Exception)}
    peer_versions = {n: quorum.Version.parse(r["version"]) for n, r in replies.items()
                     if n != local_node and not isinstance(r, Exception)}
    newer = {n: v.generation for n, v in peer_versions.items() if v.generation > current.generation}
    if newer:
        result.source = max(newer, key=lambda n: (newer[n], n))
        result.adopted = newer[result.source]
    result.conflicts = quorum.conflicts(quorum.Version.of(current.generation, current.content()), peer_versions)[0]
    return result


def _with_channel(node, key, connect, work):
    channel = connect_peer(node, key, connect)
    try:
        return work(channel)
    finally:
        channel.close()


# ---------------------------------------------------------------------------------------------------------------
# Resolving a configuration conflict (`storage-replication resolve-conflict`)

def resolve_conflict(confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR, key=NODE_KEY, connect=ControlChannel):
    """Take the version a majority of the cluster's nodes hold when this node holds another content under the same
    generation (a change forced without quorum on a minority); this node's own is kept aside as a file.
    Returns a Restored (``generation``, ``source``, ``kept``), or None when there is no conflict. ClusterError when
    no version has a majority of all the nodes."""
    local_node = read_local_node(statedir)
    current = configmod.load(confdir)
    nodes = {node.name: node for node in peer_nodes(current, local_node)}
    calls = _Calls(nodes, local_node, confdir, key, connect)
    try:
        replies = _statuses(calls, sorted(nodes))
        mine = quorum.Version.of(current.generation, current.content())
        versions = {n: quorum.Version.parse(r["version"]) for n, r in replies.items() if not isinstance(r, Exception)}
        differing, _majority = quorum.conflicts(mine, versions)
        if not differing:
            return None
        counts = {}
        for version in list(versions.values()) + [mine]:
            counts[version] = counts.get(version, 0) + 1
        winner = max(counts, key=counts.get)
        if winner == mine or 2 * counts[winner] <= len(nodes) + 1:
            raise ClusterError("configuration conflict at generation %d: no other version is held by a majority of the "
                               "%d nodes (%s) - bring the other nodes back and run resolve-conflict again"
                               % (current.generation, len(nodes) + 1, ", ".join(
                                   "%s: %s" % (n, v) for n, v in sorted(versions.items()))))
        source = sorted(n for n, v in versions.items() if v == winner)[0]
        content = calls(source, quorum.STATUS, {"content": True}).get("content")
        if quorum.Version.of(winner.generation, content) != winner:
            raise ClusterError("node '%s' changed its configuration while it was read - run resolve-conflict again" % source)
    finally:
        calls.close()
    kept = configmod.replace_conflicting(_content_config(content, "node '%s'" % source), confdir)
    return Restored(winner.generation, source, kept, "took cluster configuration generation %d from node '%s' (the "
                    "version a majority holds); this node's own is kept as %s")


# ---------------------------------------------------------------------------------------------------------------
# Restoring a damaged configuration (the runner before it acts, and `storage-replication restore-config`)

class Restored:
    """What ``restore_config`` did: ``generation`` taken from node ``source``; ``kept`` is where the damaged copy
    is now (None if nothing was left of it)."""

    def __init__(self, generation, source, kept,
                 text="restored cluster configuration generation %d from node '%s', the corrupt copy is kept as %s"):
        self.generation = generation
        self.source = source
        self.kept = kept
        self.text = text

    @property
    def message(self):
        return self.text % (self.generation, self.source, self.kept or "(nothing: it was missing)")


def restore_config(confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR, key=NODE_KEY, connect=ControlChannel):
    """Replace this node's damaged configuration with the newest one among its peers, if a majority of the peers
    answer with a readable one. Returns a Restored, or None if this node's configuration is readable.

    Why a majority of the peers: a change commits on a majority of all nodes, so any majority of the peers holds
    at least one node of every committed change (even if this node was in it), and their newest generation is
    the one in force. Raises ClusterError (one line) if that many peers cannot be heard.
    """
    try:
        configmod.load(confdir)
        return None
    except configmod.ConfigCorrupt as exc:
        damage = exc
    local_node = read_local_node(statedir)
    peers = [node for name, node in sorted(configmod.known_nodes(confdir).items()) if name != local_node]
    probe = configmod.ClusterConfig()  # get-config reads nothing of ours but the generation field

    def fetch(node):
        return _with_channel(node, key, connect,
                             lambda ch: _pushed_config(ask_generation(ch, probe, local_node, content=True), node.name))
    answers = on_every_peer(peers, fetch)
    readable = {name: cfg for name, cfg in answers.items() if not isinstance(cfg, Exception)}
    if not peers or len(readable) * 2 <= len(peers):
        heard = "; ".join("node '%s': %s" % (n, describe(a)) for n, a in sorted(answers.items()) if n not in readable)
        raise ClusterError("the cluster configuration of this node cannot be read: %s; restoring it from the peers "
                           "failed: %d of %d peers answered with a readable configuration and a majority is needed%s - "
                           "nothing acts on it; bring the peers back (the runner tries again at every run), or point "
                           "the symlink %s to an intact generation in %s"
                           % (damage.problem, len(readable), len(peers), " (%s)" % heard if heard else "",
                              os.path.join(confdir, configmod.CURRENT_LINK), os.path.join(confdir, configmod.GENERATIONS_DIR)))
    source = max(readable, key=lambda n: (readable[n].generation, n))
    kept = configmod.restore(readable[source], confdir)
    return Restored(readable[source].generation, source, kept)


# ---------------------------------------------------------------------------------------------------------------
# The serving side (receiver operations)

def serve_get_config(receiver, request):
    """``get-config``: this node's generation, and with ``content: true`` its two configuration files."""
    check_request_keys(request, ("source", "generation", "content"))
    cfg = configmod.load(receiver.confdir)
    reply = {"generation": cfg.generation}
    if request.get("content") is True:
        reply["files"] = cfg.content()
    return reply


def serve_quorum(operation):
    """The receiver operation ``operation`` (quorum.STATUS, PREPARE, ACCEPT, COMMIT) of this node's acceptor."""
    def serve(receiver, request):
        check_request_keys(request, QUORUM_FIELDS[operation] + ("source",))
        return serve_quorum_here(receiver.confdir, operation, {k: v for k, v in request.items() if k != "source"})
    return serve


QUORUM_FIELDS = {quorum.STATUS: ("content", "history"), quorum.PREPARE: ("slot", "ballot"),
                 quorum.ACCEPT: ("slot", "ballot", "content", "base"), quorum.COMMIT: ("slot", "content")}


def serve_quorum_here(confdir, operation, request):
    """Run one acceptor handler under the configuration lock (sessions of several peers may arrive at once)."""
    with configmod.config_lock(confdir):
        acceptor = quorum.Acceptor(_AcceptorStore(confdir), lambda: _committed(confdir),
                                   lambda generation, content: _commit(confdir, generation, content),
                                   lambda: _history(confdir))
        try:
            return acceptor.handle(operation, request)
        except (TypeError, ValueError, KeyError) as exc:
            raise configmod.ConfigError("invalid %s request (%s): refused" % (operation, exc)) from None


def _committed(confdir):
    cfg = configmod.load(confdir)
    return cfg.generation, cfg.content()


def _history(confdir):
    """The versions of the generations this node keeps (configmod keeps the last few)."""
    return [quorum.Version.of(cfg.generation, cfg.content()) for cfg in configmod.kept_generations(confdir)]


def _commit(confdir, generation, content):
    """Write a chosen content as this node's generation ``generation`` (the caller holds the lock)."""
    cfg = _content_config(content, "the chosen configuration")
    if cfg.generation != generation:
        raise configmod.ConfigError("the chosen configuration says generation %d, its slot is %d: refused"
                                    % (cfg.generation, generation))
    configmod.write_generation(cfg, confdir)


class _AcceptorStore:
    """The acceptor's Paxos state of the next slot: one JSON file beside the generations, replaced atomically."""

    def __init__(self, confdir):
        self.path = os.path.join(confdir, QUORUM_STATE_FILE)

    def load(self):
        try:
            with open(self.path, encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            # A vote this node may have given is lost with it: it must not vote again in that slot.
            raise configmod.ConfigCorrupt("the quorum state %s is damaged (%s)" % (self.path, exc), self.path) from None

    def save(self, state):
        atomic_write(self.path, json.dumps(state, sort_keys=True).encode("utf-8"), 0o600)
