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

The serving side of both operations is here too (``serve_get_config``, ``serve_set_config``); receiver.py lists
them in its operations table. They raise ConfigError for a refused request, which the receiver answers as an
error reply.
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils.state import DEFAULT_STATEDIR, read_local_node
from ansible_collections.storage.replication.plugins.module_utils.transport import (
    NODE_KEY, ControlChannel, RemoteError, TransportError)

GET_CONFIG = "get-config"
SET_CONFIG = "set-config"
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

    def __init__(self, before, after, result, changed):
        self.before = before
        self.after = after
        self.result = result
        self.changed = changed
        self.nodes = {}

    @property
    def generation(self):
        return self.after.generation

    @property
    def warnings(self):
        """One line per node the change did not reach (it catches up at its next run)."""
        return ["node '%s' did not get generation %d (%s): it adopts it from a peer at its next run"
                % (name, self.generation, detail) for name, (status, detail) in sorted(self.nodes.items())
                if status in (SKIPPED, FAILED)]

    def as_dict(self):
        return {"changed": self.changed, "generation": self.generation,
                "nodes": {name: {"status": status, "detail": detail} for name, (status, detail) in sorted(self.nodes.items())}}


# ---------------------------------------------------------------------------------------------------------------
# Talking to the peers

def _peers(cfg, local_node, extra=None):
    """The other nodes of ``cfg`` (and of ``extra``: nodes a change removes still hear of it), by name."""
    nodes = dict(extra.nodes) if extra is not None else {}
    nodes.update(cfg.nodes)
    return [nodes[name] for name in sorted(nodes) if name != local_node]


def _connect(node, key, connect):
    channel = connect(node.name, node.address, node.host_key, key=key, port=node.port, timeout=PEER_CONNECT_TIMEOUT)
    return channel.connect()


def _on_every_peer(peers, work):
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


def _ask_generation(channel, cfg, local_node, content=False):
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


def _describe(exc):
    return str(exc).split("\n", maxsplit=1)[0]


# ---------------------------------------------------------------------------------------------------------------
# The change

def change_cluster(change, confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR, force=False, check_mode=False,
                   key=NODE_KEY, connect=ControlChannel):
    """Apply ``change(cfg)`` to the cluster configuration on every node; returns a ClusterChange.

    ``change`` edits the ClusterConfig it is given (its return value becomes ``ClusterChange.result``) and raises
    ConfigError for bad input. ``force`` commits although some nodes cannot be reached (they catch up later).
    ``check_mode`` checks everything, the peers included, and writes nothing.
    Raises ConfigError (invalid change, nothing written) or ClusterError (refused, nothing written).
    """
    local_node = read_local_node(statedir)
    before = configmod.load(confdir)
    after = copy.deepcopy(before)
    result = change(after)
    after.validate()
    outcome = ClusterChange(before, after, result, changed=not after.same_content(before))
    if not outcome.changed:
        return outcome
    if before.nodes and local_node not in before.nodes:
        raise ClusterError("this node ('%s') is not a node of the cluster configuration (%s) - run the command on a "
                           "cluster node, or fix /var/lib/storage-replication/local-node"
                           % (local_node, ", ".join(sorted(before.nodes))))
    peers = _peers(after, local_node, before)
    channels = _open_peers(peers, before, local_node, confdir, key, connect, force, outcome)
    try:
        after.generation = before.generation + 1
        if check_mode:
            return outcome
        configmod.adopt(after, confdir)
        outcome.nodes[local_node] = (WRITTEN, "this node")
        _push(channels, after, local_node, outcome)
    finally:
        for channel in channels.values():
            channel.close()
    return outcome


def _open_peers(peers, before, local_node, confdir, key, connect, force, outcome):
    """Phase 1: connect to every peer and ask its generation; returns ``{name: channel}`` of the usable ones."""
    def ask(node):
        channel = _connect(node, key, connect)
        try:
            return channel, _ask_generation(channel, before, local_node)
        except (TransportError, RemoteError, configmod.ConfigError):
            channel.close()
            raise

    answers = _on_every_peer(peers, ask)
    channels = {name: answer[0] for name, answer in answers.items() if not isinstance(answer, Exception)}
    try:
        _refuse_newer(answers, before, local_node, confdir)
        _refuse_unreachable(answers, force, outcome)
    except (ClusterError, configmod.ConfigError):
        for channel in channels.values():
            channel.close()
        raise
    return channels


def _refuse_newer(answers, before, local_node, confdir):
    newer = {name: answer[1]["generation"] for name, answer in answers.items()
             if not isinstance(answer, Exception) and answer[1]["generation"] > before.generation}
    if not newer:
        return
    name = max(newer, key=lambda n: (newer[n], n))
    note = ""
    try:
        adopted = _adopt_from(answers[name][0], before, local_node, confdir)
        note = "; this node has now adopted generation %d from '%s'" % (adopted.generation, name) if adopted else ""
    except (TransportError, RemoteError, configmod.ConfigError) as exc:
        note = "; adopting it failed too: %s" % _describe(exc)
    raise ClusterError("node '%s' holds cluster configuration generation %d, newer than this node's %d - nothing was "
                       "changed%s; check that the change still applies and run the command again"
                       % (name, newer[name], before.generation, note))


def _refuse_unreachable(answers, force, outcome):
    failed = {name: answer for name, answer in answers.items() if isinstance(answer, Exception)}
    if failed and not force:
        raise ClusterError("nothing was changed: %s - bring the node(s) back, or allow unreachable nodes (CLI "
                           "--allow-unreachable, module option allow_unreachable) to change the other nodes now (the "
                           "missing ones adopt the change when they are back)"
                           % "; ".join("node '%s': %s" % (name, _describe(exc)) for name, exc in sorted(failed.items())))
    for name, exc in failed.items():
        outcome.nodes[name] = (SKIPPED, _describe(exc))


def _push(channels, cfg, local_node, outcome):
    """Phase 2: send the new generation to every connected peer, in parallel."""
    files = cfg.content()
    request = {"source": local_node, "generation": cfg.generation, "files": files}

    def push(channel):
        reply = channel.call(SET_CONFIG, request, timeout=PEER_CALL_TIMEOUT)
        return WRITTEN if reply.get("written") else UNCHANGED

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(channels)))) as pool:
        futures = {name: pool.submit(_catching, push, channel) for name, channel in channels.items()}
    for name, future in futures.items():
        status = future.result()
        outcome.nodes[name] = (FAILED, _describe(status)) if isinstance(status, Exception) else (status, "")


def _adopt_from(channel, current, local_node, confdir):
    """Fetch the peer's configuration and adopt it if it is newer than ours; returns it, or None."""
    reply = _ask_generation(channel, current, local_node, content=True)
    cfg = _pushed_config(reply, channel.node_name)
    if cfg.generation <= current.generation:
        return None
    configmod.adopt(cfg, confdir)
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# Catching up (the runner, before it acts)

class CatchUp:
    """What ``catch_up`` found: ``adopted`` (generation taken over, or None), ``source`` (from which node),
    ``unreachable`` ({node: message}) and ``generation`` (this node's generation now)."""

    def __init__(self, generation):
        self.generation = generation
        self.adopted = None
        self.source = None
        self.unreachable = {}


def catch_up(confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR, key=NODE_KEY, connect=ControlChannel):
    """Ask every peer for its generation and adopt the newest configuration if it is newer than this node's."""
    local_node = read_local_node(statedir)
    current = configmod.load(confdir)
    found = CatchUp(current.generation)
    peers = _peers(current, local_node)
    answers = _on_every_peer(peers, lambda node: _with_channel(node, key, connect, lambda ch: _ask_generation(ch, current, local_node)))
    generations = {}
    for name, answer in answers.items():
        if isinstance(answer, Exception):
            found.unreachable[name] = _describe(answer)
        elif answer["generation"] > current.generation:
            generations[name] = answer["generation"]
    if generations:
        name = max(generations, key=lambda n: (generations[n], n))
        node = next(n for n in peers if n.name == name)
        try:
            adopted = _with_channel(node, key, connect, lambda ch: _adopt_from(ch, current, local_node, confdir))
        except (TransportError, RemoteError, configmod.ConfigError) as exc:
            raise ClusterError("node '%s' holds cluster configuration generation %d, newer than this node's %d, and "
                               "adopting it failed: %s - this node does not act on its older configuration until it "
                               "has adopted the newer one" % (name, generations[name], current.generation, _describe(exc))) from exc
        if adopted is not None:
            found.source, found.adopted, found.generation = name, adopted.generation, adopted.generation
    return found


def _with_channel(node, key, connect, work):
    channel = _connect(node, key, connect)
    try:
        return work(channel)
    finally:
        channel.close()


# ---------------------------------------------------------------------------------------------------------------
# Restoring a damaged configuration (the runner before it acts, and `storage-replication restore-config`)

class Restored:
    """What ``restore_config`` did: ``generation`` taken from node ``source``; ``kept`` is where the damaged copy
    is now (None if nothing was left of it)."""

    def __init__(self, generation, source, kept):
        self.generation = generation
        self.source = source
        self.kept = kept

    @property
    def message(self):
        return "restored cluster configuration generation %d from node '%s', the corrupt copy is kept as %s" % (
            self.generation, self.source, self.kept or "(nothing: it was missing)")


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
                             lambda ch: _pushed_config(_ask_generation(ch, probe, local_node, content=True), node.name))
    answers = _on_every_peer(peers, fetch)
    readable = {name: cfg for name, cfg in answers.items() if not isinstance(cfg, Exception)}
    if not peers or len(readable) * 2 <= len(peers):
        heard = "; ".join("node '%s': %s" % (n, _describe(a)) for n, a in sorted(answers.items()) if n not in readable)
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

def _check_request(request, allowed):
    if not isinstance(request, dict):
        raise configmod.ConfigError("the request is not a JSON object: refused")
    unknown = sorted(set(request) - set(allowed))
    if unknown:
        raise configmod.ConfigError("unknown request field(s) %s: refused" % ", ".join(unknown))


def serve_get_config(receiver, request):
    """``get-config``: this node's generation, and with ``content: true`` its two configuration files."""
    _check_request(request, ("source", "generation", "content"))
    cfg = configmod.load(receiver.confdir)
    reply = {"generation": cfg.generation}
    if request.get("content") is True:
        reply["files"] = cfg.content()
    return reply


def serve_set_config(receiver, request):
    """``set-config``: adopt the pushed configuration if it is newer than this node's (else refused)."""
    _check_request(request, ("source", "generation", "files"))
    source = request.get("source")
    cfg = _pushed_config(request, source)
    if cfg.generation != request.get("generation"):
        raise configmod.ConfigError("set-config from '%s': the files hold generation %s, the request says %s: refused"
                                    % (source, cfg.generation, request.get("generation")))
    written = configmod.adopt(cfg, receiver.confdir)
    return {"written": written, "generation": cfg.generation}
