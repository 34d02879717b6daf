#!/usr/bin/python
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: guest_migrate
short_description: Move a guest to another node; only the last delta crosses the network while it is stopped
version_added: 0.1.0
description:
  - Run on the guest's owner. Checks first that every node answers and that the move is valid, then brings the
    guest's data to O(target), gives O(target) the guest's job state, and makes O(target) the owner
    (generation + 1 on every node).
  - If O(target) holds a replica (a job targets it), the guest is stopped (its stop hook) and that job runs once
    more, sending only what changed since its last run; the move reverses that job (it now targets this node).
  - If O(target) holds no replica, every volume is first sent in full (a one-off job C(<guest>-999999999) that is
    never written to the configuration) while the guest still runs, then the guest is stopped and only what
    changed since crosses the network. The replication snapshots of the guest's jobs travel with the copy, so the
    jobs keep their targets, start from O(target), and continue incrementally. The copy's own snapshots are
    removed on both nodes; this node keeps its volumes.
  - Start the guest on O(target) afterwards with M(storage.replication.guest_service) (the migrate playbook does).
  - Refused, with nothing changed, when O(target) already owns the guest, when the job to O(target) is marked for
    removal or disabled, or when a node does not answer. If the data transfer or the ownership change fails, the
    guest is started again on this node.
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
    description: Checks everything, the other nodes included, and returns the plan (for a full copy with the size
      it would send, about); stops and sends nothing.
extends_documentation_fragment:
  - storage.replication.attributes.node_step
  - storage.replication.runner
seealso:
  - module: storage.replication.guest_service
author:
  - storage.replication developers (@storage-replication)
"""

EXAMPLES = r"""
- name: Move guest 100 from node1 to node2
  storage.replication.guest_migrate:
    guest: 100
    target: node2
  delegate_to: node1
"""

RETURN = r"""
plan:
  description:
    - The guest, its source and target, how the data goes (C(mode) V(delta) by the job to the target, or V(full copy)
      by the one-off copy job), its volumes, and the jobs after the move.
  returned: success
  type: dict
  sample: {"guest": 100, "source": "node1", "target": "node2", "mode": "delta", "job": "100-0",
           "volumes": ["local-zfs:subvol-100-disk-0"], "jobs_after": {"100-0": "node2 -> node1"}}
summary:
  description: The plan in one line for people; for a full copy with the size it sends, about.
  returned: success
  type: str
  sample: "guest 100: node1 -> node3; node 'node3' holds no replica: full copy of 1 volume(s), about 17 MB, while the
    guest runs, then the last delta with it stopped; jobs after: 100-0 node3 -> node2"
full_copy:
  description: The full copy, sent while the guest ran (null in check mode and when the target held a replica).
  returned: success
  type: dict
  sample: {"job": "100-999999999", "start": 1767225590, "bytes": 17123456, "volumes": [{"volume": "local-zfs:subvol-100-disk-0",
           "mode": "full", "base": null, "bytes": 17123456, "seconds": 0.9}]}
sync:
  description: The last delta, sent with the guest stopped (null in check mode), with the bytes sent per volume.
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

from ansible_collections.storage.replication.plugins.module_utils._runner_call import run_module


def main():
    module = AnsibleModule(argument_spec={"guest": {"type": "int", "required": True}, "target": {"type": "str", "required": True}},
                           supports_check_mode=True)
    run_module(module, "guest_migrate")


if __name__ == "__main__":
    main()
