#!/usr/bin/python
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: node
short_description: Manage the member nodes of the replication cluster
version_added: 0.1.0
description:
  - Records the nodes of the cluster in its configuration, with each node's name, the address its peers reach it
    at, and its SSH host key, which peers pin (host keys are always verified).
  - The C(storage.replication.runner) role records every node's C(runner_node) and the list C(runner_cluster_nodes)
    as facts; the site playbook passes them to O(nodes).
  - With O(nodes), one task converges the membership; with O(purge=true), nodes not listed are removed.
  - A node that guests or jobs still use cannot be removed; the module names them.
options:
  name:
    description:
      - The node's name in the cluster (its inventory name), a host name without domain.
    type: str
  address:
    description:
      - The IP address or host name peers connect to over SSH. Required to add a node.
    type: str
  host_key:
    description:
      - The node's SSH host key, C(<type> <base64>) (a line of C(/etc/ssh/ssh_host_ed25519_key.pub); a trailing
        comment is dropped). Omitted keeps the recorded key.
    type: str
  port:
    description:
      - The SSH port peers connect to.
    type: int
    default: 22
  state:
    description:
      - V(present) adds or updates the node, V(absent) removes it from the configuration.
    type: str
    choices: [present, absent]
    default: present
  nodes:
    description:
      - Several nodes in one task, instead of O(name), O(address), O(host_key) and O(port).
    type: list
    elements: dict
    suboptions:
      name:
        description: The node's name, as O(name).
        type: str
        required: true
      address:
        description: Its address, as O(address).
        type: str
      host_key:
        description: Its SSH host key, as O(host_key).
        type: str
      port:
        description: Its SSH port, as O(port).
        type: int
        default: 22
      state:
        description: V(present) or V(absent), as O(state).
        type: str
        choices: [present, absent]
        default: present
  purge:
    description:
      - With O(nodes), remove every node that is not in O(nodes).
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
- name: Record the nodes the runner role found (their addresses and host keys)
  storage.replication.node:
    nodes: >-
      {{ runner_cluster_nodes | map('dict2items')
         | map('selectattr', 'key', 'in', ['name', 'address', 'host_key', 'port'])
         | map('items2dict') | list }}
    purge: true
  run_once: true

- name: Add one node by hand
  storage.replication.node:
    name: node4
    address: 192.0.2.14
    host_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFOmI4sx3vPGCUxrBYrxB1NvD5x4Uc8mfv7wbJxeD1oW
  run_once: true
"""

RETURN = r"""
node:
  description: The node after the change (null after a removal).
  returned: success, with a single node
  type: dict
  sample: {"name": "node2", "address": "10.77.0.12", "port": 22, "host_key": "ssh-ed25519 AAAAC3Nza..."}
nodes:
  description: The nodes the task manages, after the change.
  returned: success
  type: list
  elements: dict
  sample: [{"name": "node2", "address": "10.77.0.12", "port": 22, "host_key": "ssh-ed25519 AAAAC3Nza..."}]
generation:
  description: The generation of the cluster configuration in force after the task (in check mode, the one it would have).
  returned: success
  type: int
  sample: 2
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
  sample: ["node 'node9': address 'bad address' is neither an IP address nor a host name; set the address peers reach it at"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.storage.replication.plugins.module_utils._runner_call import run_module
from ansible_collections.storage.replication.plugins.module_utils._specs import NODE_OPTIONS, items_spec


def main():
    module = AnsibleModule(
        argument_spec=items_spec(NODE_OPTIONS, "nodes", required=("name",)),
        mutually_exclusive=[("nodes", "name"), ("nodes", "address"), ("nodes", "host_key")],
        required_one_of=[("nodes", "name")],
        supports_check_mode=True,
    )
    run_module(module, "node")


if __name__ == "__main__":
    main()
