# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The node runner (``storage-replication run``): due jobs in pvesr's order, in parallel across guests.

Once a minute the timer starts ``run``. It takes the node's runner lock (a second runner exits at once),
drops state of jobs this node no longer runs, and picks due jobs in pvesr's order (last_iteration, next_sync,
guest, job ID). Unlike pvesr, which runs a node's jobs one after another, jobs of different guests run in
parallel, up to ``max_parallel`` (default 4) at a time, so one long initial sync does not hold back every other
job; two jobs of one guest never run at once (here, and across processes by the guest lock). While a long job
runs, the runner keeps scheduling: it starts jobs as they become due (it wakes at the next job's due time, and at
least every RECHECK_SECONDS for changed configuration or `schedule-now`), and while jobs still run a minute after
the iteration began it begins a new one every minute, as the next timer tick would (the timer starts no second
runner meanwhile); without such a long job a run ends when its iteration is done.

Before it acts, the runner makes sure no peer holds a newer cluster configuration (DESIGN.md, safety rule 2):
when jobs are due, or at least every ``peer_check_interval`` seconds, it asks its peers for their generation and
adopts a newer configuration (cluster.catch_up). If a newer one exists and cannot be adopted, it runs nothing.
A run with nothing due and a recent peer check issues no ZFS or SSH command at all.

Unreadable configuration or state is never taken as empty (DESIGN.md, safety rule 7). A damaged configuration
is restored from a majority of the peers (cluster.restore_config) before anything else; if that fails the runner
refuses to act. A damaged state file is kept aside and rebuilt from the replication snapshots on this node
(state.rebuild_state), so that the next runs stay incremental. Either is said in the run's output, in a node
notification, and in the metrics (storage_replication_config_readable, storage_replication_state_readable).

After every job: failure notifications with pvesr's cadence (fail counts 1, 2, 3, then 48, 96, 192, ...) and a
"recovered" notification when a failed job succeeds again, through a configured command that receives one JSON
message on stdin; the job's run logs rotate (the last ``log_runs`` runs are kept); the Prometheus
textfile-collector file is rewritten atomically.

Node settings (node-local, not part of the cluster configuration): ``/etc/storage-replication/runner.json``::

    {"max_parallel": 4, "log_runs": 10, "notify_command": ["/usr/local/bin/notify-replication"],
     "metrics_file": "/var/lib/prometheus/node-exporter/storage-replication.prom", "peer_check_interval": 600}
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from ansible_collections.storage.replication.plugins.module_utils import cluster
from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils.names import parse_replication_snapshot
from ansible_collections.storage.replication.plugins.module_utils.replicate import ReplicationError, run_job
from ansible_collections.storage.replication.plugins.module_utils.schedule import DEFAULT_SCHEDULE
from ansible_collections.storage.replication.plugins.module_utils.zfs import Zfs, ZfsError
from ansible_collections.storage.replication.plugins.module_utils.state import (
    DEFAULT_STATEDIR, STATUS_INTERRUPTED, read_json_object, LockError, StateError, StateFile, atomic_write, job_is_running, job_state_in,
    job_status, jobs_to_run, job_order_key, next_sync, read_local_node, rebuild_state, runner_lock)

DEFAULT_LOGDIR = "/var/log/storage-replication"
SETTINGS_FILE = "runner.json"
PEER_CHECK_FILE = "peer-check.json"
# The node's refusal to act (damaged configuration) and how many runs in a row refused: notified with the failed
# jobs' cadence, not at every tick.
REFUSAL_FILE = "refusal.json"
NOTIFY_TIMEOUT = 30
# While jobs run, the runner looks for newly due jobs this often, and starts a new iteration once a minute
# (what the next timer tick would do; the timer starts no second runner while this one is busy).
RECHECK_SECONDS = 10
TICK_SECONDS = 60

DEFAULT_SETTINGS = {
    "max_parallel": 4,
    "log_runs": 10,
    "notify_command": None,
    "metrics_file": "/var/lib/prometheus/node-exporter/storage-replication.prom",
    "peer_check_interval": 600,
    # The fence service (fence.py): seconds without quorum before this node stops its guests, and its tick.
    "fence_after": 60,
    "fence_interval": 5,
}

# Environment variables that move the node's directories (tests, benchmarks, unusual installs).
ENVIRONMENT = {"confdir": "STORAGE_REPLICATION_CONFDIR", "statedir": "STORAGE_REPLICATION_STATEDIR",
               "logdir": "STORAGE_REPLICATION_LOGDIR"}

# pvesr _should_mail_at_failcount: 1, 2, 3, then 48 * 2^k (about 1, 2, 4, 8 ... days at 30-minute retries).
NOTIFY_EVERY_TIME_UP_TO = 3
NOTIFY_SPARSE_BASE = 48


class SettingsError(configmod.ConfigError):
    """runner.json is invalid; the message names the setting and what to write."""


class Paths:
    """The node's directories; ``from_environment`` honours the STORAGE_REPLICATION_* variables."""

    def __init__(self, confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR, logdir=DEFAULT_LOGDIR):
        self.confdir = confdir
        self.statedir = statedir
        self.logdir = logdir

    @classmethod
    def from_environment(cls, environ=None):
        environ = os.environ if environ is None else environ
        defaults = cls()
        return cls(**{name: environ.get(variable) or getattr(defaults, name) for name, variable in ENVIRONMENT.items()})

    @property
    def settings_file(self):
        return os.path.join(self.confdir, SETTINGS_FILE)


# ---------------------------------------------------------------------------------------------------------------
# Settings

def load_settings(path):
    """The runner settings: DEFAULT_SETTINGS updated from ``path`` (missing file = defaults); SettingsError."""
    settings = dict(DEFAULT_SETTINGS)
    try:
        data = read_json_object(path)
    except ValueError as exc:
        raise SettingsError("%s is not a JSON object of settings (%s): %s; fix it or remove it to use the defaults"
                            % (path, ", ".join(sorted(DEFAULT_SETTINGS)), exc)) from None
    if data is None:
        return settings
    problems = ["%s: %s" % (path, problem) for problem in _settings_problems(data)]
    if problems:
        raise SettingsError(problems)
    settings.update(data)
    return settings


def _settings_problems(data):
    for key in sorted(set(data) - set(DEFAULT_SETTINGS)):
        yield "unknown setting '%s'; the settings are: %s" % (key, ", ".join(sorted(DEFAULT_SETTINGS)))
    for key, low in (("max_parallel", 1), ("log_runs", 1), ("peer_check_interval", 0), ("fence_after", 1),
                     ("fence_interval", 1)):
        value = data.get(key, low)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            yield "'%s' must be a whole number >= %d, not %r" % (key, low, value)
    command = data.get("notify_command")
    if command is not None and (not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command)):
        yield "'notify_command' must be an argv list such as [\"/usr/local/bin/notify\", \"--to\", \"ops\"] (never a shell string) or null"
    metrics = data.get("metrics_file")
    if metrics is not None and (not isinstance(metrics, str) or not os.path.isabs(metrics)):
        yield "'metrics_file' must be an absolute path or null (no metrics file), not %r" % (metrics,)


# ---------------------------------------------------------------------------------------------------------------
# Per-job figures: shared by `status` and the metrics file

_NEXT_SYNC_MEMO = {}
_NEXT_SYNC_MEMO_SIZE = 65536


def memo_next_sync(job, jobstate):
    """state.next_sync, remembered by the values it reads (schedule, removal mark, last_try, fail_count, waiting
    for target): a run computes it for the due check and again for the metrics, and jobs share values."""
    key = (job.schedule, job.remove_job, int(jobstate.get("last_try", 0)), int(jobstate.get("fail_count", 0)),
           bool(jobstate.get("waiting_for_target")))
    if key not in _NEXT_SYNC_MEMO:
        if len(_NEXT_SYNC_MEMO) >= _NEXT_SYNC_MEMO_SIZE:
            _NEXT_SYNC_MEMO.clear()
        _NEXT_SYNC_MEMO[key] = next_sync(job, jobstate)
    return _NEXT_SYNC_MEMO[key]


def job_report(cfg, state, node, now):
    """One dict per job this node runs or shows in ``status`` (pvesr: its guests' jobs, disabled ones included,
    not those targeting this node unless marked for removal), ordered by guest and job number."""
    jobs = [j for j in cfg.jobs_on_node(node) if j.remove_job or j.target != node]
    return [_job_figures(job, job_state_in(state, job), now) for job in sorted(jobs, key=lambda j: (j.guest, j.jobnum))]


def _job_figures(job, jobstate, now):
    running = job_is_running(jobstate)
    due = None if job.disable and not job.remove_job else memo_next_sync(job, jobstate)
    last_sync = int(jobstate.get("last_sync", 0))
    figures = {
        "id": job.id, "guest": job.guest, "jobnum": job.jobnum, "target": job.target, "source": job.source,
        "schedule": job.schedule or DEFAULT_SCHEDULE, "rate": job.rate, "comment": job.comment,
        "enabled": not job.disable, "remove_job": job.remove_job,
        "last_sync": last_sync, "last_try": int(jobstate.get("last_try", 0)), "next_sync": due,
        "duration": jobstate.get("duration"), "fail_count": int(jobstate.get("fail_count", 0)),
        "error": jobstate.get("error"), "bytes_sent": jobstate.get("bytes_sent"),
        # The real recovery point: how old the newest replica is (None: there is none yet).
        "lag": max(0, int(now) - last_sync) if last_sync else None,
        "status": job_status(job, jobstate),
        "pid": jobstate.get("pid") if running else None,
    }
    if running:
        figures["state"] = "SYNCING"
    elif figures["status"] == STATUS_INTERRUPTED:
        figures["state"] = "interrupted: the run started %s did not end (its process %s is gone); the next run starts " \
                           "over" % (_time_text(jobstate.get("last_try")), jobstate.get("pid"))
    else:
        figures["state"] = figures["error"] or "OK"
    return figures


# ---------------------------------------------------------------------------------------------------------------
# Metrics: the Prometheus textfile-collector file

_JOB_METRICS = (
    # name, help, figure, converter
    ("storage_replication_job_last_sync_timestamp_seconds", "Start time of the last successful sync (0: never).", "last_sync", float),
    ("storage_replication_job_lag_seconds", "Age of the newest replica on the target, the recovery point (+Inf: no replica yet).",
     "lag", lambda v: math.inf if v is None else float(v)),
    ("storage_replication_job_last_duration_seconds", "Wall time of the last attempt.", "duration", lambda v: float(v or 0)),
    ("storage_replication_job_last_bytes_sent", "Bytes sent by the last attempt.", "bytes_sent", lambda v: float(v or 0)),
    ("storage_replication_job_fail_count", "Consecutive failed attempts (0: the last attempt succeeded).", "fail_count", float),
    ("storage_replication_job_next_sync_timestamp_seconds", "When the job is due next (0: not scheduled).", "next_sync",
     lambda v: float(v or 0)),
    ("storage_replication_job_enabled", "1 if the job is enabled, 0 if disabled.", "enabled", float),
)


def _label_value(value):
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _sample(value):
    if math.isinf(value):
        return "+Inf"
    return repr(int(value)) if float(value).is_integer() else repr(value)


def format_metrics(report, node, generation, tick, readable=None):
    """The textfile-collector text for ``report`` (job_report) of ``node``; ``tick`` = the runner's last tick;
    ``generation`` None: unknown (damaged configuration); ``readable``: {"config": bool, "state": bool}."""
    readable = readable or {"config": True, "state": True}
    lines = []
    node_value = _label_value(node)
    labels = ['job="%s",guest="%d",target="%s",node="%s"' % (job["id"], job["guest"], _label_value(job["target"]), node_value)
              for job in report]  # job IDs are digits and '-'; node names are validated host names
    for name, help_text, figure, convert in _JOB_METRICS:
        lines += ["# HELP %s %s" % (name, help_text), "# TYPE %s gauge" % name]
        lines += ["%s{%s} %s" % (name, label, _sample(convert(job[figure]))) for label, job in zip(labels, report)]
    node_label = 'node="%s"' % _label_value(node)
    lines += ["# HELP storage_replication_runner_last_tick_timestamp_seconds When the runner last ran on this node.",
              "# TYPE storage_replication_runner_last_tick_timestamp_seconds gauge",
              "storage_replication_runner_last_tick_timestamp_seconds{%s} %s" % (node_label, _sample(float(tick)))]
    for what, text in (("config", "cluster configuration"), ("state", "job state file")):
        name = "storage_replication_%s_readable" % what
        lines += ["# HELP %s 1 if this node's %s can be read (0: damaged, see the runner's output)." % (name, text),
                  "# TYPE %s gauge" % name, "%s{%s} %d" % (name, node_label, readable[what])]
    lines += ["# HELP storage_replication_config_conflict 1 if peers hold another content of this node's generation (a "
              "change forced without quorum): the node runs nothing until 'storage-replication resolve-conflict'.",
              "# TYPE storage_replication_config_conflict gauge",
              "storage_replication_config_conflict{%s} %d" % (node_label, bool(readable.get("conflict")))]
    if generation is not None:
        lines += ["# HELP storage_replication_config_generation The cluster configuration generation this node holds.",
                  "# TYPE storage_replication_config_generation gauge",
                  "storage_replication_config_generation{%s} %d" % (node_label, generation)]
    return "\n".join(lines) + "\n"


def write_metrics(path, cfg, state, node, now, tick, conflict=False):
    """Rewrite the metrics file atomically (temporary file + rename: the collector never reads half a file).
    ``cfg`` or ``state`` None: it could not be read (no job figures then: they would be made up)."""
    if not path:
        return
    report = job_report(cfg, state, node, now) if cfg is not None and state is not None else []
    readable = {"config": cfg is not None, "state": state is not None, "conflict": conflict}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, format_metrics(report, node, cfg.generation if cfg is not None else None, tick, readable))


# ---------------------------------------------------------------------------------------------------------------
# Job logs: the last N runs

def log_path(logdir, job_id, age=0):
    """The log of the run ``age`` runs ago (0: the latest): <job>.log, <job>.log.1, ..."""
    name = "%s.log" % job_id
    return os.path.join(logdir, name if age == 0 else "%s.%d" % (name, age))


def rotate_logs(logdir, job_id, keep):
    """Before a run: <job>.log becomes <job>.log.1 and so on; runs older than the last ``keep`` are dropped."""
    oldest = log_path(logdir, job_id, keep - 1)
    if os.path.exists(oldest):
        os.unlink(oldest)
    for age in range(keep - 2, -1, -1):
        source = log_path(logdir, job_id, age)
        if os.path.exists(source):
            os.replace(source, log_path(logdir, job_id, age + 1))
    for age in range(keep, keep + 100):  # left over from a larger log_runs setting
        stale = log_path(logdir, job_id, age)
        if not os.path.exists(stale):
            break
        os.unlink(stale)


def read_logs(logdir, job_id, runs=1):
    """The lines of the last ``runs`` runs, oldest run first: [(age, [lines])]."""
    found = []
    for age in range(runs - 1, -1, -1):
        try:
            with open(log_path(logdir, job_id, age), encoding="utf-8", errors="replace") as handle:
                found.append((age, handle.read().splitlines()))
        except FileNotFoundError:
            continue
    return found


# ---------------------------------------------------------------------------------------------------------------
# Notifications

def should_notify(fail_count):
    """pvesr's cadence: at fail counts 1, 2, 3, then 48, 96, 192, 384, ... (48 * 2^k); never at 0."""
    if fail_count <= 0:
        return False
    if fail_count <= NOTIFY_EVERY_TIME_UP_TO:
        return True
    multiple, rest = divmod(fail_count, NOTIFY_SPARSE_BASE)
    return rest == 0 and multiple & (multiple - 1) == 0


def _time_text(epoch):
    if not epoch:
        return "never"
    return datetime.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def failure_message(job, figures, node):
    """The structured message of a failed job (pvesr's template fields, plus next-sync which pvesr dropped)."""
    count = figures["fail_count"]
    body = ["Replication job '%s' with target '%s' and schedule '%s' failed!" % (job.id, job.target, figures["schedule"]),
            "", "Last successful sync: %s" % _time_text(figures["last_sync"]),
            "Next sync try: %s" % _time_text(figures["next_sync"]), "Failure count: %d" % count, "", "Error:",
            figures["error"] or ""]
    if count == NOTIFY_EVERY_TIME_UP_TO:
        body += ["", "Note: the job failed %d times in a row; from now on it is reported at failure counts %d, %d, %d, ..."
                 % (count, NOTIFY_SPARSE_BASE, 2 * NOTIFY_SPARSE_BASE, 4 * NOTIFY_SPARSE_BASE)]
    return dict(_message_fields(job, figures, node), event="failure", severity="error",
                subject="Replication Job: '%s' failed" % job.id, body="\n".join(body))


def recovery_message(job, figures, node, previous):
    """The message of a job that succeeded after ``previous`` (its state before the run) had failures."""
    body = ["Replication job '%s' with target '%s' succeeded again after %d failed attempt(s)."
            % (job.id, job.target, previous.get("fail_count", 0)), "",
            "Last error: %s" % (previous.get("error") or ""), "Synced at: %s" % _time_text(figures["last_sync"]),
            "Next sync: %s" % _time_text(figures["next_sync"])]
    return dict(_message_fields(job, figures, node), event="recovered", severity="info",
                subject="Replication Job: '%s' recovered" % job.id, body="\n".join(body),
                **{"previous-failure-count": previous.get("fail_count", 0), "previous-error": previous.get("error")})


def _message_fields(job, figures, node):
    return {"type": "replication", "hostname": node, "job-id": job.id, "job-target": job.target,
            "job-schedule": figures["schedule"], "guest": job.guest, "failure-count": figures["fail_count"],
            "error": figures["error"], "last-sync": figures["last_sync"], "next-sync": figures["next_sync"],
            "timestamp": int(time.time())}


NODE_EVENTS = {  # event: (severity, subject)
    "config-unreadable": ("error", "cluster configuration unreadable, replication stopped"),
    "config-restored": ("warning", "cluster configuration restored from the peers"),
    "state-rebuilt": ("warning", "job state file unreadable, rebuilt from the replication snapshots"),
    "state-unreadable": ("error", "job state file unreadable and not rebuilt, replication stopped"),
}


def node_message(node, event, text):
    """A message about the node itself (its configuration or state file), not about one job."""
    severity, subject = NODE_EVENTS[event]
    return {"type": "replication", "hostname": node, "event": event, "severity": severity,
            "subject": "Replication on node '%s': %s" % (node, subject), "body": text, "timestamp": int(time.time())}


def send_notification(command, message):
    """Run the notify command with the JSON message on stdin; returns None or the reason it failed."""
    try:
        # pylint: disable-next=ansible-bad-function
        proc = subprocess.run(command, input=json.dumps(message, sort_keys=True).encode("utf-8"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=NOTIFY_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "notify command %s failed: %s" % (command[0], exc)
    if proc.returncode != 0:
        output = proc.stdout.decode("utf-8", "replace").strip()
        return "notify command %s exited with %d%s" % (command[0], proc.returncode, (": " + output.splitlines()[-1]) if output else "")
    return None


# ---------------------------------------------------------------------------------------------------------------
# The run

class RunnerBusy(LockError):
    """Another runner holds this node's runner lock."""


class RunnerRefused(RuntimeError):
    """The runner must not act (a peer holds a newer configuration that could not be adopted, or a bad --id)."""


def _snapshot_epochs():
    """``epochs(job_id, dataset)``: the epochs of the job's replication snapshots on a dataset of this node (none if
    the dataset does not exist); ZfsError if ZFS cannot tell."""
    zfs = Zfs()

    def epochs(job_id, dataset):
        try:
            names = zfs.snapshots(dataset)
        except ZfsError as exc:
            if exc.missing:
                return set()
            raise
        parsed = (parse_replication_snapshot(name) for name in names)
        return {epoch for job, epoch in filter(None, parsed) if job == job_id}
    return epochs


def due_in_order(jobs, state, iteration, now):
    """The jobs due at ``now`` in pvesr's order (get_next_job: last_iteration, next_sync, guest, job ID): not run
    in this ``iteration`` yet, next_sync not 0 and reached. One sort for all of them, not one per pick."""
    keyed = []
    for job in jobs:
        jobstate = job_state_in(state, job)
        when = memo_next_sync(job, jobstate)
        if jobstate["last_iteration"] < iteration and when != 0 and now >= when:
            keyed.append((job_order_key(job, jobstate, when), job))
    return [job for _key, job in sorted(keyed, key=lambda item: item[0])]


class Runner:
    """One ``run``: ``Runner(paths, settings).run()`` returns a result dict (see ``run``).

    ``now`` is the clock the runner schedules by, ``wait`` (concurrent.futures.wait) how it waits for running jobs
    until the next job is due: a test passes a virtual clock for both, and then nothing really waits."""

    def __init__(self, paths, settings, notify=False, echo=None, now=time.time, run_job=run_job, catch_up=cluster.catch_up,
                 restore=cluster.restore_config, snapshot_epochs=_snapshot_epochs, wait=wait):
        self.paths = paths
        self.settings = settings
        self.notify = notify
        self.echo = echo
        self.now = now
        self.wait = wait
        self.run_job = run_job
        self.catch_up = catch_up
        self.restore = restore
        self.snapshot_epochs = snapshot_epochs
        self.state = StateFile(paths.statedir)
        self.node = read_local_node(paths.statedir)
        # Not rounded down to the second as pvesr's: jobs record their start second as last_iteration, and a run
        # started in the same second as the previous one (`schedule-now X` right after a run) must still see X.
        self.iteration = now()
        self.cfg = None  # read under the runner lock (run), where a damaged one can be restored
        self.refused = False
        self.result = {"node": self.node, "iteration": int(self.iteration), "jobs": [], "warnings": [], "peer_check": None}

    # -- entry points -------------------------------------------------------------------------------------------

    def run(self, job_id=None):
        """All due jobs (pvesr run_jobs), or the one job ``job_id`` regardless of its schedule (run_single_job)."""
        try:
            with runner_lock(self.paths.statedir):
                self.cfg = self._readable_config()
                self._readable_state()
                self._forget_refusal()
                if job_id is not None:
                    self._run_single(job_id)
                else:
                    self._run_due()
        except LockError as exc:
            raise RunnerBusy(str(exc)) from None
        finally:
            if self.cfg is not None or self.refused:  # not when busy: the active runner writes them
                self._write_metrics()
        self.result["generation"] = self.cfg.generation
        return self.result

    # -- what the runner acts on: never a damaged configuration or state ------------------------------------------

    def _readable_config(self):
        """This node's configuration; a damaged one is restored from the peers first, else the run is refused."""
        try:
            cfg = configmod.load(self.paths.confdir)
        except configmod.ConfigCorrupt:
            try:
                restored = self.restore(self.paths.confdir, self.paths.statedir)
            except cluster.ClusterError as exc:
                raise self._refusal("config-unreadable", str(exc)) from None
            if restored is not None:
                self._announce("config-restored", restored.message)
            cfg = configmod.load(self.paths.confdir)
        return cfg

    def _readable_state(self):
        """A damaged state file is kept aside and rebuilt from the replication snapshots on this node."""
        try:
            self.state.read()
            return
        except StateError as exc:
            damage = exc.problem
        try:
            rebuilt, notes = rebuild_state(self.cfg, self.node, self.snapshot_epochs())
        except ZfsError as exc:
            raise self._refusal("state-unreadable", "%s; rebuilding it from the replication snapshots failed: %s - nothing "
                                                    "runs until ZFS answers (the next run tries again)" % (damage, exc)) from None
        kept = self.state.replace_unreadable(rebuilt, self.now)
        if kept is not None:
            found = "; ".join("%s: %s" % item for item in sorted(notes.items())) or "no jobs on this node"
            self._announce("state-rebuilt", "%s; it is kept as %s and the state was rebuilt from the replication "
                                            "snapshots on this node (%s)" % (damage, kept, found))

    def _announce(self, event, text):
        """Something the operator must hear of: in the run's output and, for timer runs, a node notification."""
        self.result["warnings"].append(text)
        if self.notify and self.settings["notify_command"]:
            problem = send_notification(self.settings["notify_command"], node_message(self.node, event, text))
            if problem:
                self.result["warnings"].append(problem)

    def _refusal(self, event, text):
        """The RunnerRefused that stops this run (nothing is acted on), notified with pvesr's cadence over
        consecutive refused runs."""
        self.refused = True
        path = os.path.join(self.paths.statedir, REFUSAL_FILE)
        try:
            with open(path, encoding="utf-8") as handle:
                count = json.load(handle).get("count", 0) + 1
        except (OSError, ValueError, AttributeError):
            count = 1
        os.makedirs(self.paths.statedir, exist_ok=True)
        atomic_write(path, json.dumps({"event": event, "count": count, "error": text}, sort_keys=True) + "\n")
        if should_notify(count):
            self._announce(event, text)
        return RunnerRefused(text)

    def _forget_refusal(self):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.paths.statedir, REFUSAL_FILE))

    def _run_single(self, job_id):
        job = self.cfg.jobs.get(job_id)
        problem = self._single_job_problem(job, job_id)
        if problem:
            raise RunnerRefused(problem)
        if not self._check_peers(force=True):
            raise RunnerRefused(self.result["peer_check"]["error"])
        job = self.cfg.jobs.get(job_id)
        problem = self._single_job_problem(job, job_id)
        if problem:
            raise RunnerRefused(problem + " (after adopting the newer cluster configuration)")
        self._execute(job, echo=self.echo)

    def _single_job_problem(self, job, job_id):
        """pvesr run_single_job's preconditions, with its messages."""
        if job is None:
            return "no such job '%s'" % job_id
        guest = self.cfg.guests.get(job.guest)
        if job.disable and not job.remove_job:
            return "job '%s' is disabled - enable it first (storage-replication enable %s)" % (job_id, job_id)
        if guest is None:
            return "no such guest '%d'" % job.guest
        if guest.node != self.node:
            return "guest '%d' is not on local node - it runs on '%s'; run the job there" % (job.guest, guest.node)
        if job.target == self.node and not job.remove_job:
            return "unable to sync to local node"
        return None

    def _run_due(self):
        state = self.state.read()
        self._purge_old_states(state)
        due = self._due_jobs(set(), set(), state)
        if not self._check_peers(force=bool(due)):
            return
        if due:
            self._run_parallel()

    # -- scheduling ---------------------------------------------------------------------------------------------

    def _purge_old_states(self, state):
        """pvesr purge_old_states, but only written when something is to be dropped (idle runs stay read-only)."""
        keep = {(str(j.guest), j.target_id) for j in self.cfg.jobs_on_node(self.node)}
        if any((guest, target) not in keep for guest, targets in state.items() for target in targets):
            self.state.purge_old_states(self.cfg, self.node)

    def _due_jobs(self, started, busy_guests, state=None):
        """The due jobs in pvesr's order, at most one per guest, skipping jobs already started in this run and
        guests with a running job."""
        candidates = [j for j in jobs_to_run(self.cfg, self.node) if j.id not in started and j.guest not in busy_guests]
        due, guests = [], set()
        state = self.state.read() if state is None else state
        for job in due_in_order(candidates, state, self.iteration, self.now()):
            if job.guest not in guests:
                guests.add(job.guest)
                due.append(job)
        return due

    def _run_parallel(self):
        limit = self.settings["max_parallel"]
        started, running = set(), {}
        with ThreadPoolExecutor(max_workers=limit) as pool:
            while True:
                for job in self._due_jobs(started, {j.guest for j in running.values()})[:limit - len(running)]:
                    started.add(job.id)
                    running[pool.submit(self._execute, job, self._prefixed_echo(job))] = job
                if not running:
                    return
                finished, _pending = self.wait(list(running), timeout=self._seconds_until_due(started, running),
                                               return_when=FIRST_COMPLETED)
                for future in finished:
                    running.pop(future)
                    future.result()
                # A job still running a minute after this iteration began holds this runner up, and the timer's
                # next tick found the lock taken: act as that tick (a new iteration: jobs may run again).
                if running and self.now() - self.iteration >= TICK_SECONDS:
                    self.iteration, started = self.now(), {j.id for j in running.values()}
                # Jobs may have been changed while they ran (pvesr re-reads the configuration before every pick).
                self.cfg = configmod.load(self.paths.confdir)

    def _seconds_until_due(self, started, running):
        """How long to wait for a running job before looking again: until the next waiting job becomes due (so a
        job due in 3 s starts in 3 s, not at the next recheck), at most RECHECK_SECONDS (which also catches
        configuration changes and `schedule-now`)."""
        busy = {j.guest for j in running.values()}
        state, now = self.state.read(), self.now()
        waiting = [memo_next_sync(j, job_state_in(state, j)) for j in jobs_to_run(self.cfg, self.node)
                   if j.id not in started and j.guest not in busy]
        upcoming = [when - now for when in waiting if when > now]
        # next_sync is a whole second: wake just after it, never a moment before (that would only spin).
        return min([RECHECK_SECONDS] + [seconds + 0.05 for seconds in upcoming])

    def _prefixed_echo(self, job):
        if self.echo is None:
            return None
        return lambda line: self.echo("%s: %s" % (job.id, line))

    # -- one job ------------------------------------------------------------------------------------------------

    def _execute(self, job, echo=None):
        """Run one job with log rotation, notifications and the metrics update; records the outcome."""
        previous = self.state.job_state(job)
        rotate_logs(self.paths.logdir, job.id, self.settings["log_runs"])
        began = time.monotonic()
        try:
            outcome = self.run_job(self.cfg, job.id, node=self.node, statedir=self.paths.statedir, logdir=self.paths.logdir,
                                   confdir=self.paths.confdir, echo=echo)
        except LockError as exc:
            # The guest is busy (a migration or another job): nothing is recorded, the job is due again next run.
            self._record(job, {"ok": False, "skipped": True, "error": str(exc)})
            return
        except (configmod.ConfigError, StateError, OSError, ReplicationError) as exc:
            outcome = {"ok": False, "error": str(exc)}
        entry = {"ok": outcome["ok"], "error": outcome.get("error"), "start": outcome.get("start"),
                 "bytes": outcome.get("bytes", 0), "seconds": round(time.monotonic() - began, 3),
                 # what each volume took (full, incremental or resumed, from which base) and the run's log lines
                 "volumes": [{key: volume.get(key) for key in ("volume", "mode", "base", "bytes", "seconds")}
                             for volume in outcome.get("volumes", [])],
                 "log": outcome.get("log", [])}
        if not outcome["ok"]:
            self.result["warnings"].append("%s: got unexpected replication job error - %s" % (job.id, outcome.get("error")))
        entry["notified"] = self._notify(job, previous, outcome["ok"])
        self._record(job, entry)
        self._write_metrics()

    def _record(self, job, entry):
        entry["job"] = job.id
        self.result["jobs"].append(entry)

    def _notify(self, job, previous, ok):
        """Send the failure or recovery message when due; returns the event sent, or None."""
        command = self.settings["notify_command"]
        if not self.notify or not command:
            return None
        figures = _job_figures(job, self.state.job_state(job), self.now())
        if not ok and should_notify(figures["fail_count"]):
            message = failure_message(job, figures, self.node)
        elif ok and previous.get("fail_count", 0) > 0:
            message = recovery_message(job, figures, self.node, previous)
        else:
            return None
        problem = send_notification(command, message)
        if problem:
            self.result["warnings"].append("%s: %s" % (job.id, problem))
            return None
        return message["event"]

    # -- peers and metrics ----------------------------------------------------------------------------------------

    def _check_peers(self, force):
        """Adopt a newer configuration from a peer before acting; False if this node must not act."""
        path = os.path.join(self.paths.statedir, PEER_CHECK_FILE)
        if not force and not self._peer_check_due():
            return True
        checked = {"time": int(self.now()), "generation": self.cfg.generation}
        try:
            found = self.catch_up(self.paths.confdir, self.paths.statedir)
            checked.update(unreachable=found.unreachable, adopted=found.adopted, source=found.source)
            conflicts = getattr(found, "conflicts", [])
            if conflicts:
                # Only a forced change makes two contents under one generation: act on neither until resolved.
                checked["conflict"] = conflicts
                raise cluster.ClusterError(
                    "configuration conflict: node(s) %s hold another content of generation %d than this node (a change "
                    "forced without quorum) - this node runs nothing until it is resolved: 'storage-replication "
                    "resolve-conflict' takes the version the majority holds (this one is kept aside as a file)"
                    % (", ".join(conflicts), self.cfg.generation))
        except cluster.ClusterError as exc:
            checked["error"] = str(exc)
            self.result["warnings"].append(str(exc))
            if "conflict" in checked:
                self._refusal("config-conflict", str(exc))  # notified with pvesr's cadence; the run stops below
        self.result["peer_check"] = checked
        os.makedirs(self.paths.statedir, exist_ok=True)
        atomic_write(path, json.dumps(checked, sort_keys=True) + "\n")
        if "error" in checked:
            return False
        if found.adopted is not None:
            self.result["warnings"].append("adopted cluster configuration generation %d from node '%s' (this node had %d)"
                                           % (found.adopted, found.source, self.cfg.generation))
            self.cfg = configmod.load(self.paths.confdir)
        return True

    def _peer_check_due(self):
        last = last_peer_check(self.paths.statedir).get("time", 0)
        return not isinstance(last, (int, float)) or self.now() - last >= self.settings["peer_check_interval"]

    def _write_metrics(self):
        now = self.now()
        try:
            state = self.state.read()
        except StateError:
            state = None
        write_metrics(self.settings["metrics_file"], self.cfg, state, self.node, now, now,
                      conflict=bool(last_peer_check(self.paths.statedir).get("conflict")))


def last_peer_check(statedir):
    """What the runner's last look at its peers found (peer-check.json): {time, generation, unreachable, adopted,
    source, error, conflict}; {} if it never looked."""
    try:
        return read_json_object(os.path.join(statedir, PEER_CHECK_FILE)) or {}
    except ValueError:
        return {}


def run(paths, settings, job_id=None, notify=False, echo=None):
    """``storage-replication run``: returns ``{"node", "iteration", "generation", "jobs": [...], "warnings",
    "peer_check"}``; raises RunnerBusy (another runner is active) or RunnerRefused."""
    return Runner(paths, settings, notify=notify, echo=echo).run(job_id)
