# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The action plugins of the _info modules: run the module on the node, then evaluate its ``query`` (JMESPath) on
the controller, where jmespath is installed (requirements/controller.txt), so that the nodes need nothing beyond
the runner."""

from __future__ import annotations

from ansible.plugins.action import ActionBase


class QueryingInfoAction(ActionBase):
    """Subclasses name the module (``MODULE``) and the list of its result that ``query`` applies to (``QUERIED``)."""

    MODULE = ""
    QUERIED = ""
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        result.update(self._execute_module(module_name=self.MODULE, module_args=self._task.args, task_vars=task_vars))
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
