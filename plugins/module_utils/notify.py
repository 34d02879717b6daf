# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Notifications: a failed job with pvesr's cadence (fail counts 1, 2, 3, then 48, 96, 192, ...), a job that
recovered, and the node's own troubles (its configuration or state file).  A configured command receives one JSON
message on stdin (an argv list from runner.json, never a shell string)."""

from __future__ import annotations

import json
import subprocess
import time

from ansible_collections.storage.replication.plugins.module_utils.report import time_text

NOTIFY_TIMEOUT = 30

# pvesr _should_mail_at_failcount: 1, 2, 3, then 48 * 2^k (about 1, 2, 4, 8 ... days at 30-minute retries).
NOTIFY_EVERY_TIME_UP_TO = 3
NOTIFY_SPARSE_BASE = 48


def should_notify(fail_count):
    """pvesr's cadence: at fail counts 1, 2, 3, then 48, 96, 192, 384, ... (48 * 2^k); never at 0."""
    if fail_count <= 0:
        return False
    if fail_count <= NOTIFY_EVERY_TIME_UP_TO:
        return True
    multiple, rest = divmod(fail_count, NOTIFY_SPARSE_BASE)
    return rest == 0 and multiple & (multiple - 1) == 0


def failure_message(job, figures, node):
    """The structured message of a failed job (pvesr's template fields, plus next-sync which pvesr dropped)."""
    count = figures["fail_count"]
    body = ["Replication job '%s' with target '%s' and schedule '%s' failed!" % (job.id, job.target, figures["schedule"]),
            "", "Last successful sync: %s" % time_text(figures["last_sync"]),
            "Next sync try: %s" % time_text(figures["next_sync"]), "Failure count: %d" % count, "", "Error:",
            figures["error"] or ""]
    if count == NOTIFY_EVERY_TIME_UP_TO:
        body += ["", "Note: the job failed %d times in a row; from now on it is reported at failure counts %d, %d, %d, ..."
                 % (count, NOTIFY_SPARSE_BASE, 2 * NOTIFY_SPARSE_BASE, 4 * NOTIFY_SPARSE_BASE)]
    return dict(_message_fields(job, figures, node), event="failure", severity="error",
                subject="Replication Job: '%s' failed" % job.id, body="\n".join(body))


def recovery_message(job, figures, node, previous):
    """The message of a job that succeeded after ``previous`` (its state before the run) had failures."""
    body = ["Replication job '%s' with target '%s' succeeded again after %d failed attempt(s)."
            % (job.id, job.target, previous.get("fail_count", 0)), "",
            "Last error: %s" % (previous.get("error") or ""), "Synced at: %s" % time_text(figures["last_sync"]),
            "Next sync: %s" % time_text(figures["next_sync"])]
    return dict(_message_fields(job, figures, node), event="recovered", severity="info",
                subject="Replication Job: '%s' recovered" % job.id, body="\n".join(body),
                **{"previous-failure-count": previous.get("fail_count", 0), "previous-error": previous.get("error")})


def _message_fields(job, figures, node):
    return {"type": "replication", "hostname": node, "job-id": job.id, "job-target": job.target,
            "job-schedule": figures["schedule"], "guest": job.guest, "failure-count": figures["fail_count"],
            "error": figures["error"], "last-sync": figures["last_sync"], "next-sync": figures["next_sync"],
            "timestamp": int(time.time())}


NODE_EVENTS = {  # event: (severity, subject)
    "config-unreadable": ("error", "cluster configuration unreadable, replication stopped"),
    "config-restored": ("warning", "cluster configuration restored from the peers"),
    "state-rebuilt": ("warning", "job state file unreadable, rebuilt from the replication snapshots"),
    "state-unreadable": ("error", "job state file unreadable and not rebuilt, replication stopped"),
}


def node_message(node, event, text):
    """A message about the node itself (its configuration or state file), not about one job."""
    severity, subject = NODE_EVENTS[event]
    return {"type": "replication", "hostname": node, "event": event, "severity": severity,
            "subject": "Replication on node '%s': %s" % (node, subject), "body": text, "timestamp": int(time.time())}


def send_notification(command, message):
    """Run the notify command with the JSON message on stdin; returns None or the reason it failed."""
    try:
        # pylint: disable-next=ansible-bad-function
        proc = subprocess.run(command, input=json.dumps(message, sort_keys=True).encode("utf-8"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=NOTIFY_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "notify command %s failed: %s" % (command[0], exc)
    if proc.returncode != 0:
        output = proc.stdout.decode("utf-8", "replace").strip()
        return "notify command %s exited with %d%s" % (command[0], proc.returncode, (": " + output.splitlines()[-1]) if output else "")
    return None
