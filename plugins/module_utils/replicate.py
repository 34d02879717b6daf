# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One run of one replication job, as pvesr's Replication.pm does it.

prepare (source and target, over one control connection) -> base selection per volume by guid ->
one snapshot name for all volumes (freeze/thaw hooks around it) -> send each volume (full, or -I
incremental) into the target's receiver -> last_sync recorded -> the source drops the previous
replication snapshot while the target keeps only the newest (both at once: finalize_remote).  The run log is pvesr's, plus bytes and
throughput per volume.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import threading
import time

from ansible_collections.storage.replication.plugins.module_utils import bandwidth
from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import failpoints
from ansible_collections.storage.replication.plugins.module_utils import kept
from ansible_collections.storage.replication.plugins.module_utils import points
from ansible_collections.storage.replication.plugins.module_utils.cluster import ClusterError, change_cluster
from ansible_collections.storage.replication.plugins.module_utils.joblog import DEFAULT_LOGDIR, RunLog
from ansible_collections.storage.replication.plugins.module_utils.names import is_job_snapshot, replication_snapshot
from ansible_collections.storage.replication.plugins.module_utils.protocol import MAKE_ROOM, RECEIVE, receive_arguments
from ansible_collections.storage.replication.plugins.module_utils.pruning import prune_job_snapshots
from ansible_collections.storage.replication.plugins.module_utils.files import LockError
from ansible_collections.storage.replication.plugins.module_utils.state import DEFAULT_STATEDIR, StateError, StateFile, guest_lock, read_local_node
from ansible_collections.storage.replication.plugins.module_utils.transport import (
    NODE_KEY, ControlChannel, RemoteError, TransportError, ssh_argv, stream, write_known_hosts)
from ansible_collections.storage.replication.plugins.module_utils.zfs import (
    Zfs, ZfsError, resume_send_argv, send_argv, split_snapshot)

SERVE_PATH = "/opt/storage-replication/bin/storage-replication"
GUEST_WORDS = {"vm": "VM", "ct": "CT", "service": "service"}
HOOK_TIMEOUT = 60


class ReplicationError(Exception):
    """A run failed; the message names the cause and the fix."""


@dataclasses.dataclass(eq=False)
class Context:
    """What one run needs: the configuration, the job, this node, the state directory, the log, the ZFS layer and
    this node's SSH key (None: NODE_KEY)."""

    cfg: object
    job: object
    node: str
    statedir: str
    log: object
    zfs: object
    key: str = None
    # The pass's shared control connections (channels.ChannelPool), or None: this run opens its own.
    channels: object = None
    # Both ends receive resumably (OpenZFS): a failed send keeps its snapshot for the next run to resume.
    resumable: bool = dataclasses.field(default=False, init=False)
    # The target's session takes streams up to SESSION_STREAM_MAX in chunks (ControlChannel.receive_chunked), or (an
    # older receiver) small ones whole (receive_inline); else None.
    chunked: object = dataclasses.field(default=None, init=False)
    inline: object = dataclasses.field(default=None, init=False)
    # Restore points the target deleted in this run because its pool was full (reported, never silent).
    space_pruned: list = dataclasses.field(default_factory=list, init=False)
    # {dataset: (bookmarks, send options)} as prepare_local read them with the snapshots, for the rest of the run.
    listed: dict = dataclasses.field(default_factory=dict, init=False)

    def __post_init__(self):
        self.guest = self.cfg.guests[self.job.guest]
        self.key = self.key or NODE_KEY
        # The target keeps restore points of this job (its keep; retention.py): plain incremental streams then
        # (`send -i`: a replication stream received with -F destroys the points the source no longer has).
        self.points = self.job.retention().history

    def request(self, **fields):
        return dict(fields, job=self.job.id, guest=self.job.guest, generation=self.cfg.generation, source=self.node)

    def channel(self, connect=ControlChannel):
        """The control connection to the job's target, for a ``with`` block: one of the runner pass's, borrowed for
        the block, else one of its own that the block opens and closes."""
        target = self.cfg.nodes[self.job.target]
        if self.channels is not None:
            return self.channels.borrow(target.name, target.address, target.host_key, key=self.key, port=target.port)
        return connect(target.name, target.address, target.host_key, key=self.key, port=target.port)


def run_job(cfg, job_id, node=None, statedir=DEFAULT_STATEDIR, logdir=DEFAULT_LOGDIR, confdir=configmod.DEFAULT_CONFDIR,
            zfs=None, key=None, echo=None, now=time.time, channels=None):
    """Run one job now (pvesr run_replication); returns a result dict, never raises for run failures.  ``channels``:
    the runner pass's shared control connections (channels.ChannelPool); None, a connection of this run's own."""
    job = cfg.jobs.get(job_id)
    if job is None:
        raise ReplicationError("no such job '%s'" % job_id)
    node = node or read_local_node(statedir)
    state = StateFile(statedir)
    entry = state.job_state(job)
    start = _start_time(entry["last_sync"], int(entry.get("last_try") or 0), now)
    with guest_lock(job.guest, statedir):
        state.record_job_start(job, start, node=node)
        log = RunLog(os.path.join(logdir, "%s.log" % job_id), job_id, echo)
        ctx = Context(cfg, job, node, statedir, log, zfs or Zfs(), key, channels)
        began = time.monotonic()
        log("start replication job")
        error, unreachable, volumes = None, False, []
        try:
            volumes = replicate(ctx, state, start)
            if job.remove_job:
                _drop_job_from_cluster(ctx, confdir)
            log("end replication job")
        except (ReplicationError, RemoteError, ZfsError, configmod.ConfigError, StateError, OSError) as exc:
            error = str(exc)
            log("end replication job with error: %s" % error)
        except TransportError as exc:
            error, unreachable = str(exc), exc.unreachable
            log("end replication job with error: %s" % error)
        finally:
            log.close()
        sent = sum(v["bytes"] for v in volumes)
        duration = time.monotonic() - began
        if ctx.points or ctx.space_pruned:  # what the last run had to give up, for status and the metrics
            state.set_fields(job, space_pruned=sorted(set(ctx.space_pruned)))
        state.record_job_end(job, start, duration, error, bytes_sent=sent, target_unreachable=unreachable)
    return {"job": job_id, "ok": error is None, "error": error, "start": start, "duration": round(duration, 3),
            "volumes": volumes, "bytes": sent, "log": log.lines, "space_pruned": sorted(set(ctx.space_pruned))}


def _start_time(last_sync, last_try, now):
    """pvesr refuses a start time <= last_sync; two runs within one second wait for the next second.  So does a run
    after one that began in this very second and did not finish (killed, or failed early): its snapshots are named
    after that second, and a first sync keeps such leftovers (pruning.prune_job_snapshots), so the names would
    collide.  A last try ahead of this clock is another node's (state moved by a migration) and is not waited for."""
    deadline = time.monotonic() + 2.0
    start = int(now())
    after = max(last_sync, last_try if last_try <= start else 0)
    while start <= after and time.monotonic() < deadline:
        time.sleep(0.05)
        start = int(now())
    if start <= last_sync:
        raise ReplicationError("start time before last sync (%d <= %d) - abort sync" % (start, last_sync))
    return start


def _drop_job_from_cluster(ctx, confdir):
    """The removal is done: drop the job from every node's configuration (pvesr: cluster-wide, through pmxcfs).
    Forced: a node that is down now adopts the change when it catches up, and nothing is left to clean for it."""
    try:
        dropped = change_cluster(lambda cfg: cfg.remove_job(ctx.job.id, missing_ok=True), confdir, ctx.statedir, force=True,
                                 key=ctx.key)
    except ClusterError as exc:
        raise ReplicationError("job removal done, but dropping job '%s' from the cluster configuration failed: %s - the "
                               "next run tries again" % (ctx.job.id, exc)) from None
    for warning in dropped.warnings:
        ctx.log(warning)


def replicate(ctx, state, start):
    """pvesr replicate(): returns [{volume, mode, base, bytes, seconds}] of the volumes sent."""
    job, guest, log = ctx.job, ctx.guest, ctx.log
    jobstate = state.job_state(job)
    last_sync = jobstate["last_sync"]
    volumes = sorted(guest.volumes)
    # pvesr says whether the guest runs: here its status hook does (exit 0 = running, 3 = stopped), if it has one
    running = 1 if guest.hook("status") and run_guest_hook(guest, "status", allowed_codes=(0, 3)) == 0 else 0
    log("guest => %s %d, running => %d" % (GUEST_WORDS.get(guest.type, guest.type), guest.id, running))
    log("volumes => %s" % ",".join(volumes))
    storeid_list = [s for s in jobstate.get("storeid_list", []) if s in ctx.cfg.storages]
    if job.remove_job:
        remove_job(ctx, volumes, storeid_list)
        return []
    datasets = {v: ctx.cfg.dataset(v) for v in volumes}
    target = ctx.cfg.nodes[job.target]
    with ctx.channel() as channel:
        # The target first: an interrupted transfer it holds is resumed before this node prunes the snapshot it needs.
        prepared = call(ctx, channel, "prepare", "remote_prepare_local_job", volumes=volumes, scan=storeid_list,
                        last_sync=last_sync, **space_need(ctx, datasets, last_sync), **stale_search(jobstate, volumes))
        remote = prepared["volumes"]
        ctx.points = ctx.points or bool(prepared.get("keeps_points"))
        ctx.space_pruned += prepared.get("space_pruned") or []
        ctx.resumable = ctx.zfs.features.resumable_receive and prepared.get("features", {}).get("resumable_receive")
        ctx.chunked = channel.receive_chunked if prepared.get("chunked_receive") else None
        ctx.inline = channel.receive_inline if prepared.get("inline_receive") else None
        resumed, sent = resume_transfers(ctx, channel, target, datasets, prepared.get("resume_tokens", {}), remote)
        local = prepare_local(ctx, datasets, last_sync, keep=resumed)
        bases = base_references(local, {**select_bases(job.id, volumes, local, remote, last_sync), **resumed})
        state.set_fields(job, storeid_list=sorted({v.partition(":")[0] for v in volumes}))
        snap = replication_snapshot(job.id, start)
        take_snapshots(ctx, datasets, snap)
        sent += send_volumes(ctx, target, datasets, bases, snap, channel, last_sync)
        failpoints.reach("before-record")
        state.record_sync_end(job, start, volumes)
        failpoints.reach("before-finalize")

        def clean_up_here():
            mark_synced(ctx, datasets, snap)
            drop_previous_snapshots(ctx, datasets, local, replication_snapshot(job.id, last_sync), resumed, snap)
            failpoints.reach("while-finalize")
        finalize_remote(ctx, channel, volumes, start, state, meanwhile=clean_up_here)
        failpoints.reach("after-finalize")
    return sent


def stale_search(jobstate, volumes):
    """The prepare request's ``stale_search``: the search for the job's stale replicas on the target lists every
    volume of its storages, and is needed only when the volumes differ from those of the last sync (a stale replica
    is one the job no longer sends).  Absent: the target searches."""
    unchanged = jobstate["last_sync"] > 1 and jobstate.get("synced_volumes") == sorted(volumes)
    return {"stale_search": False} if unchanged else {}


def call(ctx, channel, operation, prefix, **fields):
    """A receiver operation whose log lines go into the run log as '(<prefix>) <line>'."""
    return logged_reply(ctx, prefix, lambda: channel.call(operation, ctx.request(**fields)))


def logged_reply(ctx, prefix, answer):
    """``answer()``'s reply (or RemoteError), its log lines put into the run log as '(<prefix>) <line>'."""
    try:
        reply = answer()
    except RemoteError as exc:
        for line in exc.reply.get("log", []):
            ctx.log("(%s) %s" % (prefix, line))
        raise
    for line in reply.get("log", []):
        ctx.log("(%s) %s" % (prefix, line))
    return reply


class Meanwhile(threading.Thread):
    """A call on the control connection that waits for its answer in a thread of its own while the run goes on here
    (each end's `zfs` commands then run at the same time); ``answer()`` waits for it and returns its reply or raises
    its error."""

    def __init__(self, call_peer):
        super().__init__(name="control-call", daemon=True)
        self.call_peer = call_peer
        self.reply = self.error = None

    def run(self):
        try:
            self.reply = self.call_peer()
        except BaseException as exc:  # pylint: disable=broad-exception-caught
            self.error = exc  # raised where answer() is called

    def answer(self):
        self.join()
        if self.error is not None:
            raise self.error
        return self.reply


def prepare_local(ctx, datasets, last_sync, keep=None):
    """Source-side prepare: drop stale snapshots of this job (but those in keep, {volume: snap}); returns
    {volume: {snap: info}}, with the job's bookmarks whose snapshot is gone marked {"bookmark": True}."""
    keep = keep or {}
    result = {}
    for volume, dataset in datasets.items():
        try:
            snaps, marks, options = ctx.zfs.source_listing(dataset)
        except ZfsError as exc:
            raise ReplicationError("volume '%s' (dataset '%s') is not available on this node: %s - fix the guest's "
                                   "volume list or create the dataset" % (volume, dataset, exc.stderr)) from exc
        if ctx.job.retention("source").history and last_sync > 1:  # keep_source: the grid decides, bases stay
            deleted = points.prune(ctx.zfs, ctx.log, ctx.job.id, dataset, snaps, ctx.job.retention("source"),
                                   [replication_snapshot(ctx.job.id, last_sync), keep.get(volume)]
                                   + fallback_bases(ctx, snaps))
        else:
            deleted = prune_job_snapshots(ctx.zfs, ctx.log, ctx.job.id, volume, dataset, snaps, last_sync, keep.get(volume))
        result[volume] = {s: i for s, i in snaps.items() if s not in deleted}
        ctx.listed[dataset] = (marks, options)
        for name, info in marks.items():
            if is_job_snapshot(name, ctx.job.id) and name not in result[volume]:
                result[volume][name] = dict(info, bookmark=True)
    return result


def fallback_bases(ctx, snaps):
    """This job's snapshots another job of the guest falls back on as its base: for each other job that synced at
    time L, the newest of this job's snapshots made before L (that job's replication stream carried it to its
    target, which keeps it while this node has it), should that job's own last snapshot be lost on one side."""
    mine = points.job_points(snaps, ctx.job.id)
    wanted = []
    for other in ctx.cfg.jobs_of_guest(ctx.job.guest):
        last = int(StateFile(ctx.statedir).job_state(other).get("last_sync", 0)) if other.id != ctx.job.id else 0
        before = [name for name, epoch in mine.items() if epoch < last]
        if before:
            wanted.append(max(before, key=lambda name: mine[name]))
    return wanted


def space_need(ctx, datasets, last_sync):
    """{"need": bytes} for prepare when the target keeps restore points and the size of this run's streams can be
    told cheaply (OpenZFS: written@<last sync>), so that it makes room before the transfer; {} otherwise (then it
    makes room when a receive fails for lack of space)."""
    if not ctx.points or last_sync < 2 or not ctx.zfs.features.written_property:
        return {}  # a first run may find the volumes there already: its size says nothing of what it will send
    last_snap = replication_snapshot(ctx.job.id, last_sync)
    try:
        found = ctx.zfs.get(["written@" + last_snap], list(datasets.values()))
        return {"need": sum(int(found[d]["written@" + last_snap]) for d in datasets.values())}
    except (ZfsError, KeyError, ValueError):
        return {}  # a volume without that snapshot, say: no estimate, the receive makes room if it must


def select_bases(job_id, volumes, local, remote, last_sync):
    """{volume: base snapshot name or None (full)}; ReplicationError if a volume has no common base."""
    bases, missing = {}, []
    last_snap = replication_snapshot(job_id, last_sync)
    for volume in volumes:
        if volume not in remote:
            bases[volume] = None
            continue
        common = [s for s, i in local[volume].items()
                  if s in remote[volume] and str(remote[volume][s].get("id")) == i["guid"]]
        if last_sync and last_snap in common:
            bases[volume] = last_snap
        elif common:
            bases[volume] = max(common, key=lambda s, v=volume: local[v][s]["createtxg"])
        else:
            missing.append(volume)
    if missing:
        raise ReplicationError(
            "No common base snapshot on volume(s) %s\nPlease remove the problematic volume(s) from the replication "
            "target or delete and re-create the whole job %s" % (",".join(missing), job_id))
    return bases


def run_hook(ctx, name):
    return run_guest_hook(ctx.guest, name) is not None


def run_guest_hook(guest, name, allowed_codes=(0,)):
    """Run the guest's hook ``name`` (argv, no shell); None if it has none, else its exit code.

    ReplicationError if it cannot run, times out, or exits with a code not in ``allowed_codes`` (the status
    hook allows 3, "not running", as LSB init scripts say).
    """
    argv = guest.hook(name)
    if not argv:
        return None
    try:
        # pylint: disable-next=ansible-bad-function
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=HOOK_TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReplicationError("%s hook of guest %d (%s) failed: %s" % (name, guest.id, argv[0], exc)) from exc
    if proc.returncode not in allowed_codes:
        raise ReplicationError("%s hook of guest %d (%s) failed with exit code %d: %s" % (
            name, guest.id, " ".join(argv), proc.returncode, proc.stdout.decode("utf-8", "replace").strip()))
    return proc.returncode


def take_snapshots(ctx, datasets, snap):
    """One snapshot name on every volume, inside freeze/thaw when the guest has those hooks."""
    frozen = False
    if ctx.guest.hook("freeze"):
        ctx.log("freeze guest filesystem")
        frozen = run_hook(ctx, "freeze")
    try:
        for volume in datasets:
            ctx.log("create snapshot '%s' on %s" % (snap, volume))
        ctx.zfs.snapshot(list(datasets.values()), snap)
    finally:
        if frozen:
            ctx.log("thaw guest filesystem")
            run_hook(ctx, "thaw")


ROOM_RETRIES = 3  # a volume sent again after the target made room for it, at most


def send_volumes(ctx, target, datasets, bases, snap, channel=None, last_sync=0):
    ctx.log("using secure transmission, rate limit: %s" % limit_now_text(ctx.job))
    known_hosts = known_hosts_file(ctx)
    sent = []
    try:
        for index, (volume, dataset) in enumerate(datasets.items()):
            failpoints.reach("before-volume-%d" % index)
            for attempt in range(ROOM_RETRIES + 1):
                try:
                    sent.append(send_volume(ctx, target, known_hosts, volume, dataset, bases[volume], snap))
                    break
                except RemoteError as exc:
                    if not target_full(ctx, exc):
                        raise
                    if attempt == ROOM_RETRIES or not made_room(ctx, channel, list(datasets), last_sync):
                        ctx.log("the pool on '%s' is full and holds no more restore points of job %s it may delete (the "
                                "newest and the bases are never deleted): this run's point cannot be kept there"
                                % (ctx.job.target, ctx.job.id))
                        raise
            failpoints.reach("after-volume-%d" % index)
    except (TransportError, RemoteError, ZfsError):
        arrived = [result["volume"] for result in sent]
        if arrived:
            # Those replicas now end at snap: it stays here too, as their common base for the next run.
            ctx.log("volume(s) %s arrived complete on '%s' with snapshot '%s', which stays on both sides as their base "
                    "for the next run" % (", ".join(arrived), ctx.job.target, snap))
        if ctx.resumable:
            ctx.log("keeping snapshot '%s': the target saved the interrupted receive, the next run resumes it" % snap)
        else:
            drop_snapshot(ctx, {v: d for v, d in datasets.items() if v not in arrived}, snap)
        raise
    return sent


def target_full(ctx, exc):
    """The receive of a job that keeps restore points failed because the target's pool is full."""
    return ctx.points and exc.reply.get("reason") == "receive-failed" and " is full" in str(exc)


def made_room(ctx, channel, volumes, last_sync):
    """The target deletes its oldest restore point of the job (never the newest or a base) and says which; True if
    the volume can be sent again now (not when the target saved the partial receive to resume: the next run
    resumes it, in the room made now)."""
    if channel is None:
        return False
    reply = call(ctx, channel, MAKE_ROOM, "remote_make_room", volumes=volumes, last_sync=last_sync)
    pruned = reply.get("space_pruned") or []
    ctx.space_pruned += pruned
    return bool(pruned) and not ctx.resumable


def drop_snapshot(ctx, datasets, snap):
    """Delete a replication snapshot on every volume that has it; a failure is only logged (the next run's
    prepare removes it as stale)."""
    for volume, dataset in datasets.items():
        ctx.log("delete previous replication snapshot '%s' on %s" % (snap, volume))
        try:
            ctx.zfs.destroy("%s@%s" % (dataset, snap))
        except ZfsError as exc:
            if not exc.missing:
                ctx.log("delete previous replication snapshot error: %s" % exc)


def send_volume(ctx, target, known_hosts, volume, dataset, base, snap):
    if base:
        ctx.log("incremental sync '%s' (%s => %s)" % (volume, base, snap))
    else:
        ctx.log("full sync '%s' (%s)" % (volume, snap))
    limit = rate_bps(ctx.job, ctx.log)
    now = limit() if callable(limit) else limit
    if now:
        ctx.log("using a bandwidth limit of %d bytes per second for transferring '%s'" % (now, volume))
    options = dict(ctx.listed[dataset][1])
    if options["raw"] or options["compressed"]:
        ctx.log("sending '%s' %s" % (volume, "raw (encrypted on the wire and on the target)" if options["raw"]
                                     else "compressed as stored (-c)"))
    if ctx.points:  # a plain stream of this one snapshot (the comment on Context.points says why)
        options.update(replicate=False, properties=not base, intermediates=False)
    result = stream_to_target(ctx, target, known_hosts, send_argv(dataset, snap, base, **options), volume, snap,
                              limit, base=base.lstrip("#") if base else None, raw=options["raw"] or None)
    ctx.log("volume '%s': sent %d bytes in %.1f s (%.1f MB/s%s)" % (
        volume, result.bytes, result.seconds, result.bytes / max(result.seconds, 1e-6) / 1e6,
        ", inline on the control connection" if result.inline
        else ", over the connection keeper's SSH connection" if result.shared else ""))
    return {"volume": volume, "mode": "incremental" if base else "full", "base": base, "bytes": result.bytes,
            "seconds": round(result.seconds, 3), "kept": result.reply.get("kept", [])}


def rate_bps(job, log=None):
    """The job's rate limit in bytes per second (pvesr's rate is in MB/s), or None; with rate windows a function that
    returns the limit now (None: unlimited), which the transfer asks every second, and which logs each change."""
    if not job.rate_windows:
        return int(1000000 * job.rate) if job.rate else None
    said = []

    def limit_now():
        figures = bandwidth.job_limit(job)
        if log is not None and said and said[-1] != figures:
            log("the bandwidth limit changes to %s" % bandwidth.rate_now_text(figures))
        said[:] = [figures]
        return None if figures["rate_now"] is None else int(1000000 * figures["rate_now"])
    return limit_now


def limit_now_text(job):
    """pvesr's "<n> MByte/s|none" for the run log; with rate windows the limit now, why, and that it follows them."""
    if not job.rate_windows:
        return bandwidth.limit_text(job.rate)
    return "%s; it follows the windows within a running transfer" % bandwidth.rate_now_text(bandwidth.job_limit(job))


def stream_to_target(ctx, target, known_hosts, send_command, volume, snap, rate_bps=None, **extra):
    """Pipe send_command into the target's `receive` of volume@snap (a stream up to SESSION_STREAM_MAX on the control
    connection where the target takes it); ``extra``: more receive arguments (base, raw, resume).  The receiver's log lines go
    into the run log."""
    arguments = receive_arguments(job=ctx.job.id, guest=ctx.job.guest, volume=volume, snapshot=snap,
                                  generation=ctx.cfg.generation, source=ctx.node, **extra)
    where = (target.name, target.address, target.port, target.host_key, ctx.key)
    master = kept.master_path(kept.KEEPER_SOCKET, where)
    shared = os.path.exists(master)
    command = ssh_argv(target.name, target.address, known_hosts, [RECEIVE] + arguments, key=ctx.key,
                       port=target.port, control=master if shared else None)
    inline = (lambda data: ctx.inline(arguments, data)) if ctx.inline else None
    chunked = (lambda chunks: ctx.chunked(arguments, chunks)) if ctx.chunked else None
    try:
        result = stream(send_command, command, target.name, target.address, rate_bps, inline=inline,
                        chunked=chunked)
    except RemoteError as exc:
        for line in exc.reply.get("log", []):
            ctx.log(line)
        raise
    for line in result.reply.get("log", []):
        ctx.log(line)
    result.shared = shared and not result.inline
    if not (result.inline or shared):
        kept.want_master(kept.KEEPER_SOCKET, where)  # the next stream to this target goes without a key exchange
    return result


def drop_previous_snapshots(ctx, datasets, local, previous, resumed, snap=None):
    """After a sync, as pvesr: the last sync's snapshot goes here, and a resumed transfer's.  Other leftovers of the
    job (one a volume kept from an interrupted run) go at the next run's prepare, as pvesr's do: a recovery point
    stays readable until then.  With keep_source the grid decides instead (the new snapshot ``snap`` stays)."""
    grid = ctx.job.retention("source")
    if grid.history and snap is not None:
        for volume, dataset in datasets.items():
            snaps = points.listing(ctx.zfs, dataset)
            gone = points.prune(ctx.zfs, ctx.log, ctx.job.id, dataset, snaps, grid,
                                [snap] + ([resumed[volume]] if volume in resumed else []) + fallback_bases(ctx, snaps))
            points.release_older_holds(ctx.zfs, dataset, snaps, ctx.job.id, snap, gone)
        return
    for volume, dataset in datasets.items():
        for snap in dict.fromkeys([previous] + ([resumed[volume]] if volume in resumed else [])):
            if snap in local.get(volume, {}) and not local[volume][snap].get("bookmark"):
                drop_snapshot(ctx, {volume: dataset}, snap)


# ---------------------------------------------------------------- OpenZFS: resume, bookmarks, holds

def resume_transfers(ctx, channel, target, datasets, tokens, remote):
    """Finish the transfers the target saved when they were interrupted (receive_resume_token), from where they
    stopped; clear the tokens this node cannot resume (`zfs recv -A` on the target) and say why.

    Returns ({volume: snapshot now common to both}, [results of the resumed streams]); `remote` is updated.
    """
    resumed, sent = {}, []
    for volume, token in sorted(tokens.items()):
        if volume not in datasets:
            continue
        snap, guid, reason = resumable_snapshot(ctx, datasets[volume], token)
        if reason:
            ctx.log("clear stale resume token on '%s': %s" % (volume, reason))
            call(ctx, channel, "abort-resume", "remote_abort_resume", volume=volume, reason=reason)
            continue
        ctx.log("resume the interrupted transfer of '%s' (%s) from its receive resume token" % (volume, snap))
        try:
            result = stream_to_target(ctx, target, known_hosts_file(ctx), resume_send_argv(token), volume, snap,
                                      rate_bps(ctx.job, ctx.log), resume=True)
        except RemoteError as exc:
            drop_refused_resume(ctx, channel, volume, exc)
            raise
        ctx.log("volume '%s': resumed, sent %d more bytes in %.1f s" % (volume, result.bytes, result.seconds))
        remote.setdefault(volume, {})[snap] = {"id": str(guid)}
        resumed[volume] = snap
        sent.append({"volume": volume, "mode": "resumed", "base": None, "bytes": result.bytes,
                     "seconds": round(result.seconds, 3), "kept": []})
    return resumed, sent


# What the target's `zfs recv -s` says for any EINVAL, whatever the modules' versions: for a resumed stream, that the
# saved receive state does not match the token's (receive_stream.py says how that came about once).  Such a resume
# may fail the same way on every retry, so the token goes; any other failure (an incomplete stream, the link) keeps it.
RESUME_REFUSED = "kernel modules must be upgraded to receive this stream"


def drop_refused_resume(ctx, channel, volume, exc):
    """Drop the saved partial receive of a resume the target refused for good: the next run sends again from the
    last common snapshot instead of failing the same way on every retry."""
    if exc.reply.get("reason") != "receive-failed" or RESUME_REFUSED not in str(exc):
        return
    reason = "the target refused the resumed stream (%s)" % RESUME_REFUSED
    ctx.log("clear resume token on '%s': %s; the next run sends it again from the last common snapshot"
            % (volume, reason))
    try:
        call(ctx, channel, "abort-resume", "remote_abort_resume", volume=volume, reason=reason)
    except (RemoteError, TransportError) as abort_error:
        ctx.log("clearing the resume token on '%s' failed: %s" % (volume, abort_error))


def resumable_snapshot(ctx, dataset, token):
    """(snapshot, guid, None) if this node can resume the token, else (None, None, why not)."""
    try:
        full, guid = ctx.zfs.resume_target(token)
    except ZfsError as exc:
        return None, None, exc.stderr.splitlines()[-1] if exc.stderr else str(exc)
    token_dataset, snap = split_snapshot(full)
    if token_dataset != dataset or not is_job_snapshot(snap or "", ctx.job.id):
        return None, None, "the token continues '%s', not a snapshot of job %s" % (full, ctx.job.id)
    return snap, guid, None


def base_references(local, bases):
    """A base whose snapshot is gone but whose bookmark is here is sent from the bookmark ('#name')."""
    return {volume: ("#" + base if base and local[volume].get(base, {}).get("bookmark") else base)
            for volume, base in bases.items()}


def mark_synced(ctx, datasets, snap):
    """After a sync (OpenZFS): hold the new base so that nobody destroys it by accident, and bookmark it so that
    the next run can still send incrementally if it is destroyed anyway; older bookmarks of the job go (those
    prepare_local listed: the job's lock keeps anyone else from making more of them)."""
    for volume, dataset in datasets.items():
        try:
            ctx.zfs.keep_for_next_sync("%s@%s" % (dataset, snap))
            if ctx.zfs.features.bookmarks:
                ctx.zfs.bookmark(dataset, snap)
                for name in ctx.listed[dataset][0]:
                    if is_job_snapshot(name, ctx.job.id) and name != snap:
                        ctx.zfs.destroy("%s#%s" % (dataset, name))
        except ZfsError as exc:  # the sync itself succeeded; the next run falls back to the snapshot or a full send
            ctx.log("hold or bookmark of '%s' on %s failed: %s" % (snap, volume, exc))


def known_hosts_file(ctx):
    """The peers' host keys from the cluster configuration, for OpenSSH's data streams."""
    return write_known_hosts(os.path.join(ctx.statedir, "known_hosts"),
                             [(n.name, n.host_key) for n in ctx.cfg.nodes.values()])


def finalize_remote(ctx, channel, volumes, start, state=None, meanwhile=None):
    """The target keeps the job's newest snapshot (and the restore points its grid keeps); what it holds then is
    recorded in the job state (``points``: count, oldest, newest, bytes; ``space_pruned``: points it had to
    delete for lack of space in this run) for status, the metrics and job_info.

    ``meanwhile``: this node's own clean-up after the sync, done while the target finalizes (neither needs the other:
    both keep the new snapshot, the common base from now on).  Its log lines come first, the target's after them, as
    if one had waited for the other."""
    request = ctx.request(volumes=volumes, last_sync=start, guest_definition=dataclasses.asdict(ctx.guest))
    finalizing = Meanwhile(lambda: channel.call("finalize", request))
    finalizing.start()
    try:
        if meanwhile is not None:
            meanwhile()
    finally:
        finalizing.join()
    try:
        reply = logged_reply(ctx, "remote_finalize_local_job", finalizing.answer)
    except (RemoteError, TransportError) as exc:
        ctx.log("delete stale replication snapshot error: %s" % exc)
        return
    if ctx.space_pruned:
        ctx.log("restore point(s) deleted on '%s' for lack of space (the grid would have kept them): %s"
                % (ctx.job.target, ", ".join(sorted(set(ctx.space_pruned)))))
    if state is not None and isinstance(reply.get("points"), dict):
        state.set_fields(ctx.job, points=reply["points"])


def remove_job(ctx, volumes, storeid_list):
    """remove_job full|local: the job's snapshots go everywhere; with 'full' also the target's replicas."""
    job = ctx.job
    ctx.log("start job removal - mode '%s'" % job.remove_job)
    if job.remove_job == "full" and job.target != ctx.node and job.target in ctx.cfg.nodes:
        scan = sorted(set(storeid_list) | {v.partition(":")[0] for v in volumes})
        with ctx.channel() as channel:
            call(ctx, channel, "prepare", "remote_prepare_local_job", volumes=[], scan=scan, last_sync=1, force=True)
    datasets = {v: ctx.cfg.dataset(v) for v in volumes}
    prepare_local(ctx, {v: d for v, d in datasets.items() if ctx.zfs.exists(d)}, 1)
    ctx.log("job removed")


def main(argv):
    """`python -m ...replicate <jobid>`: run one job now and print its result as JSON (tests, debugging)."""
    import json  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    try:
        result = run_job(configmod.load(), argv[0])
    except (ReplicationError, LockError, configmod.ConfigError, StateError) as exc:
        result = {"job": argv[0], "ok": False, "error": str(exc)}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    import sys as _sys
    raise SystemExit(main(_sys.argv[1:]))
