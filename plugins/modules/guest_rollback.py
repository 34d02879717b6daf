#!/usr/bin/python
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: guest_rollback
short_description: Bring a stopped guest's volumes back to a restore point, keeping the current ones aside
version_added: 0.1.0
description:
  - Run on the node that owns the guest, with the guest stopped (the C(rollback) playbook stops it first and starts
    it afterwards). Refuses while the guest's status hook says it runs.
  - Finds the restore point O(point) names on the owner or on the target node of one of the guest's jobs (a point is
    usable where every volume of the guest has it), preferring the owner.
  - First copies every volume aside whole, its current data and every snapshot (the restore points newer than the
    chosen one included), as C(<volume>-rollback-<time>). Nothing ever destroys those copies; destroy them when they
    are no longer needed.
  - Then brings every volume to the point, with C(zfs rollback) when the owner holds it, else by pulling that point
    back from the replica node that holds it.
  - The guest's jobs continue incrementally from the point where their target holds it; the result names the others.
options:
  guest:
    description: The ID of the guest to roll back (this node owns it).
    type: int
    required: true
  point:
    description:
      - The restore point, by its snapshot name (V(__replicate_100-0_1767225600__)), or a time, the newest point at or
        before it, as an epoch or a local time V(2026-05-01 14:30).
      - C(storage-replication restore-points GUEST) lists the points.
    type: str
    required: true
attributes:
  check_mode:
    description: Returns the plan (the point, where it comes from, what each volume goes back to and is kept aside as) and changes nothing.
  diff_mode:
    description: Nothing to show as a diff; the plan is in RV(summary).
extends_documentation_fragment:
  - storage.replication.attributes.node_step
  - storage.replication.runner
seealso:
  - module: storage.replication.guest_service
  - module: storage.replication.job
author:
  - storage.replication developers (@storage-replication)
"""

EXAMPLES = r"""
- name: Bring guest 100 back to how it was at 14:30 (it is stopped)
  storage.replication.guest_rollback:
    guest: 100
    point: "2026-05-01 14:30"
"""

RETURN = r"""
point:
  description: The restore point the guest goes back to.
  returned: success
  type: dict
  sample: {"snapshot": "__replicate_100-0_1767225600__", "job": "100-0", "time": 1767225600, "time_text": "2026-01-01 00:00:00 UTC"}
from:
  description: The node the point comes from (the owner for a local point).
  returned: success
  type: str
  sample: node2
local:
  description: True when the owner holds the point itself.
  returned: success
  type: bool
volumes:
  description:
    - Per volume, its dataset, the dataset its current data and snapshots were kept in, the newer points that copy
      holds, and the data it goes back to (bytes).
  returned: success
  type: dict
  sample: {"local-zfs:subvol-100-disk-0": {"dataset": "rpool/data/subvol-100-disk-0", "kept": "rpool/data/subvol-100-disk-0-rollback-20260501143512",
           "newer": [], "referenced": 1048576, "restored": "__replicate_100-0_1767225600__"}}
jobs:
  description: How each job of the guest continues after the rollback.
  returned: success
  type: dict
  sample: {"100-0": "continues incrementally from __replicate_100-0_1767225600__ (node node2 holds it; ...)"}
summary:
  description: The plan in lines for people.
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.storage.replication.plugins.module_utils._runner_call import run_module


def main():
    module = AnsibleModule(argument_spec={"guest": {"type": "int", "required": True},
                                          "point": {"type": "str", "required": True}},
                           supports_check_mode=True)
    run_module(module, "guest_rollback")


if __name__ == "__main__":
    main()
