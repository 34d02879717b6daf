# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Self-fencing: a node cut off from the majority of the cluster stops its guests by itself.

The failover playbook cannot tell a dead node from a cut-off one: both are unreachable. A cut-off node is alive,
and its guests keep running and writing. So every node watches its own quorum (Proxmox VE's HA does the same with
a watchdog): the ``storage-replication fence`` service ticks every few seconds, asks which peers of the cluster
configuration answer, and when this node has been without quorum (this node + answering peers <= half of the
configuration's nodes) for ``fence_after`` seconds it stops every guest it owns (stop hook, then the ``kill``
hook when stop fails or hangs), marks them fenced, and refuses to start any guest until quorum is back. It needs
nothing but this node: no controller, no peer, no timer.

The survivors wait for it: ``failover.fence_decision`` promotes a guest of an unreachable node only when the
survivor's own record (``last_seen`` of that node in this file, on the survivor) shows it unreachable for longer
than ``fence_after + margin(interval)``; see ``margin`` for what the margin covers.

State file ``fence.json`` in the state dir (atomic writes), epoch seconds of THIS node's clock:
``quorate``, ``since`` (the last tick that had quorum, when it is lost; None while quorate), ``last_seen``
{peer: last tick it answered}, ``watching_since`` (when this process began watching: nothing is known of the
time before), ``tick`` (the last tick: the service's health), ``fence_after``, ``interval``, ``fenced`` (None, or
{"since", "guests": {id: {"result": stopped|killed|failed, "attempts": [...]}}}) and ``error``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils.files import atomic_write, read_json_object
from ansible_collections.storage.replication.plugins.module_utils.state import DEFAULT_STATEDIR

STATE_FILE = "fence.json"
LOCK_FILE = "fence.lck"
DEFAULT_FENCE_AFTER = 60
DEFAULT_INTERVAL = 5
PROBE_TIMEOUT = 2
# Bounded hooks: a hung stop must not hold the fence past what the survivors' margin allows for.
STOP_TIMEOUT = 10
KILL_TIMEOUT = 5
# The survivors' and this node's clocks run at about the same rate but tick at different moments; a few
# seconds more for scheduling delays (a loaded node runs its ticks late).
SLACK = 3


def margin(interval):
    """Seconds the survivors wait beyond ``fence_after``, so that a cut-off node has stopped its guests first.

    From the last moment a survivor saw the node (its ``last_seen``) to the node's last tick with quorum is at
    most one interval; the node notices the loss at its next tick (one interval + the probe timeout) after
    ``fence_after``; then its stop hook and kill hook run for at most their timeouts.
    """
    return 2 * interval + PROBE_TIMEOUT + STOP_TIMEOUT + KILL_TIMEOUT + SLACK


def continuous_since(state, now):
    """Since when the ticks recorded in ``state`` watched without a gap (None if its last tick is too old): a
    gap longer than two intervals plus the probe timeout means nobody watched (service down), and nothing seen
    or unseen then counts."""
    tick, since, interval = state.get("tick"), state.get("watching_since"), state.get("interval") or DEFAULT_INTERVAL
    if tick is None or since is None or now - tick > 2 * interval + PROBE_TIMEOUT + SLACK:
        return None
    return since


def state_path(statedir=DEFAULT_STATEDIR):
    return os.path.join(statedir, STATE_FILE)


class FenceStateError(RuntimeError):
    """fence.json exists but cannot be read: never taken as "not fenced" (safety rule 7)."""


def read_state(statedir=DEFAULT_STATEDIR):
    """The fence state of this node, or None when no fence has ever run here; FenceStateError if unreadable."""
    path = state_path(statedir)
    try:
        return read_json_object(path)
    except (OSError, ValueError) as exc:
        raise FenceStateError("the fence state %s cannot be read (%s) - the fence service ('storage-replication "
                              "fence') rewrites it at its next tick; check that it runs (systemctl status "
                              "storage-replication-fence)" % (path, exc)) from None


def start_refusal(statedir=DEFAULT_STATEDIR):
    """Why no guest may start on this node now (it is fenced, or its fence state is unreadable), or None."""
    try:
        data = read_state(statedir)
    except FenceStateError as exc:
        return "refusing to start a guest: %s" % exc
    if not data or not data.get("fenced"):
        return None
    return ("this node is fenced: it lost quorum at %s and stopped its guests (%s) - refusing to start any guest "
            "until it is back in the quorate part of the cluster; the survivors may have taken its guests over "
            "(storage-replication fence-status shows the state)"
            % (_time_text(data.get("since") or data["fenced"].get("since")),
               ", ".join("%s %s" % (g, r.get("result")) for g, r in sorted(data["fenced"].get("guests", {}).items()))
               or "none"))


def _time_text(epoch):
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch)) if epoch else "unknown"


# ---------------------------------------------------------------------------------------------------------------
# Probing and hooks (production; the tests inject their own)

def tcp_probe(node, timeout=PROBE_TIMEOUT):
    """True if the peer's sshd accepts a TCP connection within ``timeout``.

    Why this is the liveness signal: every cluster operation (a configuration change committed by quorum, a
    failover survey, replication) reaches a peer through its sshd at the address and port of the cluster
    configuration, so a peer whose sshd cannot be reached from here cannot vote with this node, whatever else it
    does. A completed TCP handshake needs the path to work both ways (SYN there, SYN-ACK back), which is exactly
    what a partition breaks, and it needs no key, no login and no process of ours on the peer: it stays cheap
    every few seconds and does not depend on the receiver being healthy. A peer up with sshd down counts as
    absent, which errs towards fencing (safe: such a peer cannot take part in any change either).
    """
    try:
        with socket.create_connection((node.address, node.port), timeout=timeout):
            return True
    except OSError:
        return False


def run_hook(argv, timeout):
    """Run a hook (argv, no shell) in its own process group; None if it exited 0, else what went wrong.

    On timeout the whole group is killed: a hung stop hook (or a child it left holding the pipe) must not hold
    the fence longer than its timeout.
    """
    try:
        # pylint: disable-next=ansible-bad-function
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return "cannot run %s: %s" % (argv[0], exc)
    try:
        output = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "did not finish within %d s (killed)" % timeout
    if proc.returncode != 0:
        return "exit code %d: %s" % (proc.returncode, output.decode("utf-8", "replace").strip()[-300:])
    return None


def stop_guest(guest, run=run_hook):
    """Stop one guest for the fence: its stop hook, then its ``kill`` hook if stop fails or hangs.

    Returns {"result": "stopped"|"killed"|"failed", "attempts": [what failed]}. "failed" means the guest may
    still run: the fence keeps trying at every tick and reports it (fence-status, metrics).
    """
    attempts = []
    for hook, timeout, result in (("stop", STOP_TIMEOUT, "stopped"), ("kill", KILL_TIMEOUT, "killed")):
        argv = guest.hooks.get(hook)
        if not argv:
            attempts.append("no %s hook" % hook)
            continue
        error = run(argv, timeout)
        if error is None:
            return {"result": result, "attempts": attempts}
        attempts.append("%s hook: %s" % (hook, error))
    return {"result": "failed", "attempts": attempts}


# ---------------------------------------------------------------------------------------------------------------
# The fence

class Fence:
    """One node's fence; ``tick(now)`` does one round and returns the new state (also written to fence.json).

    ``load_config()`` returns the cluster configuration, ``probe(node)`` whether a peer (a config.Node) answers,
    ``stop(guest)`` stops a guest (see stop_guest). All are injected so the rules are unit-tested without a lab.
    """

    def __init__(self, node, statedir=DEFAULT_STATEDIR, load_config=None, probe=tcp_probe, stop=stop_guest,
                 fence_after=DEFAULT_FENCE_AFTER, interval=DEFAULT_INTERVAL):
        self.node = node
        self.statedir = statedir
        self.load_config = load_config or configmod.load
        self.probe = probe
        self.stop = stop
        self.fence_after = fence_after
        self.interval = interval
        self.cfg = None  # the last configuration that loaded: a damaged file must not blind the fence
        self.watching_since = None

    def tick(self, now=None):
        now = int(time.time() if now is None else now)
        with self._lock():
            try:
                state = read_state(self.statedir) or {}
            except FenceStateError:
                state = {}  # only this process writes it: start over, conservatively (see _lost_at)
            if self.watching_since is None:
                self.watching_since = continuous_since(state, now) or now
            state.update(tick=now, watching_since=self.watching_since, fence_after=self.fence_after,
                         interval=self.interval, error=None)
            state.setdefault("last_seen", {})
            state.setdefault("fenced", None)
            try:
                self.cfg = self.load_config()
            except configmod.ConfigError as exc:
                state["error"] = "cluster configuration unreadable, using the last one read: %s" % exc
            if self.cfg is None:
                state["error"] = state["error"] or "no cluster configuration"
            else:
                self._round(state, self.cfg, now)
            atomic_write(state_path(self.statedir), json.dumps(state, indent=1, sort_keys=True).encode("utf-8"))
            return state

    def _round(self, state, cfg, now):
        peers = [cfg.nodes[name] for name in sorted(cfg.nodes) if name != self.node]
        with ThreadPoolExecutor(max_workers=max(1, len(peers))) as pool:
            answers = dict(zip([p.name for p in peers], pool.map(self.probe, peers)))
        for name, answered in answers.items():
            if answered:
                state["last_seen"][name] = now
        votes = (self.node in cfg.nodes) + sum(answers.values())
        quorate = not cfg.nodes or 2 * votes > len(cfg.nodes)
        state.update(votes=votes, nodes=len(cfg.nodes), answering=sorted(n for n, a in answers.items() if a))
        if quorate:
            self._quorate(state, now)
        else:
            self._not_quorate(state, cfg, now)

    def _quorate(self, state, now):
        if state.get("fenced"):
            # The guests stay stopped: while this node was cut off the survivors may have failed them over, and
            # its configuration may still name it the owner until the runner adopts the newer generation.
            # Starting them is the operator's (or the failover/migrate playbook's) decision, on the current owner.
            state["unfenced"] = {"time": now, "guests": sorted(state["fenced"]["guests"])}
        state.update(quorate=True, since=None, last_quorate=now, fenced=None)

    def _not_quorate(self, state, cfg, now):
        if state.get("quorate", True) or state.get("since") is None:
            state["since"] = self._lost_at(state, now)
        state["quorate"] = False
        if now - state["since"] < self.fence_after:
            return
        fenced = state.get("fenced") or {"since": now, "guests": {}}
        owned = [g for g in cfg.guests.values() if g.node == self.node]
        # Stopped or killed once is done; "failed" ones are tried again at every tick.
        todo = [g for g in owned if fenced["guests"].get(str(g.id), {}).get("result") not in ("stopped", "killed")]
        if todo:
            with ThreadPoolExecutor(max_workers=len(todo)) as pool:
                for guest, outcome in zip(todo, pool.map(self.stop, todo)):
                    fenced["guests"][str(guest.id)] = dict(outcome, time=now)
        state["fenced"] = fenced

    @staticmethod
    def _lost_at(state, now):
        """When quorum was lost: the last tick that had it. Without one (first tick, or a restart while cut
        off) now, as far as this process knows; a restart during a partition that the file recorded keeps its
        ``since`` (see _not_quorate), so a crash loop cannot postpone the fence."""
        last = state.get("last_quorate")
        return last if last is not None and state.get("quorate", True) else now

    @contextlib.contextmanager
    def _lock(self):
        """One tick at a time (the service and a manual ``fence --once``)."""
        with open(os.path.join(self.statedir, LOCK_FILE), "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


# ---------------------------------------------------------------------------------------------------------------
# Metrics (Prometheus textfile collector), written next to the runner's own file at every tick

def metrics_text(state, node):
    fenced = state.get("fenced") or {}
    failed = sum(1 for r in fenced.get("guests", {}).values() if r.get("result") == "failed")
    lines = ["# HELP storage_replication_fence_tick_timestamp_seconds Last tick of the fence service (its health).",
             "# TYPE storage_replication_fence_tick_timestamp_seconds gauge",
             'storage_replication_fence_tick_timestamp_seconds{node="%s"} %d' % (node, state.get("tick") or 0),
             "# HELP storage_replication_fence_quorate 1 if this node is in the quorate part of the cluster.",
             "# TYPE storage_replication_fence_quorate gauge",
             'storage_replication_fence_quorate{node="%s"} %d' % (node, 1 if state.get("quorate") else 0),
             "# HELP storage_replication_fence_fenced 1 if this node has fenced (stopped) its guests.",
             "# TYPE storage_replication_fence_fenced gauge",
             'storage_replication_fence_fenced{node="%s"} %d' % (node, 1 if fenced else 0),
             "# HELP storage_replication_fence_stop_failed Guests the fence could not stop (they may still run).",
             "# TYPE storage_replication_fence_stop_failed gauge",
             'storage_replication_fence_stop_failed{node="%s"} %d' % (node, failed),
             "# HELP storage_replication_fence_error 1 if the last tick reported an error.",
             "# TYPE storage_replication_fence_error gauge",
             'storage_replication_fence_error{node="%s"} %d' % (node, 1 if state.get("error") else 0)]
    return "\n".join(lines) + "\n"


def metrics_path(runner_metrics_file):
    """The fence's own textfile next to the runner's (the runner rewrites its file only once a minute)."""
    if not runner_metrics_file:
        return None
    base, ext = os.path.splitext(runner_metrics_file)
    return "%s-fence%s" % (base, ext or ".prom")


def describe(state, node):
    """fence-status for people."""
    if not state:
        return "node %s: the fence has never run here (storage-replication-fence.service)" % node
    lines = ["node %s: %s (%s of %s votes; answering: %s); last tick %s" % (
        node, "quorate" if state.get("quorate") else "NO QUORUM since %s" % _time_text(state.get("since")),
        state.get("votes"), state.get("nodes"), ", ".join(state.get("answering") or []) or "none",
        _time_text(state.get("tick")))]
    lines.append("fence_after %s s, interval %s s" % (state.get("fence_after"), state.get("interval")))
    for peer, seen in sorted((state.get("last_seen") or {}).items()):
        lines.append("peer %s last answered %s" % (peer, _time_text(seen)))
    fenced = state.get("fenced")
    if fenced:
        lines.append("FENCED since %s: no guest may start here until quorum is back" % _time_text(fenced.get("since")))
        for guest, outcome in sorted(fenced.get("guests", {}).items()):
            lines.append("guest %s: %s%s" % (guest, outcome.get("result"),
                                             " (%s)" % "; ".join(outcome["attempts"]) if outcome.get("attempts") else ""))
    if state.get("unfenced") and not fenced:
        lines.append("quorum came back at %s; guests %s were left stopped (start them where the configuration says "
                     "they run)" % (_time_text(state["unfenced"]["time"]), ", ".join(state["unfenced"]["guests"]) or "none"))
    if state.get("error"):
        lines.append("error: %s" % state["error"])
    return "\n".join(lines)
