# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Failover: recover the guests of a failed node on the surviving nodes that hold their newest replicas.

What Proxmox's HA manager does when it "steals" a guest, done the replication-aware way, in four steps that the
failover playbook runs in this order (each is idempotent, so the playbook can simply be run again):

1. ``survey`` + ``plan_failover`` (on one surviving node, the coordinator; read-only): which nodes answer over
   the replication trust, whether they are a majority of the cluster configuration's nodes (quorum), that the
   failed node really does not answer, and for each of its guests the surviving node with the newest replica
   (or the one the operator chose) and the recovery point, i.e. the start time of that replica.
2. ``promote_replica`` (on each chosen node, before it owns the guest, so safety rule 1 holds): bring every volume
   to the newest replication snapshot; anything written on the replica since is first kept aside as a
   ``<volume>-diverged-<stamp>`` dataset (normally nothing: a replica is not written).
3. ``take_over`` (on the coordinator): one cluster-wide change, pushed with generation + 1 to every node that
   answers, leaving the failed node behind (when it comes back its runner sees the newer generation, adopts it
   and acts on nothing it lost): the new owner, and the replication direction reversed (``move_guest``).
4. ``start_guest`` (on the new owner): its start hook; refused on a node that does not own the guest.
"""

from __future__ import annotations

import time

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import fence as fencemod
from ansible_collections.storage.replication.plugins.module_utils.names import parse_replication_snapshot
from ansible_collections.storage.replication.plugins.module_utils.receiver import Receiver
from ansible_collections.storage.replication.plugins.module_utils import points, rollback
from ansible_collections.storage.replication.plugins.module_utils.report import time_text
from ansible_collections.storage.replication.plugins.module_utils.replicate import run_guest_hook
from ansible_collections.storage.replication.plugins.module_utils.cluster import (
    ask_generation, connect_peer, describe, on_every_peer, peer_nodes, change_cluster)
from ansible_collections.storage.replication.plugins.module_utils.state import DEFAULT_STATEDIR, read_local_node
from ansible_collections.storage.replication.plugins.module_utils.transport import NODE_KEY, ControlChannel

LIST_TIMEOUT = 30


class FailoverError(RuntimeError):
    """The failover (or a step of it) is refused; the message names the object and what to do."""


# ---------------------------------------------------------------------------------------------------------------
# 1. Survey and plan

class NodeView:
    """What one node told the coordinator: ``reachable``, ``generation``, ``replicas`` ({guest id: record of
    its replica, as the receiver stores it}) and ``error`` (why it did not answer)."""

    def __init__(self, name, reachable, generation=None, replicas=None, error=None):
        self.name = name
        self.reachable = reachable
        self.generation = generation
        self.replicas = replicas or {}
        self.error = error


def local_replicas(confdir, statedir):
    """The replica records this node holds (the receiver's own view of them)."""
    return Receiver(confdir, statedir).replica_records()


def _as_replicas(records):
    return {int(guest): record for guest, record in records.items() if str(guest).isdigit() and isinstance(record, dict)}


def survey(cfg, confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR, key=NODE_KEY, connect=ControlChannel):
    """{node: NodeView} of every node of ``cfg``: this node from its own files, the others over the replication
    trust (in parallel; a node that does not answer within the timeout is unreachable)."""
    local_node = read_local_node(statedir)

    def ask(node):
        channel = connect_peer(node, key, connect)
        try:
            generation = ask_generation(channel, cfg, local_node)["generation"]
            reply = channel.call("list", {"source": local_node, "generation": cfg.generation}, timeout=LIST_TIMEOUT)
            return generation, reply.get("replicas") or {}
        finally:
            channel.close()

    views = {local_node: NodeView(local_node, True, cfg.generation, _as_replicas(local_replicas(confdir, statedir)))}
    for name, answer in on_every_peer(peer_nodes(cfg, local_node), ask).items():
        if isinstance(answer, Exception):
            views[name] = NodeView(name, False, error=describe(answer))
        else:
            views[name] = NodeView(name, True, answer[0], _as_replicas(answer[1]))
    return views


def quorum(cfg, views):
    """{"nodes", "reachable", "needed", "quorate"}: a majority of the configuration's nodes must answer."""
    reachable = sorted(name for name in cfg.nodes if name in views and views[name].reachable)
    needed = len(cfg.nodes) // 2 + 1
    return {"nodes": len(cfg.nodes), "reachable": reachable, "needed": needed, "quorate": len(reachable) >= needed}


def plan_failover(cfg, local_node, failed_node, views, guests=None, to=None, force_quorum=False, now=None, point=None,
                  points=None):
    """The failover plan (a dict, see the guest_failover_plan module's RETURN), or FailoverError.

    ``point`` (a snapshot name or a time, rollback.parse_point) recovers each guest from the newest restore point at
    or before it instead of the newest replica; ``points`` is {guest: {node: [point]}} (rollback.survey_points).
    Pure: it decides from the configuration and the views only, so every rule is unit-tested without a lab.
    """
    now = int(time.time() if now is None else now)
    _check_failed_node(cfg, local_node, failed_node, views)
    votes = quorum(cfg, views)
    warnings = _quorum_warnings(votes, force_quorum)
    newer = sorted(n for n, v in views.items() if v.reachable and v.generation is not None and v.generation > cfg.generation)
    if newer:
        raise FailoverError("node(s) %s hold a newer cluster configuration than this node ('%s', generation %d) - "
                            "nothing was changed; run the failover again (this node adopts the newer one first)"
                            % (", ".join("'%s'" % n for n in newer), local_node, cfg.generation))
    chosen = _guests_to_recover(cfg, failed_node, guests)
    if to is not None:
        _check_destination(cfg, failed_node, views, to)
    items, unrecoverable = [], []
    wanted = None
    if point is not None:
        try:
            wanted = rollback.parse_point(point, now)
        except rollback.RollbackError as exc:
            raise FailoverError("%s - nothing was changed" % exc) from None
    for guest in chosen:
        item = _plan_guest(cfg, guest, views, failed_node, to, now, wanted, (points or {}).get(guest, {}))
        (items if item["to"] else unrecoverable).append(item)
    for item in unrecoverable:
        warnings.append("guest %d cannot be recovered: %s" % (item["guest"], item["reason"]))
    return {"summary": plan_summary(votes, force_quorum, items, unrecoverable), "failed_node": failed_node,
            "coordinator": local_node, "generation": cfg.generation, "quorum": votes,
            "forced_quorum": bool(force_quorum and not votes["quorate"]), "guests": items,
            "moves": [{"id": item["guest"], "node": item["to"]} for item in items],
            "unrecoverable": unrecoverable, "warnings": warnings}


def plan_summary(votes, force_quorum, items, unrecoverable):
    """The plan in lines for people (the playbook prints them)."""
    lines = ["quorum: %d of %d nodes answer (%s), %d needed%s" % (
        len(votes["reachable"]), votes["nodes"], ", ".join(votes["reachable"]), votes["needed"],
        " - NO QUORUM, FORCED" if force_quorum and not votes["quorate"] else "")]
    for item in items:
        lines.append("guest %d: %s -> %s, from the %s of %s (job %s, %d s old): writes on %s after it are lost%s; "
                     "jobs after: %s" % (item["guest"], item["from"], item["to"],
                                         "restore point %s" % item["point"]["snapshot"] if item.get("point") else "replica",
                                         item["recovery_point_text"], item["job"], item["lost_writes_window"], item["from"],
                                         " (the newer points are kept aside on %s)" % item["to"] if item.get("point") else "",
                                         ", ".join("%s %s" % pair for pair in sorted(item["jobs_after"].items())) or "none"))
    for item in unrecoverable:
        lines.append("guest %d: NOT recoverable - %s" % (item["guest"], item["reason"]))
    return lines


def _check_failed_node(cfg, local_node, failed_node, views):
    if failed_node not in cfg.nodes:
        raise FailoverError("node '%s' is not a node of the cluster configuration (nodes: %s) - give the name of the "
                            "failed node as the configuration spells it" % (failed_node, ", ".join(sorted(cfg.nodes))))
    if failed_node == local_node:
        raise FailoverError("node '%s' is the node running this failover, so it has not failed - run the failover on "
                            "a surviving node" % failed_node)
    view = views.get(failed_node)
    if view is not None and view.reachable:
        raise FailoverError("node '%s' answers (cluster configuration generation %s): it has not failed - refusing to "
                            "fail over the guests of a node that is up; move them with the migrate playbook, or stop "
                            "the node first" % (failed_node, view.generation))


def _quorum_warnings(votes, force_quorum):
    if votes["quorate"]:
        return []
    missing = "only %d of %d nodes answer (%s), %d are needed" % (
        len(votes["reachable"]), votes["nodes"], ", ".join(votes["reachable"]) or "none", votes["needed"])
    if not force_quorum:
        raise FailoverError("no quorum: %s - nothing was changed. Bring nodes back, or, only if they cannot come back "
                            "and you are sure they are down, repeat with force_quorum=true" % missing)
    return ["QUORUM FORCED: %s. This is the equivalent of 'pvecm expected 1': make NO other cluster change (no job, "
            "guest, node or migration change) until the missing nodes are back and have adopted this generation, or "
            "two partitions may each believe they own the same guests" % missing]


def _guests_to_recover(cfg, failed_node, guests):
    owned = sorted(g for g, guest in cfg.guests.items() if guest.node == failed_node)
    if guests is None:
        return owned
    problems = []
    for guest in guests:
        if guest not in cfg.guests:
            problems.append("guest %s is not in the cluster configuration" % guest)
        elif cfg.guests[guest].node != failed_node:
            problems.append("guest %d is owned by node '%s', not by the failed node '%s'" % (
                guest, cfg.guests[guest].node, failed_node))
    if problems:
        raise FailoverError("%s - nothing was changed; list only guests of '%s' (%s)" % (
            "; ".join(problems), failed_node, ", ".join(str(g) for g in owned) or "it owns none"))
    return sorted(set(guests))


def _check_destination(cfg, failed_node, views, to):
    if to not in cfg.nodes:
        raise FailoverError("destination node '%s' is not a node of the cluster configuration (nodes: %s)"
                            % (to, ", ".join(sorted(cfg.nodes))))
    if to == failed_node:
        raise FailoverError("destination node '%s' is the failed node - choose a surviving node" % to)
    if not views[to].reachable:
        raise FailoverError("destination node '%s' does not answer (%s) - choose a node that is up"
                            % (to, views[to].error))


def _plan_guest(cfg, guest_id, views, failed_node, to, now, wanted=None, node_points=None):
    """One guest's line of the plan; ``to`` None with a ``reason`` if no surviving node can take it."""
    guest = cfg.guests[guest_id]
    replicas = {name: view.replicas[guest_id] for name, view in views.items()
                if name != failed_node and view.reachable and guest_id in view.replicas}
    item = {"guest": guest_id, "type": guest.type, "from": failed_node, "to": None, "volumes": sorted(guest.volumes),
            "replicas": {name: int(record.get("last_sync", 0)) for name, record in sorted(replicas.items())}}
    missing = {name: sorted(set(guest.volumes) - set(record.get("volumes", []))) for name, record in replicas.items()}
    usable = {name: record for name, record in replicas.items() if not missing[name]}
    if to is not None:
        if to not in usable:
            item["reason"] = ("node '%s' holds no complete replica of it (%s)" % (
                to, "missing volumes %s" % ", ".join(missing[to]) if to in replicas else "no replica at all"))
            return item
        chosen = to
    if wanted is not None:
        return _plan_from_point(cfg, item, usable if to is None else {to: usable[to]}, node_points, wanted, now)
    if to is not None:
        pass  # chosen above
    elif usable:
        chosen = max(usable, key=lambda name: (int(usable[name].get("last_sync", 0)), name))
    else:
        item["reason"] = "no surviving node that answers holds a complete replica of it"
        return item
    record = usable[chosen]
    last_sync = int(record.get("last_sync", 0))
    item.update({"to": chosen, "job": record.get("job"), "recovery_point": last_sync,
                 "recovery_point_text": time_text(last_sync), "lost_writes_window": max(0, now - last_sync),
                 "jobs_after": _jobs_after_move(cfg, guest_id, chosen)})
    return item


def _plan_from_point(cfg, item, usable, node_points, wanted, now):
    """The guest's line when it is to start from a restore point: the surviving replica node with the newest point
    that ``wanted`` names."""
    node, point = rollback.pick_holder({name: node_points.get(name, {}).get("points", []) for name in usable}, wanted)
    if point is None:
        item["reason"] = ("no surviving node with a complete replica (%s) holds a restore point %s on every volume"
                          % (", ".join(sorted(usable)) or "none", "named '%s'" % wanted[1] if wanted[0] == "snapshot"
                             else "at or before %s" % time_text(wanted[1])))
        return item
    item.update({"to": node, "job": point["job"], "recovery_point": point["time"],
                 "recovery_point_text": time_text(point["time"]), "lost_writes_window": max(0, now - point["time"]),
                 "point": {k: point[k] for k in ("snapshot", "job", "time")},
                 "jobs_after": _jobs_after_move(cfg, item["guest"], node)})
    return item


def _jobs_after_move(cfg, guest_id, new_node):
    """The guest's jobs as they will be after the move (direction reversed): {job id: "source -> target"}."""
    old_node = cfg.guests[guest_id].node
    result = {}
    for job in cfg.jobs_of_guest(guest_id):
        target = old_node if job.target == new_node else job.target
        result[job.id] = "%s -> %s" % (new_node, target)
    return result


# ---------------------------------------------------------------------------------------------------------------
# 1b. Wait for the failed node's fence (fence.py): it may be cut off rather than dead, its guests still running

FENCE_COMMAND_TIMEOUT = 120


def run_fence_command(argv):
    """Run the operator's out-of-band fence command (argv; exit 0 = the node is fenced): (ok, what it said)."""
    error = fencemod.run_hook(argv, FENCE_COMMAND_TIMEOUT)
    return error is None, error or "exit code 0"


def fence_decision(failed_node, coordinator, fence_state, now, failed_node_is_off=False, fence_command=None):
    """Whether the guests of the unreachable ``failed_node`` may be started elsewhere, from what holds:
    ``failed_node_is_off`` (the operator says so), ``fence_command`` ((ok, text) of the out-of-band fence command,
    None if none ran), or the coordinator's own fence state (fence.json: ``failed_node`` unreachable for longer
    than its ``fence_after`` plus fence.margin, measured on this survivor's clock by its watching fence service).

    Returns {"fenced", "by" (powered_off|fence_command|waited|None), "unreachable_for", "needed", "left", "text"}.
    """
    decision = {"fenced": False, "by": None, "unreachable_for": None, "needed": None, "left": None}
    how_else = ("-e failed_node_is_off=true if you know that %s is powered off, or -e '{\"fence_command\": [...]}' "
                "to fence it out of band" % failed_node)
    waited = _fence_wait(failed_node, coordinator, fence_state, now, decision)
    if failed_node_is_off:
        decision.update(fenced=True, by="powered_off", text="node %s is powered off (the operator says so: "
                        "failed_node_is_off)" % failed_node)
    elif fence_command is not None and fence_command[0]:
        decision.update(fenced=True, by="fence_command", text="node %s was fenced by the fence command (%s)"
                        % (failed_node, fence_command[1]))
    elif decision["left"] is not None and decision["left"] <= 0:
        decision.update(fenced=True, by="waited", text=waited)
    else:
        failed = "; the fence command failed: %s" % fence_command[1] if fence_command is not None else ""
        decision["text"] = "%s%s - it may be cut off rather than dead, with its guests still running: wait, or %s" % (
            waited, failed, how_else)
    return decision


def _fence_wait(failed_node, coordinator, state, now, decision):
    """Fill the wait figures of ``decision`` from the coordinator's fence state; the sentence that says them."""
    if not state:
        return ("the fence service has never run on the coordinator %s, so nothing tells how long %s has been "
                "unreachable (storage-replication-fence.service)" % (coordinator, failed_node))
    watching = fencemod.continuous_since(state, now)
    if watching is None:
        return ("the fence service on the coordinator %s is not running (last tick %s), so nothing tells how long %s "
                "has been unreachable" % (coordinator, time_text(state.get("tick")), failed_node))
    seen = (state.get("last_seen") or {}).get(failed_node)
    unreachable_for = now - max(seen or 0, watching)
    fence_after = int(state.get("fence_after", fencemod.DEFAULT_FENCE_AFTER))
    needed = fence_after + fencemod.margin(int(state.get("interval", fencemod.DEFAULT_INTERVAL)))
    decision.update(unreachable_for=unreachable_for, needed=needed, left=max(0, needed - unreachable_for))
    return ("node %s has been unreachable from %s for %d s (%s), its fence stops its guests after %d s without "
            "quorum: %s" % (failed_node, coordinator, unreachable_for,
                            "last answered %s" % time_text(seen) if seen and seen >= watching
                            else "not seen since this fence service began watching at %s" % time_text(watching),
                            fence_after,
                            "waited long enough (%d s with the margin)" % needed if unreachable_for >= needed
                            else "%d s left (%d s with the margin)" % (needed - unreachable_for, needed)))


# ---------------------------------------------------------------------------------------------------------------
# 2. Promote the replica (on the chosen node, before it owns the guest)

def replica_snapshot_time(name):
    """The epoch in a replication snapshot's name, or None for any other name."""
    parsed = parse_replication_snapshot(name)
    return parsed[1] if parsed else None


def newest_replica_snapshot(snaps):
    """The newest replication snapshot of a volume ({snap: info} in creation order), or None."""
    found = [s for s in snaps if replica_snapshot_time(s) is not None]
    return found[-1] if found else None


def promote_replica(guest_id, confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR, zfs=None, check_mode=False,
                    point=None):
    """Bring this node's replica of the guest to its newest replication snapshot, or to the restore point ``point``
    (a snapshot name); returns {"changed", "volumes", "recovery_point"}. Data written on the replica since, and the
    restore points newer than ``point``, are kept aside first (one copy per volume), never destroyed."""
    receiver = Receiver(confdir, statedir, zfs=zfs)
    cfg, node = receiver.cfg, receiver.node
    guest = cfg.guests.get(guest_id)
    if guest is None:
        raise FailoverError("guest %d is not in the cluster configuration of node '%s'" % (guest_id, node))
    if guest.node == node:
        return {"changed": False, "volumes": {}, "recovery_point": None, "owner": True,
                "msg": "node '%s' owns guest %d already: its volumes are live data and are left alone" % (node, guest_id)}
    volumes = {volume: _promotion_of(receiver, guest_id, volume, point) for volume in sorted(guest.volumes)}
    snapshots = {v["snapshot"] for v in volumes.values()}
    if len(snapshots) != 1:
        raise FailoverError("the volumes of guest %d on node '%s' are at different replication snapshots (%s) - a run "
                            "was interrupted between volumes; run the failover with another destination, or promote "
                            "by hand" % (guest_id, node, ", ".join(sorted(snapshots))))
    changed = any(v["written"] or v["newer"] for v in volumes.values())
    if changed and not check_mode:
        for volume, promotion in volumes.items():
            if promotion["written"] or promotion["newer"]:
                dataset = receiver.dataset(volume)
                promotion["kept"] = receiver.keep_aside(volume, dataset, promotion["newer"])
                points.roll_back(receiver.zfs, dataset, promotion["snapshot"], promotion["newer"])
    return {"changed": changed, "volumes": volumes, "recovery_point": replica_snapshot_time(snapshots.pop()),
            "owner": False, "log": receiver.log}


def _promotion_of(receiver, guest_id, volume, point=None):
    dataset = receiver.dataset(volume)
    if not receiver.zfs.exists(dataset):
        raise FailoverError("volume '%s' of guest %d does not exist on node '%s' (dataset '%s') - this node holds no "
                            "replica of it; choose another destination" % (volume, guest_id, receiver.node, dataset))
    snaps = receiver.zfs.snapshots(dataset)
    if point is not None:
        if point not in snaps:
            raise FailoverError("volume '%s' of guest %d on node '%s' has no restore point '%s' - choose another point or "
                                "destination ('storage-replication restore-points %d' lists them)"
                                % (volume, guest_id, receiver.node, point, guest_id))
        newer = [s for s, info in snaps.items() if info["createtxg"] > snaps[point]["createtxg"]]
        return {"snapshot": point, "newer": newer, "kept": None,
                "written": receiver.zfs.written_since(dataset, list(snaps)[-1])}
    newest = newest_replica_snapshot(snaps)
    if newest is None:
        raise FailoverError("volume '%s' of guest %d on node '%s' has no replication snapshot - it is not a replica; "
                            "choose another destination" % (volume, guest_id, receiver.node))
    later = [s for s, info in snaps.items() if info["createtxg"] > snaps[newest]["createtxg"]]
    if later:
        raise FailoverError("volume '%s' of guest %d on node '%s' has snapshots newer than its last replica (%s): "
                            "rolling back would destroy them - copy them elsewhere (zfs send), destroy them, and run "
                            "the failover again" % (volume, guest_id, receiver.node, ", ".join(later)))
    return {"snapshot": newest, "written": receiver.zfs.written_since(dataset, newest), "kept": None, "newer": []}


# ---------------------------------------------------------------------------------------------------------------
# 3. Take over (one cluster-wide change) and 4. start

def take_over(moves, allow_unreachable=False, confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR,
              check_mode=False, force_quorum=False):
    """Make each guest of ``moves`` ({guest id: node}) owned by its node, with the replication direction reversed
    (config.move_guest), in one change committed by a majority as generation + 1 (``force_quorum``: by whatever
    nodes answer, the loud override); returns the ClusterChange."""
    def change(cfg):
        moved = {}
        for guest_id, node in sorted(moves.items()):
            guest = cfg.guests.get(guest_id)
            if guest is None:
                raise configmod.ConfigError("guest %d is not in the cluster configuration" % guest_id)
            if node not in cfg.nodes:
                raise configmod.ConfigError("node '%s' (new owner of guest %d) is not a node of the cluster "
                                            "configuration" % (node, guest_id))
            if guest.node != node:
                moved[guest_id] = {"from": guest.node, "to": node}
                cfg.move_guest(guest_id, node)
        return moved

    return change_cluster(change, confdir=confdir, statedir=statedir, force=allow_unreachable, check_mode=check_mode,
                          force_quorum=force_quorum)


def guest_running(guest):
    """True/False from the guest's status hook (exit 0 = running, 3 = stopped), None if it has none."""
    code = run_guest_hook(guest, "status", allowed_codes=(0, 3))
    return None if code is None else code == 0


def set_guest_running(guest_id, running, confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR,
                      check_mode=False):
    """Start (its start hook) or stop (its stop hook) the guest on this node; returns {"changed", "running"}.

    Starting is refused on a node that does not own the guest: a guest runs on its owner only (a node that was
    down and missed a failover must never start what it lost). Without a status hook the hook always runs.
    """
    cfg, node = configmod.load(confdir), read_local_node(statedir)
    guest = cfg.guests.get(guest_id)
    if guest is None:
        raise FailoverError("guest %d is not in the cluster configuration of node '%s'" % (guest_id, node))
    if running and guest.node != node:
        raise FailoverError("guest %d is owned by node '%s', not by this node ('%s'): refusing to start it here - a "
                            "guest runs only on its owner (cluster configuration generation %d)"
                            % (guest_id, guest.node, node, cfg.generation))
    refusal = fencemod.start_refusal(statedir) if running else None
    if refusal:
        raise FailoverError("guest %d on node '%s': %s" % (guest_id, node, refusal))
    hook = "start" if running else "stop"
    if not guest.hook(hook):
        raise FailoverError("guest %d has no %s hook - add one (storage.replication.guest, hooks) or %s it by hand"
                            % (guest_id, hook, hook))
    if guest_running(guest) is running:
        return {"changed": False, "running": running}
    if not check_mode:
        run_guest_hook(guest, hook)
    return {"changed": True, "running": running}
