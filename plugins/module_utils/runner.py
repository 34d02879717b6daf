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

After every job: failure notifications with pvesr's cadence and a "recovered" notification when a failed job
succeeds again (notify.py); the job's run logs rotate (joblog.py: the last ``log_runs`` runs are kept); the
Prometheus textfile-collector file is rewritten (metrics.py).  The node's settings and directories are settings.py's.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from ansible_collections.storage.replication.plugins.module_utils import cluster
from ansible_collections.storage.replication.plugins.module_utils.channels import ChannelPool
from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils.files import LockError, atomic_write, read_json_object
from ansible_collections.storage.replication.plugins.module_utils.joblog import rotate_logs
from ansible_collections.storage.replication.plugins.module_utils.metrics import write_metrics
from ansible_collections.storage.replication.plugins.module_utils.names import parse_replication_snapshot
from ansible_collections.storage.replication.plugins.module_utils.notify import (
    failure_message, node_message, recovery_message, send_notification, should_notify)
from ansible_collections.storage.replication.plugins.module_utils.plan import plan_job
from ansible_collections.storage.replication.plugins.module_utils.replicate import ReplicationError, run_job
from ansible_collections.storage.replication.plugins.module_utils.report import job_figures, memo_next_sync
from ansible_collections.storage.replication.plugins.module_utils.state import (
    StateError, StateFile, job_order_key, job_state_in, jobs_to_run, read_local_node, rebuild_state, runner_lock)
from ansible_collections.storage.replication.plugins.module_utils.zfs import Zfs, ZfsError

PEER_CHECK_FILE = "peer-check.json"
# The node's refusal to act (damaged configuration) and how many runs in a row refused: notified with the failed
# jobs' cadence, not at every tick.
REFUSAL_FILE = "refusal.json"
# While jobs run, the runner looks for newly due jobs this often, and starts a new iteration once a minute
# (what the next timer tick would do; the timer starts no second runner while this one is busy).
RECHECK_SECONDS = 10
TICK_SECONDS = 60


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
        # The run's control connections (channels.py): the peer check's are kept for the jobs that follow it.
        self.channels = None

    # -- entry points -------------------------------------------------------------------------------------------

    def run(self, job_id=None):
        """All due jobs (pvesr run_jobs), or the one job ``job_id`` regardless of its schedule (run_single_job)."""
        try:
            with runner_lock(self.paths.statedir), ChannelPool() as self.channels:
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

    def check(self, job_id=None, plan=None):
        """What ``run(job_id)`` would do now, changing nothing on any node (``run --check``): the jobs it would run,
        each with its plan (plan.plan_job), and ``next``, the job due next when none is due now.  No lock is taken,
        no peer asked for a newer configuration, nothing written: a damaged configuration or state is reported, not
        repaired.  ``plan`` replaces plan.plan_job (tests)."""
        plan = plan or plan_job
        try:
            self.cfg = configmod.load(self.paths.confdir)
        except configmod.ConfigCorrupt as exc:
            raise RunnerRefused("%s; a run restores it first, so there is nothing to plan yet" % exc) from None
        if job_id is not None:
            problem = self._single_job_problem(self.cfg.jobs.get(job_id), job_id)
            if problem:
                raise RunnerRefused(problem)
            jobs = [self.cfg.jobs[job_id]]
        else:
            state = self.state.read()
            candidates = jobs_to_run(self.cfg, self.node)
            jobs = due_in_order(candidates, state, self.iteration, self.now())
            upcoming = sorted((memo_next_sync(job, job_state_in(state, job)), job.id) for job in candidates)
            later = [(when, name) for when, name in upcoming if when > self.now()]
            self.result["next"] = {"job": later[0][1], "at": later[0][0]} if later and not jobs else None
        self.result.update(check=True, generation=self.cfg.generation)
        self.result["jobs"] = [plan(self.cfg, job.id, node=self.node, statedir=self.paths.statedir) for job in jobs]
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
        self.result["connections"] = self.channels.opened
        self._execute(job, echo=self.echo, channels=self.channels)

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
        # The jobs share their control connections (channels.py), the peer check's among them: at most `limit`
        # per target, all closed when the run ends, however it ends (the executor waits for the running jobs first:
        # it is left before the pool).  One ZFS layer for the pass too: what this node's ZFS can do is asked once.
        zfs, channels = Zfs(), self.channels
        with ThreadPoolExecutor(max_workers=limit) as pool:
            self.result["connections"] = channels.opened
            while True:
                for job in self._due_jobs(started, {j.guest for j in running.values()})[:limit - len(running)]:
                    started.add(job.id)
                    running[pool.submit(self._execute, job, self._prefixed_echo(job), channels, zfs)] = job
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
                    self._write_metrics()  # the heartbeat: a long job is no stopped runner
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

    def _execute(self, job, echo=None, channels=None, zfs=None):
        """Run one job with log rotation, notifications and the metrics update; records the outcome.  ``channels``
        and ``zfs``: the pass's shared control connections and ZFS layer (None: the job makes its own)."""
        previous = self.state.job_state(job)
        rotate_logs(self.paths.logdir, job.id, self.settings["log_runs"])
        began = time.monotonic()
        try:
            outcome = self.run_job(self.cfg, job.id, node=self.node, statedir=self.paths.statedir, logdir=self.paths.logdir,
                                   confdir=self.paths.confdir, echo=echo, channels=channels, zfs=zfs)
        except LockError as exc:
            # The guest is busy (a migration or another job): nothing is recorded, the job is due again next run.
            self._record(job, {"ok": False, "skipped": True, "error": str(exc)})
            return
        except (configmod.ConfigError, StateError, OSError, ReplicationError) as exc:
            outcome = {"ok": False, "error": str(exc)}
        entry = {"ok": outcome["ok"], "error": outcome.get("error"), "start": outcome.get("start"),
                 "bytes": outcome.get("bytes", 0), "seconds": round(time.monotonic() - began, 3),
                 # what each volume took (full, incremental or resumed, from which base; what the target kept aside
                 # of a replica written to since the base) and the run's log lines
                 "volumes": [{key: volume.get(key) for key in ("volume", "mode", "base", "bytes", "seconds", "kept")}
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
        figures = job_figures(job, self.state.job_state(job), self.now())
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
            # the configuration this run loaded names the peers: not loaded again (ten thousand jobs' worth of memory)
            found = self.catch_up(self.paths.confdir, self.paths.statedir, current=self.cfg, keep=self.channels.adopt)
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
