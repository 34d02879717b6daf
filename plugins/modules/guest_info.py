#!/usr/bin/python
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: guest_info
short_description: Where each guest runs now, whether it runs, its jobs and the replicas the nodes hold
version_added: 0.1.0
description:
  - Returns the guests of the cluster configuration as the node sees it, each with its owner now (after migrations
    and failovers, whatever the inventory says), whether it runs, its replication jobs, and per node the replica
    that node holds with the time of its last sync, the newest complete one included (where a failover would start
    it from).
  - Whether a guest runs is what its status hook says (exit 0 running, 3 stopped), asked on the guest's owner only.
    On another node, or for a guest without a status hook, RV(guests[].running) is null; run the module on every
    node and take each guest from its owner (see EXAMPLES), or run it on the owner.
  - With O(peers=true) (the default) the node asks every other node of the configuration which replicas it holds,
    over the nodes' replication trust, in parallel; a node that does not answer is listed in RV(unreachable_nodes) and
    its replicas are unknown, and a node holding a newer cluster configuration than this one is a warning (this
    node's answer may be out of date). With O(peers=false) only this node's own replicas are shown, and no other
    node is contacted.
  - O(query) filters or reshapes RV(guests) with a JMESPath expression. It is evaluated on the controller (an
    action plugin), so the nodes need no jmespath; the controller needs the Python package C(jmespath).
options:
  guest:
    description:
      - Only this guest.
    type: int
  peers:
    description:
      - Ask the other nodes which replicas they hold. False shows only this node's replicas and contacts no other node.
    type: bool
    default: true
  query:
    description:
      - A JMESPath expression applied to RV(guests); its result is RV(query_result). For example
        V([?owner != 'node1'].id) lists the guests that do not run on node1.
    type: str
extends_documentation_fragment:
  - storage.replication.attributes
  - storage.replication.attributes.info_module
  - storage.replication.runner
seealso:
  - module: storage.replication.job_info
  - module: storage.replication.guest
author:
  - storage.replication developers (@storage-replication)
"""

EXAMPLES = r"""
- name: Where does guest 100 run now, and which node holds its newest replica?
  storage.replication.guest_info:
    guest: 100
  register: guest100
  run_once: true

- name: Say it
  ansible.builtin.debug:
    msg: >-
      guest 100 runs on {{ guest100.guests[0].owner }}; newest replica on
      {{ guest100.guests[0].newest_replica.node | default('none') }} ({{ guest100.guests[0].newest_replica.time | default('never') }})
  run_once: true

- name: The guests whose owner is not the node the inventory starts them on (after a failover or migration)
  storage.replication.guest_info:
    peers: false
    query: "[?owner != 'node1'].{id: id, owner: owner}"
  register: moved
  run_once: true

- name: Ask every node, so that each guest's owner says whether it runs
  storage.replication.guest_info:
    peers: false
  register: replication_guests_here

- name: Fail when a guest does not run on its owner
  ansible.builtin.assert:
    that: item.running is not false
    fail_msg: "guest {{ item.id }} does not run on its owner {{ item.owner }}"
  loop: "{{ replication_guests_here.guests | selectattr('owned_here') }}"
  loop_control:
    label: "{{ item.id }}"
"""

RETURN = r"""
node:
  description: The node that answered (its name in the cluster).
  returned: always
  type: str
  sample: node2
generation:
  description: The generation of the cluster configuration on this node.
  returned: always
  type: int
  sample: 8
guests:
  description: The matching guests, by ID.
  returned: always
  type: list
  elements: dict
  contains:
    id: {description: "The guest ID.", type: int, sample: 100}
    type: {description: "V(vm), V(ct) or V(service).", type: str, sample: vm}
    owner: {description: "The node that owns the guest now, where it runs.", type: str, sample: node2}
    owned_here: {description: "Whether this node is the owner.", type: bool, sample: true}
    running:
      description:
        - What the guest's status hook says on its owner; null on other nodes, for a guest without a status hook, and
          when the hook failed (a warning says how).
      type: bool
      sample: true
    volumes: {description: "The guest's volumes.", type: list, elements: str, sample: ["local-zfs:vm-100-disk-0"]}
    hooks: {description: "The names of the hooks the guest has.", type: list, elements: str, sample: ["start", "status", "stop"]}
    jobs:
      description: The guest's replication jobs, as M(storage.replication.job) returns them (source is the owner).
      type: list
      elements: dict
      sample: [{"id": "100-0", "guest": 100, "jobnum": 0, "source": "node2", "target": "node1", "schedule": "*/15",
                "rate": null, "comment": null, "enabled": true, "remove_job": null}]
    replicas:
      description:
        - Per node other than the owner, the replica it holds (nodes that did not answer are missing, see RV(unreachable_nodes)).
        - V(last_sync) is the start time (epoch) of the replica's last sync, V(time) the same as text, V(job) the job that
          made it, V(source) the node it came from, V(complete) whether it holds every volume of the guest.
      type: dict
      sample: {"node1": {"last_sync": 1767225600, "time": "2026-01-01 00:00:00 UTC", "job": "100-0", "source": "node2",
               "complete": true}}
    newest_replica:
      description: The newest complete replica (as in RV(guests[].replicas), with its V(node)), or null when no node that answered holds one.
      type: dict
      sample: {"node": "node1", "last_sync": 1767225600, "time": "2026-01-01 00:00:00 UTC", "job": "100-0", "source": "node2",
               "complete": true}
unreachable_nodes:
  description: The nodes that were asked and did not answer, with why; their replicas are unknown.
  returned: always
  type: dict
  sample: {"node3": "unreachable at 10.0.0.13 port 22 (timed out)"}
query_result:
  description: The result of O(query) over RV(guests).
  returned: when O(query) is given
  type: raw
  sample: [100]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.storage.replication.plugins.module_utils._runner_call import run_module


def main():
    module = AnsibleModule(
        argument_spec={"guest": {"type": "int"}, "peers": {"type": "bool", "default": True}, "query": {"type": "str"}},
        supports_check_mode=True,
    )
    run_module(module, "guest_info")


if __name__ == "__main__":
    main()
