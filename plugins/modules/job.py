#!/usr/bin/python
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: job
short_description: Manage replication jobs of the cluster, one or the whole set
version_added: 0.1.0
description:
  - Creates, changes and removes replication jobs C(<guest>-<n>) in the cluster configuration, the equivalent of
    Proxmox VE's C(pvesr create-local-job), C(pvesr update) and C(pvesr delete).
  - A job replicates one guest's volumes from the node that owns the guest to one target node, on a schedule.
  - As in the Proxmox GUI, the ID need not be written by hand. Given O(guest) and O(target), the module finds that
    pair's job, or creates C(<guest>-<next free number>).
  - With O(jobs), one task converges a whole set of jobs; with O(purge=true), every job not in the set is removed.
  - A guest that a migration or failover moved to the node an item names as target keeps its reversed
    replication direction. The job that now replicates back to the old owner stands for that item; it is not
    undone, no new job is created, and RV(jobs) shows where it replicates now (M(storage.replication.guest) warns,
    once per task, and says how to bring the inventory in line).
options:
  id:
    description:
      - The job ID, C(<guest>-<jobnum>), for example V(100-0).
      - Without it, O(guest) and O(target) find the job, or name a new one with the guest's next free job number.
    type: str
  guest:
    description:
      - The guest ID the job replicates. Required unless O(id) is given.
    type: int
  target:
    description:
      - The node the guest is replicated to. It must not be the node that owns the guest.
      - A job's target cannot change; remove the job and create a new one instead.
      - Required to create a job.
    type: str
  schedule:
    description:
      - When the job runs, as a pvesr calendar event (V(*/15), V(mon..fri 22:00)) or a cron expression.
      - Omitted means pvesr's default V(*/15), every 15 minutes.
      - A schedule more frequent than once a minute, or rarer than once a week, is accepted with a warning.
    type: str
  rate:
    description:
      - Bandwidth limit of the transfer in MB/s (at least V(1)). Omitted means no limit.
      - With O(rate_windows), the limit outside every window. It is the number C(replication.cfg) keeps, as pvesr does.
    type: float
  rate_windows:
    description:
      - "Limits by time of day, week and date, in pvesr's calendar-event grammar, for example
        V(mon..fri 8..17:*: 10; sat,sun: 50; 0..5:*: unlimited)."
      - "Windows are separated by V(;), each C(<calendar event>: <MB/s or unlimited>). A window is the time its event
        names; an event without a time is the whole day, one without seconds whole minutes (V(8..17:*) is 08:00 to
        17:59). A lone minute list such as V(8..18) is refused, because that grammar reads it as minutes."
      - The first window that matches wins; outside every window O(rate) applies. Windows are evaluated in the node's
        local time (an event ending in V(UTC) in UTC), and a window that starts or ends changes the limit of a running
        transfer within a second.
      - Kept in the cluster configuration, not in C(replication.cfg), whose C(rate) pvesr reads as one number.
        See the README, "Bandwidth windows".
    type: str
  comment:
    description:
      - A free-form comment stored with the job.
    type: str
  enabled:
    description:
      - Whether the runner runs the job. A disabled job keeps its snapshots and state.
    type: bool
    default: true
  keep:
    description:
      - Two meanings, told apart by the value's type.
      - A text is the restore points the job keeps on its target, applied after every successful run, for example
        V(last=4,hourly=24,daily=7,weekly=4,monthly=6). Rules C(last), C(hourly), C(daily), C(weekly), C(monthly),
        C(yearly), each C(<rule>=<count>) at most once; each keeps the newest point of each of its last <count>
        periods that have points (C(last) the <count> newest points); the newest point and any base a job needs are
        always kept. Omitted is pvesr's behaviour, the newest replica only. See the README, "Restore points".
      - A boolean, with O(state=absent) (or for the jobs O(purge) removes), keeps the replicated volumes on the
        target (C(pvesr delete --keep)).
    type: raw
  keep_source:
    description:
      - The restore points the job keeps on the source too (same rules as O(keep)); omitted is the newest only.
      - With it, a rollback to a point the source holds needs no transfer, and the guest's other jobs carry the
        points to their targets too, so that they continue incrementally after a rollback or a failover to a point.
    type: str
  state:
    description:
      - V(present) creates or updates the job.
      - V(absent) marks the job for removal as C(pvesr delete) does. The runner on the owner node then deletes
        the job's snapshots, and with O(keep=false) the replicated volumes on the target, and drops the job.
        With O(force=true) the job is dropped at once, without any cleanup.
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - With O(state=absent), drop the job from the configuration at once, without cleaning up snapshots or
        volumes (C(pvesr delete --force)). Also applies to the jobs that O(purge) removes.
    type: bool
    default: false
  jobs:
    description:
      - The set of jobs to converge in one task, instead of O(id), O(guest), O(target) and their options.
      - Each item takes the same options as a single job.
    type: list
    elements: dict
    suboptions:
      id:
        description: The job ID, as O(id).
        type: str
      guest:
        description: The guest ID, as O(guest). Required unless the item has an O(jobs[].id).
        type: int
      target:
        description: The target node, as O(target).
        type: str
      schedule:
        description: The schedule, as O(schedule).
        type: str
      rate:
        description: The bandwidth limit in MB/s, as O(rate).
        type: float
      rate_windows:
        description: Limits by calendar windows, as O(rate_windows).
        type: str
      comment:
        description: A comment, as O(comment).
        type: str
      enabled:
        description: Whether the job runs, as O(enabled).
        type: bool
        default: true
      keep:
        description: The restore points kept on the target, a text as O(keep) (V(last=4,daily=7)); omitted is the newest replica only.
        type: str
      keep_source:
        description: The restore points kept on the source, as O(keep_source).
        type: str
      state:
        description: V(present) or V(absent), as O(state).
        type: str
        choices: [present, absent]
        default: present
  purge:
    description:
      - With O(jobs), remove (as with O(state=absent)) every job of the cluster that is not in O(jobs).
    type: bool
    default: false
extends_documentation_fragment:
  - storage.replication.attributes
  - storage.replication.cluster
  - storage.replication.runner
seealso:
  - module: storage.replication.guest
  - module: storage.replication.job_info
  - module: storage.replication.run
author:
  - storage.replication developers (@storage-replication)
"""

EXAMPLES = r"""
- name: Replicate guest 100 to node2 every 15 minutes, at most 50 MB/s
  storage.replication.job:
    guest: 100
    target: node2
    rate: 50
  run_once: true

- name: Replicate guest 200 to node3 nightly, disabled for now
  storage.replication.job:
    guest: 200
    target: node3
    schedule: "22:30"
    comment: nightly copy
    enabled: false
  run_once: true

- name: Replicate guest 300 to node2 at 10 MB/s in office hours, 50 MB/s at weekends, unlimited at night
  storage.replication.job:
    guest: 300
    target: node2
    rate: 100
    rate_windows: "mon..fri 8..17:*: 10; sat,sun 8..19:*: 50; 0..5,22..23:*: unlimited"
  run_once: true

- name: Keep restore points of guest 100 on node2 (four newest, a day of hours, a week of days, ...)
  storage.replication.job:
    guest: 100
    target: node2
    keep: last=4,hourly=24,daily=7,weekly=4,monthly=6
  run_once: true

- name: Remove job 100-1 but keep the replica on its target
  storage.replication.job:
    id: 100-1
    state: absent
    keep: true
  run_once: true

- name: Converge every job of the cluster from the inventory, removing the others
  storage.replication.job:
    jobs: "{{ replication_jobs }}"
    purge: true
  run_once: true
"""

RETURN = r"""
job:
  description: The job after the change (absent after a forced removal).
  returned: success, with a single job
  type: dict
  sample: {"id": "100-0", "guest": 100, "jobnum": 0, "target": "node2", "source": "node1", "schedule": "*/15",
           "rate": 50.0, "comment": null, "enabled": true, "remove_job": null, "keep": "last=4,daily=7", "keep_source": null,
           "rate_windows": null}
jobs:
  description: The jobs the task manages after the change, in the order of the configuration.
  returned: success
  type: list
  elements: dict
  sample: [{"id": "100-0", "guest": 100, "jobnum": 0, "target": "node2", "source": "node1", "schedule": null,
            "rate": null, "comment": null, "enabled": true, "remove_job": "full"}]
generation:
  description: The generation of the cluster configuration in force after the task (in check mode, the one it would have).
  returned: success
  type: int
  sample: 7
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
  sample: ["job of guest '100' to 'node1': Source and target must not be identical (guest '100' runs on 'node1'); choose another target"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.storage.replication.plugins.module_utils._runner_call import run_module
from ansible_collections.storage.replication.plugins.module_utils._specs import JOB_OPTIONS, items_spec


def argument_spec():
    spec = items_spec(JOB_OPTIONS, "jobs", required=())
    # keep is raw at the top: a text is the single job's restore points, a boolean pvesr's delete --keep.
    spec.update(keep={"type": "raw"}, force={"type": "bool", "default": False})
    return spec


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[("jobs", "id"), ("jobs", "guest"), ("jobs", "target")],
        required_one_of=[("jobs", "id", "guest")],
        supports_check_mode=True,
    )
    run_module(module, "job")


if __name__ == "__main__":
    main()
