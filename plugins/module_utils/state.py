# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Per-node job state (pvesr's replication-state.json), next_sync and back-off, job order, locks.

The state file has pvesr's shape ``{"<vmid>": {"local/<target>": {...}}}``. Writers hold an flock on
``replication-state.lck``; every write goes to a temporary file that is fsynced and renamed over the old one,
so readers never lock and never see half a file.

A state file that cannot be read is never taken as empty (DESIGN.md, safety rule 7): ``read`` raises StateError,
and the runner keeps the file aside and rebuilds the state from the replication snapshots (``rebuild_state``).
A run records its pid when it starts and drops it when it ends: a pid left behind whose process is gone is a run
that was interrupted (``STATUS_INTERRUPTED``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import time

from ansible_collections.storage.replication.plugins.module_utils.files import atomic_write, file_lock
from ansible_collections.storage.replication.plugins.module_utils.schedule import DEFAULT_SCHEDULE, parse as parse_schedule

DEFAULT_STATEDIR = "/var/lib/storage-replication"
STATE_FILE = "replication-state.json"
STATE_LOCK_FILE = "replication-state.lck"
LOCK_DIR = "lock"
LOCAL_NODE_FILE = "local-node"

STATE_LOCK_TIMEOUT = 10
GUEST_LOCK_TIMEOUT = 2
# A state entry is about 300 bytes: 16 MiB holds tens of thousands of jobs (ten thousand per node are measured,
# benchmarks/bench_runner.py) and still refuses a file no runner wrote.
MAX_STATE_SIZE = 16 * 1024 * 1024

# Back-off after failures, pvesr ReplicationState.pm: 5, 10, 15 minutes, then every 30 minutes.
BACKOFF_STEP = 5 * 60
BACKOFF_STEPS = 3
BACKOFF_MAX = 30 * 60
# pvesr never retries a failed job while its target is offline; we retry at this interval and say so.
TARGET_WAIT_RETRY = 30 * 60

# Job status words shown by status commands and modules.
STATUS_OK = "ok"
STATUS_RUNNING = "running"
STATUS_INTERRUPTED = "interrupted"
STATUS_ERROR = "error"
STATUS_WAITING = "waiting for target"
STATUS_DISABLED = "disabled"
STATUS_REMOVING = "removal pending"


class StateError(RuntimeError):
    """The state file cannot be read; the message names the file, the cause and what to do. ``problem`` is the
    file and the cause alone."""

    def __init__(self, problem):
        self.problem = problem
        super().__init__("%s - nothing runs on it; the runner keeps it aside and rebuilds it from the replication "
                         "snapshots at its next run ('storage-replication run')" % problem)


# ---------------------------------------------------------------------------------------------------------------
# Locks and this node's processes

def lock_path(statedir, name):
    return os.path.join(statedir, LOCK_DIR, name + ".lock")


def runner_lock(statedir=DEFAULT_STATEDIR):
    """The node-wide runner lock, non-blocking: a second runner fails at once with a LockError."""
    return file_lock(lock_path(statedir, "runner"), 0, "the replication runner of this node",
                     "another 'storage-replication run' is active; this one exits and the next run picks up due jobs")


def guest_lock(guest, statedir=DEFAULT_STATEDIR, timeout=GUEST_LOCK_TIMEOUT):
    """The per-guest lock held by a job run or a migration of ``guest`` (pvesr: pve-migrate-<vmid>, 2 s)."""
    return file_lock(lock_path(statedir, "guest-%d" % int(guest)), timeout, "guest '%d'" % int(guest),
                     "a replication or migration of this guest is running; the job is retried at the next run")


def read_local_node(statedir=DEFAULT_STATEDIR):
    """This node's name in the cluster: the local-node file, else the short host name (as pvesr)."""
    try:
        with open(os.path.join(statedir, LOCAL_NODE_FILE), encoding="utf-8") as handle:
            name = handle.read().strip()
    except FileNotFoundError:
        name = ""
    return name or socket.gethostname().split(".")[0]


def process_start_time(pid):
    """The start time of process ``pid`` in clock ticks after boot (/proc/<pid>/stat field 22), or None."""
    try:
        with open("/proc/%d/stat" % int(pid), encoding="ascii", errors="replace") as handle:
            data = handle.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: count the fields after its closing parenthesis.
    return int(data[data.rindex(")") + 2:].split()[19])


def job_is_running(jobstate):
    """True if the worker recorded in ``jobstate`` (pid and its start time) is still alive, as pvesr checks."""
    pid, ptime = jobstate.get("pid"), jobstate.get("ptime")
    return bool(pid) and ptime is not None and process_start_time(pid) == ptime


def job_was_interrupted(jobstate):
    """True if a run recorded its start but not its end, and its process is gone (killed, power loss)."""
    return bool(jobstate.get("pid")) and not job_is_running(jobstate)


# ---------------------------------------------------------------------------------------------------------------
# The state file

JOB_STATE_DEFAULTS = {"last_iteration": 0, "last_try": 0, "last_sync": 0, "fail_count": 0}


def job_state_in(state, job):
    """The state entry of ``job`` in the whole ``state`` dict, with pvesr's defaults filled in (a copy)."""
    entry = dict(JOB_STATE_DEFAULTS)
    entry.update(state.get(str(job.guest), {}).get(job.target_id, {}))
    return entry


class StateFile:
    """``<statedir>/replication-state.json``: read without lock, changed under ``replication-state.lck``."""

    def __init__(self, statedir=DEFAULT_STATEDIR, lock_timeout=STATE_LOCK_TIMEOUT):
        self.statedir = statedir
        self.path = os.path.join(statedir, STATE_FILE)
        self.lock_path = os.path.join(statedir, STATE_LOCK_FILE)
        self.lock_timeout = lock_timeout
        self._memo = None  # ((device, inode, size, mtime), state) of the last read

    def read(self):
        """The whole state; a missing file is ``{}`` (no job ran here yet). StateError if it cannot be read.

        Read-only: the same object is returned until the file changes (every write replaces it by a rename, a new
        inode), since a runner with ten thousand jobs reads a state of megabytes several times per tick; ``locked``
        parses its own copy to change."""
        return self._read(shared=True)

    def _read(self, shared):
        try:
            with open(self.path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
                if shared and self._memo is not None and self._memo[0] == key:
                    return self._memo[1]
                data = handle.read(MAX_STATE_SIZE + 1)
        except FileNotFoundError:
            return {}
        state = self._parse(data)
        if shared:
            self._memo = (key, state)
        return state

    def _parse(self, data):
        if len(data) > MAX_STATE_SIZE:
            raise StateError("state file %s is larger than %d bytes" % (self.path, MAX_STATE_SIZE))
        if not data.strip():  # every write has at least "{}": an empty file lost its content
            raise StateError("state file %s is empty" % self.path)
        try:
            state = json.loads(data.decode("utf-8"))
        except ValueError as exc:  # UnicodeDecodeError is one
            raise StateError("state file %s is not valid JSON (%s)" % (self.path, exc)) from None
        if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
            raise StateError("state file %s does not hold an object of guests" % self.path)
        return state

    def job_state(self, job):
        """The state of ``job`` with defaults (pvesr read_job_state)."""
        return job_state_in(self.read(), job)

    def _lock(self):
        return file_lock(self.lock_path, self.lock_timeout, "the job state file %s" % self.path,
                         "another job is writing its state; try again")

    def _write(self, state):
        os.makedirs(self.statedir, exist_ok=True)
        atomic_write(self.path, json.dumps(state, sort_keys=True, separators=(",", ":")) + "\n")

    @contextlib.contextmanager
    def locked(self):
        """Yield the whole state under the lock; it is written atomically when the block ends without error."""
        with self._lock():
            state = self._read(shared=False)  # read's object is shared by its callers: never changed in place
            yield state
            self._write(state)

    def replace_unreadable(self, rebuilt, now=time.time):
        """Keep the unreadable state file aside as ``<file>.corrupt-<time>`` and write ``rebuilt`` in its place.
        Returns the path it was kept as, or None if the file is readable after all (then nothing changes)."""
        with self._lock():
            try:
                self.read()
                return None
            except StateError:
                pass
            kept = "%s.corrupt-%s" % (self.path, time.strftime("%Y%m%dT%H%M%S", time.localtime(now())))
            os.rename(self.path, kept)
            self._write(rebuilt)
            return kept

    def _change_job(self, job, change):
        """Apply ``change(entry) -> entry or None`` (None deletes it) to ``job``'s entry under the lock."""
        with self.locked() as state:
            guest_states = state.setdefault(str(job.guest), {})
            entry = change(job_state_in(state, job))
            if entry is None:
                guest_states.pop(job.target_id, None)
            else:
                guest_states[job.target_id] = entry
            if not guest_states:
                del state[str(job.guest)]
        return entry

    def set_fields(self, job, **fields):
        """Set fields of ``job``'s entry (e.g. ``storeid_list``); returns the entry.  Fields the entry already holds
        with these values are not written again (a run's storage list rarely changes; each write is a synced
        rename of the whole file): only this job's run changes them, under the guest lock."""
        state = self.read()
        stored = state.get(str(job.guest), {}).get(job.target_id)
        if stored is not None and all(key in stored and stored[key] == value for key, value in fields.items()):
            return job_state_in(state, job)
        return self._change_job(job, lambda entry: dict(entry, **fields))

    def record_job_start(self, job, start_time, iteration=None, node=None, pid=None):
        """A run begins: pid/ptime, last_node, last_try = start, last_iteration (default: start)."""
        pid = os.getpid() if pid is None else pid

        def start(entry):
            entry.update(pid=pid, ptime=process_start_time(pid), last_node=node or read_local_node(self.statedir),
                         last_try=int(start_time), last_iteration=int(start_time if iteration is None else iteration))
            entry.setdefault("storeid_list", [])
            return entry
        return self._change_job(job, start)

    def record_sync_end(self, job, start_time, volumes=None):
        """The transfer succeeded: last_sync = start, written before old snapshots are removed (crash safety), and
        ``synced_volumes``, the volumes it sent (while they stay the same, the target need not search for stale
        replicas of the job)."""
        fields = {"last_sync": int(start_time)}
        if volumes is not None:
            fields["synced_volumes"] = sorted(volumes)
        return self.set_fields(job, **fields)

    def record_job_end(self, job, start_time, duration, error=None, bytes_sent=None, target_unreachable=False):
        """A run ended. Error: fail_count + 1 and the message (and ``waiting_for_target`` if the target could not
        be reached). Success: last_sync = start, fail_count 0, error dropped; a job marked for removal loses its
        entry. Returns the entry (None if deleted)."""

        def end(entry):
            for key in ("pid", "ptime", "waiting_for_target"):
                entry.pop(key, None)
            entry["duration"] = float(duration)
            if bytes_sent is not None:
                entry["bytes_sent"] = int(bytes_sent)
            if error is not None:
                entry["fail_count"] = entry["fail_count"] + 1
                entry["error"] = str(error).rstrip("\n")
                if target_unreachable:
                    entry["waiting_for_target"] = True
                return entry
            if job.remove_job:
                return None
            entry.pop("error", None)
            entry.update(last_sync=int(start_time), fail_count=0)
            return entry
        return self._change_job(job, end)

    def schedule_now(self, job):
        """pvesr schedule-now: last_try = 0, so the job is due at the next run."""
        return self.set_fields(job, last_try=0)

    def guest_states(self, guest):
        """``{"local/<target>": entry}`` of ``guest`` (for migration's state transfer)."""
        return copy.deepcopy(self.read().get(str(int(guest)), {}))

    def set_guest_states(self, guest, states):
        """Replace ``guest``'s whole entry (pvesr set-state); an empty ``states`` deletes it."""
        with self.locked() as state:
            if states:
                state[str(int(guest))] = states
            else:
                state.pop(str(int(guest)), None)

    def purge_old_states(self, cfg, node):
        """Drop entries of jobs that no longer exist or whose guest is not on ``node``; returns the dropped keys."""
        keep = {(str(j.guest), j.target_id) for j in cfg.jobs_on_node(node)}
        dropped = []
        with self.locked() as state:
            for guest in list(state):
                for target_id in list(state[guest]):
                    if (guest, target_id) not in keep:
                        del state[guest][target_id]
                        dropped.append("%s/%s" % (guest, target_id))
                if not state[guest]:
                    del state[guest]
        return dropped


def transfer_state(states, migration_target, source_node):
    """pvesr extract_vmid_tranfer_state: the guest's states with key local/<migration target> renamed to
    local/<source node>, for the new owner after a migration (the job's direction is switched too)."""
    moved = dict(states)
    old_key, new_key = "local/" + migration_target, "local/" + source_node
    if old_key in moved:
        moved[new_key] = moved.pop(old_key)
    return moved


def rebuild_state(cfg, node, job_snapshot_epochs):
    """The state of the jobs ``node`` runs, rebuilt from what ZFS shows after the state file was lost.

    ``job_snapshot_epochs(job_id, dataset)`` gives the epochs of the job's ``__replicate_<job>_<epoch>__`` snapshots
    on that dataset. A run drops the previous snapshot only after its sync ended, so one snapshot common to all the
    guest's volumes is the last sync: last_sync is its epoch. Several of them mean a run stopped between snapshot and
    clean-up, and which one the target holds is not known here: last_sync 0 then, with which the next run deletes
    nothing and picks the newest snapshot common with the target, as pvesr does for a job without state (a wrong
    last_sync would make prepare delete the only common base). No snapshot: no entry (the job never synced).

    Returns ``(state, notes)``: notes is ``{job_id: what was found}`` for the runner's output.
    """
    state, notes = {}, {}
    for job in cfg.jobs_on_node(node):
        if job.target == node:
            continue
        sets = [set(job_snapshot_epochs(job.id, dataset)) for dataset in cfg.guest_datasets(job.guest).values()]
        common = set.intersection(*sets) if sets else set()
        if not common:
            notes[job.id] = "no replication snapshot on all its volumes: it starts as a new job"
            continue
        last_sync = max(common) if len(common) == 1 else 0
        state.setdefault(str(job.guest), {})[job.target_id] = dict(
            JOB_STATE_DEFAULTS, last_sync=last_sync, last_try=last_sync, storeid_list=cfg.storage_ids(job.guest))
        notes[job.id] = ("last sync %d (its replication snapshot)" % last_sync if last_sync else
                         "%d replication snapshots (%s): the next run finds the base it shares with the target"
                         % (len(common), ", ".join(str(e) for e in sorted(common))))
    return state, notes


# ---------------------------------------------------------------------------------------------------------------
# Scheduling

def backoff_delay(fail_count):
    """Seconds after last_try before a failed job is retried: 5, 10, 15 minutes, then 30 (pvesr since 2022)."""
    return BACKOFF_STEP * fail_count if fail_count <= BACKOFF_STEPS else BACKOFF_MAX


def is_waiting_for_target(jobstate, target_online=None):
    """A failed job waits for its target when the target is known offline (``target_online`` False) or, when
    that is not known, when the last failure was that the target could not be reached."""
    if not jobstate.get("fail_count"):
        return False
    if target_online is None:
        return bool(jobstate.get("waiting_for_target"))
    return not target_online


def next_sync(job, jobstate, target_online=None, tz=None):
    """When ``job`` is due next (epoch seconds), as pvesr's job_status computes it.

    Marked for removal: 1 (always due). Failed: last_try + back-off; while waiting for its target pvesr would
    return 0 (never) — we retry every TARGET_WAIT_RETRY seconds instead. Otherwise the schedule's first event
    strictly after last_try, or 0 if the schedule has no further event.
    """
    if job.remove_job:
        return 1
    last_try = int(jobstate.get("last_try", 0))
    fail_count = int(jobstate.get("fail_count", 0))
    if fail_count > 0:
        if is_waiting_for_target(jobstate, target_online):
            return last_try + TARGET_WAIT_RETRY
        return last_try + backoff_delay(fail_count)
    event = parse_schedule(job.schedule or DEFAULT_SCHEDULE).next_event(last_try, tz)
    return event or 0


def job_status(job, jobstate, target_online=None):
    """One status word for ``job``: running, interrupted, removal pending, disabled, waiting for target, error
    or ok."""
    if job_is_running(jobstate):
        return STATUS_RUNNING
    if job_was_interrupted(jobstate):
        return STATUS_INTERRUPTED
    if job.remove_job:
        return STATUS_REMOVING
    if job.disable:
        return STATUS_DISABLED
    if is_waiting_for_target(jobstate, target_online):
        return STATUS_WAITING
    if jobstate.get("fail_count"):
        return STATUS_ERROR
    return STATUS_OK


def jobs_to_run(cfg, node):
    """The jobs ``node`` runs (pvesr job_status): its guests' jobs, except disabled ones and those whose target
    is ``node`` itself, unless marked for removal."""
    return [j for j in cfg.jobs_on_node(node) if j.remove_job or (not j.disable and j.target != node)]


def job_order_key(job, jobstate, next_sync_time):
    """pvesr get_next_job's order: last_iteration, next_sync, guest (numeric), job ID (string)."""
    return (int(jobstate.get("last_iteration", 0)), next_sync_time, job.guest, job.id)


def next_due_job(jobs, state, iteration, now, target_online=None, tz=None):
    """The job to run next in the runner iteration ``iteration`` (pvesr get_next_job), or None.

    ``state`` is the whole state dict (re-read before each pick); ``target_online`` maps node -> bool where known.
    A job is due if it has not run in this iteration, next_sync is not 0 and now >= next_sync.
    """
    online = target_online or {}
    candidates = []
    for job in jobs:
        jobstate = job_state_in(state, job)
        when = next_sync(job, jobstate, online.get(job.target), tz)
        candidates.append((job_order_key(job, jobstate, when), job))
    for (last_iteration, when, _guest, _id), job in sorted(candidates, key=lambda c: c[0]):
        if last_iteration < iteration and when != 0 and now >= when:
            return job
    return None
