# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Test helper: writes every task result and the play recap as JSON to $STORAGE_REPLICATION_RESULTS."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: record_results
type: aggregate
short_description: Record task results and the recap as JSON for the integration tests
description:
  - Writes one JSON document to the file named by the environment variable E(STORAGE_REPLICATION_RESULTS)
    when the playbook ends, with every task result (host, task, status, seconds since the task started, result) and the per-host recap.
requirements:
  - enabled in callbacks_enabled
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "record_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._results = []
        self._task_started = time.monotonic()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_started = time.monotonic()

    def v2_playbook_on_handler_task_start(self, task):
        self._task_started = time.monotonic()

    def _record(self, result, status):
        self._results.append({
            "host": result._host.get_name(),
            "task": result._task.get_name(),
            "status": status,
            "seconds": round(time.monotonic() - self._task_started, 2),
            "result": json.loads(self._dump_results(result._result, indent=0)),
        })

    def v2_runner_on_ok(self, result):
        self._record(result, "changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        path = os.environ.get("STORAGE_REPLICATION_RESULTS")
        if not path:
            return
        recap = {host: stats.summarize(host) for host in sorted(stats.processed)}
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"results": self._results, "stats": recap}, handle, indent=1)
