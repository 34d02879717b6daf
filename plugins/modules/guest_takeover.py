#!/usr/bin/python
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: guest_takeover
short_description: Make guests owned by new nodes and reverse their replication direction, on every node at once
version_added: 0.1.0
description:
  - What moving C(/etc/pve/nodes/A/qemu-server/100.conf) to node B does in Proxmox, plus pvesr's direction switch,
    as one cluster-wide change pushed with the next generation to every node.
  - For each guest the job that targeted the new owner now targets the old owner; every job's source is the new
    owner.
  - In a failover, O(allow_unreachable=true) leaves the failed node behind; when it comes back its runner sees the
    newer generation, adopts it, and acts on nothing it lost.
  - Does not move data; run M(storage.replication.replica_promote) on the new owner first.
options:
  guests:
    description: The guests and their new owners.
    type: list
    elements: dict
    required: true
    suboptions:
      id:
        description: The guest ID.
        type: int
        required: true
      node:
        description: Its new owner.
        type: str
        required: true
  force_quorum:
    description:
      - Commit the change with whatever nodes answer, without a majority (Proxmox's C(pvecm expected 1)).
      - Only when the missing nodes are known to be down for good; the result says C(forced=true), and a node that
        comes back holding another configuration under the same generation reports a conflict.
    type: bool
    default: false
extends_documentation_fragment:
  - storage.replication.cluster
  - storage.replication.runner
seealso:
  - module: storage.replication.failover_plan
  - module: storage.replication.guest_service
author:
  - storage.replication developers (@storage-replication)
"""

EXAMPLES = r"""
- name: Guest 100 is owned by node2 now (node1 is down)
  storage.replication.guest_takeover:
    guests: [{id: 100, node: node2}]
    allow_unreachable: true
  run_once: true
"""

RETURN = r"""
moved:
  description: The guests whose owner changed, with the old and the new owner.
  returned: success
  type: dict
  sample: {"100": {"from": "node1", "to": "node2"}}
generation:
  description: The generation of the cluster configuration in force after the task (in check mode, the one it would have).
  returned: success
  type: int
push:
  description: What happened on each node, C(written), C(unchanged), C(skipped) (unreachable) or C(failed).
  returned: success
  type: dict
forced:
  description: True when the change was committed without a majority (O(force_quorum)).
  returned: success
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.storage.replication.plugins.module_utils._runner_call import run_module
from ansible_collections.storage.replication.plugins.module_utils._specs import cluster_argument_spec


def main():
    module = AnsibleModule(
        argument_spec=cluster_argument_spec({"guests": {"type": "list", "elements": "dict", "required": True, "options": {
            "id": {"type": "int", "required": True}, "node": {"type": "str", "required": True}}},
            "force_quorum": {"type": "bool", "default": False}}),
        supports_check_mode=True,
    )
    run_module(module, "guest_takeover")


if __name__ == "__main__":
    main()
