# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a node reports of each job it runs: the figures `status` shows (pvesr's columns, plus the lag, the real
recovery point), which the metrics file and the notifications use as well."""

from __future__ import annotations

import datetime

from ansible_collections.storage.replication.plugins.module_utils.bandwidth import job_limit
from ansible_collections.storage.replication.plugins.module_utils.schedule import DEFAULT_SCHEDULE
from ansible_collections.storage.replication.plugins.module_utils.state import (
    STATUS_INTERRUPTED, STATUS_WAITING, job_is_running, job_state_in, job_status, next_sync)

_NEXT_SYNC_MEMO = {}
_NEXT_SYNC_MEMO_SIZE = 65536


def memo_next_sync(job, jobstate):
    """state.next_sync, remembered by the values it reads (schedule, removal mark, last_try, fail_count, waiting
    for target): a run computes it for the due check and again for the metrics, and jobs share values."""
    key = (job.schedule, job.remove_job, int(jobstate.get("last_try", 0)), int(jobstate.get("fail_count", 0)),
           bool(jobstate.get("waiting_for_target")))
    if key not in _NEXT_SYNC_MEMO:
        if len(_NEXT_SYNC_MEMO) >= _NEXT_SYNC_MEMO_SIZE:
            _NEXT_SYNC_MEMO.clear()
        _NEXT_SYNC_MEMO[key] = next_sync(job, jobstate)
    return _NEXT_SYNC_MEMO[key]


def job_report(cfg, state, node, now):
    """One dict per job this node runs or shows in ``status`` (pvesr: its guests' jobs, disabled ones included,
    not those targeting this node unless marked for removal), ordered by guest and job number."""
    jobs = [j for j in cfg.jobs_on_node(node) if j.remove_job or j.target != node]
    return [job_figures(job, job_state_in(state, job), now) for job in sorted(jobs, key=lambda j: (j.guest, j.jobnum))]


def job_figures(job, jobstate, now):
    """The figures of one job from its state entry at ``now`` (see job_report)."""
    running = job_is_running(jobstate)
    due = None if job.disable and not job.remove_job else memo_next_sync(job, jobstate)
    if due and due < now and (job.remove_job or not jobstate.get("last_try")):
        # pvesr's "due at the next tick" values are not times: 1 for a removal, and for a job that never ran (or was
        # scheduled now) the schedule's first event after last_try 0, i.e. 1970-01-01 00:15. Such a job is due now.
        due = int(now)
    last_sync = int(jobstate.get("last_sync", 0))
    figures = {
        "id": job.id, "guest": job.guest, "jobnum": job.jobnum, "target": job.target, "source": job.source,
        "schedule": job.schedule or DEFAULT_SCHEDULE, "rate": job.rate, "comment": job.comment,
        "enabled": not job.disable, "remove_job": job.remove_job,
        "last_sync": last_sync, "last_try": int(jobstate.get("last_try", 0)), "next_sync": due,
        "duration": jobstate.get("duration"), "fail_count": int(jobstate.get("fail_count", 0)),
        "error": jobstate.get("error"), "bytes_sent": jobstate.get("bytes_sent"),
        # The real recovery point: how old the newest replica is (None: there is none yet).
        "lag": max(0, int(now) - last_sync) if last_sync else None,
        "status": job_status(job, jobstate),
        "pid": jobstate.get("pid") if running else None,
    }
    figures.update(_point_figures(job, jobstate, now, last_sync))
    figures.update(job_limit(job, now))
    if running:
        figures["state"] = "SYNCING"
    elif figures["status"] == STATUS_INTERRUPTED:
        figures["state"] = "interrupted: the run started %s did not end (its process %s is gone); the next run starts " \
                           "over" % (time_text(jobstate.get("last_try")), jobstate.get("pid"))
    elif figures["status"] == STATUS_WAITING:
        # pvesr shows only the error and stops trying; we retry (next_sync) and say why the job waits.
        figures["state"] = "waiting for target: %s" % figures["error"]
    else:
        figures["state"] = figures["error"] or "OK"
    return figures


def _point_figures(job, jobstate, now, last_sync):
    """The job's restore points on its target, as its last finalize reported them (before any: the newest replica,
    if there is one): count, oldest, its age, bytes held (None: not known yet), and the points the target had to
    delete in the last run for lack of space."""
    points = jobstate.get("points") if isinstance(jobstate.get("points"), dict) else {}
    oldest = points.get("oldest", last_sync or None)
    return {"keep": job.keep, "keep_source": job.keep_source,
            "restore_points": int(points.get("count", 1 if last_sync else 0)), "oldest_point": oldest,
            "oldest_point_age": max(0, int(now) - int(oldest)) if oldest else None,
            "points_bytes": points.get("bytes"), "space_pruned": list(jobstate.get("space_pruned") or [])}


def time_text(epoch):
    """A time for people (local time with its zone), 'never' for 0 or None."""
    if not epoch:
        return "never"
    return datetime.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def estimate_text(count):
    """An estimated number of bytes for people: 'about 17 MB' (decimal units, whole numbers), 'size unknown' for
    None."""
    if count is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return "about %d %s" % (count, unit)
        count //= 1000
    return "about %d TB" % count
