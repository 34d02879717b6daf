#!/usr/bin/python
# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: run
short_description: Run a replication job now, or make it due at the next run
version_added: 0.1.0
description:
  - Runs one replication job now, whatever its schedule, and waits for it to end, as C(storage-replication run --id).
  - With O(schedule_now=true), only makes the job due at the runner's next run, as C(pvesr schedule-now).
  - A job runs on the node that owns its guest. Run the task on the whole group; the other nodes report the task as
    skipped and say where the job runs.
options:
  id:
    description:
      - The job ID, for example V(100-0).
    type: str
    required: true
  schedule_now:
    description:
      - Only make the job due at the next run of the runner (the timer's), instead of running it now.
    type: bool
    default: false
  timeout:
    description:
      - Seconds to wait for a runner already active on the node (the timer's) to finish before this run starts.
        The run itself then goes to its end; a transfer is never cut off by the module.
    type: int
    default: 600
attributes:
  check_mode:
    support: full
    description:
      - Reports what the job would send in RV(plan), per volume a full or an incremental stream, from which base
        snapshot, and about how many bytes. Nothing changes on either node (no snapshot, deletion, log or state).
      - With O(schedule_now=true), reports whether the job would be made due.
  diff_mode:
    support: none
    description: Running a job changes data, not configuration.
extends_documentation_fragment:
  - storage.replication.attributes
  - storage.replication.runner
seealso:
  - module: storage.replication.job_info
  - module: storage.replication.job
author:
  - storage.replication developers (@storage-replication)
"""

EXAMPLES = r"""
- name: Replicate guest 100 to node2 now and wait for it
  storage.replication.run:
    id: 100-0

- name: Make job 200-0 due at the next run of the timer
  storage.replication.run:
    id: 200-0
    schedule_now: true
"""

RETURN = r"""
node:
  description: The node that ran the job (or that skipped it).
  returned: always
  type: str
  sample: node1
result:
  description: The job's run, as C(storage-replication run --output-format json) reports it.
  returned: when the job ran
  type: dict
  sample: {"job": "100-0", "ok": true, "error": null, "start": 1700000900, "bytes": 1048576, "seconds": 1.2,
           "volumes": [{"volume": "local-zfs:vm-100-disk-0", "mode": "incremental",
                        "base": "__replicate_100-0_1700000000__", "bytes": 1048576, "seconds": 0.8, "kept": []}]}
  contains:
    job: {description: "The job ID.", type: str, sample: 100-0}
    ok: {description: "Whether the run succeeded.", type: bool, sample: true}
    error: {description: "Why it failed, or null.", type: str, sample: null}
    start: {description: "The run's start time (epoch), the name of its replication snapshot C(__replicate_<job>_<start>__).", type: int, sample: 1700000900}
    bytes: {description: "Bytes sent, all volumes together.", type: int, sample: 1048576}
    seconds: {description: "How long the run took.", type: float, sample: 1.2}
    volumes:
      description:
        - What each volume sent, in the order they were sent.
        - C(mode) is V(full) (the first send, or no common snapshot), V(incremental) (from C(base)) or V(resumed)
          (the rest of an interrupted transfer, from the target's receive resume token, OpenZFS only; such a volume is
          then sent incrementally as well in the same run).
        - C(base) is the snapshot (or C(#bookmark)) the incremental stream starts from, null otherwise; C(bytes) and
          C(seconds) are that stream's; C(kept) lists the datasets the target kept aside because the replica had been
          written to since the last sync.
      type: list
      elements: dict
      sample: [{"volume": "local-zfs:vm-100-disk-0", "mode": "incremental", "base": "__replicate_100-0_1700000000__",
                "bytes": 1048576, "seconds": 0.8, "kept": []}]
plan:
  description:
    - In check mode, what the run would do, as C(storage-replication run --check --id ID --output-format json)
      reports it. C(ok) is false with C(error) when the run would fail (the target unreachable, no common base).
    - C(estimated_bytes) is null where the node's ZFS cannot size a delta without a snapshot (zfs-fuse).
    - C(log) holds what the run would delete on either node besides sending.
    - C(rate_now) is the bandwidth limit in MB/s a transfer would start with (null for none), C(rate_window) the
      window of C(rate_windows) that sets it (null when the job's C(rate) applies).
  returned: in check mode, when the job runs on this node
  type: dict
  sample: {"job": "100-0", "target": "node2", "ok": true, "error": null, "estimated_bytes": 1572864,
           "volumes": [{"volume": "local-zfs:vm-100-disk-0", "mode": "incremental",
                        "base": "__replicate_100-0_1700000000__", "estimated_bytes": 1572864,
                        "estimate": "written since '__replicate_100-0_1700000000__'"}], "log": [],
           "rate_now": 10, "rate_window": "mon..fri 8..17:*", "rate_windows": "mon..fri 8..17:*: 10"}
log:
  description: The lines of the job's run log (as in C(/var/log/storage-replication/<job>.log), without the time stamps).
  returned: when the job ran
  type: list
  elements: str
  sample: ["start replication job", "incremental sync 'local-zfs:vm-100-disk-0' (__replicate_100-0_1700000000__ =>
           __replicate_100-0_1700000900__)", "end replication job"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.storage.replication.plugins.module_utils._runner_call import run_module


def main():
    module = AnsibleModule(
        argument_spec={"id": {"type": "str", "required": True}, "schedule_now": {"type": "bool", "default": False},
                       "timeout": {"type": "int", "default": 600}},
        supports_check_mode=True,
    )
    run_module(module, "run")


if __name__ == "__main__":
    main()
