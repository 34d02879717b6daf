# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a run of a job would send now, changing nothing on either node (`storage-replication run --check`, the run
module in check mode).

The plan walks the run's own steps with a ZFS that only looks (zfs.LookingZfs): the target's ``plan`` operation is
its ``prepare`` looking only (what it would delete, what would remain), this node's prepare the same, then the run's
base selection.  Per volume it says full, incremental or resumed, from which base snapshot, and about how many bytes
(zfs.Zfs.send_estimate).  Nothing is snapshotted, deleted, received, logged or recorded, and no lock is taken.
"""

from __future__ import annotations

from ansible_collections.storage.replication.plugins.module_utils.bandwidth import job_limit, rate_now_text
from ansible_collections.storage.replication.plugins.module_utils.protocol import PLAN
from ansible_collections.storage.replication.plugins.module_utils.replicate import (
    Context, ReplicationError, base_references, prepare_local, resumable_snapshot, select_bases, stale_search)
from ansible_collections.storage.replication.plugins.module_utils.report import estimate_text
from ansible_collections.storage.replication.plugins.module_utils.state import (
    DEFAULT_STATEDIR, StateError, StateFile, read_local_node)
from ansible_collections.storage.replication.plugins.module_utils.transport import (
    ControlChannel, RemoteError, TransportError)
from ansible_collections.storage.replication.plugins.module_utils.zfs import LookingZfs, Zfs, ZfsError


def plan_job(cfg, job_id, node=None, statedir=DEFAULT_STATEDIR, zfs=None, key=None, connect=ControlChannel):
    """The plan of one run of ``job_id`` now: ``{job, target, ok, error, volumes: [{volume, mode, base,
    estimated_bytes, estimate}], estimated_bytes, log}``; ``ok`` False with the reason the run would fail (or could
    not be planned).  ``log`` holds what the run would do besides sending (deletions on either side)."""
    job = cfg.jobs[job_id]
    node = node or read_local_node(statedir)
    looking = LookingZfs(zfs or Zfs())
    lines = []
    ctx = Context(cfg, job, node, statedir, lines.append, looking, key)
    result = {"job": job_id, "target": job.target, "ok": True, "error": None, "volumes": [], "estimated_bytes": None,
              "log": lines, **job_limit(job)}
    try:
        jobstate = StateFile(statedir).job_state(job)
        if job.remove_job:
            lines.append("remove the job (mode '%s'): its snapshots go%s" % (
                job.remove_job, ", and its replicas on '%s'" % job.target if job.remove_job == "full" else ""))
            return result
        result["volumes"] = _volumes(ctx, jobstate, connect)
    except (ReplicationError, RemoteError, TransportError, ZfsError, StateError, OSError) as exc:
        result.update(ok=False, error=str(exc))
    estimates = [v["estimated_bytes"] for v in result["volumes"]]
    if estimates and None not in estimates:
        result["estimated_bytes"] = sum(estimates)
    return result


def _volumes(ctx, jobstate, connect):
    """[{volume, mode, base, estimated_bytes, estimate}] of the guest's volumes, as the run would send them."""
    job, cfg, last_sync = ctx.job, ctx.cfg, jobstate["last_sync"]
    datasets = {v: cfg.dataset(v) for v in sorted(ctx.guest.volumes)}
    with ctx.channel(connect) as channel:
        try:
            reply = channel.call(PLAN, ctx.request(volumes=list(datasets), scan=[], last_sync=last_sync,
                                                   **stale_search(jobstate, datasets)))
        except RemoteError as exc:
            if exc.reply.get("reason") == "invalid-operation":
                raise ReplicationError("node '%s' cannot say what it holds without changing it (its receiver has no "
                                       "'plan'): update its runner (re-run the site playbook)" % job.target) from None
            raise
    for line in reply.get("log", []):
        ctx.log("on '%s': %s" % (job.target, line))
    remote = reply["volumes"]
    resumed, resume_bytes = {}, {}
    for volume, token in sorted(reply.get("resume_tokens", {}).items()):
        snap, guid, reason = resumable_snapshot(ctx, datasets[volume], token)
        if reason:
            ctx.log("clear the stale resume token on '%s' (%s)" % (volume, reason))
            continue
        resumed[volume], resume_bytes[volume] = snap, ctx.zfs.resume_size(token)
        remote.setdefault(volume, {})[snap] = {"id": str(guid)}
    local = prepare_local(ctx, datasets, last_sync, keep=resumed)
    bases = base_references(local, {**select_bases(job.id, list(datasets), local, remote, last_sync), **resumed})
    planned = []
    for volume, dataset in datasets.items():
        base = bases[volume]
        size, how = ctx.zfs.send_estimate(dataset, base, ctx.zfs.send_options(dataset))
        mode = "incremental" if base else "full"
        if volume in resumed:
            mode = "resumed, then incremental"
            size = None if size is None else size + resume_bytes[volume]
            how = "the rest of the interrupted stream, then %s" % how
        planned.append({"volume": volume, "mode": mode, "base": base, "estimated_bytes": size, "estimate": how})
    return planned


def summary(planned):
    """A plan (plan_job) in words: "would run now to 'node2': about 17 MB", or why it would fail."""
    if not planned["ok"]:
        return "would fail - %s" % (planned["error"] or "").split("\n")[0]
    if not planned["volumes"]:
        return "would run now: nothing to send%s" % ("".join("; " + line for line in planned["log"][:1]))
    return "would run now to '%s': %s" % (planned["target"], estimate_text(planned["estimated_bytes"]))


def volume_lines(planned):
    """One line per volume: what it would send, from which base, about how much and how that was estimated; then
    the rate limit now when rate windows vary it."""
    lines = ["%s: %s%s, %s (%s)" % (v["volume"], v["mode"], " from '%s'" % v["base"] if v["base"] else "",
                                    estimate_text(v["estimated_bytes"]), v["estimate"]) for v in planned["volumes"]]
    if planned.get("rate_windows"):
        lines.append("rate limit now: %s" % rate_now_text(planned))
    return lines
