# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Cluster configuration changes by quorum: single-decree Paxos per generation (docs/quorum.md).

Generation N+1 is the slot of one Paxos instance whose value is the whole configuration content built on
generation N. Every node runs an ``Acceptor``; whoever makes a change runs ``propose``. A change commits only when
a majority of the nodes accepted it, and then no other content can ever commit under that generation (safety rule
4), except through ``force``, the loud emergency override.

No I/O here: the acceptor persists through an injected ``store`` and the node's configuration store
(``committed()``/``commit()``); the proposer is a generator of message batches (``propose_steps``) that
``run_steps`` drives through ``call(node, operation, request)`` in threads, and that the simulation in
tests/unit/plugins/module_utils/test_quorum.py drives through a lossy simulated network. Messages are JSON-able.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

STATUS, PREPARE, ACCEPT, COMMIT = "quorum-status", "quorum-prepare", "quorum-accept", "quorum-commit"
# Reply statuses. AHEAD/BEHIND: the node's committed generation is past the slot / short of the one before it.
PROMISED, ACCEPTED, REJECTED, COMMITTED, UNCHANGED = "promised", "accepted", "rejected", "committed", "unchanged"
AHEAD, BEHIND, CONFLICT = "ahead", "behind", "conflict"
# Per-node outcome of a change, besides COMMITTED / CONFLICT / AHEAD.
CAUGHT_UP, UNREACHABLE = "caught-up", "unreachable"

DEFAULT_ATTEMPTS = 10
BACKOFF_BASE, BACKOFF_CAP = 0.05, 1.0  # seconds; randomized so that two duelling proposers drift apart


class Unreachable(Exception):
    """Raised by ``call`` when the node cannot be reached or does not answer in time."""


class QuorumError(RuntimeError):
    """The change was not committed. ``in_doubt``: accept requests went out, so a majority may hold it and the next
    change or catch-up would then finish it; otherwise nothing of it was written anywhere."""

    def __init__(self, message, outcome=None, in_doubt=False):
        if in_doubt:
            message += ("; the change may still take effect: it reached some nodes, and if a majority accepted it the"
                        " next change or catch-up commits it - check the status before repeating it")
        super().__init__(message)
        self.outcome, self.in_doubt = outcome, in_doubt


class NoQuorum(QuorumError):
    """Too few nodes answered (or some were missing and that was not allowed)."""


class Conflict(QuorumError):
    """The change no longer applies to the configuration now committed, or nodes hold diverging contents."""


def digest(content):
    """sha256 (hex) of a content ``{filename: text}``: the UTF-8 bytes of its JSON text with sorted keys, no
    whitespace between tokens and non-ASCII characters as themselves (``json.dumps(content, sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)``)."""
    if not isinstance(content, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in content.items()):
        raise ValueError("a configuration content must map file names to texts")
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


class Version(collections.namedtuple("Version", "generation digest")):
    """A committed configuration: its generation and the digest of its content (one version, one content)."""

    @classmethod
    def of(cls, generation, content):
        return cls(generation, digest(content))

    @classmethod
    def parse(cls, value):
        generation, text = value
        if not _is_int(generation) or generation < 0 or not isinstance(text, str):
            raise ValueError("not a version: %r" % (value,))
        return cls(generation, text)

    def json(self):
        return [self.generation, self.digest]

    def __str__(self):
        return "%d/%s" % (self.generation, self.digest[:12])


class Ballot(collections.namedtuple("Ballot", "round node nonce")):
    """Compared as (round, node, nonce). The nonce, random per proposal, keeps two proposals apart even when they
    run on one node at once (two commands), so that one ballot never carries two values."""

    @classmethod
    def parse(cls, value):
        number, node, nonce = value
        if not _is_int(number) or not isinstance(node, str) or not isinstance(nonce, str):
            raise ValueError("not a ballot: %r" % (value,))
        return cls(number, node, nonce)

    def json(self):
        return list(self)


# ---------------------------------------------------------------------------------------------------------------
# The acceptor: one per node

class Acceptor:
    """A node's vote. ``store.load()`` -> dict or None and ``store.save(dict)`` (atomic and durable) keep the Paxos
    state of the next slot; ``committed()`` -> ``(generation, content)`` and ``commit(generation, content)`` are
    the node's configuration store. Each handler persists before it replies; the caller runs them one at a time
    (the node's configuration lock), and ``handle`` is what the receiver calls."""

    def __init__(self, store, committed, commit, history=None):
        self._store, self._committed, self._commit = store, committed, commit
        # history() -> [Version] of the generations this node still keeps: lets a proposer whose reply was lost
        # find out that its change was committed (finished by another proposer) before it would apply it again.
        self._history = history or (lambda: [])

    def handle(self, operation, request):
        handlers = {STATUS: self.status, PREPARE: self.prepare, ACCEPT: self.accept, COMMIT: self.commit}
        if operation not in handlers or not isinstance(request, dict):
            raise ValueError("unknown quorum operation %r" % (operation,))
        return handlers[operation](**request)

    def _load(self):
        generation, content = self._committed()
        version = Version.of(generation, content)
        state = self._store.load() or {}
        # The state belongs to one slot. State of an older slot (a crash between the commit and the save below)
        # is void: that slot is decided, and a node never votes in a slot again once it has committed past it.
        if state.get("slot") != generation + 1:
            state = {"slot": generation + 1, "promised": None, "accepted": None}
        return version, content, state

    @staticmethod
    def _reply(status, version, state, **extra):
        return dict(status=status, version=version.json(), promised=state["promised"], **extra)

    def _outside(self, slot, version, state):
        """The reply for a slot that is not this node's next one, else None."""
        if slot <= version.generation:
            return self._reply(AHEAD, version, state)
        if slot > version.generation + 1:
            return self._reply(BEHIND, version, state)
        return None

    @staticmethod
    def _below(ballot, state):
        return state["promised"] is not None and ballot < Ballot.parse(state["promised"])

    def status(self, content=False, history=False):
        """This node's committed version, its promise and whether a value waits to be finished in the next slot."""
        version, committed, state = self._load()
        pending = state["accepted"]["ballot"] if state["accepted"] else None
        extra = {"content": committed} if content else {}
        if history:
            extra["history"] = [v.json() for v in self._history()]
        return self._reply("ok", version, state, pending=pending, **extra)

    def prepare(self, slot, ballot):
        version, _content, state = self._load()
        ballot, outside = Ballot.parse(ballot), self._outside(slot, version, state)
        if outside or self._below(ballot, state):
            return outside or self._reply(REJECTED, version, state)
        if state["promised"] != ballot.json():
            state["promised"] = ballot.json()
            self._store.save(state)
        return self._reply(PROMISED, version, state, accepted=state["accepted"])

    def accept(self, slot, ballot, content, base):
        version, _content, state = self._load()
        ballot, outside = Ballot.parse(ballot), self._outside(slot, version, state)
        if outside or self._below(ballot, state):
            return outside or self._reply(REJECTED, version, state)
        if base is not None and Version.parse(base) != version:  # another content of our generation: after a force
            return self._reply(CONFLICT, version, state)
        digest(content)
        state.update(promised=ballot.json(), accepted={"ballot": ballot.json(), "content": content, "base": base})
        self._store.save(state)
        return self._reply(ACCEPTED, version, state)

    def commit(self, slot, content):
        """Learn the value chosen for ``slot``. A node further behind jumps to it: a content is a whole
        configuration, so the generations in between add nothing."""
        version, _content, state = self._load()
        new = Version.of(slot, content)
        if slot <= version.generation:
            status = AHEAD if slot < version.generation else UNCHANGED if new == version else CONFLICT
            return self._reply(status, version, state)
        self._commit(slot, content)
        fresh = {"slot": slot + 1, "promised": None, "accepted": None}
        self._store.save(fresh)  # drops the decided slot's state (and its content) from the store
        return self._reply(COMMITTED, new, fresh, previous=version.json())


# ---------------------------------------------------------------------------------------------------------------
# The proposer

class Outcome:
    """What a change did. ``committed``: ``version`` (generation ``base.generation + 1`` or later) holds the
    change; ``nodes``: {node: committed | caught-up | unreachable | conflict | ahead}, ``details``: {node: why};
    ``retries``: attempts beyond the first; ``forced``: committed WITHOUT a majority (force=True and too few nodes
    answered) - the only way two contents can end up under one generation."""

    def __init__(self, base=None):
        self.committed, self.forced, self.version, self.base = False, False, base, base
        self.nodes, self.details, self.retries, self.note = {}, {}, 0, ""

    def as_dict(self):
        return {"committed": self.committed, "forced": self.forced, "retries": self.retries, "note": self.note,
                "version": self.version and self.version.json(), "base": self.base and self.base.json(),
                "nodes": {n: {"status": s, "detail": self.details.get(n, "")} for n, s in sorted(self.nodes.items())}}


def _answer(reply):
    """A reply as the proposer uses it, or the exception that stands for a node that gave none."""
    if isinstance(reply, Exception):
        return reply
    try:
        Version.parse(reply["version"])
        return reply
    except (TypeError, KeyError, ValueError):
        return Unreachable("no answer" if reply is None else "malformed reply %r" % (reply,))


def _answered(replies, *statuses):
    """The replies that came, {node: reply} (only those with one of ``statuses``, if given)."""
    return {n: r for n, r in replies.items()
            if not isinstance(r, Exception) and (not statuses or r["status"] in statuses)}


def _newest(replies):
    """The newest version among the replies and the nodes holding it: at the newest generation, the content most
    nodes hold (there is only one unless a change was forced)."""
    versions = {n: Version.parse(r["version"]) for n, r in _answered(replies).items()}
    top = max(v.generation for v in versions.values())
    counts = collections.Counter(v for v in versions.values() if v.generation == top)
    version = max(counts, key=lambda v: (counts[v], v.digest))
    return version, [n for n, v in versions.items() if v == version]


class _Proposal:
    """One proposer's state across attempts; its methods are generators of request batches (see run_steps)."""

    def __init__(self, local, peers, quorum, rng):
        self.local, self.nodes = local, [local] + sorted(set(peers) - {local})
        majority = len(self.nodes) // 2 + 1
        self.need = majority if quorum is None else quorum
        if not majority <= self.need <= len(self.nodes):
            raise ValueError("quorum %d of %d nodes: it must be a majority" % (self.need, len(self.nodes)))
        self.rng = rng or random.SystemRandom()
        self.nonce, self.round = "%016x" % self.rng.getrandbits(64), 0
        self.outcome, self.in_doubt, self.forcing, self.caught_up = Outcome(), False, False, set()

    def fail(self, cls, message):
        return cls(message, self.outcome, self.in_doubt)

    def ask(self, requests):
        replies = yield requests
        replies = {n: _answer((replies or {}).get(n)) for n in requests}
        for reply in _answered(replies).values():  # learn the highest round in use, so that the next ballot beats it
            if reply.get("promised"):
                self.round = max(self.round, Ballot.parse(reply["promised"]).round)
        return replies

    def base(self):
        reply = (yield from self.ask({self.local: (STATUS, {"content": True})}))[self.local]
        if isinstance(reply, Exception):
            raise self.fail(QuorumError, "this node's own configuration store did not answer: %s" % reply)
        return Version.parse(reply["version"]), reply["content"]

    def adopt(self, replies):
        """Commit here the newest version a node answered with (fetched from one of its holders)."""
        version, holders = _newest(replies)
        for node in holders:
            reply = (yield from self.ask({node: (STATUS, {"content": True})}))[node]
            if not isinstance(reply, Exception) and Version.of(version.generation, reply.get("content")) == version:
                yield from self.ask({self.local: (COMMIT, {"slot": version.generation, "content": reply["content"]})})
                return version, node
        return None, None

    def run(self, change, allow_missing=False, force=False, max_attempts=DEFAULT_ATTEMPTS):
        """Commit ``change`` applied to the committed base; with ``change=None``, only finish a pending value."""
        value = built_on = None
        for attempt in range(max_attempts):
            self.outcome.retries = attempt
            base, content = yield from self.base()
            self.outcome.base = self.outcome.version = base
            if change is not None and built_on != base:
                if value is not None and Version.of(base.generation, value) == base:
                    return self.done(base, "committed by another proposer that finished it")
                if value is not None and self.in_doubt and (yield from self.was_committed(built_on, value)):
                    return self.done(base, "committed as generation %d by another proposer that finished it"
                                     % (built_on.generation + 1))
                value = self.build(change, content, built_on, base)
                if value is None and self.in_doubt:  # our accepts went out: the base holds it, finished by another
                    return self.done(base, "in effect: committed by another proposer that finished it")
                if value is None:
                    self.outcome.note = "no change" + (" (already in effect)" if built_on else "")
                    return self.outcome
                built_on = base
            self.round += 1
            ballot, slot = Ballot(self.round, self.local, self.nonce), base.generation + 1
            replies = yield from self.prepare(slot, ballot, base, content)
            if _answered(replies, AHEAD):
                yield from self.adopt(replies)  # a newer generation exists: catch up, then rebuild on it
                continue
            need = self.quorum(replies, allow_missing, force)
            promised = _answered(replies, PROMISED)
            if len(promised) < need:
                yield self.backoff(attempt)
                continue
            # A value accepted on another base (after a force) can only win on that base's holders: not ours.
            pending = max((r["accepted"] for r in promised.values() if r.get("accepted")
                           and r["accepted"]["base"] in (None, base.json())),
                          key=lambda a: Ballot.parse(a["ballot"]), default=None)
            if pending is None and value is None:
                return self.outcome  # catch-up: nothing to finish
            # Paxos: a value some node accepted in this slot may be chosen already; finish it before our own.
            proposal, proposal_base = (pending["content"], pending["base"]) if pending else (value, base.json())
            # Force also skips the acceptors' base check (base None): the way out of a split no version wins.
            proposal_base = None if force else proposal_base
            mine = value is not None and proposal == value
            self.in_doubt = self.in_doubt or mine
            accepts = yield from self.ask({n: (ACCEPT, {"slot": slot, "ballot": ballot.json(), "content": proposal,
                                                        "base": proposal_base}) for n in promised})
            if len(_answered(accepts, ACCEPTED)) < need:
                if _answered(accepts, CONFLICT) and not _answered(accepts, REJECTED):
                    raise self.fail(Conflict, "nodes %s hold another content of generation %d than this node (a "
                                    "forced change): run the change on a node of the majority, or resolve it first"
                                    % (", ".join(sorted(_answered(accepts, CONFLICT))), base.generation))
                yield self.backoff(attempt)
                continue
            self.outcome.forced = self.outcome.forced or self.forcing
            yield from self.commit_all(slot, proposal)
            if mine:
                return self.done(Version.of(slot, proposal), "")
            if value is None:
                return self.done(Version.of(slot, proposal), "finished a pending change")
        raise self.fail(QuorumError, "gave up after %d attempts: other changes kept taking the generation (ballot "
                        "round %d); try again" % (max_attempts, self.round))

    def was_committed(self, built_on, value):
        """Whether our value became generation built_on + 1 (another proposer finished it, then went on): then it
        must not be applied again on the newer base."""
        ours = Version.of(built_on.generation + 1, value).json()
        replies = yield from self.ask({n: (STATUS, {"history": True}) for n in self.nodes})
        return any(ours in reply.get("history", ()) for reply in _answered(replies).values())

    def build(self, change, content, built_on, base):
        """The change applied to ``base``'s content; None if it changes nothing. Compare-and-swap: a change rebuilt
        on a newer base that it no longer applies to is refused as a Conflict."""
        try:
            new = change(copy.deepcopy(content))
        except Exception as exc:
            if built_on is None:
                raise  # the caller's own refusal of its change, untouched
            unchanged = "" if self.in_doubt else " - nothing was changed"
            raise self.fail(Conflict, "the change was built on generation %s, and generation %s was committed "
                            "meanwhile; the change no longer applies to it (%s)%s" % (built_on, base, exc, unchanged)) from exc
        digest(new)
        return None if new == content else new

    def prepare(self, slot, ballot, base, content):
        """Phase 1 on every node; a node behind the base is given the base first, then asked again."""
        request = {"slot": slot, "ballot": ballot.json()}
        replies = yield from self.ask({n: (PREPARE, request) for n in self.nodes})
        behind = list(_answered(replies, BEHIND))
        if behind:
            yield from self.ask({n: (COMMIT, {"slot": base.generation, "content": content}) for n in behind})
            replies.update((yield from self.ask({n: (PREPARE, request) for n in behind})))
            self.caught_up.update(behind)
        return replies

    def quorum(self, replies, allow_missing, force):
        """How many promises and accepts this attempt needs; refuses when the nodes that answered cannot give it."""
        missing = {n: r for n, r in replies.items() if n not in _answered(replies)}
        for node, exc in missing.items():
            self.outcome.nodes[node], self.outcome.details[node] = UNREACHABLE, str(exc)
        answered = len(self.nodes) - len(missing)
        about = "; ".join("node '%s': %s" % (n, exc) for n, exc in sorted(missing.items()))
        self.forcing = answered < self.need
        if not self.forcing:
            if missing and not (allow_missing or force):
                raise self.fail(NoQuorum, "nothing was changed: %s - bring the node(s) back, or allow unreachable "
                                "nodes (CLI --allow-unreachable, module option allow_unreachable; a majority, %d of "
                                "%d, is still required)" % (about, self.need, len(self.nodes)))
            return self.need
        if force:  # the operator's override: whatever answers decides, and the outcome says so
            return answered
        raise self.fail(NoQuorum, "no quorum: %d of %d nodes answered (need %d): %s"
                        % (answered, len(self.nodes), self.need, about))

    def commit_all(self, slot, content):
        """Tell every node the chosen value (best effort: a node that misses it learns it at its next catch-up)."""
        replies = yield from self.ask({n: (COMMIT, {"slot": slot, "content": content}) for n in self.nodes})
        for node, reply in replies.items():
            if isinstance(reply, Exception):
                self.outcome.nodes[node], self.outcome.details[node] = UNREACHABLE, str(reply)
                continue
            status = COMMITTED if reply["status"] in (COMMITTED, UNCHANGED) else reply["status"]
            previous = reply.get("previous")
            if status == COMMITTED and (node in self.caught_up or (previous and previous[0] < slot - 1)):
                status = CAUGHT_UP
            self.outcome.nodes[node] = status
            self.outcome.details.pop(node, None)

    def done(self, version, note):
        self.outcome.committed, self.outcome.version, self.outcome.note = True, version, note
        self.in_doubt = False
        return self.outcome

    def backoff(self, attempt):
        return self.rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt))


# ---------------------------------------------------------------------------------------------------------------
# Entry points

def propose_steps(change, local, peers, quorum=None, allow_missing=False, force=False, rng=None,
                  max_attempts=DEFAULT_ATTEMPTS):
    """The proposer as a generator: it yields ``{node: (operation, request)}`` (to be sent in parallel; send back
    ``{node: reply or exception}``, a missing node = no answer) or a float (seconds to sleep, send back None), and
    returns the Outcome. Raises NoQuorum, Conflict, QuorumError, or what ``change`` raises on the first build."""
    return (yield from _Proposal(local, peers, quorum, rng).run(change, allow_missing, force, max_attempts))


class CatchUp:
    """What ``catch_up`` did: ``version`` (this node's now), ``adopted``/``source`` (the version taken over and from
    which node, or None), ``finished`` (Outcome of finishing a pending value, or None), ``unreachable`` ({node:
    why}), ``conflicts`` (nodes holding another content of this node's generation) and ``majority`` (the version
    more than half of the answering nodes hold, or None), ``error`` (why finishing failed, or "")."""

    def __init__(self):
        self.version = self.adopted = self.source = self.finished = self.majority = None
        self.unreachable, self.conflicts, self.error = {}, [], ""


def catch_up_steps(local, peers, quorum=None, rng=None, max_attempts=DEFAULT_ATTEMPTS):
    """A node that was away: jump to the newest committed version any node answers with (a whole configuration,
    chosen, so the generations in between are not needed), then finish a value left accepted but uncommitted in
    the next slot (its proposer died), which needs a majority. Generator like ``propose_steps``."""
    proposal, found = _Proposal(local, peers, quorum, rng), CatchUp()
    replies = yield from proposal.ask({n: (STATUS, {}) for n in proposal.nodes})
    found.unreachable = {n: str(r) for n, r in replies.items() if n not in _answered(replies)}
    if isinstance(replies[local], Exception):
        raise QuorumError("this node's own configuration store did not answer: %s" % replies[local])
    if _newest(replies)[0].generation > Version.parse(replies[local]["version"]).generation:
        found.adopted, found.source = yield from proposal.adopt(replies)
    current = found.adopted or Version.parse(replies[local]["version"])
    if any(r.get("pending") and Version.parse(r["version"]).generation == current.generation
           for r in _answered(replies).values()):
        try:
            found.finished = yield from proposal.run(None, allow_missing=True, max_attempts=max_attempts)
        except QuorumError as exc:
            found.error = str(exc)
    if found.adopted or found.finished:  # versions moved: look again
        replies = yield from proposal.ask({n: (STATUS, {}) for n in proposal.nodes})
    versions = {n: Version.parse(r["version"]) for n, r in _answered(replies).items()}
    found.version = versions.pop(local, current)
    found.conflicts, found.majority = conflicts(found.version, versions)
    return found


def conflicts(local_version, peer_versions):
    """``(nodes, majority)``: the nodes of ``peer_versions`` ({node: Version}) holding another content under
    ``local_version``'s generation (only a forced change makes that possible), and the version more than half of
    all the versions given (local included) are, or None."""
    differing = sorted(n for n, v in peer_versions.items()
                       if v.generation == local_version.generation and v != local_version)
    counts = collections.Counter([local_version, *peer_versions.values()])
    top, count = counts.most_common(1)[0]
    return differing, (top if 2 * count > sum(counts.values()) else None)


def run_steps(steps, call, sleep=time.sleep, max_workers=16):
    """Drive a generator of ``propose_steps``/``catch_up_steps``: each batch is sent in parallel through
    ``call(node, operation, request)``; an exception from ``call`` (Unreachable, a timeout, a node's error
    reply) counts as no answer from that node."""
    def one(item):
        node, (operation, request) = item
        try:
            return node, call(node, operation, request)
        except Exception as exc:  # noqa: BLE001 - whatever stops a node from answering, it has no vote
            return node, exc

    try:
        step = next(steps)
        while True:
            if isinstance(step, dict):
                with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(step)))) as pool:
                    step = steps.send(dict(pool.map(one, step.items())))
            else:
                sleep(step)
                step = steps.send(None)
    except StopIteration as done:
        return done.value


def propose(change, local, peers, call, quorum=None, allow_missing=False, force=False, rng=None, sleep=time.sleep,
            max_attempts=DEFAULT_ATTEMPTS):
    """Commit ``change(content) -> new content`` on top of the committed configuration by a majority; an Outcome."""
    return run_steps(propose_steps(change, local, peers, quorum, allow_missing, force, rng, max_attempts), call, sleep)


def catch_up(local, peers, call, quorum=None, rng=None, sleep=time.sleep):
    """Bring this node to the newest committed configuration; a CatchUp."""
    return run_steps(catch_up_steps(local, peers, quorum, rng), call, sleep)
