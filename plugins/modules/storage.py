#!/usr/bin/python
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: storage
short_description: Manage the storages of the replication cluster
version_added: 0.1.0
description:
  - Maps a storage ID (as in C(local-zfs:vm-100-disk-0)) to a ZFS dataset prefix (V(rpool/data)), the same on every
    node of the cluster, like a C(zfspool) storage in Proxmox VE's C(storage.cfg).
  - With O(storages), one task converges several storages; with O(purge=true), the others are removed.
  - A storage that guests' volumes use cannot be removed; the module says which guest uses it.
options:
  id:
    description:
      - The storage ID, for example V(local-zfs). Lower-case letters, digits, V(-), V(_) and V(.).
    type: str
  pool:
    description:
      - The ZFS dataset under which the volumes live, for example V(rpool/data). Required with O(state=present).
    type: str
  type:
    description:
      - The storage type. Only ZFS pools are replicated.
    type: str
    choices: [zfspool]
    default: zfspool
  state:
    description:
      - V(present) adds or updates the storage, V(absent) removes it from the configuration (no data is touched).
    type: str
    choices: [present, absent]
    default: present
  storages:
    description:
      - Several storages in one task, instead of O(id), O(pool) and O(type).
    type: list
    elements: dict
    suboptions:
      id:
        description: The storage ID, as O(id).
        type: str
        required: true
      pool:
        description: The dataset prefix, as O(pool).
        type: str
      type:
        description: The storage type, as O(type).
        type: str
        choices: [zfspool]
        default: zfspool
      state:
        description: V(present) or V(absent), as O(state).
        type: str
        choices: [present, absent]
        default: present
  purge:
    description:
      - With O(storages), remove every storage that is not in O(storages).
    type: bool
    default: false
extends_documentation_fragment:
  - storage.replication.attributes
  - storage.replication.cluster
  - storage.replication.runner
seealso:
  - module: storage.replication.guest
author:
  - storage.replication developers (@storage-replication)
"""

EXAMPLES = r"""
- name: Volumes of storage local-zfs live under rpool/data on every node
  storage.replication.storage:
    id: local-zfs
    pool: rpool/data
  run_once: true

- name: Converge the storages from the inventory
  storage.replication.storage:
    storages: "{{ replication_storages }}"
  run_once: true

- name: Remove a storage no guest uses any more
  storage.replication.storage:
    id: old-zfs
    state: absent
  run_once: true
"""

RETURN = r"""
storage:
  description: The storage after the change (null after a removal).
  returned: success, with a single storage
  type: dict
  sample: {"id": "local-zfs", "type": "zfspool", "pool": "rpool/data"}
storages:
  description: The storages the task manages, after the change.
  returned: success
  type: list
  elements: dict
  sample: [{"id": "local-zfs", "type": "zfspool", "pool": "rpool/data"}]
generation:
  description: The generation of the cluster configuration in force after the task (in check mode, the one it would have).
  returned: success
  type: int
  sample: 3
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
  sample: ["storage 'old-zfs': guest '100': volume 'old-zfs:vm-100-disk-0' is on storage 'old-zfs', which does not exist"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.storage.replication.plugins.module_utils._runner_call import run_module
from ansible_collections.storage.replication.plugins.module_utils._specs import STORAGE_OPTIONS, items_spec


def main():
    module = AnsibleModule(
        argument_spec=items_spec(STORAGE_OPTIONS, "storages", required=("id",)),
        mutually_exclusive=[("storages", "id"), ("storages", "pool")],
        required_one_of=[("storages", "id")],
        supports_check_mode=True,
    )
    run_module(module, "storage")


if __name__ == "__main__":
    main()
