# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Planned migration of a guest to a node that holds its replica: only the last delta crosses the network.

Run on the owner (pvesr's order, section 5 of the pvesr reference): check that every node answers and that the
move is valid (nothing is stopped otherwise) -> stop the guest (stop hook) -> run the job that targets the new
node once more (an incremental send of what changed since the last run) -> transfer the guest's job state to the
new node (receiver operation ``set-state``, as ``pvesr set-state``: key ``local/<new node>`` becomes
``local/<this node>``) -> move the ownership with the direction switch (config.move_guest, generation + 1 on every
node). The new owner then starts the guest (failover.set_guest_running). If anything fails before the ownership
moved, the guest is started here again and nothing else changed.

A migration to a node that holds no replica (no job targets it) is refused: create a job to it and let it run
once (the full copy), then migrate; the old owner keeps its volumes either way, as Proxmox's source does.
"""

from __future__ import annotations

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils.cluster import ClusterError, change_cluster
from ansible_collections.storage.replication.plugins.module_utils.state import (
    DEFAULT_STATEDIR, StateFile, read_local_node, transfer_state)
from ansible_collections.storage.replication.plugins.module_utils.transport import NODE_KEY, ControlChannel

SET_STATE = "set-state"
DEFAULT_LOGDIR = "/var/log/storage-replication"


class MigrationError(RuntimeError):
    """The migration is refused or failed; the message says what was done and what to do."""


def plan_migration(cfg, guest_id, target, local_node):
    """{"guest", "source", "target", "job", "jobs_after"} of a valid migration, or MigrationError (pure)."""
    guest = cfg.guests.get(guest_id)
    if guest is None:
        raise MigrationError("guest %d is not in the cluster configuration" % guest_id)
    if target not in cfg.nodes:
        raise MigrationError("target node '%s' is not a node of the cluster configuration (nodes: %s)"
                             % (target, ", ".join(sorted(cfg.nodes))))
    if guest.node == target:
        raise MigrationError("guest %d is already owned by node '%s': nothing to migrate" % (guest_id, target))
    if guest.node != local_node:
        raise MigrationError("guest %d is owned by node '%s', not by this node ('%s') - run the migration on its owner"
                             % (guest_id, guest.node, local_node))
    job = cfg.job_for_target(guest_id, target)
    if job is None:
        raise MigrationError("node '%s' holds no replica of guest %d (no replication job targets it) - create a job to "
                             "it (storage.replication.job) and let it run once, then migrate; only the last delta "
                             "crosses the network then" % (target, guest_id))
    if job.remove_job:
        raise MigrationError("refusing to migrate replicated guest %d whose replication job %s is marked for removal"
                             % (guest_id, job.id))
    if job.disable:
        raise MigrationError("replication job %s (guest %d to '%s') is disabled - enable it first" % (job.id, guest_id, target))
    jobs_after = {}
    for other in cfg.jobs_of_guest(guest_id):
        jobs_after[other.id] = "%s -> %s" % (target, local_node if other.target == target else other.target)
    return {"guest": guest_id, "source": local_node, "target": target, "job": job.id, "jobs_after": jobs_after}


def _check_cluster(guest_id, target, confdir, statedir):
    """Every node answers and none holds a newer configuration (ClusterError otherwise); nothing is written."""
    change_cluster(lambda cfg: cfg.move_guest(guest_id, target), confdir=confdir, statedir=statedir, check_mode=True)


def migrate(guest_id, target, confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR, logdir=DEFAULT_LOGDIR,
            check_mode=False, key=NODE_KEY, connect=ControlChannel, echo=None):
    """Migrate the guest from this node to ``target``; returns {"changed", "plan", "sync", "generation"}."""
    cfg = configmod.load(confdir)
    plan = plan_migration(cfg, guest_id, target, read_local_node(statedir))
    _check_cluster(guest_id, target, confdir, statedir)
    if check_mode:
        return {"changed": True, "plan": plan, "sync": None, "generation": cfg.generation + 1}
    from ansible_collections.storage.replication.plugins.module_utils import failover  # pylint: disable=import-outside-toplevel
    guest = cfg.guests[guest_id]
    was_running = failover.guest_running(guest) is not False
    if guest.hook("stop"):
        failover.set_guest_running(guest_id, False, confdir, statedir)
    try:
        sync = _final_sync(cfg, plan["job"], confdir, statedir, logdir, echo)
        _send_state(cfg, guest_id, target, statedir, key, connect)
        outcome = change_cluster(lambda c: c.move_guest(guest_id, target), confdir=confdir, statedir=statedir)
    except (MigrationError, ClusterError, configmod.ConfigError) as exc:
        note = _restart(guest_id, was_running, confdir, statedir)
        raise MigrationError("migration of guest %d to '%s' failed, the guest stays on '%s'%s: %s"
                             % (guest_id, target, plan["source"], note, exc)) from exc
    return {"changed": True, "plan": plan, "sync": sync, "generation": outcome.generation,
            "push": outcome.as_dict()["nodes"], "warnings": outcome.warnings}


def _restart(guest_id, was_running, confdir, statedir):
    from ansible_collections.storage.replication.plugins.module_utils import failover  # pylint: disable=import-outside-toplevel
    if not was_running or not configmod.load(confdir).guests[guest_id].hook("start"):
        return ""
    try:
        failover.set_guest_running(guest_id, True, confdir, statedir)
    except failover.FailoverError as exc:
        return " and could not be started again (%s) - start it by hand" % exc
    return " (started again there)"


def _final_sync(cfg, job_id, confdir, statedir, logdir, echo):
    """One more run of the job to the new owner: the delta since the last run, with the guest stopped."""
    from ansible_collections.storage.replication.plugins.module_utils.replicate import run_job  # pylint: disable=import-outside-toplevel
    result = run_job(cfg, job_id, statedir=statedir, logdir=logdir, confdir=confdir, echo=echo)
    if not result["ok"]:
        raise MigrationError("the final sync (job %s) failed: %s" % (job_id, result["error"]))
    return {"job": job_id, "start": result["start"], "bytes": result["bytes"],
            "volumes": [{k: v[k] for k in ("volume", "mode", "base", "bytes", "seconds")} for v in result["volumes"]]}


def _send_state(cfg, guest_id, target, statedir, key, connect):
    """pvesr transfer_replication_state: the new owner gets this node's job states of the guest, re-keyed."""
    states = transfer_state(StateFile(statedir).guest_states(guest_id), target, read_local_node(statedir))
    node = cfg.nodes[target]
    request = {"guest": guest_id, "states": states, "generation": cfg.generation, "source": read_local_node(statedir)}
    from ansible_collections.storage.replication.plugins.module_utils.transport import RemoteError, TransportError  # pylint: disable=import-outside-toplevel
    try:
        with connect(node.name, node.address, node.host_key, key=key, port=node.port) as channel:
            channel.call(SET_STATE, request, timeout=60)
    except (RemoteError, TransportError) as exc:
        raise MigrationError("transferring the job state to '%s' failed: %s" % (target, exc)) from exc


def serve_set_state(receiver, request):
    """Receiver operation ``set-state``: replace the guest's job states here (the migration's new owner)."""
    from ansible_collections.storage.replication.plugins.module_utils.receiver import (  # pylint: disable=import-outside-toplevel
        Refused, check_int, check_request_keys)
    check_request_keys(request, ("guest", "states", "generation", "source"))
    guest = check_int(request.get("guest"), "guest ID", 100, 999999999)
    receiver.check_caller(request, guest)
    states = request.get("states")
    if not isinstance(states, dict) or not all(isinstance(k, str) and k.startswith("local/") and isinstance(v, dict)
                                               for k, v in states.items()):
        raise Refused("set-state: states must be a JSON object of job states by 'local/<target>': refused",
                      "invalid-argument")
    StateFile(receiver.statedir).set_guest_states(guest, states)
    return {"guest": guest, "targets": sorted(states)}
