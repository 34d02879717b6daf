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
  platform:
    support: full
    platforms: posix
    description: Runs on a replication node prepared by the C(storage.replication.runner) role.
  action_group:
    support: full
    membership:
      - storage.replication.cluster
    description: Use C(group/storage.replication.cluster) in C(module_defaults) to set defaults for all of them.
requirements:
  - The runner installed on the node by the C(storage.replication.runner) role; run the task with its interpreter
    (C(ansible_python_interpreter=/opt/storage-replication/venv/bin/python)), which has paramiko.
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
  vars:
    ansible_python_interpreter: /opt/storage-replication/venv/bin/python

- name: Make job 200-0 due at the next run of the timer
  storage.replication.run:
    id: 200-0
    schedule_now: true
  vars:
    ansible_python_interpreter: /opt/storage-replication/venv/bin/python
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
  sample: {"job": "100-0", "ok": true, "error": null, "bytes": 1048576, "seconds": 1.2,
           "volumes": [{"volume": "local-zfs:vm-100-disk-0", "mode": "incremental",
                        "base": "__replicate_100-0_1700000000__", "bytes": 1048576, "seconds": 0.8, "kept": []}]}
plan:
  description:
    - In check mode, what the run would do, as C(storage-replication run --check --id ID --output-format json)
      reports it. C(ok) is false with C(error) when the run would fail (the target unreachable, no common base).
    - C(estimated_bytes) is null where the node's ZFS cannot size a delta without a snapshot (zfs-fuse).
    - C(log) holds what the run would delete on either node besides sending.
  returned: in check mode, when the job runs on this node
  type: dict
  sample: {"job": "100-0", "target": "node2", "ok": true, "error": null, "estimated_bytes": 1572864,
           "volumes": [{"volume": "local-zfs:vm-100-disk-0", "mode": "incremental",
                        "base": "__replicate_100-0_1700000000__", "estimated_bytes": 1572864,
                        "estimate": "written since '__replicate_100-0_1700000000__'"}], "log": []}
log:
  description: The lines of the job's run log.
  returned: when the job ran
  type: list
  elements: str
  sample: ["start replication job", "incremental sync 'local-zfs:vm-100-disk-0' (__replicate_100-0_1700000000__ =>
           __replicate_100-0_1700000900__)", "end replication job"]
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import runner, settings, state
from ansible_collections.storage.replication.plugins.module_utils.plan import summary, volume_lines

POLL_SECONDS = 1.0


def owner_of(cfg, job_id):
    """The node that runs the job (its guest's owner); None if the job or its guest is unknown."""
    job = cfg.jobs.get(job_id)
    guest = cfg.guests.get(job.guest) if job else None
    return guest.node if guest else None


def run_when_free(paths, job_id, timeout):
    """Run the job, waiting up to ``timeout`` seconds while another runner holds the node's runner lock."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return runner.run(paths, settings.load_settings(paths.settings_file), job_id=job_id)
        except runner.RunnerBusy:
            if time.monotonic() >= deadline:
                raise
            time.sleep(POLL_SECONDS)


def schedule_now(module, paths, cfg, job_id, node):
    job = cfg.jobs[job_id]
    state_file = state.StateFile(paths.statedir)
    entry = state_file.read().get(str(job.guest), {}).get(job.target_id)
    # pvesr touches only an existing entry: a job that never ran is due at the next run anyway.
    changed = entry is not None and entry.get("last_try", 0) != 0
    if changed and not module.check_mode:
        state_file.schedule_now(job)
    module.exit_json(changed=changed, node=node, msg="job '%s' is due at the next run on node '%s'" % (job_id, node))


def check_run(module, paths, job_id, node):
    """Check mode: what the run would send, changing nothing on either node."""
    try:
        planned = runner.Runner(paths, settings.load_settings(paths.settings_file)).check(job_id)["jobs"][0]
    except (runner.RunnerRefused, configmod.ConfigError, state.StateError) as exc:
        module.fail_json(msg="job '%s' on node '%s' cannot be planned: %s" % (job_id, node, exc), node=node)
    msg = "job '%s' on node '%s' %s%s" % (job_id, node, summary(planned), "".join("; " + line for line in volume_lines(planned)))
    module.exit_json(changed=True, node=node, plan=planned, msg=msg)


def main():
    module = AnsibleModule(
        argument_spec={"id": {"type": "str", "required": True}, "schedule_now": {"type": "bool", "default": False},
                       "timeout": {"type": "int", "default": 600}},
        supports_check_mode=True,
    )
    job_id = module.params["id"]
    paths = settings.Paths.from_environment()
    node = state.read_local_node(paths.statedir)
    try:
        cfg = configmod.load(paths.confdir)
    except configmod.ConfigError as exc:
        module.fail_json(msg="job '%s': cannot read the cluster configuration on node '%s': %s" % (job_id, node, exc))
    owner = owner_of(cfg, job_id)
    if owner is None:
        module.fail_json(msg="job '%s' does not exist in the cluster configuration of node '%s' (jobs: %s); "
                             "storage.replication.job_info lists them" % (job_id, node, ", ".join(sorted(cfg.jobs)) or "none"))
    if owner != node:
        module.exit_json(changed=False, skipped=True, node=node,
                         msg="job '%s' runs on node '%s', the owner of its guest" % (job_id, owner))
    if module.params["schedule_now"]:
        schedule_now(module, paths, cfg, job_id, node)
    if module.check_mode:
        check_run(module, paths, job_id, node)
    try:
        outcome = run_when_free(paths, job_id, module.params["timeout"])
    except runner.RunnerBusy as exc:
        module.fail_json(msg="job '%s' on node '%s': another runner was still active after %d s (%s); raise timeout or "
                             "try again" % (job_id, node, module.params["timeout"], exc), node=node)
    except (runner.RunnerRefused, configmod.ConfigError, state.StateError) as exc:
        module.fail_json(msg="job '%s' on node '%s' was refused: %s" % (job_id, node, exc), node=node)
    result = outcome["jobs"][0] if outcome["jobs"] else {"job": job_id, "ok": False, "error": "the runner did not run it"}
    log = result.pop("log", [])
    if not result["ok"]:
        module.fail_json(msg="job '%s' failed on node '%s': %s. The run log is /var/log/storage-replication/%s.log"
                             % (job_id, node, result.get("error"), job_id), node=node, result=result, log=log)
    module.exit_json(changed=True, node=node, result=result, log=log)


if __name__ == "__main__":
    main()
