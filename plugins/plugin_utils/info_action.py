# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The action of the _info modules: the module on the node, as every module of the collection (runner_action.py),
then its ``query`` (JMESPath) evaluated on the controller, where jmespath is installed (requirements/controller.txt),
so that the nodes need nothing beyond the runner."""

from __future__ import annotations

from ansible_collections.storage.replication.plugins.plugin_utils.runner_action import RunnerAction


class QueryingInfoAction(RunnerAction):
    """Subclasses name the list of the module's result that ``query`` applies to (``QUERIED``)."""

    QUERIED = ""
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)  # the module on the node
        query = self._task.args.get("query")
        if query and not result.get("failed"):
            result.update(self._query(query, result.get(self.QUERIED, [])))
        return result

    @staticmethod
    def _query(query, data):
        try:
            import jmespath  # pylint: disable=import-outside-toplevel
        except ImportError:
            return {"failed": True, "msg": "query needs the Python package jmespath on the controller: pip install jmespath"}
        try:
            return {"query_result": jmespath.search(query, data)}
        except jmespath.exceptions.JMESPathError as exc:
            return {"failed": True, "msg": "query '%s' is not a valid JMESPath expression: %s" % (query, exc)}
