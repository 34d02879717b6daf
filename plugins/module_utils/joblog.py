# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The per-job run logs in /var/log/storage-replication: one run's log as it is written (pvesr's line format
``<YYYY-MM-DD HH:MM:SS> <jobid>: <message>``), the rotation that keeps the last N runs, and reading them back.
The bottom layer: it imports nothing of ours."""

from __future__ import annotations

import os
import time

DEFAULT_LOGDIR = "/var/log/storage-replication"


class RunLog:
    """<logdir>/<jobid>.log, truncated at every run, pvesr's line format; ``lines`` keeps what was said."""

    def __init__(self, path, job_id, echo=None):
        self.job_id = job_id
        self.echo = echo
        self.lines = []
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.handle = open(path, "w", encoding="utf-8")  # pylint: disable=consider-using-with

    def __call__(self, message):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        for line in str(message).rstrip("\n").split("\n"):
            self.handle.write("%s %s: %s\n" % (stamp, self.job_id, line))
            self.lines.append(line)
            if self.echo is not None:
                self.echo(line)
        self.handle.flush()

    def close(self):
        self.handle.close()


def log_path(logdir, job_id, age=0):
    """The log of the run ``age`` runs ago (0: the latest): <job>.log, <job>.log.1, ..."""
    name = "%s.log" % job_id
    return os.path.join(logdir, name if age == 0 else "%s.%d" % (name, age))


def rotate_logs(logdir, job_id, keep):
    """Before a run: <job>.log becomes <job>.log.1 and so on; runs older than the last ``keep`` are dropped."""
    oldest = log_path(logdir, job_id, keep - 1)
    if os.path.exists(oldest):
        os.unlink(oldest)
    for age in range(keep - 2, -1, -1):
        source = log_path(logdir, job_id, age)
        if os.path.exists(source):
            os.replace(source, log_path(logdir, job_id, age + 1))
    for age in range(keep, keep + 100):  # left over from a larger log_runs setting
        stale = log_path(logdir, job_id, age)
        if not os.path.exists(stale):
            break
        os.unlink(stale)


def read_logs(logdir, job_id, runs=1):
    """The lines of the last ``runs`` runs, oldest run first: [(age, [lines])]."""
    found = []
    for age in range(runs - 1, -1, -1):
        try:
            with open(log_path(logdir, job_id, age), encoding="utf-8", errors="replace") as handle:
                found.append((age, handle.read().splitlines()))
        except FileNotFoundError:
            continue
    return found
