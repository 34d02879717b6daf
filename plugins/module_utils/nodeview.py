# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a node tells about its replication, read-only: the receiver operation ``node-status``.

The web service (web.py) shows every node's jobs. It reads nothing on the nodes itself, not even on its own node:
it asks each node over the nodes' SSH trust, with a key of its own that every node binds to
``serve --peer <node> --read-only``. Such a key runs the operations of ``OPERATIONS`` below and nothing else (no
stream, no configuration change, no other receiver operation): a web service that is broken into can read what
its pages show, and no more.

The answer is what ``status`` shows on that node (report.job_report: pvesr's status fields, lag, state), the
configuration's guests and jobs (so that the cluster page lists the jobs of a node that does not answer), the
replicas this node holds (their newest replication snapshot: the point a failover would start from), the fence's
and the runner's view of the cluster, and, when asked, the last runs' logs of some of its jobs. A damaged
configuration or state file is said, not hidden: the answer carries the error instead of the figures.
"""

from __future__ import annotations

import time

from ansible_collections.storage.replication.plugins.module_utils import bandwidth
from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import fence
from ansible_collections.storage.replication.plugins.module_utils.names import JOB_ID_RE, replication_snapshot
from ansible_collections.storage.replication.plugins.module_utils.authority import check, check_int
from ansible_collections.storage.replication.plugins.module_utils.protocol import Refused, check_request_keys
from ansible_collections.storage.replication.plugins.module_utils.joblog import read_logs
from ansible_collections.storage.replication.plugins.module_utils.report import job_report
from ansible_collections.storage.replication.plugins.module_utils.runner import last_peer_check
from ansible_collections.storage.replication.plugins.module_utils.schedule import DEFAULT_SCHEDULE
from ansible_collections.storage.replication.plugins.module_utils.settings import Paths
from ansible_collections.storage.replication.plugins.module_utils.state import StateError, StateFile

NODE_STATUS = "node-status"
# A page shows a few runs of a few jobs; a request for more is refused rather than answered with megabytes.
MAX_LOG_JOBS = 64
MAX_LOG_RUNS = 100
MAX_LOG_LINES = 2000


def config_jobs(cfg):
    """Every job of the configuration as the cluster page lists it (pvesr's Datacenter view), guest and job order,
    with the rate in effect now in this node's local time (bandwidth windows; status's rate_now)."""
    jobs = sorted(cfg.jobs.values(), key=lambda j: (j.guest, j.jobnum))
    return [dict({"id": j.id, "guest": j.guest, "jobnum": j.jobnum, "target": j.target, "source": j.source,
                  "schedule": j.schedule or DEFAULT_SCHEDULE, "rate": j.rate, "comment": j.comment,
                  "enabled": not j.disable, "remove_job": j.remove_job}, **bandwidth.job_limit(j)) for j in jobs]


def _replicas(receiver, cfg):
    """The replicas this node holds, per guest: the job and time of the newest one (the restore point)."""
    records = {}
    for guest, record in receiver.replica_records().items():
        job, last_sync = record.get("job"), record.get("last_sync")
        if isinstance(job, str) and JOB_ID_RE.match(job) and isinstance(last_sync, int) and last_sync > 1:
            records[guest] = {"job": job, "source": record.get("source"), "last_sync": last_sync,
                              "snapshot": replication_snapshot(job, last_sync), "volumes": record.get("volumes") or [],
                              "owner": cfg.guests[int(guest)].node if cfg and int(guest) in cfg.guests else None}
    return records


def _logs(request, logdir):
    wanted = request.get("logs")
    if wanted is None:
        return None
    check_request_keys(wanted, ("jobs", "runs"))
    jobs = wanted.get("jobs")
    if not isinstance(jobs, list) or len(jobs) > MAX_LOG_JOBS:
        raise Refused("invalid job list for logs %r: refused (at most %d jobs)" % (str(jobs)[:80], MAX_LOG_JOBS),
                      "invalid-argument")
    runs = check_int(wanted.get("runs", 1), "number of runs", 1, MAX_LOG_RUNS)
    return {job: [{"run": -age, "lines": lines[-MAX_LOG_LINES:]} for age, lines in read_logs(logdir, job, runs)]
            for job in (check(j, JOB_ID_RE, "job ID") for j in jobs)}


def serve_node_status(receiver, request):
    """``node-status``: this node's view of its replication (see the module's docstring); reads only."""
    check_request_keys(request, ("source", "generation", "logs"))
    now = int(time.time())
    reply = {"time": now}
    try:
        cfg = receiver.cfg
    except configmod.ConfigError as exc:
        # Who may ask is decided by the configuration; a damaged one tells nothing but that it is damaged.
        reply["config_error"] = str(exc).split("\n", maxsplit=1)[0]
        return reply
    receiver.check_member(receiver.caller(request))
    logs = _logs(request, Paths.from_environment().logdir)
    reply.update(generation=cfg.generation, forced=bool(cfg.forced),
                 nodes={n.name: {"address": n.address, "port": n.port, "host_key": n.host_key} for n in cfg.nodes.values()},
                 guests={str(g.id): {"type": g.type, "node": g.node, "volumes": list(g.volumes)} for g in cfg.guests.values()},
                 config_jobs=config_jobs(cfg), replicas=_replicas(receiver, cfg), peer_check=last_peer_check(receiver.statedir))
    try:
        reply["jobs"] = job_report(cfg, StateFile(receiver.statedir).read(), receiver.node, now)
    except StateError as exc:
        reply["state_error"] = str(exc)
    try:
        reply["fence"] = fence.read_state(receiver.statedir)
    except fence.FenceStateError as exc:
        reply["fence_error"] = str(exc)
    if logs is not None:
        reply["logs"] = logs
    return reply


# Everything the web service's key may run (serve.main(operations=...)).
OPERATIONS = {NODE_STATUS: serve_node_status}
