#!/usr/bin/python
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: guest
short_description: Manage the guests whose volumes the cluster replicates
version_added: 0.1.0
description:
  - Records a guest (a VM, a container or a service) in the cluster configuration, with its type, its volumes, the
    node it starts on, and optional hooks.
  - The inventory says where a guest starts; the cluster says where it is now. O(node) is only used when the guest
    is created. After a migration or failover the guest stays where it is, with its reversed replication direction;
    when O(node) differs from the current owner the module changes nothing about the owner and warns once per task,
    in one line naming every such guest with what to write in the inventory to bring it in line (its node now and
    its jobs' targets now).
  - With O(guests), one task converges several guests; with O(purge=true), the others are removed.
  - A guest that still has replication jobs cannot be removed; remove its jobs first (M(storage.replication.job)).
options:
  id:
    description:
      - The guest ID, 100 to 999999999.
    type: int
  type:
    description:
      - V(vm), V(ct) or V(service). Required with O(state=present).
    type: str
    choices: [vm, ct, service]
  node:
    description:
      - The node the guest starts on. Required to create a guest; ignored afterwards (see above).
    type: str
  volumes:
    description:
      - The guest's volumes, C(<storage>:<name>), for example V(local-zfs:vm-100-disk-0). The storage must exist
        (M(storage.replication.storage)).
    type: list
    elements: str
    default: []
  hooks:
    description:
      - Commands run around replication and failover, as argv lists (never shell strings), by name
        V(start), V(stop), V(status), V(freeze), V(thaw), V(kill) (the fence's last resort when V(stop) fails or
        hangs on a node cut off from its cluster).
      - 'For example C({"freeze": ["/usr/sbin/fsfreeze", "-f", "/srv"], "thaw": ["/usr/sbin/fsfreeze", "-u", "/srv"]}).'
    type: dict
    default: {}
  state:
    description:
      - V(present) adds or updates the guest, V(absent) removes it from the configuration (no data is touched).
    type: str
    choices: [present, absent]
    default: present
  guests:
    description:
      - Several guests in one task, instead of O(id) and its options.
    type: list
    elements: dict
    suboptions:
      id:
        description: The guest ID, as O(id).
        type: int
        required: true
      type:
        description: V(vm), V(ct) or V(service), as O(type).
        type: str
        choices: [vm, ct, service]
      node:
        description: The node it starts on, as O(node).
        type: str
      volumes:
        description: Its volumes, as O(volumes).
        type: list
        elements: str
        default: []
      hooks:
        description: Its hooks, as O(hooks).
        type: dict
        default: {}
      state:
        description: V(present) or V(absent), as O(state).
        type: str
        choices: [present, absent]
        default: present
  purge:
    description:
      - With O(guests), remove every guest that is not in O(guests) (refused while such a guest has jobs).
    type: bool
    default: false
extends_documentation_fragment:
  - storage.replication.attributes
  - storage.replication.cluster
  - storage.replication.runner
seealso:
  - module: storage.replication.job
  - module: storage.replication.storage
author:
  - storage.replication developers (@storage-replication)
"""

EXAMPLES = r"""
- name: VM 100 starts on node1 and has one disk
  storage.replication.guest:
    id: 100
    type: vm
    node: node1
    volumes: [local-zfs:vm-100-disk-0]
  run_once: true

- name: A service with hooks that freeze its file system around the snapshot
  storage.replication.guest:
    id: 300
    type: service
    node: node2
    volumes: [local-zfs:subvol-300-disk-0]
    hooks:
      freeze: [/usr/sbin/fsfreeze, -f, /rpool/data/subvol-300-disk-0]
      thaw: [/usr/sbin/fsfreeze, -u, /rpool/data/subvol-300-disk-0]
  run_once: true

- name: Converge the guests from the inventory
  storage.replication.guest:
    guests: "{{ replication_guests }}"
  run_once: true
"""

RETURN = r"""
guest:
  description: The guest after the change (null after a removal); its C(node) is the current owner.
  returned: success, with a single guest
  type: dict
  sample: {"id": 100, "type": "vm", "node": "node1", "volumes": ["local-zfs:vm-100-disk-0"], "hooks": {}}
guests:
  description: The guests the task manages, after the change.
  returned: success
  type: list
  elements: dict
  sample: [{"id": 100, "type": "vm", "node": "node1", "volumes": ["local-zfs:vm-100-disk-0"], "hooks": {}}]
generation:
  description: The generation of the cluster configuration in force after the task (in check mode, the one it would have).
  returned: success
  type: int
  sample: 4
push:
  description: What happened on each node, C(written), C(unchanged), C(skipped) (unreachable, with O(allow_unreachable)) or C(failed).
  returned: success
  type: dict
  sample: {"node1": {"status": "written", "detail": "this node"}, "node2": {"status": "written", "detail": ""}}
problems:
  description: Every problem found in the resulting configuration, when the change was refused.
  returned: failure
  type: list
  elements: str
  sample: ["guest '100': owner node 'node9' does not exist; add the node or give the guest a known node (node1, node2)"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.storage.replication.plugins.module_utils._runner_call import run_module
from ansible_collections.storage.replication.plugins.module_utils._specs import GUEST_OPTIONS, items_spec


def main():
    module = AnsibleModule(
        argument_spec=items_spec(GUEST_OPTIONS, "guests", required=("id",)),
        mutually_exclusive=[("guests", "id"), ("guests", "type"), ("guests", "node")],
        required_one_of=[("guests", "id")],
        supports_check_mode=True,
    )
    run_module(module, "guest")


if __name__ == "__main__":
    main()
