#!/usr/bin/python
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: job_info
short_description: Configuration and live status of the replication jobs a node runs
version_added: 0.1.0
description:
  - Returns the replication jobs the node runs (the jobs of the guests it owns), each with its configuration and its
    live status, the same figures as C(storage-replication status) shows (last sync, next sync, lag, that is the age of
    the newest replica, duration, fail count, error, and the status word).
  - Job state is kept on the node that runs the job, as in pvesr. Run the module on every node of the group and
    combine the results (see EXAMPLES); RV(elsewhere) says which node runs the matching jobs this node does not.
  - O(query) filters or reshapes RV(jobs) with a JMESPath expression. It is evaluated on the controller (an
    action plugin), so the nodes need no jmespath; the controller needs the Python package C(jmespath).
options:
  guest:
    description:
      - Only the jobs of this guest.
    type: int
  job:
    description:
      - Only this job, for example V(100-0).
    type: str
  query:
    description:
      - A JMESPath expression applied to RV(jobs); its result is RV(query_result). For example
        V([?fail_count > `0`].id) lists the failing jobs.
    type: str
extends_documentation_fragment:
  - storage.replication.attributes
  - storage.replication.attributes.info_module
  - storage.replication.runner
seealso:
  - module: storage.replication.job
  - module: storage.replication.run
author:
  - storage.replication developers (@storage-replication)
"""

EXAMPLES = r"""
- name: Read the status of the jobs each node runs
  storage.replication.job_info:
  register: replication_status

- name: Show every job of the cluster with its lag
  ansible.builtin.debug:
    msg: "{{ ansible_play_hosts | map('extract', hostvars, ['replication_status', 'jobs']) | flatten
             | map(attribute='lag') | list }}"
  run_once: true

- name: List the failing jobs of guest 100
  storage.replication.job_info:
    guest: 100
    query: "[?fail_count > `0`].{id: id, error: error}"
  register: failing

- name: Require that no job is older than an hour
  ansible.builtin.assert:
    that: item.lag is not none and item.lag < 3600
    fail_msg: "job {{ item.id }} on {{ inventory_hostname }}: the newest replica is {{ item.lag }} s old ({{ item.error }})"
  loop: "{{ replication_status.jobs | selectattr('enabled') }}"
"""

RETURN = r"""
node:
  description: The node that answered (its name in the cluster).
  returned: always
  type: str
  sample: node1
generation:
  description: The generation of the cluster configuration on this node.
  returned: always
  type: int
  sample: 7
jobs:
  description: The matching jobs this node runs, by guest and job number.
  returned: always
  type: list
  elements: dict
  contains:
    id: {description: "The job ID.", type: str, sample: 100-0}
    guest: {description: "The guest ID.", type: int, sample: 100}
    jobnum: {description: "The job number.", type: int, sample: 0}
    source: {description: "The node the job replicates from (the guest's owner).", type: str, sample: node1}
    target: {description: "The node the job replicates to.", type: str, sample: node2}
    schedule: {description: "The schedule (the default V(*/15) when none is set).", type: str, sample: "*/15"}
    rate: {description: "The rate limit in MB/s, or null; with rate windows the limit outside every window.", type: float, sample: 50}
    rate_windows: {description: "The limits by calendar windows (job option rate_windows), or null.", type: str, sample: "mon..fri 8..17:*: 10"}
    rate_now: {description: "The limit in effect now in MB/s (the window's, else rate), null for no limit.", type: float, sample: 10}
    rate_window: {description: "The window in effect now, null when rate applies.", type: str, sample: "mon..fri 8..17:*"}
    comment: {description: "The comment, or null.", type: str, sample: offsite}
    enabled: {description: "Whether the job runs.", type: bool, sample: true}
    remove_job: {description: "V(full) or V(local) when the job is marked for removal, else null.", type: str, sample: null}
    last_sync: {description: "Start time (epoch) of the last successful sync; 0 for never.", type: int, sample: 1767225600}
    last_try: {description: "Start time (epoch) of the last attempt; 0 for never.", type: int, sample: 1767225600}
    next_sync:
      description: >-
        When the job is due next (epoch); the time of the call for a job that never ran or is marked for removal
        (both are due at once); 0 or null when it is not scheduled.
      type: int
      sample: 1767226500
    lag: {description: "Seconds since the last successful sync (the recovery point), null before the first one.", type: int, sample: 312}
    duration: {description: "Seconds the last attempt took.", type: float, sample: 3.4}
    fail_count: {description: "Consecutive failed attempts.", type: int, sample: 0}
    error: {description: "The last error, or null.", type: str, sample: null}
    bytes_sent: {description: "Bytes sent by the last attempt.", type: int, sample: 1048576}
    status: {description: "One word: ok, running, error, waiting for target, disabled, removal pending.", type: str, sample: ok}
    state:
      description: >-
        pvesr's State column, C(OK), C(SYNCING) or the error; C(waiting for target: <error>) while the job waits for
        its offline target, C(interrupted: ...) after a run that did not end.
      type: str
      sample: OK
    pid: {description: "The process running the job now, or null.", type: int, sample: null}
    keep: {description: "The restore points kept on the target (keep rules), null for the newest replica only.", type: str, sample: "last=4,daily=7"}
    keep_source: {description: "The restore points kept on the source, null for the newest only.", type: str, sample: null}
    restore_points: {description: "Restore points of the job on its target, as its last run found them.", type: int, sample: 11}
    oldest_point: {description: "Time (epoch) of the oldest restore point on the target, null if none.", type: int, sample: 1767139200}
    oldest_point_age: {description: "Seconds since the oldest restore point, null if none.", type: int, sample: 86712}
    points_bytes: {description: "Bytes the job's restore points hold on the target, null until a run reported it.", type: int, sample: 73400320}
    space_pruned: {description: "Restore points the target deleted in the last run because its pool was full.", type: list, elements: str, sample: []}
elsewhere:
  description: Matching jobs that another node runs (the owner of their guest), by job ID; their status is there.
  returned: always
  type: dict
  sample: {"200-0": "node2"}
query_result:
  description: The result of O(query) over RV(jobs).
  returned: when O(query) is given
  type: raw
  sample: ["100-1"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.storage.replication.plugins.module_utils._runner_call import run_module


def main():
    module = AnsibleModule(
        argument_spec={"guest": {"type": "int"}, "job": {"type": "str"}, "query": {"type": "str"}},
        supports_check_mode=True,
    )
    run_module(module, "job_info")


if __name__ == "__main__":
    main()
