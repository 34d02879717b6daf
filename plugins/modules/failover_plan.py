#!/usr/bin/python
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: failover_plan
short_description: Plan the recovery of a failed node's guests (quorum, destinations, recovery points)
version_added: 0.1.0
description:
  - Run on one surviving node. It first adopts a newer cluster configuration if a peer holds one, then asks every
    node of the cluster configuration, over the nodes' replication trust, for its generation and the replicas it
    holds.
  - Refuses when the failed node answers (a node that is up is never failed over), when fewer than a majority of
    the configuration's nodes answer (unless O(force_quorum=true), which is accepted with a loud warning), and
    when an argument names an unknown guest or node.
  - For each guest owned by the failed node (or each of O(guests)) it chooses the surviving node with the newest
    complete replica, or O(to), and reports the recovery point (the start time of that replica) and the window of
    writes lost since.
  - Refuses, unless the failed node is known to be fenced, until this node's fence service has seen the failed node
    unreachable for longer than its C(fence_after) plus a margin (by then a node that is cut off rather than dead has
    stopped its guests itself), or when O(failed_node_is_off=true), or when O(fence_command) reports success. In
    check mode it reports which holds and how long is left, and does not fail.
  - Read-only, apart from O(fence_command); the failover playbook runs M(storage.replication.replica_promote),
    M(storage.replication.guest_takeover) and M(storage.replication.guest_service) with the plan.
options:
  failed_node:
    description: The node that failed, as the cluster configuration names it.
    type: str
    required: true
  guests:
    description: Recover only these guests of the failed node (default all of its guests).
    type: list
    elements: int
  to:
    description: Recover every guest on this node instead of the node with the newest replica; it must hold a complete replica.
    type: str
  point:
    description:
      - Recover each guest from a restore point instead of its newest replica, the newest point at or before this time
        (an epoch, or a local time V(2026-05-01 14:30)) or the point of this snapshot name, on the surviving node
        that holds the newest such point. The newer points are kept aside there (M(storage.replication.replica_promote)).
    type: str
  force_quorum:
    description:
      - Go on although fewer than a majority of the nodes answer (the equivalent of C(pvecm expected 1)). Make no other
        cluster change until the missing nodes are back.
    type: bool
    default: false
  failed_node_is_off:
    description:
      - The operator states that O(failed_node) is powered off, so its guests cannot still be running and there is no
        need to wait for its fence.
    type: bool
    default: false
  fence_command:
    description:
      - An out-of-band fence command (an argv list, never a shell string, e.g. an IPMI power-off of the failed node) run
        on this node; exit code 0 means the failed node is fenced. Not run in check mode.
    type: list
    elements: str
attributes:
  check_mode:
    description: This module only reads; it runs the same way in check mode.
extends_documentation_fragment:
  - storage.replication.attributes.node_step
  - storage.replication.runner
seealso:
  - module: storage.replication.replica_promote
  - module: storage.replication.guest_takeover
  - module: storage.replication.guest_service
author:
  - storage.replication developers (@storage-replication)
"""

EXAMPLES = r"""
- name: Plan the failover of node1's guests
  storage.replication.failover_plan:
    failed_node: node1
  register: plan
"""

RETURN = r"""
guests:
  description: One entry per guest that can be recovered.
  returned: success
  type: list
  elements: dict
  sample: [{"guest": 100, "type": "service", "from": "node1", "to": "node2", "job": "100-0", "recovery_point": 1767225600,
            "recovery_point_text": "2026-01-01 00:00:00 UTC", "lost_writes_window": 42, "replicas": {"node2": 1767225600},
            "volumes": ["local-zfs:subvol-100-disk-0"], "jobs_after": {"100-0": "node2 -> node1"},
            "point": {"snapshot": "__replicate_100-0_1767225600__", "job": "100-0", "time": 1767225600}}]
unrecoverable:
  description: Guests no surviving node holds a complete replica of, each with the reason.
  returned: success
  type: list
  elements: dict
quorum:
  description: The nodes of the configuration, those that answered, how many are needed, and whether that is a majority.
  returned: success
  type: dict
  sample: {"nodes": 3, "reachable": ["node2", "node3"], "needed": 2, "quorate": true}
forced_quorum:
  description: True when the plan goes on without quorum because of O(force_quorum).
  returned: success
  type: bool
failed_node:
  description: The failed node.
  returned: success
  type: str
coordinator:
  description: The node that made the plan.
  returned: success
  type: str
summary:
  description: The plan in lines for people (quorum, then one line per guest).
  returned: success
  type: list
  elements: str
moves:
  description: The new owner of each guest that can be recovered, in the form M(storage.replication.guest_takeover) takes.
  returned: success
  type: list
  elements: dict
  sample: [{"id": 100, "node": "node2"}]
fence:
  description:
    - Whether the failed node is known to be fenced and by what (powered_off, fence_command, waited; null while not), how
      long it has been unreachable as this node saw it, how long it must be, how long is left, and the sentence for people.
  returned: success
  type: dict
  sample: {"fenced": false, "by": null, "unreachable_for": 12, "needed": 87, "left": 75, "text": "node node1 has been ..."}
generation:
  description: The cluster configuration generation the plan is based on.
  returned: success
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.storage.replication.plugins.module_utils._runner_call import run_module


def main():
    module = AnsibleModule(
        argument_spec={"failed_node": {"type": "str", "required": True}, "guests": {"type": "list", "elements": "int"},
                       "to": {"type": "str"}, "point": {"type": "str"}, "force_quorum": {"type": "bool", "default": False},
                       "failed_node_is_off": {"type": "bool", "default": False},
                       "fence_command": {"type": "list", "elements": "str"}},
        supports_check_mode=True,
    )
    run_module(module, "failover_plan")


if __name__ == "__main__":
    main()
