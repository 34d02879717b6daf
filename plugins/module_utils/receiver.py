# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The receiving side's operations: what a peer's request does on this node once serve.py has read it and
authority.py has judged who may ask it.

prepare (pvesr's prepare-local-job: stale snapshots and volumes go, what remains is listed), receive (a stream
into `zfs recv`, into a replica of the guest only), finalize (only the job's newest replication snapshot stays, the
guest's definition is kept beside it), abort-resume, list, and for a migration set-state and drop-migration-copy.

Safety: nothing is received into, rolled back on or destroyed on a node that owns the guest; a caller with an older
cluster generation is refused; data written on a replica since the last sync is copied aside before a receive
would roll it back.
"""

from __future__ import annotations

import json
import os
import time

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import orphans
from ansible_collections.storage.replication.plugins.module_utils.authority import Authority, check, check_int, check_job, check_volumes, int_or_none
from ansible_collections.storage.replication.plugins.module_utils.files import atomic_write
from ansible_collections.storage.replication.plugins.module_utils.names import (
    GUEST_ID_MAX, GUEST_ID_MIN, REPLICA_PROPERTY, SNAPSHOT_RE, STORAGE_RE, VOLUME_RE, is_job_snapshot,
    migration_copy_job, replica_identity, replication_snapshot)
from ansible_collections.storage.replication.plugins.module_utils.protocol import (
    DROP_COPY, Refused, check_request_keys, parse_arguments)
from ansible_collections.storage.replication.plugins.module_utils.pruning import drop_job_snapshots, prune_job_snapshots
from ansible_collections.storage.replication.plugins.module_utils.receive_stream import feed_zfs_recv
from ansible_collections.storage.replication.plugins.module_utils.state import DEFAULT_STATEDIR, StateFile, read_local_node
from ansible_collections.storage.replication.plugins.module_utils.zfs import LookingZfs, Zfs, recv_argv

DIVERGED_INFIX = "-diverged-"


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

    @property
    def cfg(self):
        if self._cfg is None:
            self._cfg = configmod.load(self.confdir)
        return self._cfg

    def forget_config(self):
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
                                     "generation", "source"))
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
        if not volumes and not force:
            raise Refused("no volumes specified", "invalid-argument")
        wanted = {v: self.dataset(v) for v in volumes}
        if not looking:
            self.end_leftover_receives(wanted)
        found = self.scan_job_volumes(job, guest, scan, wanted)
        remaining = {}
        for volume, (dataset, snaps, bound) in sorted(found.items()):
            if volume in wanted:
                self.check_replica(volume, dataset, guest, bound)
            if volume in wanted and last_sync > 1:
                snaps = self.drop_unfinished_replica(job, volume, dataset, snaps, replication_snapshot(job, last_sync))
            deleted = prune_job_snapshots(self.zfs, self.say, job, volume, dataset, snaps, last_sync, parent)
            if volume in wanted:
                remaining[volume] = {s: {"id": i["guid"], "timestamp": i["creation"]} for s, i in snaps.items()
                                     if s not in deleted}
            elif deleted or any(is_job_snapshot(s, job) for s in snaps):
                self.say("%s: delete stale volume '%s'" % (job, volume))
                self.zfs.destroy(dataset, recursive=True)
        if force and not volumes and last_sync == 1:
            self.forget_guest(guest, job, looking)
        tokens = self.resume_tokens(wanted)
        for volume in tokens:
            if not remaining.get(volume):  # an interrupted first receive: no replica yet, only its saved state
                remaining.pop(volume, None)
        return {"volumes": remaining, "resume_tokens": tokens, "features": self.zfs.features.as_dict(),
                "inline_receive": True}

    def end_leftover_receives(self, wanted):
        """End the receives into these volumes that a dead run left behind (see orphans.py), and wait until ZFS has
        saved their state, so that what this run reads (snapshots, resume tokens) no longer changes under it."""
        for pid, (dataset, session) in sorted(orphans.leftover_receives(wanted.values()).items()):
            volume = next(v for v, d in wanted.items() if d == dataset)
            self.say("end the receive into '%s' (pid %d) left running by an interrupted run" % (volume, pid))
            try:
                orphans.end(pid)
                # Its session cleans up after the failed receive, unless it is blocked reading its dead connection:
                # then it goes too, so that nothing holds the old stream open (zfs-fuse's daemon reads it until EOF).
                if not orphans.wait_gone(session, orphans.SESSION_GRACE_SECONDS):
                    orphans.end(session)
            except orphans.StillRunning as exc:
                raise Refused("a receive into volume '%s' on node '%s' left by an interrupted run does not end: %s - "
                              "the next run retries; if it persists, reboot '%s'" % (volume, self.node, exc, self.node),
                              "receive-busy")

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
            for dataset, (snaps, bound) in self.zfs.child_volumes(pool).items():
                volume = "%s:%s" % (storage_id, dataset.rpartition("/")[2])
                if volume in wanted or self.is_job_replica(volume, job, guest, bound):
                    found[volume] = (dataset, snaps, bound)
                elif any(is_job_snapshot(s, job) for s in snaps):
                    self.say("'%s' carries snapshots of job %s but is not a replica this job made: left alone"
                             % (dataset, job))
        return found

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
        dataset = self.dataset(volume)
        kept, bound = [], None
        if args.get("resume") == "1":  # the rest of an interrupted stream: it goes where the first part went
            received = feed_zfs_recv(recv_argv(dataset, force=False, resumable=True), stdin, self.node, volume)
        elif base:
            bound = self.check_replica(volume, dataset, guest)
            kept = self.protect_diverged(volume, dataset, base)
            received = feed_zfs_recv(self.recv_argv(dataset, True, args.get("raw") == "1"), stdin, self.node, volume)
        else:
            received = self.receive_full(volume, dataset, stdin, args.get("raw") == "1")
        self.bind_replica(dataset, guest, job, source, bound)
        self.say("successfully imported '%s'" % volume)
        return {"bytes": received, "kept": kept}

    def recv_argv(self, dataset, force, raw):
        """Resumable where ZFS can (-s); a non-raw stream's dataset inherits encryption from its parent on this node
        (-x encryption), as pvesr receives."""
        features = self.zfs.features
        exclude = ("encryption",) if features.receive_exclude and not raw else ()
        return recv_argv(dataset, force=force, resumable=features.resumable_receive, exclude=exclude)

    def receive_full(self, volume, dataset, stdin, raw=False):
        """A full stream creates the dataset; if the receive fails, what it created is destroyed again, unless ZFS
        saved it for a resume (OpenZFS: the next run continues from its receive_resume_token)."""
        if self.zfs.exists(dataset):
            raise Refused("volume '%s' already exists on node '%s' (dataset '%s') - it holds no common snapshot with "
                          "the source; remove it from node '%s' if it is not needed, then the next run sends it in "
                          "full" % (volume, self.node, dataset, self.node), "volume-exists")
        try:
            return feed_zfs_recv(self.recv_argv(dataset, False, raw), stdin, self.node, volume)
        except Refused:
            if self.resume_tokens({volume: dataset}):
                self.say("kept the interrupted receive of '%s': the next run resumes it" % volume)
            elif self.zfs.exists(dataset):  # it did not exist before this receive: only partial data of ours
                self.zfs.destroy(dataset, recursive=True)
            raise

    def protect_diverged(self, volume, dataset, base):
        """Before `zfs recv -F` rolls the replica back to base: keep aside what was written here since."""
        snaps = self.zfs.snapshots(dataset)
        if base not in snaps:
            raise Refused("base snapshot '%s' of volume '%s' does not exist on node '%s' - the next run selects a new "
                          "base" % (base, volume, self.node), "base-missing")
        newer = [s for s, i in snaps.items() if i["createtxg"] > snaps[base]["createtxg"]]
        foreign = [s for s in newer if not s.startswith("__replicate_")]
        if foreign:
            raise Refused("volume '%s' on node '%s' has snapshots the source does not have (%s): receiving would "
                          "destroy them - copy them elsewhere (zfs send) and destroy them on '%s', then the next run "
                          "continues" % (volume, self.node, ", ".join(foreign), self.node), "diverged")
        latest = list(snaps)[-1]
        if not self.zfs.written_since(dataset, latest):
            return []
        return [self.keep_aside(volume, dataset)]

    def keep_aside(self, volume, dataset):
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(self.now()))
        mark = "__kept_%s__" % stamp
        copy = "%s%s%s" % (dataset, DIVERGED_INFIX, stamp)
        self.zfs.snapshot([dataset], mark)
        try:
            self.zfs.copy_local_snapshot("%s@%s" % (dataset, mark), copy)
        finally:
            self.zfs.destroy("%s@%s" % (dataset, mark))
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
        for volume, dataset in self.checked_replicas(guest, volumes).items():
            snaps = self.zfs.snapshots(dataset)
            if keep not in snaps:
                self.say("expected snapshot %s not present for %s, not removing others" % (keep, volume))
                continue
            self.zfs.keep_for_next_sync("%s@%s" % (dataset, keep))
            for snap in snaps:
                if is_job_snapshot(snap, job) and snap != keep:
                    self.say("delete stale replication snapshot '%s' on %s" % (snap, volume))
                    self.zfs.destroy("%s@%s" % (dataset, snap))
        self.store_guest(guest, {"guest": definition, "job": job, "source": source, "last_sync": last_sync,
                                 "volumes": volumes, "generation": request["generation"]})
        return {}

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
