# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Runs the job_info module on the node, then evaluates ``query`` (JMESPath) over its ``jobs`` on the controller."""

from __future__ import annotations

from ansible_collections.storage.replication.plugins.plugin_utils.info_action import QueryingInfoAction


class ActionModule(QueryingInfoAction):

    MODULE = "storage.replication.job_info"
    QUERIED = "jobs"
