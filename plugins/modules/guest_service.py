#!/usr/bin/python
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: guest_service
short_description: Start or stop a guest on this node through its hooks
version_added: 0.1.0
description:
  - Runs the guest's C(start) or C(stop) hook on the node the task runs on, unless its C(status) hook says it is
    already in that state (exit code 0 running, 3 stopped); without a status hook the hook always runs.
  - Starting is refused on a node that does not own the guest, so a guest never runs on two nodes. Before it
    decides, the node adopts a newer cluster configuration from its peers if one exists (a node that was down
    during a failover learns that it lost the guest).
options:
  guest:
    description: The guest ID.
    type: int
    required: true
  state:
    description: V(started) runs the start hook, V(stopped) the stop hook.
    type: str
    choices: [started, stopped]
    default: started
attributes:
  check_mode:
    description: Reports whether the hook would run, and runs only the status hook.
extends_documentation_fragment:
  - storage.replication.attributes.node_step
  - storage.replication.runner
seealso:
  - module: storage.replication.guest
  - module: storage.replication.guest_takeover
author:
  - storage.replication developers (@storage-replication)
"""

EXAMPLES = r"""
- name: Start guest 100 on its new owner
  storage.replication.guest_service:
    guest: 100
    state: started
  delegate_to: node2
"""

RETURN = r"""
running:
  description: Whether the guest runs on this node after the task.
  returned: success
  type: bool
adopted:
  description: The newer cluster configuration generation this node adopted from a peer first, or null.
  returned: success
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.storage.replication.plugins.module_utils._runner_call import run_module


def main():
    module = AnsibleModule(
        argument_spec={"guest": {"type": "int", "required": True},
                       "state": {"type": "str", "choices": ["started", "stopped"], "default": "started"}},
        supports_check_mode=True,
    )
    run_module(module, "guest_service")


if __name__ == "__main__":
    main()
