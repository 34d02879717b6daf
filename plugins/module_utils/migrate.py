# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Planned migration of a guest from this node (its owner) to another node, with the engine's own data path.

Run on the owner (pvesr's order, section 5 of the pvesr reference): check that every node answers and that the
move is valid (nothing is stopped otherwise) -> bring the data to the new node -> transfer the guest's job state
to the new node (receiver operation ``set-state``, as ``pvesr set-state``: key ``local/<new node>`` becomes
``local/<this node>``) -> move the ownership (config.move_guest, generation + 1 on every node). The new owner then
starts the guest (failover.set_guest_running). If anything fails before the ownership moved, the guest is started
here again and the cluster configuration is unchanged.

How the data gets there depends on the new node:

- It holds a replica (a job targets it): stop the guest, run that job once more (only the delta since its last
  run crosses the network). The move switches that job's direction (it now targets this node).
- It holds none: a one-off copy job (``<guest>-999999999``, never written to the configuration, so no other node
  runs it) sends every volume in full with ``run_job`` while the guest still runs, then once more incrementally
  with the guest stopped, so the guest is down only for the last delta. The streams are replication streams
  (``zfs send -R``): the guest's other replication snapshots travel with their guids, so every job's next run
  from the new owner is incremental. Then the copy job's snapshots go on both nodes and its replica record on the
  new node, before the ownership moves (the receiver refuses to touch a guest its node owns). The jobs keep their
  targets and start from the new owner; their state keys are unchanged. This node keeps its volumes (now no job
  targets it: destroy them when they are no longer needed).
"""

from __future__ import annotations

import copy

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import failover
from ansible_collections.storage.replication.plugins.module_utils.cluster import ClusterError, change_cluster
from ansible_collections.storage.replication.plugins.module_utils.joblog import DEFAULT_LOGDIR
from ansible_collections.storage.replication.plugins.module_utils.names import migration_copy_job
from ansible_collections.storage.replication.plugins.module_utils.protocol import DROP_COPY, SET_STATE
from ansible_collections.storage.replication.plugins.module_utils.pruning import drop_job_snapshots
from ansible_collections.storage.replication.plugins.module_utils.replicate import run_job
from ansible_collections.storage.replication.plugins.module_utils.report import estimate_text
from ansible_collections.storage.replication.plugins.module_utils.state import (
    DEFAULT_STATEDIR, StateFile, read_local_node, transfer_state)
from ansible_collections.storage.replication.plugins.module_utils.transport import (
    NODE_KEY, ControlChannel, RemoteError, TransportError)
from ansible_collections.storage.replication.plugins.module_utils.zfs import Zfs

DELTA, FULL_COPY = "delta", "full copy"


class MigrationError(RuntimeError):
    """The migration is refused or failed; the message says what was done and what to do."""


def copy_job_id(guest_id):
    """The one-off job that copies the guest to a node without a replica (its snapshots name it)."""
    return migration_copy_job(guest_id)


# ---------------------------------------------------------------------------------------------------------------
# The plan (pure)

def plan_migration(cfg, guest_id, target, local_node):
    """{"guest", "source", "target", "mode", "job", "volumes", "jobs_after"} of a valid migration, or MigrationError.

    ``mode`` is DELTA (``job`` is the job to the target) or FULL_COPY (``job`` is the one-off copy job).
    """
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
        mode, job_id = FULL_COPY, _free_copy_job(cfg, guest_id)
    else:
        mode, job_id = DELTA, _usable_job(job, guest_id, target)
    jobs_after = {other.id: "%s -> %s" % (target, local_node if other.target == target else other.target)
                  for other in cfg.jobs_of_guest(guest_id)}
    return {"guest": guest_id, "source": local_node, "target": target, "mode": mode, "job": job_id,
            "volumes": sorted(guest.volumes), "jobs_after": jobs_after}


def _usable_job(job, guest_id, target):
    if job.remove_job:
        raise MigrationError("refusing to migrate replicated guest %d whose replication job %s is marked for removal"
                             % (guest_id, job.id))
    if job.disable:
        raise MigrationError("replication job %s (guest %d to '%s') is disabled - enable it first" % (job.id, guest_id, target))
    return job.id


def _free_copy_job(cfg, guest_id):
    job_id = copy_job_id(guest_id)
    if job_id in cfg.jobs:
        raise MigrationError("replication job %s exists, but its number is reserved for the full copy of a migration - "
                             "re-create it under another number (storage.replication.job), then migrate" % job_id)
    return job_id


def plan_summary(plan, copy_bytes=None):
    """The plan in one line for people (check mode prints it)."""
    if plan["mode"] == FULL_COPY:
        data = ("node '%s' holds no replica: full copy of %d volume(s), %s, while the guest runs, then the last delta "
                "with it stopped" % (plan["target"], len(plan["volumes"]), estimate_text(copy_bytes)))
    else:
        data = "stop, then the last delta by job %s (node '%s' holds its replica)" % (plan["job"], plan["target"])
    jobs = ", ".join("%s %s" % pair for pair in sorted(plan["jobs_after"].items())) or "none"
    return "guest %d: %s -> %s; %s; jobs after: %s" % (plan["guest"], plan["source"], plan["target"], data, jobs)


def copy_size(cfg, guest_id, zfs):
    """Bytes a full copy sends, about: the space the volumes and their snapshots use here (a replication stream
    carries both). Works on every ZFS, unlike `zfs send -nP`, which needs a snapshot check mode must not take."""
    datasets = list(cfg.guest_datasets(guest_id).values())
    used = zfs.get(("used",), datasets)
    return sum(int(used[dataset]["used"]) for dataset in datasets)


# ---------------------------------------------------------------------------------------------------------------
# The migration

def migrate(guest_id, target, confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR, logdir=DEFAULT_LOGDIR,
            check_mode=False, key=NODE_KEY, connect=ControlChannel, echo=None, zfs=None):
    """Migrate the guest from this node to ``target``; returns {"changed", "plan", "summary", "full_copy", "sync",
    "generation"} (``full_copy`` is the full copy's run while the guest ran, None when the target held a replica)."""
    cfg = configmod.load(confdir)
    plan = plan_migration(cfg, guest_id, target, read_local_node(statedir))
    _check_cluster(guest_id, target, confdir, statedir)
    zfs = zfs or Zfs()
    summary = plan_summary(plan, copy_size(cfg, guest_id, zfs) if plan["mode"] == FULL_COPY else None)
    if check_mode:
        return {"changed": True, "plan": plan, "summary": summary, "full_copy": None, "sync": None,
                "generation": cfg.generation + 1}
    run_cfg = _with_copy_job(cfg, plan) if plan["mode"] == FULL_COPY else cfg
    runs = Runs(run_cfg, confdir, statedir, logdir, echo)
    full = runs.once(plan["job"], "the full copy") if plan["mode"] == FULL_COPY else None
    outcome, sync = _stop_sync_and_move(plan, runs, zfs, key, connect)
    leftover = [_leftover_warning(cfg, plan)] if plan["mode"] == FULL_COPY else []
    return {"changed": True, "plan": plan, "summary": summary, "full_copy": full, "sync": sync,
            "generation": outcome.generation, "push": outcome.as_dict()["nodes"], "warnings": outcome.warnings + leftover}


def _leftover_warning(cfg, plan):
    """The old owner keeps its volumes (as a migration to a replica holder does); say that no job updates them."""
    return ("node '%s' keeps its copy of guest %d's volumes (%s), which no job updates any more: destroy it once the "
            "guest runs well on '%s' - a later migration back to '%s' can reuse it only while the two share a snapshot"
            % (plan["source"], plan["guest"], ", ".join(cfg.guest_datasets(plan["guest"]).values()), plan["target"],
               plan["source"]))


def _check_cluster(guest_id, target, confdir, statedir):
    """Every node answers and none holds a newer configuration (ClusterError otherwise); nothing is written."""
    change_cluster(lambda cfg: cfg.move_guest(guest_id, target), confdir=confdir, statedir=statedir, check_mode=True)


def _with_copy_job(cfg, plan):
    """The configuration plus the one-off copy job, for run_job only (never saved: no other node runs it)."""
    run_cfg = copy.deepcopy(cfg)
    run_cfg.jobs[plan["job"]] = configmod.Job(id=plan["job"], target=plan["target"], source=plan["source"],
                                              comment="migration of guest %d" % plan["guest"])
    return run_cfg


def _stop_sync_and_move(plan, runs, zfs, key, connect):
    """Stop the guest, send the last delta, hand over; on a failure the guest is started here again."""
    guest_id, target, confdir, statedir = plan["guest"], plan["target"], runs.confdir, runs.statedir
    guest = runs.cfg.guests[guest_id]
    was_running = failover.guest_running(guest) is not False
    if guest.hook("stop"):
        failover.set_guest_running(guest_id, False, confdir, statedir)
    try:
        sync = runs.once(plan["job"], "the final sync")
        if plan["mode"] == FULL_COPY:
            _drop_copy_job(runs.cfg, plan, statedir, zfs, key, connect)
        _send_state(runs.cfg, guest_id, target, statedir, key, connect)
        outcome = change_cluster(lambda c: c.move_guest(guest_id, target), confdir=confdir, statedir=statedir)
    except (MigrationError, ClusterError, configmod.ConfigError) as exc:
        note = _restart(guest_id, was_running, confdir, statedir)
        kept = (" (node '%s' keeps what was copied: a new attempt sends only what changed since)" % target
                if plan["mode"] == FULL_COPY else "")
        raise MigrationError("migration of guest %d to '%s' failed, the guest stays on '%s'%s%s: %s"
                             % (guest_id, target, plan["source"], note, kept, exc)) from exc
    return outcome, sync


def _restart(guest_id, was_running, confdir, statedir):
    if not was_running or not configmod.load(confdir).guests[guest_id].hook("start"):
        return ""
    try:
        failover.set_guest_running(guest_id, True, confdir, statedir)
    except failover.FailoverError as exc:
        return " and could not be started again (%s) - start it by hand" % exc
    return " (started again there)"


class Runs:
    """One-off runs of a job (run_job) for a migration, with the paths they log and keep state in."""

    def __init__(self, cfg, confdir, statedir, logdir, echo):
        self.cfg = cfg
        self.confdir = confdir
        self.statedir = statedir
        self.logdir = logdir
        self.echo = echo

    def once(self, job_id, what):
        """Run the job now; {"job", "start", "bytes", "volumes"}, or MigrationError naming ``what`` failed."""
        result = run_job(self.cfg, job_id, statedir=self.statedir, logdir=self.logdir, confdir=self.confdir,
                         echo=self.echo)
        if not result["ok"]:
            raise MigrationError("%s (job %s) failed: %s" % (what, job_id, result["error"]))
        return {"job": job_id, "start": result["start"], "bytes": result["bytes"],
                "volumes": [{k: v[k] for k in ("volume", "mode", "base", "bytes", "seconds")} for v in result["volumes"]]}


def _drop_copy_job(cfg, plan, statedir, zfs, key, connect):
    """The copy job's traces go: its snapshots and replica record on the target (while it does not own the guest
    yet), its snapshots and bookmarks here, its state entry here (the job states the target gets are the real jobs')."""
    job_id, guest_id = plan["job"], plan["guest"]
    _call_target(cfg, plan["target"], DROP_COPY, {"job": job_id, "guest": guest_id, "volumes": plan["volumes"]},
                 statedir, key, connect, "dropping the copy's snapshots on '%s'" % plan["target"])
    for dataset in cfg.guest_datasets(guest_id).values():
        drop_job_snapshots(zfs, job_id, dataset)
    states = StateFile(statedir)
    remaining = dict(states.guest_states(guest_id))
    remaining.pop("local/" + plan["target"], None)
    states.set_guest_states(guest_id, remaining)


def _send_state(cfg, guest_id, target, statedir, key, connect):
    """pvesr transfer_replication_state: the new owner gets this node's job states of the guest, re-keyed."""
    states = transfer_state(StateFile(statedir).guest_states(guest_id), target, read_local_node(statedir))
    _call_target(cfg, target, SET_STATE, {"guest": guest_id, "states": states}, statedir, key, connect,
                 "transferring the job state to '%s'" % target)


def _call_target(cfg, target, operation, fields, statedir, key, connect, what):
    """One receiver operation on the target; MigrationError naming ``what`` failed."""
    node = cfg.nodes[target]
    request = dict(fields, generation=cfg.generation, source=read_local_node(statedir))
    try:
        with connect(node.name, node.address, node.host_key, key=key, port=node.port) as channel:
            return channel.call(operation, request, timeout=60)
    except (RemoteError, TransportError) as exc:
        raise MigrationError("%s failed: %s" % (what, exc)) from exc
