# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The Prometheus textfile-collector file: every job's figures (report.job_report), the runner's last tick, whether
the configuration and the state could be read, a configuration conflict and the generation; rewritten atomically
(temporary file + rename: the collector never reads half a file) after every job, at the end of every run and once
a minute while jobs run (the heartbeat: `time() - storage_replication_runner_last_tick_timestamp_seconds` tells a
stopped runner from one whose file the collector keeps serving unchanged).

Each job's series carry the labels ``id`` (the job ID; not ``job``, which Prometheus gives the scrape job and would
rename to ``exported_job``), ``guest``, ``target`` and ``node``. Beside them, the series of prometheus-pve-exporter's
replication collector, with its names and labels, so that dashboards and alerts made for Proxmox VE work as they
are: ``pve_replication_info{id,type,source,target,guest}`` (``source``/``target`` as ``node/<name>``, ``guest`` as
``qemu/<id>``, ``lxc/<id>`` or ``service/<id>``) and, labelled ``id``, ``pve_replication_duration_seconds``,
``_last_sync_timestamp_seconds``, ``_last_try_timestamp_seconds``, ``_next_sync_timestamp_seconds`` and
``_failed_syncs``. The collection's alert rules and Grafana dashboard use them: monitoring/."""

from __future__ import annotations

import math
import os

from ansible_collections.storage.replication.plugins.module_utils.files import atomic_write
from ansible_collections.storage.replication.plugins.module_utils.report import job_report
from ansible_collections.storage.replication.plugins.module_utils.schedule import ScheduleError, parse

# The runner's tick: no job runs more often than this, whatever its schedule says.
TICK_SECONDS = 60
# Proxmox VE's guest types as prometheus-pve-exporter labels them (vmtype/vmid).
PVE_GUEST_TYPES = {"vm": "qemu", "ct": "lxc", "service": "service"}

_JOB_METRICS = (
    # name, help, figure, converter
    ("storage_replication_job_last_sync_timestamp_seconds", "Start time of the last successful sync (0: never).", "last_sync", float),
    ("storage_replication_job_lag_seconds", "Age of the newest replica on the target, the recovery point (+Inf: no replica yet).",
     "lag", lambda v: math.inf if v is None else float(v)),
    ("storage_replication_job_last_duration_seconds", "Wall time of the last attempt.", "duration", lambda v: float(v or 0)),
    ("storage_replication_job_last_bytes_sent", "Bytes sent by the last attempt.", "bytes_sent", lambda v: float(v or 0)),
    ("storage_replication_job_fail_count", "Consecutive failed attempts (0: the last attempt succeeded).", "fail_count", float),
    ("storage_replication_job_next_sync_timestamp_seconds", "When the job is due next (0: not scheduled).", "next_sync",
     lambda v: float(v or 0)),
    ("storage_replication_job_enabled", "1 if the job is enabled, 0 if disabled.", "enabled", float),
    ("storage_replication_job_restore_points", "Restore points of the job on its target (its keep rules).",
     "restore_points", float),
    ("storage_replication_job_oldest_point_age_seconds", "Age of the oldest restore point on the target (+Inf: none).",
     "oldest_point_age", lambda v: math.inf if v is None else float(v)),
    ("storage_replication_job_points_bytes", "Bytes the job's restore points hold on the target (0: not known yet).",
     "points_bytes", lambda v: float(v or 0)),
    ("storage_replication_job_points_pruned_for_space", "Restore points the target deleted in the last run because "
     "its pool was full (the keep rules wanted them).", "space_pruned", lambda v: float(len(v))),
    ("storage_replication_job_schedule_interval_seconds", "Seconds between the schedule's next two runs (at least the "
     "runner's minute; 0: it runs at most once more): the lag alert fires at twice this.", "interval", float),
)
# prometheus-pve-exporter's replication series (pve_exporter/collector/node.py): name, figure, converter; a figure
# that is None is left out, as the exporter leaves out what the Proxmox API does not return.
_PVE_METRICS = (
    ("pve_replication_duration_seconds", "Proxmox vm replication duration", "duration", float),
    ("pve_replication_last_sync_timestamp_seconds", "Proxmox vm replication last_sync", "last_sync", float),
    ("pve_replication_last_try_timestamp_seconds", "Proxmox vm replication last_try", "last_try", float),
    ("pve_replication_next_sync_timestamp_seconds", "Proxmox vm replication next_sync", "next_sync", float),
    ("pve_replication_failed_syncs", "Proxmox vm replication fail_count", "fail_count", float),
)

_INTERVALS = {}
# How far back the run before now is looked for, step by step (a minute first: most schedules run often).
_LOOK_BACK = (60, 3600, 86400, 8 * 86400, 32 * 86400, 367 * 86400)


def schedule_interval(schedule, now):
    """The gap between the schedule's last run at or before ``now`` and its next one: how old a healthy job's
    replica gets before the next run renews it (never less than the runner's minute), so that a lag of twice that
    means a run was missed, on a weekend as on a weekday. 0 when the schedule runs no more. Remembered per minute."""
    now = int(now)
    key = (schedule, now // 60)
    if key not in _INTERVALS:
        if len(_INTERVALS) > 4096:
            _INTERVALS.clear()
        _INTERVALS[key] = _interval(schedule, now)
    return _INTERVALS[key]


def _interval(schedule, now):
    try:
        parsed = parse(schedule)
    except ScheduleError:
        return 0
    following = parsed.next_event(now)
    if following is None:
        return 0
    for back in _LOOK_BACK:
        previous = parsed.next_event(now - back)
        if previous is not None and previous <= now:
            while True:
                later = parsed.next_event(previous)
                if later is None or later > now:
                    return max(TICK_SECONDS, following - previous)
                previous = later
    after = parsed.next_event(following)  # no run in the last year: the gap ahead
    return max(TICK_SECONDS, after - following) if after is not None else 0


def _label_value(value):
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _sample(value):
    if math.isinf(value):
        return "+Inf"
    return repr(int(value)) if float(value).is_integer() else repr(value)


def format_metrics(report, node, generation, tick, readable=None, guest_types=None):
    """The textfile-collector text for ``report`` (job_report) of ``node``; ``tick`` = the runner's last tick;
    ``generation`` None: unknown (damaged configuration); ``readable``: {"config": bool, "state": bool};
    ``guest_types``: {guest ID: vm, ct or service}, for pve_replication_info."""
    return "".join(metric_blocks(report, node, generation, tick, readable, guest_types))


def metric_blocks(report, node, generation, tick, readable=None, guest_types=None):
    """format_metrics' text in blocks, one per metric (each ending with a newline), made one at a time (a
    generator)."""
    readable = readable or {"config": True, "state": True}
    guest_types = guest_types or {}
    # the schedule's interval beside each job's figures (not a copy of every job's dict: ten thousand of them)
    intervals = [schedule_interval(job["schedule"], tick) for job in report]
    node_value = _label_value(node)
    labels = ['id="%s",guest="%d",target="%s",node="%s"' % (job["id"], job["guest"], _label_value(job["target"]), node_value)
              for job in report]  # job IDs are digits and '-'; node names are validated host names
    # One block of text per metric, made when it is written (files.atomic_write takes the generator), not one list
    # of every line nor one string: with ten thousand jobs the whole text (16 MB) at once was the runner's peak
    # memory (benchmarks/bench_runner.py).

    def block(name, samples):
        return "\n".join(["# HELP %s %s" % name, "# TYPE %s gauge" % name[0]] + samples) + "\n"
    for name, help_text, figure, convert in _JOB_METRICS:
        values = intervals if figure == "interval" else [job[figure] for job in report]
        yield block((name, help_text), ["%s{%s} %s" % (name, label, _sample(convert(value)))
                                        for label, value in zip(labels, values)])
    yield block(("pve_replication_info", "Proxmox vm replication info"),
                ['pve_replication_info{id="%s",type="local",source="node/%s",target="node/%s",guest="%s/%d"} 1'
                 % (job["id"], _label_value(job["source"] or node), _label_value(job["target"]),
                    PVE_GUEST_TYPES.get(guest_types.get(job["guest"]), "qemu"), job["guest"]) for job in report])
    for name, help_text, figure, convert in _PVE_METRICS:
        yield block((name, help_text), ['%s{id="%s"} %s' % (name, job["id"], _sample(convert(job[figure])))
                                        for job in report if job[figure] is not None])
    lines = []
    node_label = 'node="%s"' % _label_value(node)
    lines += ["# HELP storage_replication_runner_last_tick_timestamp_seconds When the runner last ran on this node.",
              "# TYPE storage_replication_runner_last_tick_timestamp_seconds gauge",
              "storage_replication_runner_last_tick_timestamp_seconds{%s} %s" % (node_label, _sample(float(tick)))]
    for what, text in (("config", "cluster configuration"), ("state", "job state file")):
        name = "storage_replication_%s_readable" % what
        lines += ["# HELP %s 1 if this node's %s can be read (0: damaged, see the runner's output)." % (name, text),
                  "# TYPE %s gauge" % name, "%s{%s} %d" % (name, node_label, readable[what])]
    lines += ["# HELP storage_replication_config_conflict 1 if peers hold another content of this node's generation (a "
              "change forced without quorum): the node runs nothing until 'storage-replication resolve-conflict'.",
              "# TYPE storage_replication_config_conflict gauge",
              "storage_replication_config_conflict{%s} %d" % (node_label, bool(readable.get("conflict")))]
    if generation is not None:
        lines += ["# HELP storage_replication_config_generation The cluster configuration generation this node holds.",
                  "# TYPE storage_replication_config_generation gauge",
                  "storage_replication_config_generation{%s} %d" % (node_label, generation)]
    yield "\n".join(lines) + "\n"


def write_metrics(path, cfg, state, node, now, tick, conflict=False):
    """Rewrite the metrics file atomically (temporary file + rename: the collector never reads half a file).
    ``cfg`` or ``state`` None: it could not be read (no job figures then: they would be made up)."""
    if not path:
        return
    report = job_report(cfg, state, node, now) if cfg is not None and state is not None else []
    readable = {"config": cfg is not None, "state": state is not None, "conflict": conflict}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    guest_types = {guest.id: guest.type for guest in cfg.guests.values()} if cfg is not None else {}
    atomic_write(path, metric_blocks(report, node, cfg.generation if cfg is not None else None, tick, readable,
                                     guest_types))
