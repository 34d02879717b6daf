# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The receiving side: the only thing a peer node may run here.

authorized_keys pins the peers' keys to the forced command
`/opt/storage-replication/bin/storage-replication serve`, which calls `main()`.  The operation comes
from SSH_ORIGINAL_COMMAND: a name, for `receive` followed by key=value arguments (its stdin is the
ZFS stream); every other operation reads one JSON request from stdin.  Every argument is checked
against a strict pattern, anything else is refused.  The answer is one JSON line on stdout:
{"ok": true, ...} or {"ok": false, "error": "<what failed and what to do>", "reason": "<code>"}.

Safety: nothing is received into, rolled back on or destroyed on a node that owns the guest; a
caller with an older cluster generation is refused; data written on a replica since the last
sync is copied aside before a receive would roll it back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from ansible_collections.storage.replication.plugins.module_utils import cluster
from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import orphans
from ansible_collections.storage.replication.plugins.module_utils.files import atomic_write, copy_stream, write_all
from ansible_collections.storage.replication.plugins.module_utils.names import (
    GUEST_ID_MAX, GUEST_ID_MIN, JOB_ID_RE, NUMBER_RE, REPLICA_PROPERTY, SNAPSHOT_RE, STORAGE_RE, VOLUME_RE,
    is_job_snapshot, job_guest, migration_copy_job, replica_identity, replication_snapshot)
from ansible_collections.storage.replication.plugins.module_utils.state import (
    DEFAULT_STATEDIR, StateFile, read_local_node)
from ansible_collections.storage.replication.plugins.module_utils.zfs import Zfs, ZfsError, recv_argv

MAX_REQUEST = 4 * 1024 * 1024
SET_STATE = "set-state"
DROP_COPY = "drop-migration-copy"
DIVERGED_INFIX = "-diverged-"
# The largest stream a session takes inline, after its request line (transport.INLINE_LIMIT on the sending side).
MAX_INLINE_STREAM = 1 << 20


class Refused(Exception):
    """A request this node will not carry out; the message says why and what to do."""

    def __init__(self, message, reason="refused", **extra):
        super().__init__(message)
        self.reason = reason
        self.extra = extra


def prune_job_snapshots(zfs, say, job, volume, dataset, snaps, last_sync, parent):
    """pvesr's prepare() on one volume: delete stale snapshots of this job; returns the names deleted.

    last_sync 0 (new or stolen job) deletes nothing; 1 (removal) deletes all; otherwise everything but
    the last_sync snapshot and the parent, and only if the last_sync snapshot is there.
    """
    last_snap = replication_snapshot(job, last_sync) if last_sync > 1 else None
    stale = [s for s in snaps if is_job_snapshot(s, job) and s != last_snap and s != parent]
    if last_sync == 0 or not stale:
        return set()
    if last_sync > 1 and last_snap not in snaps:
        say("expected snapshot %s not present for %s, not removing others" % (last_snap, volume))
        return set()
    deleted = set()
    for snap in stale:
        say("delete stale replication snapshot '%s' on %s" % (snap, volume))
        try:
            zfs.destroy("%s@%s" % (dataset, snap))
            deleted.add(snap)
        except ZfsError as exc:
            say("delete stale replication snapshot error: %s" % exc)
    return deleted


# ---------------------------------------------------------------- argument checks

def check(value, pattern, what):
    if not isinstance(value, str) or not pattern.match(value):
        raise Refused("invalid %s %r: refused" % (what, value), "invalid-argument")
    return value


def check_int(value, what, minimum=0, maximum=2 ** 63):
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise Refused("invalid %s %r: refused" % (what, value), "invalid-argument")
    return value


def check_job(request):
    job = check(request.get("job"), JOB_ID_RE, "job ID")
    guest = check_int(request.get("guest"), "guest ID", GUEST_ID_MIN, GUEST_ID_MAX)
    if job_guest(job) != guest:
        raise Refused("job '%s' does not belong to guest %d: refused" % (job, guest), "invalid-argument")
    return job, guest


def check_volumes(values):
    if not isinstance(values, list):
        raise Refused("invalid volume list %r: refused" % (values,), "invalid-argument")
    return [check(v, VOLUME_RE, "volume") for v in values]


def check_request_keys(request, allowed):
    if not isinstance(request, dict):
        raise Refused("the request is not a JSON object: refused", "invalid-argument")
    unknown = sorted(set(request) - set(allowed))
    if unknown:
        raise Refused("unknown request field(s) %s: refused" % ", ".join(unknown), "invalid-argument")


FLAGS = ("resume", "raw")


def parse_arguments(tokens, allowed):
    """['job=100-0', ...] -> dict; only the allowed keys, each once, printable ASCII; a flag is 0 or 1."""
    result = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or key not in allowed or key in result or not (token.isascii() and token.isprintable()) \
                or (key in FLAGS and value not in ("0", "1")):
            raise Refused("invalid argument %r: refused" % token, "invalid-argument")
        result[key] = value
    return result


# ---------------------------------------------------------------- the node's context

class Receiver:
    """Carries out peer requests on this node."""

    def __init__(self, confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR, zfs=None, now=time.time, peer=None,
                 operations=None):
        self.confdir = confdir
        # The node whose key opened this session: authorized_keys binds each peer's key to `serve --peer <node>`.
        self.peer = peer
        # What this key may run: every control operation and `receive`, or only the table it was given (the web
        # service's key, `serve --read-only`: operations that read and nothing else, no stream).
        self.operations = CONTROL_OPERATIONS if operations is None else operations
        self.receives = operations is None
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

    def caller(self, request):
        """The calling node, as its key says (never as the request says): refused when the key names no node, the
        request claims another source, or the caller is no node of the cluster configuration."""
        if self.peer is None:
            raise Refused("this key is not bound to a node (its forced command is 'serve' without '--peer'): refused "
                          "- re-run the runner role (site.yml) on every node, which binds each peer's key to its name",
                          "unbound-key")
        claimed = request.get("source") if isinstance(request, dict) else None
        if claimed is None:
            raise Refused("the request names no source node: refused", "invalid-argument")
        if claimed != self.peer:
            raise Refused("the request says it comes from node %r, but it came with the key of node '%s': refused"
                          % (str(claimed)[:80], self.peer), "wrong-source")
        return self.peer

    def check_member(self, source):
        if source not in self.cfg.nodes:
            raise Refused("node '%s' is not a node of the cluster configuration on node '%s' (generation %d): refused - "
                          "add it to the inventory and re-run the site playbook" % (source, self.node,
                                                                                    self.cfg.generation), "not-a-node")

    def check_caller(self, request, guest):
        """The caller must be the guest's owner in the configuration in force (after adopting a newer one it sent),
        and this node must not own the guest (DESIGN.md, safety rules 1 and 3).

        A caller with an older generation is judged by what its request depends on, in this node's newer
        configuration: the guest's owner here, and the job (check_job_here).  A change to another guest, a job
        removal or a schedule edit since then does not fail its run (safety rule 4: fencing by guest)."""
        source = self.caller(request)
        generation = check_int(request.get("generation"), "cluster generation")
        if generation > self.cfg.generation:
            self.adopt_newer(source, generation)
        self.check_member(source)
        owner = self.cfg.guests.get(guest)
        if owner is None:
            raise Refused("guest %d is not in the cluster configuration on node '%s' (generation %d): refused - add the "
                          "guest to the inventory and re-run the site playbook" % (guest, self.node, self.cfg.generation),
                          "unknown-guest")
        if owner.node == self.node:
            raise Refused(
                "guest %d is owned by node '%s' (this node) in the cluster configuration: refusing to let '%s' "
                "replicate into, roll back or delete its volumes here - check the guest's owner and the job's target"
                % (guest, self.node, source), "owner")
        if owner.node != source:
            behind = (" - node '%s' holds the older generation %d and adopts the newer one at its next run"
                      % (source, generation) if generation < self.cfg.generation else "")
            raise Refused("node '%s' asked for guest %d, which is owned by node '%s' in the cluster configuration on node "
                          "'%s' (generation %d): only the owner replicates a guest - refused%s"
                          % (source, guest, owner.node, self.node, self.cfg.generation, behind), "not-owner")
        return source

    def check_job_here(self, job, guest):
        """The job must replicate ``guest`` to this node in the configuration in force (or be the migration's one-off
        copy job, which is never saved)."""
        if job == migration_copy_job(guest):
            return
        found = self.cfg.jobs.get(job)
        if found is None:
            raise Refused("job '%s' is not in the cluster configuration on node '%s' (generation %d): refused - create "
                          "it first (site playbook or create-local-job)" % (job, self.node, self.cfg.generation),
                          "unknown-job")
        if found.target != self.node:
            raise Refused("job '%s' replicates guest %d to node '%s', not to this node ('%s'): refused"
                          % (job, guest, found.target, self.node), "wrong-target")

    def check_guest_volumes(self, guest, volumes):
        """Every volume must be one of the guest's in the configuration in force (safety rule 3)."""
        foreign = [v for v in volumes if v not in self.cfg.guests[guest].volumes]
        if foreign:
            raise Refused("volume(s) %s are not volumes of guest %d in the cluster configuration on node '%s': refused "
                          "- a job only ever touches its guest's own volumes" % (", ".join(foreign), guest, self.node),
                          "not-guest-volume")
        return volumes

    def check_replica(self, volume, dataset, guest, bound=None):
        """Refuse to touch a dataset bound to another guest (safety rule 2); ``bound`` is its (identity, guid) when
        the caller has read it already.  A configured volume of the guest that carries no identity (a replica made
        before identities, or the guest's former own volume after a migration) is the guest's, as pvesr treats it."""
        identity, guid = bound = bound if bound is not None else self.zfs.replica_identity(dataset)
        if identity is not None and identity["guid"] == guid and identity["guest"] != guest:
            raise Refused("volume '%s' on node '%s' (dataset '%s') is a replica of guest %d (job %s from node '%s'), not "
                          "of guest %d: refused, nothing was changed - check the guests' volume lists"
                          % (volume, self.node, dataset, identity["guest"], identity["job"], identity["source"], guest),
                          "not-ours")
        return bound

    def checked_replicas(self, guest, volumes):
        """{volume: dataset} once every volume has passed every check: nothing is touched for a request that is
        refused for a later volume."""
        datasets = {volume: self.dataset(volume) for volume in self.check_guest_volumes(guest, volumes)}
        for volume, dataset in datasets.items():
            self.check_replica(volume, dataset, guest)
        return datasets

    def bind_replica(self, dataset, guest, job, source, bound=None):
        """Mark what this receive made (or took over) as the guest's replica: REPLICA_PROPERTY names the guest, the
        job, the source and the dataset's own guid (names.py says why the guid).  ``bound``: the (identity, guid)
        read before an incremental receive, which keeps the dataset and its guid (one `zfs get` less per volume)."""
        identity, guid = bound if bound is not None else self.zfs.replica_identity(dataset)
        value = replica_identity(guest, job, source, guid)
        if identity is None or replica_identity(**identity) != value:
            self.zfs.set_property(dataset, REPLICA_PROPERTY, value)

    def adopt_newer(self, source, generation):
        """The caller holds a newer configuration: this node adopts it before judging the request (DESIGN rule 2).

        A node that was down while a guest moved (failover) still believes it owns the guest; without this, the
        new owner's first replication to it would be refused until its own runner happened to catch up."""
        try:
            found = cluster.catch_up(self.confdir, self.statedir)
        except cluster.ClusterError as exc:
            raise Refused("node '%s' sent cluster configuration generation %d, newer than this node's %d, and "
                          "adopting it failed: %s" % (source, generation, self.cfg.generation, exc), "stale-generation")
        self.forget_config()
        if found.adopted is not None:
            self.say("adopted cluster configuration generation %d from node '%s'" % (found.adopted, found.source))
        if self.cfg.generation < generation:
            raise Refused("node '%s' sent cluster configuration generation %d, but node '%s' could only reach "
                          "generation %d from its peers - run the site playbook or retry when the nodes answer"
                          % (source, generation, self.node, self.cfg.generation), "stale-generation")

    def storage_pool(self, storage_id, required):
        storage = self.cfg.storages.get(storage_id)
        if storage is None or storage.type not in configmod.REPLICATABLE_STORAGE_TYPES:
            if not required:
                return None
            raise Refused("storage '%s' is not defined as a zfspool storage on node '%s' - add it to the cluster "
                          "configuration (storages) and re-run the site playbook" % (storage_id, self.node),
                          "storage-missing")
        if not self.zfs.exists(storage.pool):
            if not required:
                return None
            raise Refused("storage '%s': dataset '%s' does not exist on node '%s' - create it (zfs create %s) or fix "
                          "the storage's pool in the cluster configuration" % (
                              storage_id, storage.pool, self.node, storage.pool), "storage-missing")
        return storage.pool

    def dataset(self, volume):
        storage_id, _sep, name = volume.partition(":")
        return "%s/%s" % (self.storage_pool(storage_id, True), name)

    # ------------------------------------------------------------ prepare

    def prepare(self, request):
        """pvesr prepare-local-job: drop stale snapshots of this job and stale volumes; list what remains."""
        check_request_keys(request, ("job", "guest", "volumes", "scan", "last_sync", "parent_snapname", "force",
                                     "generation", "source"))
        job, guest = check_job(request)
        self.check_caller(request, guest)
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
            self.forget_guest(guest, job)
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
        args = parse_arguments(arguments, ("job", "guest", "volume", "snapshot", "base", "generation", "source", "resume",
                                           "raw"))
        request = {"job": args.get("job"), "guest": _int_or_none(args.get("guest")),
                   "generation": _int_or_none(args.get("generation")), "source": args.get("source")}
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
            received = self.feed_zfs_recv(recv_argv(dataset, force=False, resumable=True), stdin, volume)
        elif base:
            bound = self.check_replica(volume, dataset, guest)
            kept = self.protect_diverged(volume, dataset, base)
            received = self.feed_zfs_recv(self.recv_argv(dataset, True, args.get("raw") == "1"), stdin, volume)
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
            return self.feed_zfs_recv(self.recv_argv(dataset, False, raw), stdin, volume)
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

    def feed_zfs_recv(self, argv, stdin, volume):
        """Run zfs recv fed from stdin (a binary file, or the whole stream as bytes when it came inline in a session),
        counting the bytes; Refused with a precise cause on failure."""
        env = dict(os.environ, LC_ALL="C")
        # pylint: disable-next=ansible-bad-function
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            total = write_all(proc.stdin.fileno(), stdin) if isinstance(stdin, bytes) else \
                copy_stream(stdin.fileno(), proc.stdin.fileno())
        except BrokenPipeError:
            total = None
        _out, err = proc.communicate()  # closes zfs recv's stdin: end of stream
        if proc.returncode != 0 or total is None:
            raise Refused(explain_recv_failure(self.node, volume, argv, proc.returncode, err.decode("utf-8", "replace")),
                          "receive-failed")
        return total

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

    def forget_guest(self, guest, job):
        path = os.path.join(self.guests_dir(), "%d.json" % guest)
        try:
            with open(path, encoding="utf-8") as handle:
                record = json.load(handle)
        except FileNotFoundError:
            return
        if record.get("job") == job:
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


def drop_job_snapshots(zfs, job, dataset, say=None):
    """Destroy every snapshot and bookmark of ``job`` on dataset (holds released by Zfs.destroy)."""
    marks = ["@" + s for s in zfs.snapshots(dataset) if is_job_snapshot(s, job)]
    marks += ["#" + b for b in zfs.bookmarks(dataset) if is_job_snapshot(b, job)]
    for mark in marks:
        if say is not None:
            say("delete migration snapshot '%s' on %s" % (mark[1:], dataset))
        zfs.destroy(dataset + mark)


def _int_or_none(text):
    """A key=value number as an int; anything but plain ASCII digits stays text, for check_int to refuse."""
    return int(text) if isinstance(text, str) and NUMBER_RE.match(text) else text


def explain_recv_failure(node, volume, argv, rc, stderr):
    if stderr.strip():
        detail = stderr.strip().splitlines()[-1]
    else:
        detail = "killed by signal %d" % -rc if rc < 0 else "exit code %s" % rc
    if "out of space" in stderr or "No space left" in stderr:
        return ("the pool on node '%s' is full: cannot receive volume '%s' (%s) - free space on that pool or enlarge "
                "it; the previous replica is intact and the next run resumes from it" % (node, volume, detail))
    return ("'%s' failed on node '%s' for volume '%s': %s - the previous replica is intact; the next run retries"
            % (" ".join(argv), node, volume, detail))


# ---------------------------------------------------------------- entry point

CONTROL_OPERATIONS = {
    "prepare": Receiver.prepare,
    "finalize": Receiver.finalize,
    "list": Receiver.list_replicas,
    # OpenZFS: drop an interrupted receive the source cannot resume.
    "abort-resume": Receiver.abort_resume,
    # The cluster configuration (cluster.py): its generation and files, and the quorum acceptor's four steps.
    "get-config": cluster.serve_get_config,
    **{operation: cluster.serve_quorum(operation) for operation in cluster.QUORUM_FIELDS},
    # Migration (migrate.py): the new owner receives the guest's job states (pvesr set-state).
    SET_STATE: Receiver.set_state,
    # Migration to a node without a replica: the copy is complete there, the one-off copy job's traces go.
    DROP_COPY: Receiver.drop_migration_copy,
}


def parse_json(text):
    """json.loads that refuses a duplicate key: another parser would keep the first where Python keeps the last, and
    the receiver must act on exactly what every reader of the request sees (ValueError, as json's own errors)."""
    def unique(pairs):
        keys = [key for key, _value in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate key %r" % next(k for k in keys if keys.count(k) > 1))
        return dict(pairs)
    return json.loads(text, object_pairs_hook=unique)


def read_request(stdin):
    data = stdin.read(MAX_REQUEST + 1)
    if len(data) > MAX_REQUEST:
        raise Refused("request larger than %d bytes: refused" % MAX_REQUEST, "invalid-argument")
    try:
        return parse_json(data.decode("utf-8") or "{}")
    except ValueError as exc:
        raise Refused("the request is not valid JSON (%s): refused" % exc, "invalid-argument") from exc


def handle(command, receiver, stdin):
    """Dispatch one SSH_ORIGINAL_COMMAND; returns the reply dict."""
    tokens = (command or "").split()
    if not tokens:
        raise Refused("no operation given: this key may only run the replication receiver", "invalid-operation")
    operation, arguments = tokens[0], tokens[1:]
    if operation == "receive" and receiver.receives:
        return receiver.receive(arguments, stdin)
    if operation not in receiver.operations or arguments:
        raise Refused("operation %r is not allowed: this key may only run the replication receiver's operations "
                      "(%s)" % (command[:80], allowed_operations(receiver, "session")), "invalid-operation")
    return control(receiver, operation, read_request(stdin))


def allowed_operations(receiver, *more):
    """The names this key may send, for the refusal's message."""
    return ", ".join(sorted(list(receiver.operations) + (["receive"] if receiver.receives else []) + list(more)))


def control(receiver, operation, request):
    """One control operation; whatever it is, the key must name a node and the request may not claim another."""
    receiver.caller(request)
    return receiver.operations[operation](receiver, request)


def answer(receiver, work):
    """Run work() -> reply dict and turn refusals and failures into the reply peers understand."""
    receiver.log = []
    try:
        reply = work()
        reply.update({"ok": True})
    except Refused as exc:
        reply = dict(exc.extra, ok=False, error=str(exc), reason=exc.reason)
    except (ZfsError, configmod.ConfigError, OSError) as exc:
        reply = {"ok": False, "error": "node '%s': %s" % (receiver.node, exc), "reason": "error"}
    except Exception as exc:  # pylint: disable=broad-exception-caught
        # A defect here must still reach the caller's run log as an answer, not as a traceback it cannot read.
        reply = {"ok": False, "reason": "internal-error",
                 "error": "node '%s': internal error of the receiver (%s: %s) - the request stopped there; please "
                          "report it with this message" % (receiver.node, type(exc).__name__, exc)}
    finally:
        receiver.forget_config()  # a session's next request (or a set-config) must see the file as it is now
    reply.update({"log": receiver.log, "node": receiver.node})
    return reply


def session(receiver, stdin, stdout):
    """Several operations in one process (one per JSON line: {"operation", "request"}), so that a run pays for one
    process start on the target instead of one per operation.  A `receive` request ({"arguments": [key=value, ...],
    "bytes": n}) is followed by its whole stream of n bytes (a small one: MAX_INLINE_STREAM).  Ends at end of
    input, or after a request whose stream cannot be framed."""
    while True:
        line = stdin.readline(MAX_REQUEST + 1)
        if not line:
            return 0
        reply = answer(receiver, lambda: session_request(receiver, line, stdin))
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()
        if reply.get("reason") == "stream-framing":
            return 1


def session_request(receiver, line, stdin):
    if len(line) > MAX_REQUEST:
        raise Refused("request larger than %d bytes: refused" % MAX_REQUEST, "invalid-argument")
    try:
        message = parse_json(line.decode("utf-8"))
    except ValueError as exc:
        raise Refused("the request is not valid JSON (%s): refused" % exc, "invalid-argument") from exc
    operation = message.get("operation") if isinstance(message, dict) else None
    if not isinstance(operation, str):
        raise Refused("operation %r is not an operation name: refused" % (str(operation)[:80],), "invalid-operation")
    if operation == "receive" and receiver.receives:
        return receive_inline(receiver, message.get("request"), stdin)
    if operation not in receiver.operations:
        raise Refused("operation %r is not allowed in a session (%s)" % (
            str(operation)[:80], allowed_operations(receiver)), "invalid-operation")
    return control(receiver, operation, message.get("request"))


def receive_inline(receiver, request, stdin):
    """`receive` of a small stream that follows the request in the session: read all of it, then receive it with
    the checks of the OpenSSH data path.  A size that cannot be trusted ends the session (the bytes that follow
    could not be told from the next request)."""
    size = request.get("bytes") if isinstance(request, dict) else None
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_INLINE_STREAM:
        raise Refused("invalid inline stream size %r (at most %d bytes): refused, session ended" % (
            size, MAX_INLINE_STREAM), "stream-framing")
    data = stdin.read(size)
    if len(data) != size:
        raise Refused("the inline stream ended after %d of %d bytes: refused, session ended" % (len(data), size),
                      "stream-framing")
    check_request_keys(request, ("arguments", "bytes"))
    arguments = request.get("arguments")
    if not isinstance(arguments, list) or not all(isinstance(a, str) for a in arguments):
        raise Refused("invalid receive arguments %r: refused" % (arguments,), "invalid-argument")
    return receiver.receive(arguments, data)


def main(argv=None, environ=None, stdin=None, stdout=None, receiver=None, peer=None, operations=None):
    """The `serve` entry point: one operation, or a session of control operations, per SSH session.  ``peer`` is the
    calling node, from the key's forced command (`serve --peer <node>`); ``operations``, if given, is all this key
    may run (`serve --read-only`)."""
    del argv
    environ = os.environ if environ is None else environ
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout
    receiver = receiver or Receiver(peer=peer, operations=operations)
    command = environ.get("SSH_ORIGINAL_COMMAND", "")
    if command.strip() == "session":
        return session(receiver, stdin, stdout)
    reply = answer(receiver, lambda: handle(command, receiver, stdin))
    stdout.write(json.dumps(reply) + "\n")
    stdout.flush()
    return 0 if reply["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
