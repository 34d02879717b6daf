# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The action of every storage.replication module (plugins/action/<module>.py subclass it): it runs the module as
ansible.builtin's normal action does, and tells it, in its environment, the identity of this collection's engine
(version and digest, module_utils/_runner_call.py). The module hands its work to the runner installed on the node,
which refuses a request that expects another engine than its own: a runner installed from another version of the
collection is found before it acts, and the task says to re-run the role."""

from __future__ import annotations

from ansible.plugins.action.normal import ActionModule as NormalAction

from ansible_collections.storage.replication.plugins.module_utils._runner_call import EXPECT_ENV, expect_text, identity


class RunnerAction(NormalAction):

    def _compute_environment_string(self, raw_environment_out=None):
        # The task's own environment, plus the engine the controller expects on the node.
        environment = {}
        super()._compute_environment_string(environment)
        environment[EXPECT_ENV] = expect_text(identity())
        if isinstance(raw_environment_out, dict):
            raw_environment_out.clear()
            raw_environment_out.update(environment)
        return self._connection._shell.env_prefix(**environment)  # pylint: disable=protected-access
