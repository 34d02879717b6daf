#!/usr/bin/python
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: guest_migrate
short_description: Move a guest to the node that holds its replica, sending only the last delta
version_added: 0.1.0
description:
  - Run on the guest's owner. Checks first that every node answers and that the move is valid, then stops the
    guest (its stop hook), runs its replication job to O(target) once more (only what changed since the last run
    crosses the network), gives O(target) the guest's job state, and makes O(target) the owner with the
    replication direction reversed (generation + 1 on every node).
  - Start the guest on O(target) afterwards with M(storage.replication.guest_service) (the migrate playbook does).
  - Refused, with nothing changed, when O(target) already owns the guest, holds no replica (no job targets it),
    when that job is marked for removal or disabled, or when a node does not answer. If the final sync or the
    ownership change fails, the guest is started again on this node.
options:
  guest:
    description: The guest ID.
    type: int
    required: true
  target:
    description: The node to move it to.
    type: str
    required: true
attributes:
  check_mode:
    support: full
    description: Checks everything, the other nodes included, and returns the plan; stops and sends nothing.
  diff_mode:
    support: none
    description: Nothing to show as a diff.
  platform:
    support: full
    platforms: posix
    description: Runs on a replication node prepared by the C(storage.replication.runner) role.
requirements:
  - The runner installed by the C(storage.replication.runner) role; use its interpreter.
seealso:
  - module: storage.replication.guest_service
author:
  - storage.replication developers
"""

EXAMPLES = r"""
- name: Move guest 100 from node1 to node2
  storage.replication.guest_migrate:
    guest: 100
    target: node2
  delegate_to: node1
  vars:
    ansible_python_interpreter: /opt/storage-replication/venv/bin/python
"""

RETURN = r"""
plan:
  description: The guest, its source and target, the job that carries the final delta, and the jobs after the move.
  returned: success
  type: dict
  sample: {"guest": 100, "source": "node1", "target": "node2", "job": "100-0", "jobs_after": {"100-0": "node2 -> node1"}}
sync:
  description: The final sync (null in check mode), with the bytes sent per volume.
  returned: success
  type: dict
  sample: {"job": "100-0", "start": 1767225600, "bytes": 81234, "volumes": [{"volume": "local-zfs:subvol-100-disk-0",
           "mode": "incremental", "base": "__replicate_100-0_1767225500__", "bytes": 81234, "seconds": 0.4}]}
generation:
  description: The cluster configuration generation after the move.
  returned: success
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.storage.replication.plugins.module_utils import failover, migrate


def main():
    module = AnsibleModule(argument_spec={"guest": {"type": "int", "required": True}, "target": {"type": "str", "required": True}},
                           supports_check_mode=True)
    failover.run_module_step(module, lambda: migrate.migrate(module.params["guest"], module.params["target"],
                                                             check_mode=module.check_mode))


if __name__ == "__main__":
    main()
