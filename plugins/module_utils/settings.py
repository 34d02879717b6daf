# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The node's own settings and directories: runner.json (node-local, not part of the cluster configuration) and
where the configuration, the state and the logs live (the STORAGE_REPLICATION_* variables move them)::

    {"max_parallel": 4, "log_runs": 10, "notify_command": ["/usr/local/bin/notify-replication"],
     "metrics_file": "/var/lib/prometheus/node-exporter/storage-replication.prom", "peer_check_interval": 600,
     "fence_after": 60, "fence_interval": 5, "receive_stall_seconds": 120}

The runner, the fence service and the CLI read them; a file that is not valid is refused with every problem named,
never half used.
"""

from __future__ import annotations

import os

from ansible_collections.storage.replication.plugins.module_utils.config import DEFAULT_CONFDIR, ConfigError
from ansible_collections.storage.replication.plugins.module_utils.files import read_json_object
from ansible_collections.storage.replication.plugins.module_utils.joblog import DEFAULT_LOGDIR
from ansible_collections.storage.replication.plugins.module_utils.state import DEFAULT_STATEDIR

SETTINGS_FILE = "runner.json"

DEFAULT_SETTINGS = {
    "max_parallel": 4,
    "log_runs": 10,
    "notify_command": None,
    "metrics_file": "/var/lib/prometheus/node-exporter/storage-replication.prom",
    "peer_check_interval": 600,
    # The fence service (fence.py): seconds without quorum before this node stops its guests, and its tick.
    "fence_after": 60,
    "fence_interval": 5,
    # The receiving side (receive_stream.py): a stream into `zfs recv` that brings no byte for this long ends itself,
    # so that a run cut off from this node (its link down) leaves no receive behind.
    "receive_stall_seconds": 120,
}

# Environment variables that move the node's directories (tests, benchmarks, unusual installs).
ENVIRONMENT = {"confdir": "STORAGE_REPLICATION_CONFDIR", "statedir": "STORAGE_REPLICATION_STATEDIR",
               "logdir": "STORAGE_REPLICATION_LOGDIR"}


class SettingsError(ConfigError):
    """runner.json is invalid; the message names the setting and what to write."""


class Paths:
    """The node's directories; ``from_environment`` honours the STORAGE_REPLICATION_* variables."""

    def __init__(self, confdir=DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR, logdir=DEFAULT_LOGDIR):
        self.confdir = confdir
        self.statedir = statedir
        self.logdir = logdir

    @classmethod
    def from_environment(cls, environ=None):
        environ = os.environ if environ is None else environ
        defaults = cls()
        return cls(**{name: environ.get(variable) or getattr(defaults, name) for name, variable in ENVIRONMENT.items()})

    @property
    def settings_file(self):
        return os.path.join(self.confdir, SETTINGS_FILE)


def load_settings(path):
    """The runner settings: DEFAULT_SETTINGS updated from ``path`` (missing file = defaults); SettingsError."""
    settings = dict(DEFAULT_SETTINGS)
    try:
        data = read_json_object(path)
    except ValueError as exc:
        raise SettingsError("%s is not a JSON object of settings (%s): %s; fix it or remove it to use the defaults"
                            % (path, ", ".join(sorted(DEFAULT_SETTINGS)), exc)) from None
    if data is None:
        return settings
    problems = ["%s: %s" % (path, problem) for problem in _settings_problems(data)]
    if problems:
        raise SettingsError(problems)
    settings.update(data)
    return settings


def _settings_problems(data):
    for key in sorted(set(data) - set(DEFAULT_SETTINGS)):
        yield "unknown setting '%s'; the settings are: %s" % (key, ", ".join(sorted(DEFAULT_SETTINGS)))
    for key, low in (("max_parallel", 1), ("log_runs", 1), ("peer_check_interval", 0), ("fence_after", 1),
                     ("fence_interval", 1), ("receive_stall_seconds", 10)):
        value = data.get(key, low)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            yield "'%s' must be a whole number >= %d, not %r" % (key, low, value)
    command = data.get("notify_command")
    if command is not None and (not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command)):
        yield "'notify_command' must be an argv list such as [\"/usr/local/bin/notify\", \"--to\", \"ops\"] (never a shell string) or null"
    metrics = data.get("metrics_file")
    if metrics is not None and (not isinstance(metrics, str) or not os.path.isabs(metrics)):
        yield "'metrics_file' must be an absolute path or null (no metrics file), not %r" % (metrics,)
