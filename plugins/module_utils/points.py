# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Restore points on one node: a job's replication snapshots on a guest's volumes, as ZFS shows them.

A restore point of a guest is a replication snapshot ``__replicate_<job>_<epoch>__`` of one of its jobs; its time
is the run's start (the epoch in the name: one name for every volume of the guest, taken together). Which points
a job keeps is retention.py's decision; this module lists them with the space they hold (``used``: what
destroying the snapshot frees, ``referenced``: the data the volume goes back to), prunes what the grid drops and
makes room when a pool runs out of space. Callers decide which datasets are theirs to touch (receiver.py and
replicate.py check the replica binding first); everything here acts only on snapshots of the one job it is given.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.storage.replication.plugins.module_utils import retention
from ansible_collections.storage.replication.plugins.module_utils.names import (
    is_job_snapshot, job_guest, parse_replication_snapshot)
from ansible_collections.storage.replication.plugins.module_utils.zfs import (
    SNAPSHOT_PROPERTIES, ZFS, ZfsError, snapshot_tree)

POINT_PROPERTIES = SNAPSHOT_PROPERTIES + ("used", "referenced", "userrefs")
# Snapshots per `zfs destroy ds@a,b,c` on OpenZFS (one argv stays far below the kernel's limit).
DESTROY_BATCH = 200
# zfs-fuse destroys one snapshot per command, and most of a command's time is the daemon's: four at once halve the
# time (measured on the lab: 45 ms each one after another, 22 ms with four).
DESTROY_WORKERS = 4


def listing(zfs, dataset):
    """{snap: {guid, createtxg, creation, used, referenced, userrefs}} of one dataset in creation order: what
    Zfs.snapshots gives plus the space figures, in the same single `zfs get`."""
    return listing_of(zfs.get(POINT_PROPERTIES, [dataset], 1), dataset)


def listing_of(props, dataset):
    """listing() from a `zfs get -d 1` of (at least) POINT_PROPERTIES that was read already (parse_get form)."""
    tree = snapshot_tree(props).get(dataset, {})
    for snap, info in tree.items():
        values = props.get("%s@%s" % (dataset, snap), {})
        for key in ("used", "referenced", "userrefs"):
            info[key] = _number(values.get(key))
    return tree


def _number(text):
    return int(text) if text and text.isdigit() else 0


def job_points(snaps, job):
    """{snap: epoch} of ``job``'s replication snapshots among ``snaps`` (names, or {name: info})."""
    found = {}
    for name in snaps:
        parsed = parse_replication_snapshot(name)
        if parsed is not None and parsed[0] == job:
            found[name] = parsed[1]
    return found


def guest_points(snaps, guest):
    """{snap: (job, epoch)} of the replication snapshots of any job of ``guest`` among ``snaps``."""
    found = {}
    for name in snaps:
        parsed = parse_replication_snapshot(name)
        if parsed is not None and job_guest(parsed[0]) == guest:
            found[name] = parsed
    return found


def summary(per_volume, job):
    """{"count", "oldest", "newest", "bytes"} of the job's points present on every volume (``per_volume``:
    {volume: listing}); ``bytes`` is the space the job's snapshots hold on all volumes together."""
    sets = [set(job_points(snaps, job)) for snaps in per_volume.values()]
    common = set.intersection(*sets) if sets else set()
    epochs = [parse_replication_snapshot(name)[1] for name in common]
    held = sum(info.get("used", 0) for snaps in per_volume.values() for name, info in snaps.items()
               if is_job_snapshot(name, job))
    return {"count": len(common), "oldest": min(epochs) if epochs else None, "newest": max(epochs) if epochs else None,
            "bytes": held}


def destroy_snapshots(zfs, dataset, names, say=None, why=""):
    """Destroy dataset@name for each of ``names`` (the engine's holds released first); returns the names destroyed.

    OpenZFS destroys a batch per command (``ds@a,b,c``); zfs-fuse one per command, a few at once. One that cannot
    go (held by someone else, busy) is said and skipped: the rest still go."""
    names = list(names)
    for name in names:
        if say is not None:
            say("delete restore point '%s' on %s%s" % (name, dataset, " (%s)" % why if why else ""))
    if not names:
        return []
    if not zfs.features.holds:
        with ThreadPoolExecutor(max_workers=min(DESTROY_WORKERS, len(names))) as pool:
            done = list(pool.map(lambda name: _destroy_one(zfs, dataset, name, say), names))
        return [name for name, ok in zip(names, done) if ok]
    _release_our_holds(zfs, dataset, names)
    done = []
    for start in range(0, len(names), DESTROY_BATCH):
        batch = names[start:start + DESTROY_BATCH]
        try:
            zfs.run_while_busy([ZFS, "destroy", "%s@%s" % (dataset, ",".join(batch))])
            done += batch
        except ZfsError:  # one of them cannot go: find out which, one by one
            done += [name for name in batch if _destroy_one(zfs, dataset, name, say)]
    return done


def _destroy_one(zfs, dataset, name, say):
    try:
        zfs.run_while_busy([ZFS, "destroy", "%s@%s" % (dataset, name)])
        return True
    except ZfsError as exc:
        if exc.missing:
            return True
        if say is not None:
            say("delete restore point '%s' on %s failed: %s" % (name, dataset, exc.stderr or exc))
        return False


def _release_our_holds(zfs, dataset, names):
    held = zfs.get(["userrefs"], ["%s@%s" % (dataset, name) for name in names])
    for full, values in held.items():
        if values.get("userrefs", "0") not in ("0", "-"):
            zfs.release_holds(full)


def release_older_holds(zfs, dataset, snaps, job, newest, gone=()):
    """The engine holds only the snapshot the next incremental starts from: release its hold on the job's older
    points (OpenZFS), so that a point the grid drops later, or an admin, can destroy it. ``snaps`` is a listing
    taken before ``gone`` were destroyed."""
    if not zfs.features.holds:
        return
    for name, info in snaps.items():
        if name != newest and name not in gone and info.get("userrefs") and is_job_snapshot(name, job):
            zfs.release_holds("%s@%s" % (dataset, name))


def roll_back(zfs, dataset, snapshot, newer):
    """`zfs rollback -r` to ``snapshot`` once the engine's holds on the ``newer`` snapshots are released (OpenZFS
    refuses to destroy a held snapshot); callers keep those snapshots aside first."""
    if zfs.features.holds:
        for name in newer:
            zfs.release_holds("%s@%s" % (dataset, name))
    zfs.rollback(dataset, snapshot)


def prune(zfs, say, job, dataset, snaps, keep, protected=(), localtime=time.localtime):
    """Apply ``keep`` (retention.Keep) to the job's points on one dataset (``snaps``: its snapshots); the newest
    and the ``protected`` ones stay.  Returns the names deleted."""
    chosen = retention.select(job_points(snaps, job), keep, protected, localtime)
    return set(destroy_snapshots(zfs, dataset, chosen.pruned, say, "not kept by keep=%s" % keep.text))


def available(zfs, dataset):
    """Bytes available to ``dataset`` (its pool's free space, less quotas)."""
    return _number(zfs.get(["available"], [dataset]).get(dataset, {}).get("available"))


def make_room(zfs, say, job, datasets, need, protected=(), limit=None):
    """Prune the job's oldest points (all volumes of the guest together: one point is one name on every volume)
    until ``need`` bytes are available on the datasets' pool, or only the newest and the protected points are left.

    ``datasets`` {volume: dataset}; ``need`` None: prune one point (a receive failed for lack of space and nothing
    says how much it needs); ``limit``: at most that many points.  Returns the points pruned, oldest first."""
    pruned = []
    first = next(iter(datasets.values()))
    if need is not None:
        held = sum(_number(zfs.get(["usedbysnapshots"], [d]).get(d, {}).get("usedbysnapshots")) for d in datasets.values())
        if available(zfs, first) + held < need:
            say("the pool of %s has %d bytes free and the snapshots of the guest's volumes hold %d: not enough for the "
                "next point (%d bytes) even without any restore point, so none is deleted"
                % (", ".join(datasets), available(zfs, first), held, need))
            return []
    while limit is None or len(pruned) < limit:
        per_volume = {volume: listing(zfs, dataset) for volume, dataset in datasets.items()}
        if need is not None and available(zfs, first) >= need:
            break
        common = set.intersection(*[set(job_points(snaps, job)) for snaps in per_volume.values()])
        candidates = retention.room_candidates({name: parse_replication_snapshot(name)[1] for name in common},
                                               protected)
        if not candidates:
            break
        oldest = candidates[0]
        for volume, dataset in datasets.items():
            say("the pool of %s has too little space for the next point: deleted the oldest restore point '%s' "
                "(the grid would have kept it)" % (volume, oldest))
            destroy_snapshots(zfs, dataset, [oldest])
        pruned.append(oldest)
        if need is None:
            break
    return pruned
