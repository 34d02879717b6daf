#!/usr/bin/python
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: replica_promote
short_description: Bring a guest's replica on this node to its last replication snapshot, before the node takes the guest over
version_added: 0.1.0
description:
  - Run on the node that is to own the guest, while it does not own it yet (a failover's destination).
  - For each volume of the guest it finds the newest replication snapshot. Anything written on the replica since is
    first copied aside as a C(<volume>-diverged-<time>) dataset, then the volume is rolled back to that snapshot.
    Normally a replica is not written and nothing changes.
  - Refuses when a volume is missing, holds no replication snapshot, has other snapshots newer than it (a rollback
    would destroy them), or when the volumes are at different replication snapshots.
  - On a node that already owns the guest it changes nothing (its volumes are live data).
  - With O(point), each volume goes to that restore point instead; the snapshots newer than it (newer restore points)
    are kept with the copy set aside, never destroyed.
options:
  guest:
    description: The guest ID.
    type: int
    required: true
  point:
    description: The restore point (a replication snapshot's name, as M(storage.replication.failover_plan) chose it) to bring the replica to.
    type: str
attributes:
  check_mode:
    description: Reports whether data would be kept aside and rolled back, and changes nothing.
extends_documentation_fragment:
  - storage.replication.attributes.node_step
  - storage.replication.runner
seealso:
  - module: storage.replication.failover_plan
author:
  - storage.replication developers (@storage-replication)
"""

EXAMPLES = r"""
- name: Bring the replica of guest 100 to its last replication snapshot
  storage.replication.replica_promote:
    guest: 100
"""

RETURN = r"""
volumes:
  description: Per volume, the replication snapshot it is at, whether data was written since, and the dataset it was kept in.
  returned: success
  type: dict
  sample: {"local-zfs:subvol-100-disk-0": {"snapshot": "__replicate_100-0_1767225600__", "written": false, "kept": null,
           "newer": []}}
recovery_point:
  description: The start time (epoch seconds) of the replication snapshot the guest starts from.
  returned: success
  type: int
owner:
  description: True when this node already owns the guest (nothing was touched).
  returned: success
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.storage.replication.plugins.module_utils._runner_call import run_module


def main():
    module = AnsibleModule(argument_spec={"guest": {"type": "int", "required": True}, "point": {"type": "str"}},
                           supports_check_mode=True)
    run_module(module, "replica_promote")


if __name__ == "__main__":
    main()
