# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The Prometheus textfile-collector file: every job's figures (report.job_report), the runner's last tick, whether
the configuration and the state could be read, a configuration conflict and the generation; rewritten atomically
(temporary file + rename: the collector never reads half a file) after every job and at the end of every run."""

from __future__ import annotations

import math
import os

from ansible_collections.storage.replication.plugins.module_utils.files import atomic_write
from ansible_collections.storage.replication.plugins.module_utils.report import job_report

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
)


def _label_value(value):
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _sample(value):
    if math.isinf(value):
        return "+Inf"
    return repr(int(value)) if float(value).is_integer() else repr(value)


def format_metrics(report, node, generation, tick, readable=None):
    """The textfile-collector text for ``report`` (job_report) of ``node``; ``tick`` = the runner's last tick;
    ``generation`` None: unknown (damaged configuration); ``readable``: {"config": bool, "state": bool}."""
    readable = readable or {"config": True, "state": True}
    lines = []
    node_value = _label_value(node)
    labels = ['job="%s",guest="%d",target="%s",node="%s"' % (job["id"], job["guest"], _label_value(job["target"]), node_value)
              for job in report]  # job IDs are digits and '-'; node names are validated host names
    for name, help_text, figure, convert in _JOB_METRICS:
        lines += ["# HELP %s %s" % (name, help_text), "# TYPE %s gauge" % name]
        lines += ["%s{%s} %s" % (name, label, _sample(convert(job[figure]))) for label, job in zip(labels, report)]
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
    return "\n".join(lines) + "\n"


def write_metrics(path, cfg, state, node, now, tick, conflict=False):
    """Rewrite the metrics file atomically (temporary file + rename: the collector never reads half a file).
    ``cfg`` or ``state`` None: it could not be read (no job figures then: they would be made up)."""
    if not path:
        return
    report = job_report(cfg, state, node, now) if cfg is not None and state is not None else []
    readable = {"config": cfg is not None, "state": state is not None, "conflict": conflict}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, format_metrics(report, node, cfg.generation if cfg is not None else None, tick, readable))
