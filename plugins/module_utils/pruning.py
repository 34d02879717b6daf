# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which of a job's snapshots go, the same on the source (replicate.prepare_local) and on the target (the receiver's
prepare), and dropping every trace of a job on a dataset (a migration's one-off copy job)."""

from __future__ import annotations

from ansible_collections.storage.replication.plugins.module_utils.names import is_job_snapshot, replication_snapshot
from ansible_collections.storage.replication.plugins.module_utils.zfs import ZfsError


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


def drop_job_snapshots(zfs, job, dataset, say=None):
    """Destroy every snapshot and bookmark of ``job`` on dataset (holds released by Zfs.destroy)."""
    marks = ["@" + s for s in zfs.snapshots(dataset) if is_job_snapshot(s, job)]
    marks += ["#" + b for b in zfs.bookmarks(dataset) if is_job_snapshot(b, job)]
    for mark in marks:
        if say is not None:
            say("delete migration snapshot '%s' on %s" % (mark[1:], dataset))
        zfs.destroy(dataset + mark)
