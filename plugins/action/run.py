# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""storage.replication.run: the module on the node, told which engine to expect there (plugin_utils/runner_action.py)."""

from __future__ import annotations

from ansible_collections.storage.replication.plugins.plugin_utils.runner_action import RunnerAction as ActionModule  # pylint: disable=unused-import
