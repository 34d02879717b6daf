# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""storage.replication.guest_info: the module on the node (plugin_utils/runner_action.py), then ``query`` (JMESPath) over its
``guests`` on the controller (plugin_utils/info_action.py)."""

from __future__ import annotations

from ansible_collections.storage.replication.plugins.plugin_utils.info_action import QueryingInfoAction


class ActionModule(QueryingInfoAction):

    QUERIED = "guests"
