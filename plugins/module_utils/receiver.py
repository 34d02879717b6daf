# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The receiving side's operations: what a peer's request does on this node once serve.py has read it and
authority.py has judged who may ask it.

prepare (pvesr's prepare-local-job: stale snapshots and volumes go, what remains is listed), receive (a stream
into `zfs recv`, into a replica of the guest only), finalize (only the job's newest replication snapshot stays, or
the restore points its keep rules keep; the guest's definition is kept beside it), abort-resume, list, and for a
migration set-state and drop-migration-copy; for restore points (points.py) points, make-room and send-point.

Safety: nothing is received into, rolled back on or destroyed on a node that owns the guest; a caller with an older
cluster generation is refused; data written on a replica since the last sync is copied aside before a receive
would roll it back.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import points as pointsmod
from ansible_collections.storage.replication.plugins.module_utils.authority import Authority, check, check_int, check_job, check_volumes, int_or_none
from ansible_collections.storage.replication.plugins.module_utils.files import LockError, atomic_write
from ansible_collections.storage.replication.plugins.module_utils.names import (
    ENGINE_SNAPSHOT_PREFIX, GUEST_ID_MAX, GUEST_ID_MIN, REPLICA_PROPERTY, SNAPSHOT_RE, STORAGE_RE, VOLUME_RE, is_job_snapshot,
    kept_aside_snapshot, migration_copy_job, replica_identity, replication_snapshot)
from ansible_collections.storage.replication.plugins.module_utils.protocol import (
    DROP_COPY, SEND_POINT_KEYS, Refused, check_request_keys, parse_arguments)
from ansible_collections.storage.replication.plugins.module_utils.pruning import drop_job_snapshots, prune_job_snapshots
from ansible_collections.storage.replication.plugins.module_utils.receive_stream import (
    feed_zfs_recv, leftover_wait, receive_lock, receive_running)
from ansible_collections.storage.replication.plugins.module_utils.settings import SETTINGS_FILE, load_settings
from ansible_collections.storage.replication.plugins.module_utils.state import DEFAULT_STATEDIR, StateFile, read_local_node
from ansible_collections.storage.replication.plugins.module_utils.zfs import (
    SNAPSHOT_PROPERTIES, LookingZfs, Zfs, ZfsError, bound_identity, recv_argv, send_argv, snapshot_tree)

DIVERGED_INFIX = "-diverged-"


def names_guest(dataset, bound, guest):
    """The dataset says it is the guest's: an identity naming it (a true one or a copy's), or a name with the guest's
    ID between dashes, as pvesr names volumes (vm-<id>-disk-<n>, subvol-<id>-disk-<n>, base-<id>-disk-<n>)."""
    identity = bound[0]
    return (identity is not None and identity["guest"] == guest) or "-%d-" % guest in "-%s-" % dataset.rpartition("/")[2]


class Receiver(Authority):
    """Carries out peer requests on this node."""

    def __init__(self, confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR, zfs=None, now=time.time, peer=None):
        self.confdir = confdir
        # The node whose key opened this session: authorized_keys binds each peer's key to `serve --peer <node>`.
        self.peer = peer
        self.statedir = statedir
        self.zfs = zfs or Zfs()
        self.now = now
        self.node = read_local_node(statedir)
        self.log = []
        self._cfg = None
        self.pools_present = set()
        # Seconds to wait for a receive a cut run left behind; None: its stall deadline and a grace (tests set it).
        self.leftover_wait = None

    @property
    def cfg(self):
        if self._cfg is None:
            self._cfg = configmod.load(self.confdir)
        return self._cfg

    def forget_config(self):
        """After each request: the next one sees the configuration as it is then."""
        self._cfg = None

    def say(self, message):
        self.log.append(message)

    def bind_replica(self, dataset, guest, job, source, bound=None):
        """Mark what this receive made (or took over) as the guest's replica: REPLICA_PROPERTY names the guest, the
        job, the source and the dataset's own guid (names.py says why the guid).  ``bound``: the (identity, guid)
        read before an incremental receive, which keeps the dataset and its guid (one `zfs get` less per volume)."""
        identity, guid = bound if bound is not None else self.zfs.replica_identity(dataset)
        value = replica_identity(guest, job, source, guid)
        if identity is None or replica_identity(**identity) != value:
            self.zfs.set_property(dataset, REPLICA_PROPERTY, value)

    def job_keep(self, job):
        """The restore points the job keeps on this node (its ``keep`` in the configuration in force; retention.py);
        the migration's copy job keeps pvesr's one."""
        found = self.cfg.jobs.get(job)
        return found.retention() if found is not None else pointsmod.retention.PVESR

    # ------------------------------------------------------------ prepare

    def prepare(self, request):
        """pvesr prepare-local-job: drop stale snapshots of this job and stale volumes; list what remains."""
        return self._prepare(request, looking=False)

    def plan(self, request):
        """``plan`` (run --check): prepare looking only, with ZFS that records its changes instead of making them
        (zfs.LookingZfs): the log says what prepare would delete, the reply lists what would remain.  A newer
        generation of the caller is not adopted (only said), no receive is waited for, nothing is written."""
        real = self.zfs
        self.zfs = LookingZfs(real)
        try:
            return self._prepare(request, looking=True)
        finally:
            self.zfs = real

    def _prepare(self, request, looking):
        check_request_keys(request, ("job", "guest", "volumes", "scan", "last_sync", "parent_snapname", "force",
                                     "need", "generation", "source", "stale_search"))
        job, guest = check_job(request)
        self.check_caller(request, guest, adopt=not looking)
        self.check_job_here(job, guest)
        volumes = self.check_guest_volumes(guest, check_volumes(request.get("volumes", [])))
        scan = request.get("scan", [])
        if not isinstance(scan, list):
            raise Refused("invalid storage list %r: refused" % (scan,), "invalid-argument")
        scan = [check(s, STORAGE_RE, "storage ID") for s in scan]
        last_sync = check_int(request.get("last_sync"), "last_sync")
        parent = request.get("parent_snapname")
        if parent is not None:
            check(parent, SNAPSHOT_RE, "parent snapshot")
        force = request.get("force", False) is True
        need = request.get("need")
        if need is not None:
            check_int(need, "need")
        stale_search = request.get("stale_search", True)
        if not isinstance(stale_search, bool):
            raise Refused("invalid stale_search %r (true or false): refused" % (stale_search,), "invalid-argument")
        if not volumes and not force:
            raise Refused("no volumes specified", "invalid-argument")
        keep = self.job_keep(job)
        wanted = {v: self.dataset(v) for v in volumes}
        self.await_leftover_receives(wanted, looking)
        found, tokens = (self.scan_job_volumes(job, guest, scan, wanted), None) if stale_search else \
            self.job_volumes(wanted)
        remaining = {}
        for volume, (dataset, snaps, bound) in sorted(found.items()):
            if volume in wanted:
                self.check_replica(volume, dataset, guest, bound)
            if volume in wanted and last_sync > 1:
                snaps = self.drop_unfinished_replica(job, volume, dataset, snaps, replication_snapshot(job, last_sync))
            if keep.history and volume in wanted and last_sync > 1:
                deleted = set()  # the job's older snapshots are its restore points: finalize prunes them by the grid
            else:
                deleted = prune_job_snapshots(self.zfs, self.say, job, volume, dataset, snaps, last_sync, parent)
            if volume in wanted:
                remaining[volume] = {s: {"id": i["guid"], "timestamp": i["creation"]} for s, i in snaps.items()
                                     if s not in deleted}
            elif deleted or any(is_job_snapshot(s, job) for s in snaps):
                self.say("%s: delete stale volume '%s'" % (job, volume))
                self.zfs.destroy(dataset, recursive=True)
        if force and not volumes and last_sync == 1:
            self.forget_guest(guest, job, looking)
        tokens = self.resume_tokens(wanted) if tokens is None else tokens
        for volume in tokens:
            if not remaining.get(volume):  # an interrupted first receive: no replica yet, only its saved state
                remaining.pop(volume, None)
        room = [] if need is None or looking else self.room_for(
            job, keep, {v: d for v, d in wanted.items() if v in remaining}, need, last_sync, parent)
        return {"volumes": remaining, "resume_tokens": tokens, "features": self.zfs.features.as_dict(),
                "inline_receive": True, "chunked_receive": True, "keeps_points": keep.history, "space_pruned": room}

    def room_for(self, job, keep, datasets, need, last_sync=0, parent=None, limit=None):
        """Before a receive of ``need`` bytes (None: unknown, after one failed for lack of space): the job's oldest
        restore points go until it fits, never its newest point or a base (the last sync, the parent)."""
        if not keep.history or not datasets or (need is not None and need <= 0):
            return []
        if need is not None and pointsmod.available(self.zfs, next(iter(datasets.values()))) >= need:
            return []
        protected = [replication_snapshot(job, last_sync)] if last_sync > 1 else []
        return pointsmod.make_room(self.zfs, self.say, job, datasets, need, protected + ([parent] if parent else []),
                                   limit)

    def make_room(self, request):
        """``make-room``: a receive of the job failed because this node's pool is full; delete the job's oldest
        restore point (not the newest, not a base) so that the source can send again.  Says which one went."""
        check_request_keys(request, ("job", "guest", "volumes", "last_sync", "generation", "source"))
        job, guest = check_job(request)
        self.check_caller(request, guest)
        self.check_job_here(job, guest)
        datasets = self.checked_replicas(guest, check_volumes(request.get("volumes", [])))
        last_sync = check_int(request.get("last_sync"), "last_sync")
        present = {v: d for v, d in datasets.items() if self.zfs.exists(d)}
        return {"space_pruned": self.room_for(job, self.job_keep(job), present, None, last_sync, limit=1)}

    def await_leftover_receives(self, wanted, looking=False):
        """Wait until no receive into these volumes runs any more (see receive_stream.py: one left by a run that was cut
        off ends itself at its stall deadline), so that what this run reads (snapshots, resume tokens) no longer
        changes under it.  Refused ("receive-busy") if one outlives the wait; a plan (``looking``) only says so."""
        for volume in sorted(wanted):
            if looking:
                if receive_running(self.statedir, volume):
                    self.say("a receive into '%s' left by an interrupted run is still running; a run waits for it to "
                             "end itself" % volume)
                continue
            try:
                with receive_lock(self.statedir, volume, self.wait_for_leftovers()):
                    pass
            except LockError as exc:
                raise Refused("a receive into volume '%s' on node '%s' left by an interrupted run is still running: %s"
                              % (volume, self.node, exc), "receive-busy") from None

    def node_settings(self):
        """This node's settings (runner.json; settings.py): the receive's stall deadline comes from there."""
        return load_settings(os.path.join(self.confdir, SETTINGS_FILE))

    def wait_for_leftovers(self):
        """Seconds to wait for a receive a cut run left behind (``leftover_wait`` overrides it: tests)."""
        if self.leftover_wait is not None:
            return self.leftover_wait
        return leftover_wait(self.node_settings()["receive_stall_seconds"])

    def resume_tokens(self, wanted):
        """{volume: receive_resume_token} of the wanted volumes holding an interrupted receive (OpenZFS)."""
        tokens = {}
        for pool in sorted({d.rpartition("/")[0] for d in wanted.values()}):
            for dataset, token in self.zfs.resume_tokens(pool).items():
                tokens.update({v: token for v, d in wanted.items() if d == dataset})
        return tokens

    def abort_resume(self, request):
        """Drop the saved state of an interrupted receive the source cannot resume (`zfs recv -A`)."""
        check_request_keys(request, ("job", "guest", "volume", "reason", "generation", "source"))
        job, guest = check_job(request)
        self.check_caller(request, guest)
        self.check_job_here(job, guest)
        volume = self.check_guest_volumes(guest, [check(request.get("volume"), VOLUME_RE, "volume")])[0]
        dataset = self.dataset(volume)
        self.check_replica(volume, dataset, guest)
        self.zfs.abort_resume(dataset)
        self.say("cleared stale resume token on '%s' (%s): %s" % (volume, dataset, str(request.get("reason"))[:200]))
        return {}

    def drop_unfinished_replica(self, job, volume, dataset, snaps, last_snap):
        """Roll back to the last_sync snapshot a replica that received a newer snapshot of this job the source
        never recorded (a run that failed after the data arrived), so the next receive does not mistake that data
        for local changes.  Data written here after it is left alone: the receive keeps it aside."""
        if last_snap not in snaps:
            return snaps
        newer = [s for s, i in snaps.items() if i["createtxg"] > snaps[last_snap]["createtxg"]]
        if not newer or not all(is_job_snapshot(s, job) for s in newer) or self.zfs.written_since(dataset, newer[-1]):
            return snaps
        self.say("roll back %s to %s, dropping the unfinished replica %s" % (volume, last_snap, ", ".join(newer)))
        self.zfs.rollback(dataset, last_snap)
        return {s: i for s, i in snaps.items() if s not in newer}

    def scan_job_volumes(self, job, guest, scan, wanted):
        """{volume: (dataset, snapshots, (identity, guid))} of the wanted volumes present here and of the job's other
        replicas on the scanned storages (see is_job_replica).  A dataset that carries the job's snapshots but is not
        such a replica is left alone, and the log says so."""
        storages = sorted(set(scan) | {v.partition(":")[0] for v in wanted})
        found = {}
        for storage_id in storages:
            pool = self.storage_pool(storage_id, any(v.startswith(storage_id + ":") for v in wanted))
            if pool is None:
                continue

            def concerns(dataset, bound, storage_id=storage_id):
                """The datasets whose snapshots are looked at: those this job may act on, and those of the guest by
                their identity or name that the log may have to tell of (a storage's other guests' are not)."""
                volume = "%s:%s" % (storage_id, dataset.rpartition("/")[2])
                return volume in wanted or self.is_job_replica(volume, job, guest, bound) or names_guest(dataset, bound, guest)
            for dataset, (snaps, bound) in self.zfs.child_volumes(pool, concerns).items():
                volume = "%s:%s" % (storage_id, dataset.rpartition("/")[2])
                if volume in wanted or self.is_job_replica(volume, job, guest, bound):
                    found[volume] = (dataset, snaps, bound)
                elif any(is_job_snapshot(s, job) for s in snaps):
                    self.say("'%s' carries snapshots of job %s but is not a replica this job made: left alone"
                             % (dataset, job))
        return found

    def job_volumes(self, wanted):
        """scan_job_volumes() for the wanted volumes only, without looking for the job's stale replicas: what a
        source asks for when it sends the very volumes of its last sync (no replica of this job can have become
        stale since; should one be there, not searching only leaves it alone).  Reads no other dataset, so a job's
        prepare does not grow with the storage's guests.  Returns (found, {volume: receive_resume_token}): the
        tokens come with the same `zfs get` (resume_tokens() would list every dataset of the storages)."""
        found = self.zfs.volumes(sorted(wanted.values()))
        mine = {volume: dataset for volume, dataset in wanted.items() if dataset in found}
        return ({volume: (dataset,) + found[dataset][:2] for volume, dataset in mine.items()},
                {volume: found[dataset][2] for volume, dataset in mine.items() if found[dataset][2] is not None})

    def is_job_replica(self, volume, job, guest, bound):
        """A dataset the job may delete as stale: bound to this guest and job (REPLICA_PROPERTY naming the dataset's
        own guid), or, carrying no true identity, a volume of the guest in the configuration (pvesr's rule)."""
        identity, guid = bound
        if identity is not None and identity["guid"] == guid:
            return identity["guest"] == guest and identity["job"] == job
        return volume in self.cfg.guests[guest].volumes

    # ------------------------------------------------------------ receive

    def receive(self, arguments, stdin):
        args = parse_arguments(arguments)
        request = {"job": args.get("job"), "guest": int_or_none(args.get("guest")),
                   "generation": int_or_none(args.get("generation")), "source": args.get("source")}
        job, guest = check_job(request)
        source = self.check_caller(request, guest)
        self.check_job_here(job, guest)
        volume = self.check_guest_volumes(guest, [check(args.get("volume"), VOLUME_RE, "volume")])[0]
        snapshot = check(args.get("snapshot"), SNAPSHOT_RE, "snapshot")
        if not is_job_snapshot(snapshot, job):
            raise Refused("snapshot %r is not a replication snapshot of job '%s': refused" % (snapshot, job),
                          "invalid-argument")
        base = args.get("base")
        if base is not None:
            check(base, SNAPSHOT_RE, "base snapshot")
        # its pool is looked for with the dataset itself (read_replicas, receive_full): a `zfs` process less
        dataset = self.dataset(volume, look=False)
        stall = self.node_settings()["receive_stall_seconds"]
        with receive_lock(self.statedir, volume, self.wait_for_leftovers()):
            kept, bound = [], None
            if args.get("resume") == "1":  # the rest of an interrupted stream: it goes where the first part went
                self.dataset(volume)  # a missing pool refused as such ("storage-missing")
                received = self.feed(recv_argv(dataset, force=False, resumable=True), stdin, volume, stall)
            elif base:
                # `written` (since the newest snapshot) with the snapshots: nothing written is the usual answer
                written = ("written",) if self.zfs.features.written_property else ()
                props = self.read_replicas(guest, [volume], SNAPSHOT_PROPERTIES + written)[volume][1]
                bound = bound_identity(props[dataset])
                snaps = snapshot_tree(props).get(dataset, {})
                kept = self.protect_diverged(volume, dataset, snaps, base, self.job_keep(job).history,
                                             props[dataset].get("written"))
                received = self.feed(self.recv_argv(dataset, True, args.get("raw") == "1"), stdin, volume, stall)
            else:
                received = self.receive_full(volume, dataset, stdin, args.get("raw") == "1", stall)
            self.bind_replica(dataset, guest, job, source, bound)
        self.say("successfully imported '%s'" % volume)
        return {"bytes": received, "kept": kept}

    def feed(self, argv, stream, volume, stall):
        return feed_zfs_recv(argv, stream, self.node, volume, stall)

    def recv_argv(self, dataset, force, raw):
        """Resumable where ZFS can (-s); a non-raw stream's dataset inherits encryption from its parent on this node
        (-x encryption), as pvesr receives."""
        features = self.zfs.features
        exclude = ("encryption",) if features.receive_exclude and not raw else ()
        return recv_argv(dataset, force=force, resumable=features.resumable_receive, exclude=exclude)

    def receive_full(self, volume, dataset, stdin, raw, stall):
        """A full stream creates the dataset; if the receive fails, what it created is destroyed again, unless ZFS
        saved it for a resume (OpenZFS: the next run continues from its receive_resume_token)."""
        exists = self.zfs.exists(dataset)
        self.pool_found(volume, exists)
        if exists:
            raise Refused("volume '%s' already exists on node '%s' (dataset '%s') - it holds no common snapshot with "
                          "the source; remove it from node '%s' if it is not needed, then the next run sends it in "
                          "full" % (volume, self.node, dataset, self.node), "volume-exists")
        try:
            return self.feed(self.recv_argv(dataset, False, raw), stdin, volume, stall)
        except Refused:
            if self.resume_tokens({volume: dataset}):
                self.say("kept the interrupted receive of '%s': the next run resumes it" % volume)
            elif self.zfs.exists(dataset):  # it did not exist before this receive: only partial data of ours
                self.zfs.destroy(dataset, recursive=True)
            raise

    def protect_diverged(self, volume, dataset, snaps, base, points=False, written=None):
        """Before `zfs recv -F` rolls the replica back to base: keep aside what was written here since.  ``snaps``:
        the replica's snapshots, as Zfs.snapshots() lists them; ``written``: its `written` property read with them
        (OpenZFS; bytes written since its newest snapshot), if it was.

        ``points``: the job keeps restore points, and its stream is a plain incremental (`send -i`, which leaves
        older snapshots alone where a replication stream would destroy those the source no longer has); the
        replica must then end at base, so newer restore points (after a rollback of the guest to an older point)
        are kept aside with the replica, every snapshot included, before it is rolled back to base."""
        if base not in snaps:
            raise Refused("base snapshot '%s' of volume '%s' does not exist on node '%s' - the next run selects a new "
                          "base" % (base, volume, self.node), "base-missing")
        newer = [s for s, i in snaps.items() if i["createtxg"] > snaps[base]["createtxg"]]
        foreign = [s for s in newer if not s.startswith(ENGINE_SNAPSHOT_PREFIX)]
        if foreign:
            raise Refused("volume '%s' on node '%s' has snapshots the source does not have (%s): receiving would "
                          "destroy them - copy them elsewhere (zfs send) and destroy them on '%s', then the next run "
                          "continues" % (volume, self.node, ", ".join(foreign), self.node), "diverged")
        if points and newer:
            copy = self.keep_aside(volume, dataset, newer)
            self.say("roll back %s to %s" % (volume, base))
            pointsmod.roll_back(self.zfs, dataset, base, newer)
            return [copy]
        latest = list(snaps)[-1]
        if written == "0" or not self.zfs.written_since(dataset, latest):
            return []
        return [self.keep_aside(volume, dataset)]

    def keep_aside(self, volume, dataset, newer=None):
        """Copy the replica's current data aside as an independent dataset; with ``newer`` (restore points a
        rollback would drop) every snapshot comes along, so those points stay usable there."""
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(self.now()))
        mark = kept_aside_snapshot(stamp)
        copy = "%s%s%s" % (dataset, DIVERGED_INFIX, stamp)
        self.zfs.snapshot([dataset], mark)
        try:
            self.zfs.copy_local_snapshot("%s@%s" % (dataset, mark), copy, replicate=bool(newer))
        finally:
            self.zfs.destroy("%s@%s" % (dataset, mark))
        if newer:
            self.say("volume '%s' on node '%s' holds restore points newer than the source's base (%s): kept them with "
                     "its data as '%s' (destroy that dataset when it is no longer needed)"
                     % (volume, self.node, ", ".join(newer), copy))
        else:
            self.say("volume '%s' was modified on node '%s' since the last replica: kept its data as '%s' before "
                     "replicating over it (destroy that dataset when it is no longer needed)" % (volume, self.node, copy))
        return copy

    # ------------------------------------------------------------ finalize, list

    def finalize(self, request):
        """Keep only this job's newest replication snapshot; record the guest definition with the replica."""
        check_request_keys(request, ("job", "guest", "volumes", "last_sync", "guest_definition", "generation",
                                     "source"))
        job, guest = check_job(request)
        source = self.check_caller(request, guest)
        self.check_job_here(job, guest)
        volumes = self.check_guest_volumes(guest, check_volumes(request.get("volumes", [])))
        last_sync = check_int(request.get("last_sync"), "last_sync", 2)
        definition = request.get("guest_definition")
        if not isinstance(definition, dict):
            raise Refused("guest_definition must be a JSON object", "invalid-argument")
        keep = replication_snapshot(job, last_sync)
        grid = self.job_keep(job)
        listed = {}
        for volume, (dataset, props) in self.read_replicas(guest, volumes, pointsmod.POINT_PROPERTIES).items():
            snaps = listed[volume] = pointsmod.listing_of(props, dataset)
            if keep not in snaps:
                self.say("expected snapshot %s not present for %s, not removing others" % (keep, volume))
                continue
            self.zfs.keep_for_next_sync("%s@%s" % (dataset, keep))
            if grid.history:  # the job's restore points: the grid decides, the newest stays
                deleted = pointsmod.prune(self.zfs, self.say, job, dataset, snaps, grid, [keep])
                pointsmod.release_older_holds(self.zfs, dataset, snaps, job, keep, deleted)
            else:
                deleted = [snap for snap in snaps if is_job_snapshot(snap, job) and snap != keep]
                for snap in deleted:
                    self.say("delete stale replication snapshot '%s' on %s" % (snap, volume))
                    self.zfs.destroy("%s@%s" % (dataset, snap))
            listed[volume] = {s: i for s, i in snaps.items() if s not in deleted}
        self.store_guest(guest, {"guest": definition, "job": job, "source": source, "last_sync": last_sync,
                                 "volumes": volumes, "generation": request["generation"]})
        return {"points": pointsmod.summary(listed, job)}

    # ------------------------------------------------------------ migration (on the target, before it owns the guest)

    def set_state(self, request):
        """``set-state`` (pvesr's transfer of the replication state): replace the guest's job states here, for the
        migration that is about to make this node the guest's owner."""
        check_request_keys(request, ("guest", "states", "generation", "source"))
        guest = check_int(request.get("guest"), "guest ID", GUEST_ID_MIN, GUEST_ID_MAX)
        self.check_caller(request, guest)
        states = request.get("states")
        if not isinstance(states, dict) or not all(isinstance(k, str) and k.startswith("local/") and isinstance(v, dict)
                                                   for k, v in states.items()):
            raise Refused("set-state: states must be a JSON object of job states by 'local/<target>': refused",
                          "invalid-argument")
        StateFile(self.statedir).set_guest_states(guest, states)
        return {"guest": guest, "targets": sorted(states)}

    def drop_migration_copy(self, request):
        """``drop-migration-copy``: the migration's full copy is complete here; drop the copy job's snapshots on the
        guest's volumes and its replica record (this node is about to own the guest)."""
        check_request_keys(request, ("job", "guest", "volumes", "generation", "source"))
        job, guest = check_job(request)
        self.check_caller(request, guest)
        if job != migration_copy_job(guest):
            raise Refused("%s: job '%s' is not the migration copy job of guest %d (%s): refused"
                          % (DROP_COPY, job, guest, migration_copy_job(guest)), "invalid-argument")
        for dataset in self.checked_replicas(guest, check_volumes(request.get("volumes"))).values():
            drop_job_snapshots(self.zfs, job, dataset, self.say)
        self.forget_guest(guest, job)
        return {}

    def guests_dir(self):
        return os.path.join(self.statedir, "guests")

    def store_guest(self, guest, record):
        os.makedirs(self.guests_dir(), exist_ok=True)
        atomic_write(os.path.join(self.guests_dir(), "%d.json" % guest), json.dumps(record, indent=1).encode("utf-8"))

    def forget_guest(self, guest, job, looking=False):
        """Drop the guest definition finalize kept with the replicas of ``job`` (``looking``: only say it would)."""
        path = os.path.join(self.guests_dir(), "%d.json" % guest)
        try:
            with open(path, encoding="utf-8") as handle:
                record = json.load(handle)
        except FileNotFoundError:
            return
        if record.get("job") == job:
            self.say("forget the definition of guest %d kept with its replica" % guest)
            if not looking:
                os.unlink(path)

    def list_points(self, request):
        """``points``: the restore points of a guest on this node (read-only; any node of the cluster may ask):
        {"volumes": {volume: {snapshot: {job, time, used, referenced}}}, "owner"}.  Datasets bound to another guest
        are left out; so are datasets that are not there."""
        check_request_keys(request, ("guest", "generation", "source"))
        self.check_member(self.caller(request))
        guest = check_int(request.get("guest"), "guest ID", GUEST_ID_MIN, GUEST_ID_MAX)
        if guest not in self.cfg.guests:
            raise Refused("guest %d is not in the cluster configuration on node '%s': refused" % (guest, self.node),
                          "unknown-guest")
        volumes = {}
        for volume in sorted(self.cfg.guests[guest].volumes):
            pool = self.storage_pool(volume.partition(":")[0], False)
            dataset = "%s/%s" % (pool, volume.partition(":")[2]) if pool else None
            if dataset is None or not self.zfs.exists(dataset):
                continue
            identity, guid = self.zfs.replica_identity(dataset)
            if identity is not None and identity["guid"] == guid and identity["guest"] != guest:
                continue
            snaps = pointsmod.listing(self.zfs, dataset)
            volumes[volume] = {name: {"job": job, "time": epoch, "used": snaps[name]["used"],
                                      "referenced": snaps[name]["referenced"]}
                               for name, (job, epoch) in pointsmod.guest_points(snaps, guest).items()}
        return {"guest": guest, "volumes": volumes, "owner": self.cfg.guests[guest].node == self.node}

    def send_point(self, arguments, stdout_fd):
        """``send-point``: the guest's owner pulls one restore point of a replica back (rollback.py), as a full
        stream of that one snapshot on this session's stdout.  Read-only here: the stream is received on the owner,
        into a volume it has set aside first."""
        args = parse_arguments(arguments, SEND_POINT_KEYS)
        request = {"job": args.get("job"), "guest": int_or_none(args.get("guest")),
                   "generation": int_or_none(args.get("generation")), "source": args.get("source")}
        job, guest = check_job(request)
        self.check_caller(request, guest)
        self.check_job_here(job, guest)
        volume = self.check_guest_volumes(guest, [check(args.get("volume"), VOLUME_RE, "volume")])[0]
        snapshot = check(args.get("snapshot"), SNAPSHOT_RE, "snapshot")
        if not is_job_snapshot(snapshot, job):
            raise Refused("snapshot %r is not a restore point of job '%s': refused" % (snapshot, job), "invalid-argument")
        dataset = self.dataset(volume)
        self.check_replica(volume, dataset, guest)
        if snapshot not in self.zfs.snapshots(dataset):
            raise Refused("restore point '%s' of volume '%s' is not on node '%s' (any more) - list the points with "
                          "'storage-replication restore-points %d'" % (snapshot, volume, self.node, guest), "no-point")
        argv = send_argv(dataset, snapshot, replicate=False, **self.zfs.send_options(dataset))
        # pylint: disable-next=ansible-bad-function
        proc = subprocess.run(argv, stdout=stdout_fd, stderr=subprocess.PIPE, check=False,
                              env=dict(os.environ, LC_ALL="C"))
        if proc.returncode != 0:
            raise ZfsError(argv, proc.returncode, proc.stderr.decode("utf-8", "replace"))
        return {}

    def list_replicas(self, request):
        """The guest definitions this node holds replicas of (operation ``list``)."""
        check_request_keys(request, ("guest", "generation", "source"))
        self.check_member(self.caller(request))
        guest = request.get("guest")
        if guest is not None:
            check_int(guest, "guest ID", GUEST_ID_MIN, GUEST_ID_MAX)
        return {"replicas": self.replica_records(guest)}

    def replica_records(self, guest=None):
        """{guest ID text: the record finalize stored} of this node's replicas (of one guest if given)."""
        replicas = {}
        if os.path.isdir(self.guests_dir()):
            for name in sorted(os.listdir(self.guests_dir())):
                if not name.endswith(".json") or (guest is not None and name != "%d.json" % guest):
                    continue
                with open(os.path.join(self.guests_dir(), name), encoding="utf-8") as handle:
                    replicas[name[:-5]] = json.load(handle)
        return replicas
