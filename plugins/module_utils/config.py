# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The cluster configuration: nodes, storages, guests and replication jobs, with a generation counter.

On disk (``confdir``, default /etc/storage-replication) every generation is a directory of two files, and one
symlink says which generation is current::

    generations/<N>/replication.cfg   the jobs, in pvesr's section-config format
    generations/<N>/cluster.json      generation, nodes, storages, guests
    generations/<N>/SHA256SUMS        the sha256 of both files, written with them (``sha256sum -c`` reads it)
    current -> generations/<N>        the switch
    replication.cfg -> current/replication.cfg, cluster.json -> current/cluster.json   stable paths

A save writes the new generation's directory completely (files fsynced), then renames a new symlink over
``current``. That rename is the commit: a crash before it leaves the old generation current, a crash after it
leaves the new one, never a mix of the two files. Without ``current`` (a hand-made directory, e.g. a copied
Proxmox replication.cfg) the two plain files are read; the next save converts the directory.

Unreadable is never empty (DESIGN.md, safety rule 7): a generation directory we wrote must match its digest and
parse without a single warning, else ``load`` raises ConfigCorrupt and nothing acts on it. The digest lives beside
the files, not inside replication.cfg, which stays a file pvesr reads. Directories written before the digest
existed have none; for them a parser warning is the sign of damage (we never write a line the parser drops).
Only a missing directory is legitimately empty (a fresh node, generation 0). ``restore`` is the one way to replace
a damaged generation: with the configuration a majority of the peers hold (cluster.restore_config).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import dataclasses
import functools
import hashlib
import ipaddress
import json
import math
import os
import re
import shutil
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ansible_collections.storage.replication.plugins.module_utils import bandwidth, retention
from ansible_collections.storage.replication.plugins.module_utils.bandwidth import format_number, rate_error
from ansible_collections.storage.replication.plugins.module_utils.names import (
    GUEST_ID_MAX, GUEST_ID_MIN, JOBNUM_MAX, NODE_RE, STORAGE_RE, VOLUME_NAME_MAX, VOLUME_NAME_RE)
from ansible_collections.storage.replication.plugins.module_utils.schedule import ScheduleError, parse as parse_schedule
from ansible_collections.storage.replication.plugins.module_utils.files import atomic_write, file_lock, fsync_dir, write_synced

DEFAULT_CONFDIR = "/etc/storage-replication"
JOBS_FILE = "replication.cfg"
MODEL_FILE = "cluster.json"
CURRENT_LINK = "current"
GENERATIONS_DIR = "generations"
LOCK_FILE = ".lock"
CACHE_FILE = ".parsed-cache.json"  # the current generation as it parsed (_ParsedCache)
DIGEST_FILE = "SHA256SUMS"
CORRUPT_SUFFIX = ".corrupt-"
CONFLICT_SUFFIX = ".conflict-"  # a generation that lost to the majority's content (cluster.resolve_conflict)
KEEP_GENERATIONS = 5
LOCK_TIMEOUT = 10
MODEL_FORMAT = 1

GUEST_TYPES = ("vm", "ct", "service")
HOOK_NAMES = ("start", "stop", "status", "freeze", "thaw", "kill")  # kill: the fence's last resort (fence.py)
REPLICATABLE_STORAGE_TYPES = ("zfspool",)
REMOVE_MODES = ("local", "full")
JOB_TYPES = ("local",)
COMMENT_MAX = 4096
SCHEDULE_MAX = 128

# Keys a job section may carry, and the order pvesr writes them: comment, bare disable, required (target),
# then the other set options sorted.
OPTIONAL_KEYS = ("rate", "remove_job", "schedule", "source")
JOB_KEYS = ("comment", "disable", "target") + OPTIONAL_KEYS
# Our own options of a job, which pvesr does not know: kept out of replication.cfg (pvesr's parser drops a section
# with an unknown key), stored in cluster.json under "jobs" (retention.py: the restore points a job keeps).
KEEP_KEYS = ("keep", "keep_source")
# rate_windows (bandwidth.py): pvesr's rate is one number; the windows that vary it are ours, and `rate` stays pvesr's
# meaning in replication.cfg (the limit outside every window, what pvesr itself would apply).
EXTENSION_KEYS = KEEP_KEYS + ("rate_windows",)

_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[a-zA-Z0-9]([a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?)*$")
_STORAGE_TYPE_RE = re.compile(r"^[a-z][a-z0-9]*$")
_DATASET_PART = r"[A-Za-z0-9][A-Za-z0-9_.:\-]*"
_DATASET_RE = re.compile(r"^%s(/%s)*$" % (_DATASET_PART, _DATASET_PART))
_KEY_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9@.\-]*$")
_JOB_ID_RE = re.compile(r"^([0-9]+)-([0-9]+)$")
# pvesr's section header (ReplicationConfig.pm parse_section_header) and SectionConfig's key/value line;
# ASCII classes as in Perl, so that Unicode digits and spaces do not count.
_HEADER_RE = re.compile(r"^(\S+):\s*(\d+)-(\d+)\s*$", re.ASCII)
_KEY_VALUE_RE = re.compile(r"^\s+(\S+)(\s+(.*\S))?\s*$", re.ASCII)
_COMMENT_LINE_RE = re.compile(r"^\s*#", re.ASCII)
_TRUE_WORDS = ("1", "on", "yes", "true")
_FALSE_WORDS = ("0", "off", "no", "false")


class ConfigError(ValueError):
    """An invalid configuration or change. ``problems`` lists every message; nothing was written."""

    def __init__(self, problems):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ConfigCorrupt(ConfigError):
    """This node's own configuration is damaged or unreadable: it must not be used, nor taken as empty.

    ``path`` is the damaged file (or directory); the message is one line: what, where, and what to do.
    """

    def __init__(self, problem, path):
        self.path = path
        self.problem = problem
        super().__init__("the cluster configuration of this node cannot be read: %s - nothing acts on it; restore it "
                         "from the peers with 'storage-replication restore-config' (the runner tries this itself)"
                         % problem)


# ---------------------------------------------------------------------------------------------------------------
# The model

@dataclass
class Node:
    """A host of the cluster: its name, the address peers use for SSH, and its SSH host key (``<type> <base64>``)."""

    name: str
    address: str
    host_key: str = ""
    port: int = 22


@dataclass
class Storage:
    """A storage ID mapped to a dataset prefix, the same on every node."""

    id: str
    type: str = "zfspool"
    pool: str = "rpool/data"


@dataclass
class Guest:
    """A workload: its ID, type, owner node, volumes (``<storage>:<name>``) and hooks (argv lists, never shell strings)."""

    id: int
    type: str
    node: str
    volumes: List[str] = field(default_factory=list)
    hooks: Dict[str, List[str]] = field(default_factory=dict)

    def hook(self, name):
        """The argv of hook ``name`` (one of HOOK_NAMES), or None if the guest has none."""
        return self.hooks.get(name)


@functools.lru_cache(maxsize=65536)
def _id_number(job_id, index):
    """Part ``index`` of a job ID as a number (0: guest, 1: jobnum); remembered, as the runner and `status` ask
    for them many times per job."""
    return int(job_id.split("-")[index])


@dataclass
class Job:
    """A replication job ``<guest>-<jobnum>`` as in pvesr's replication.cfg. ``schedule`` None means the default."""

    id: str
    target: str
    schedule: Optional[str] = None
    rate: Optional[float] = None
    comment: Optional[str] = None
    disable: bool = False
    remove_job: Optional[str] = None
    source: Optional[str] = None
    type: str = "local"
    # Restore points (retention.py): on the target, and on the source; None is pvesr's (the newest replica only).
    keep: Optional[str] = None
    keep_source: Optional[str] = None
    # Limits by calendar windows (bandwidth.py), the first matching wins; outside every window ``rate`` applies.
    rate_windows: Optional[str] = None

    @property
    def guest(self):
        return _id_number(self.id, 0)

    @property
    def jobnum(self):
        return _id_number(self.id, 1)

    @property
    def target_id(self):
        """pvesr's "unique target id": keys the state file and makes (guest, target) unique."""
        return "%s/%s" % (self.type, self.target)

    def retention(self, side="target"):
        """The retention.Keep of the target (``keep``) or the source (``keep_source``); pvesr's if unset."""
        return retention.parse(self.keep if side == "target" else self.keep_source)

    def as_dict(self):
        """The set options plus ``id``, ``guest`` and ``jobnum``, like pvesr's API items."""
        options = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and v is not False}
        return dict(options, guest=self.guest, jobnum=self.jobnum)


@dataclass
class ClusterConfig:
    """The whole configuration. Dicts keep insertion order; ``jobs`` keeps replication.cfg's section order.

    ``warnings`` holds what loading skipped or repaired (pvesr's parser warnings); it is not part of the content.
    """

    generation: int = 0
    nodes: Dict[str, Node] = field(default_factory=dict)
    storages: Dict[str, Storage] = field(default_factory=dict)
    guests: Dict[int, Guest] = field(default_factory=dict)
    jobs: Dict[str, Job] = field(default_factory=dict)
    # The changes committed without quorum (force_quorum), newest last: {generation, node, time}. Loud on purpose.
    forced: List[dict] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list, compare=False)

    # -- queries -------------------------------------------------------------------------------------------

    def jobs_of_guest(self, guest):
        """The jobs of ``guest``, by job number."""
        return sorted((j for j in self.jobs.values() if j.guest == int(guest)), key=lambda j: j.jobnum)

    def jobs_on_node(self, node):
        """The jobs this node runs: those whose guest it owns (the source is always the owner)."""
        owned = {gid for gid, guest in self.guests.items() if guest.node == node}
        return [j for j in self.jobs.values() if j.guest in owned]  # one look at each job's guest (ten thousand jobs)

    def jobs_to_target(self, node):
        """The jobs that replicate to ``node``."""
        return [j for j in self.jobs.values() if j.target == node]

    def job_for_target(self, guest, target):
        """The job of ``guest`` to ``target``, or None."""
        return next((j for j in self.jobs.values() if j.guest == int(guest) and j.target == target), None)

    def next_jobnum(self, guest):
        """Like the Proxmox GUI: highest job number of the guest + 1, starting at 0."""
        return max((j.jobnum for j in self.jobs_of_guest(guest)), default=-1) + 1

    def dataset(self, volume):
        """``local-zfs:vm-100-disk-0`` -> ``rpool/data/vm-100-disk-0``; ConfigError if the storage is unknown."""
        storage_id, _sep, name = volume.partition(":")
        storage = self.storages.get(storage_id)
        if storage is None or not name:
            raise ConfigError("volume '%s': storage '%s' does not exist; add it to the cluster configuration"
                              % (volume, storage_id))
        return "%s/%s" % (storage.pool, name)

    def guest_datasets(self, guest):
        """``{volume: dataset}`` of ``guest``'s volumes, sorted by volume as pvesr does."""
        return {v: self.dataset(v) for v in sorted(self.guests[int(guest)].volumes)}

    def storage_ids(self, guest):
        """Sorted storage IDs of ``guest``'s volumes (the state's ``storeid_list``)."""
        return sorted({v.partition(":")[0] for v in self.guests[int(guest)].volumes})

    def problems(self):
        """Every rule the configuration breaks, as messages naming the object and the fix; [] when valid."""
        return _problems(self)

    def validate(self):
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    def content(self):
        """The two files of this configuration: ``{"replication.cfg": text, "cluster.json": text}``."""
        return {JOBS_FILE: format_replication_cfg(self.jobs.values()), MODEL_FILE: format_model(self)}

    def same_content(self, other):
        """True if both describe the same cluster (generation and warnings aside)."""
        mine, theirs = self.content(), other.content()
        return mine[JOBS_FILE] == theirs[JOBS_FILE] and _model_dict(self) == _model_dict(other)

    # -- changes: each validates the whole result before anything changes --------------------------------------

    def add_job(self, job):
        """Create a job (pvesr create-local-job). ``source`` is set to the guest's owner. Returns the stored job."""
        job = copy.deepcopy(job)
        _check_new_job(self, job)
        return self._apply(lambda cfg: cfg.jobs.__setitem__(job.id, job)).jobs[job.id]

    def update_job(self, job_id, delete=(), **changes):
        """Change options of a job (pvesr update); a value of None or a key in ``delete`` removes the option."""
        job = self._existing_job(job_id)
        changed = _updated_job(job, changes, delete)
        return self._apply(lambda cfg: cfg.jobs.__setitem__(job_id, changed)).jobs[job_id]

    def mark_job_for_removal(self, job_id, mode="full"):
        """pvesr delete: mark the job; the runner cleans up and then removes it (``remove_job(id)``)."""
        if mode not in REMOVE_MODES:
            raise ConfigError("replication job '%s': removal mode '%s' is not one of: %s" % (job_id, mode, ", ".join(REMOVE_MODES)))
        return self.update_job(job_id, remove_job=mode)

    def remove_job(self, job_id, missing_ok=False):
        """Delete the job's section now, without any cleanup (pvesr delete --force, or the end of a removal)."""
        if job_id not in self.jobs:
            if missing_ok:
                return
            self._existing_job(job_id)
        self._apply(lambda cfg: cfg.jobs.pop(job_id))

    def set_node(self, node):
        """Add or replace a node."""
        self._apply(lambda cfg: cfg.nodes.__setitem__(node.name, copy.deepcopy(node)))

    def remove_node(self, name):
        self._existing("node", self.nodes, name)
        self._apply(lambda cfg: cfg.nodes.pop(name))

    def set_storage(self, storage):
        """Add or replace a storage."""
        self._apply(lambda cfg: cfg.storages.__setitem__(storage.id, copy.deepcopy(storage)))

    def remove_storage(self, storage_id):
        self._existing("storage", self.storages, storage_id)
        self._apply(lambda cfg: cfg.storages.pop(storage_id))

    def set_guest(self, guest):
        """Add or replace a guest. A change of owner goes through ``move_guest`` so that jobs follow."""
        old = self.guests.get(guest.id)
        if old is not None and old.node != guest.node:
            raise ConfigError("guest '%s': its owner changes from '%s' to '%s'; use move_guest so that its "
                              "replication jobs switch direction" % (guest.id, old.node, guest.node))
        self._apply(lambda cfg: cfg.guests.__setitem__(guest.id, copy.deepcopy(guest)))

    def remove_guest(self, guest_id, purge=False):
        """Remove a guest; refused while it has jobs unless ``purge`` (which drops its jobs without cleanup)."""
        self._existing("guest", self.guests, guest_id)
        jobs = self.jobs_of_guest(guest_id)
        if jobs and not purge:
            raise ConfigError("There is a replication job '%s' for guest '%s' - Please remove that first."
                              % (jobs[0].id, guest_id))
        self._apply(lambda cfg: _drop_guest(cfg, guest_id))

    def move_guest(self, guest_id, new_node):
        """Make ``new_node`` the owner and switch the jobs' direction (pvesr switch_replication_job_target).

        The job that targeted ``new_node`` now targets the old owner; every job's source becomes ``new_node``.
        """
        old_node = self._existing("guest", self.guests, guest_id).node
        self._apply(lambda cfg: _switch_owner(cfg, int(guest_id), old_node, new_node))

    def fix_stolen_guests(self, node):
        """pvesr's stolen-guest fix-up, for the runner of ``node``: a guest of ``node`` whose jobs still name
        another source was moved without ``move_guest`` (hand edit, HA-style recovery); switch its jobs'
        direction as ``move_guest`` would have. Returns the fixed guest IDs."""
        stolen = {j.guest: j.source for j in self.jobs_on_node(node) if j.source and j.source != node}

        def switch_all(cfg):
            for guest, old_node in stolen.items():
                _switch_owner(cfg, guest, old_node, node)
        if stolen:
            self._apply(switch_all)
        return sorted(stolen)

    # -- helpers of the changes ------------------------------------------------------------------------------

    def _apply(self, change):
        candidate = copy.deepcopy(self)
        change(candidate)
        candidate.validate()
        for f in dataclasses.fields(self):
            if f.name != "warnings":
                setattr(self, f.name, getattr(candidate, f.name))
        return self

    def _existing_job(self, job_id):
        if job_id not in self.jobs:
            raise ConfigError("replication job '%s' does not exist; 'storage-replication list' shows the jobs" % job_id)
        return self.jobs[job_id]

    @staticmethod
    def _existing(kind, table, key):
        if key not in table:
            raise ConfigError("%s '%s' does not exist in the cluster configuration" % (kind, key))
        return table[key]


def _drop_guest(cfg, guest_id):
    del cfg.guests[guest_id]
    for job in cfg.jobs_of_guest(guest_id):
        del cfg.jobs[job.id]


def _switch_owner(cfg, guest_id, old_node, new_node):
    cfg.guests[guest_id].node = new_node
    for job in cfg.jobs_of_guest(guest_id):
        if job.target == new_node:
            job.target = old_node
        job.source = new_node


def _check_new_job(cfg, job):
    """pvesr create's checks, in its order, with its messages; the whole result is validated afterwards."""
    id_error = job_id_error(job.id)
    if id_error:
        raise ConfigError(id_error)
    guest = cfg.guests.get(job.guest)
    if guest is None:
        raise ConfigError("Guest '%d' does not exist. Add the guest to the cluster configuration first." % job.guest)
    if job.target not in cfg.nodes:
        raise ConfigError("Target '%s' does not exist. Known nodes: %s." % (job.target, _names(cfg.nodes)))
    if job.source is not None and job.source != guest.node:
        raise ConfigError("Source '%s' does not match current node of guest '%d' (%s)" % (job.source, job.guest, guest.node))
    job.source = guest.node
    if job.target == guest.node:
        raise ConfigError("Source and target must not be identical (guest '%d' runs on '%s'); choose another target"
                          % (job.guest, guest.node))
    normalize_keep(job)
    if job.id in cfg.jobs:
        raise ConfigError("replication job '%s' already exists; the next free ID is '%d-%d'"
                          % (job.id, job.guest, cfg.next_jobnum(job.guest)))


def _updated_job(job, changes, delete):
    """A copy of ``job`` with ``changes`` applied and the options in ``delete`` removed (pvesr update rules)."""
    changed = copy.deepcopy(job)
    for key in delete:
        if key == "target":
            raise ConfigError("replication job '%s': unable to delete required option 'target'" % job.id)
        if key not in UPDATABLE_KEYS:
            raise ConfigError("replication job '%s': no such option '%s'" % (job.id, key))
        changes.setdefault(key, None)
    for key, value in changes.items():
        if key in ("target", "id", "type"):
            if value != getattr(job, key):
                raise ConfigError("replication job '%s': can't change value of fixed parameter '%s'" % (job.id, key))
            continue
        if key not in UPDATABLE_KEYS:
            raise ConfigError("replication job '%s': unknown option '%s'; options are: %s"
                              % (job.id, key, ", ".join(sorted(UPDATABLE_KEYS))))
        setattr(changed, key, bool(value) if key == "disable" else value)
    return normalize_keep(changed)


UPDATABLE_KEYS = OPTIONAL_KEYS + ("comment", "disable") + EXTENSION_KEYS


def normalize_keep(job):
    """A valid keep in its canonical text, and pvesr's default (``last=1``) as None, so that equal rules are equal
    content; an invalid one is left for the validation to report."""
    for key in KEEP_KEYS:
        value = getattr(job, key)
        if value is not None and retention.error(value) is None:
            setattr(job, key, retention.normalized(value))
    return job


def _names(table):
    return ", ".join(sorted(str(k) for k in table)) or "none"


# ---------------------------------------------------------------------------------------------------------------
# Validation

def job_id_error(job_id):
    """The message for an invalid job ID (pvesr's wording), or None if ``job_id`` is a valid canonical ID."""
    match = _JOB_ID_RE.match(job_id) if isinstance(job_id, str) else None
    if not match:
        return "invalid replication job id '%s' - write it as '<guest>-<jobnum>', e.g. '100-0'" % (job_id,)
    guest, jobnum = int(match.group(1)), int(match.group(2))
    if guest < GUEST_ID_MIN:
        return "invalid replication job id '%s' (guest IDs < 100 are reserved)" % job_id
    if guest > GUEST_ID_MAX or jobnum > JOBNUM_MAX:
        return ("invalid replication job id '%s' (guest IDs are 100..%d, job numbers 0..%d)"
                % (job_id, GUEST_ID_MAX, JOBNUM_MAX))
    canonical = "%d-%d" % (guest, jobnum)
    if canonical != job_id:
        return "invalid replication job id '%s' - leading zeros are not allowed, write '%s'" % (job_id, canonical)
    return None


def _problems(cfg):
    problems = []
    if not isinstance(cfg.generation, int) or isinstance(cfg.generation, bool) or cfg.generation < 0:
        problems.append("generation '%s' must be an integer >= 0" % (cfg.generation,))
    for key, node in cfg.nodes.items():
        problems.extend(_node_problems(key, node))
    problems.extend(_duplicate_address_problems(cfg.nodes))
    for key, storage in cfg.storages.items():
        problems.extend(_storage_problems(key, storage))
    owners = {}
    for key, guest in cfg.guests.items():
        problems.extend(_guest_problems(cfg, key, guest, owners))
    seen_targets = set()
    for key, job in cfg.jobs.items():
        problems.extend(_job_problems(cfg, key, job, seen_targets))
    return problems


def _node_problems(key, node):
    what = "node '%s'" % node.name
    if key != node.name:
        yield "%s is stored under the name '%s'; the key and the name must be equal" % (what, key)
    if not isinstance(node.name, str) or not NODE_RE.match(node.name):
        yield ("%s: invalid node name; use letters, digits and '-' (a host name without domain, at most 63 characters)"
               % what)
    if not _valid_address(node.address):
        yield "%s: address '%s' is neither an IP address nor a host name; set the address peers reach it at" % (what, node.address)
    if node.host_key and not _valid_host_key(node.host_key):
        yield ("%s: host key is not '<type> <base64>' (a line of /etc/ssh/ssh_host_ed25519_key.pub without the comment)"
               % what)
    if not isinstance(node.port, int) or isinstance(node.port, bool) or not 1 <= node.port <= 65535:
        yield "%s: port '%s' must be an integer 1..65535" % (what, node.port)


def _valid_address(address):
    if not isinstance(address, str) or not address:
        return False
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return bool(_HOSTNAME_RE.match(address))


def _valid_host_key(host_key):
    parts = host_key.split() if isinstance(host_key, str) else []
    if len(parts) not in (2, 3) or not _KEY_TYPE_RE.match(parts[0]):
        return False
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return False
    # The key blob starts with its own type as an SSH string: a mismatch means a mangled key.
    declared = parts[0].encode("ascii")
    return blob[4:4 + len(declared)] == declared and int.from_bytes(blob[:4], "big") == len(declared)


def _duplicate_address_problems(nodes):
    by_address = {}
    for node in nodes.values():
        by_address.setdefault((node.address, node.port), []).append(node.name)
    for (address, _port), names in by_address.items():
        if len(names) > 1:
            yield "nodes %s have the same address '%s'; give each node its own address" % (" and ".join("'%s'" % n for n in names), address)


def _storage_problems(key, storage):
    what = "storage '%s'" % storage.id
    if key != storage.id:
        yield "%s is stored under the ID '%s'; the key and the ID must be equal" % (what, key)
    if not isinstance(storage.id, str) or not STORAGE_RE.match(storage.id):
        yield "%s: invalid storage ID; use lower-case letters, digits, '-', '_' and '.', starting with a letter" % what
    if not isinstance(storage.type, str) or not _STORAGE_TYPE_RE.match(storage.type):
        yield "%s: invalid type '%s'; use 'zfspool'" % (what, storage.type)
    if not isinstance(storage.pool, str) or not _DATASET_RE.match(storage.pool) or len(storage.pool) > 200:
        yield "%s: pool '%s' is not a ZFS dataset name like 'rpool/data'" % (what, storage.pool)


def _guest_problems(cfg, key, guest, owners):
    what = "guest '%s'" % (guest.id,)
    if key != guest.id:
        yield "%s is stored under the ID '%s'; the key and the ID must be equal" % (what, key)
    if not isinstance(guest.id, int) or isinstance(guest.id, bool) or not GUEST_ID_MIN <= guest.id <= GUEST_ID_MAX:
        yield "%s: guest IDs are integers %d..%d" % (what, GUEST_ID_MIN, GUEST_ID_MAX)
    if guest.type not in GUEST_TYPES:
        yield "%s: type '%s' is not one of: %s" % (what, guest.type, ", ".join(GUEST_TYPES))
    if guest.node not in cfg.nodes:
        yield "%s: owner node '%s' does not exist; add the node or give the guest a known node (%s)" % (what, guest.node, _names(cfg.nodes))
    if not isinstance(guest.volumes, list):
        yield "%s: volumes must be a list of '<storage>:<name>'" % what
    else:
        for volume in guest.volumes:
            for problem in _volume_problems(cfg, volume, owners, guest.id):
                yield "%s: %s" % (what, problem)
    yield from _hook_problems(what, guest.hooks)


def _volume_problems(cfg, volume, owners, guest_id):
    storage_id, sep, name = volume.partition(":") if isinstance(volume, str) else ("", "", "")
    if not sep or not VOLUME_NAME_RE.match(name):
        yield ("volume '%s' is not '<storage>:<name>' with a name of letters, digits, '_', '.', '-' (at most %d, "
               "no '..', not starting with '-')" % (volume, VOLUME_NAME_MAX))
        return
    if storage_id not in cfg.storages:
        yield "volume '%s' is on storage '%s', which does not exist; add the storage or fix the volume" % (volume, storage_id)
    if volume in owners:
        yield "volume '%s' is also a volume of guest '%s'; a volume belongs to one guest" % (volume, owners[volume])
    else:
        owners[volume] = guest_id


def _hook_problems(what, hooks):
    if not isinstance(hooks, dict):
        yield "%s: hooks must be a mapping of hook name to an argv list" % what
        return
    for name, argv in hooks.items():
        if name not in HOOK_NAMES:
            yield "%s: unknown hook '%s'; hooks are: %s" % (what, name, ", ".join(HOOK_NAMES))
        elif not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv) or not argv[0]:
            yield ("%s: hook '%s' must be a non-empty list of strings (an argv list such as [\"/usr/bin/systemctl\", \"start\", \"x\"]),"
                   " never a shell string" % (what, name))


def _job_problems(cfg, key, job, seen_targets):
    what = "replication job '%s'" % (job.id,)
    id_error = job_id_error(job.id)
    if id_error:
        yield id_error
        return
    if key != job.id:
        yield "%s is stored under the ID '%s'; the key and the ID must be equal" % (what, key)
    for problem in job_option_problems(job):
        yield "%s: %s" % (what, problem)
    if job.target not in cfg.nodes:
        yield "%s: Target '%s' does not exist. Add the node or remove the job." % (what, job.target)
    unique = (job.guest, job.target_id)
    if unique in seen_targets:
        yield ("%s: replication job for guest '%d' to target '%s' already exists; keep one job per guest and target"
               % (what, job.guest, job.target_id))
    seen_targets.add(unique)
    guest = cfg.guests.get(job.guest)
    if guest is None:
        yield "%s: Guest '%d' does not exist. Add the guest or remove the job." % (what, job.guest)
        return
    if job.target == guest.node and not job.remove_job:
        yield ("%s: Source and target must not be identical (guest '%d' runs on '%s'); change the job's target or remove the job"
               % (what, job.guest, guest.node))
    for problem in _replicatable_problems(cfg, guest):
        yield "%s: %s" % (what, problem)


def _replicatable_problems(cfg, guest):
    if not guest.volumes:
        yield "No replicatable volumes found: guest '%d' has no volumes; add a volume on a zfspool storage" % guest.id
    for volume in guest.volumes:
        storage = cfg.storages.get(volume.partition(":")[0])
        if storage is not None and storage.type not in REPLICATABLE_STORAGE_TYPES:
            yield ("unable to replicate volume '%s': storage '%s' has type '%s', only %s storages can be replicated;"
                   " move the volume to such a storage" % (volume, storage.id, storage.type, "/".join(REPLICATABLE_STORAGE_TYPES)))


def job_option_problems(job):
    """Problems with a job's own options (types and ranges), without the key's name prefix."""
    if job.type not in JOB_TYPES:
        yield "unsupported type '%s'; the only type is 'local'" % job.type
    if not isinstance(job.target, str) or not NODE_RE.match(job.target):
        yield "target '%s' is not a valid node name" % (job.target,)
    if job.source is not None and (not isinstance(job.source, str) or not NODE_RE.match(job.source)):
        yield "source '%s' is not a valid node name" % (job.source,)
    if job.schedule is not None:
        error = schedule_error(job.schedule)
        if error:
            yield error
    if job.rate is not None and rate_error(job.rate):
        yield rate_error(job.rate)
    if job.comment is not None and (not isinstance(job.comment, str) or len(job.comment) > COMMENT_MAX):
        yield "comment must be a string of at most %d characters" % COMMENT_MAX
    if job.remove_job is not None and job.remove_job not in REMOVE_MODES:
        yield "remove_job '%s' is not one of: %s" % (job.remove_job, ", ".join(REMOVE_MODES))
    if not isinstance(job.disable, bool):
        yield "disable must be true or false"
    if job.rate_windows is not None and bandwidth.error(job.rate_windows):
        yield "rate_windows: %s" % bandwidth.error(job.rate_windows)
    for key in KEEP_KEYS:
        if getattr(job, key) is not None and retention.error(getattr(job, key)):
            yield "%s: %s" % ("keep on the source (keep_source)" if key == "keep_source" else "keep",
                              retention.error(getattr(job, key)))


@functools.lru_cache(maxsize=256)  # jobs share few distinct schedules; parsing is the cost of a load
def schedule_error(text):
    """pvesr's message for an invalid schedule, or None."""
    if not isinstance(text, str):
        return "schedule must be a string such as '*/15'"
    if len(text) > SCHEDULE_MAX:
        return "schedule '%s...' is longer than %d characters" % (text[:20], SCHEDULE_MAX)
    if "\n" in text or "\r" in text:
        return "schedule must be one line"
    try:
        parse_schedule(text)
    except ScheduleError as exc:
        return str(exc)  # names the schedule and the spot that does not parse
    return None


# ---------------------------------------------------------------------------------------------------------------
# replication.cfg: pvesr's section-config format

def encode_text(text):
    """pvesr's encode_text: UTF-8 bytes outside 0x20-0x24, 0x26-0x39, 0x3b-0x7e (controls, '%', ':', non-ASCII) -> %XX.

    Unlike pvesr, leading and trailing spaces are encoded too: the parser strips them from values, so a comment
    with them would otherwise not survive a round trip (pvesr decodes %20 all the same).
    """
    encoded = "".join(chr(b) if (0x20 <= b <= 0x7e and b not in (0x25, 0x3a)) else "%%%02X" % b for b in text.encode("utf-8"))
    body = encoded.strip(" ")
    if not body:
        return "%20" * len(encoded)
    start = encoded.index(body)
    return "%20" * start + body + "%20" * (len(encoded) - start - len(body))


def decode_text(text):
    """pvesr's decode_text: percent-decoding, then UTF-8."""
    return urllib.parse.unquote_to_bytes(text).decode("utf-8", "replace")


def format_job(job):
    """One section: header, comment, bare disable, target, then rate/remove_job/schedule/source; tab-indented."""
    lines = ["%s: %s" % (job.type, job.id)]
    if job.comment:
        lines.append("\tcomment " + encode_text(job.comment))
    if job.disable:
        lines.append("\tdisable")
    lines.append("\ttarget " + job.target)
    for key in OPTIONAL_KEYS:
        value = getattr(job, key)
        if value is not None:
            lines.append("\t%s %s" % (key, format_number(value) if key == "rate" else value))
    return "\n".join(lines) + "\n"


def format_replication_cfg(jobs):
    """The file text: sections in the given order, each followed by a blank line (as pvesr writes it)."""
    return "".join(format_job(job) + "\n" for job in jobs)


def parse_replication_cfg(text, filename=JOBS_FILE):
    """Parse pvesr's replication.cfg. Returns ``(jobs, warnings)``: jobs by ID in file order.

    As pvesr: comment lines are skipped, only an empty line ends a section, leading zeros in IDs are dropped,
    bad values are dropped with a warning, a section without target or with a bad ID is skipped, and of two jobs
    of one guest to one target the later in ID string order is dropped.
    """
    warnings = []
    jobs = {}
    lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if not _COMMENT_LINE_RE.match(line)]
    pos = 0
    while pos < len(lines):
        lineno, line = lines[pos]
        pos += 1
        if not line:
            continue
        header = _HEADER_RE.match(line)
        if not header:
            warnings.append("%s line %d - ignore config line: %s" % (filename, lineno, line))
            continue
        end = next((i for i in range(pos, len(lines)) if not lines[i][1]), len(lines))
        job = _parse_section(header, "%s line %d" % (filename, lineno), lines[pos:end], filename, warnings)
        pos = end
        if job is None:
            continue
        if job.id in jobs:
            warnings.append("%s line %d (skip section '%s'): duplicate section ID; the first one is kept" % (filename, lineno, job.id))
            continue
        jobs[job.id] = job
    _drop_duplicate_targets(jobs, warnings)
    return jobs, warnings


def _parse_section(header, where, body, filename, warnings):
    job_type, job_id = header.group(1).lower(), "%d-%d" % (int(header.group(2)), int(header.group(3)))
    skip = job_id_error(job_id) or (None if job_type in JOB_TYPES else "unsupported type '%s'" % job_type)
    if skip:
        warnings.append("%s (skip section '%s'): %s" % (where, job_id, skip))
        return None
    values = {}
    for lineno, line in body:
        match = _KEY_VALUE_RE.match(line)
        if not match:
            warnings.append("%s line %d (section '%s') - ignore config line: %s" % (filename, lineno, job_id, line))
            continue
        key, raw = match.group(1), match.group(3)
        try:
            if key in values:
                raise ValueError("duplicate attribute")
            values[key] = _parse_value(key, raw)
        except ValueError as exc:
            warnings.append("%s line %d (section '%s') - unable to parse value of '%s': %s" % (filename, lineno, job_id, key, exc))
    if "target" not in values:
        warnings.append("%s (skip section '%s'): missing value for required option 'target'" % (where, job_id))
        return None
    return Job(id=job_id, type=job_type, **values)


def _parse_value(key, raw):
    """One value of a section, checked like pvesr's schema; ValueError with the reason."""
    if key not in JOB_KEYS:
        raise ValueError("unexpected property '%s'" % key)
    if key == "disable":
        return _parse_boolean(raw)
    if raw is None:
        raise ValueError("missing value")
    if key in ("target", "source"):
        if not NODE_RE.match(raw):
            raise ValueError("value '%s' does not look like a valid node name" % raw)
        return raw
    if key == "comment":
        return _checked(decode_text(raw), None)
    if key == "rate":
        return _checked(_parse_number(raw), rate_error)
    if key == "schedule":
        return _checked(raw, schedule_error)
    return _checked(raw, lambda v: None if v in REMOVE_MODES else "value '%s' does not have a value in the enumeration '%s'"
                    % (v, ", ".join(REMOVE_MODES)))


def _checked(value, error_of):
    error = error_of(value) if error_of else None
    if error:
        raise ValueError(error)
    return value


def _parse_boolean(raw):
    if raw is None or raw.lower() in _TRUE_WORDS:
        return True
    if raw.lower() in _FALSE_WORDS:
        return False
    raise ValueError("type check ('boolean') failed - got '%s'" % raw)


def _parse_number(raw):
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("type check ('number') failed - got '%s'" % raw) from None
    if math.isnan(value) or math.isinf(value):
        raise ValueError("type check ('number') failed - got '%s'" % raw)
    return int(value) if value.is_integer() else value


def _drop_duplicate_targets(jobs, warnings):
    seen = set()
    for job_id in sorted(jobs):
        job = jobs[job_id]
        if (job.guest, job.target_id) in seen:
            warnings.append("delete job %s: replication job for guest '%d' to target '%s' already exists"
                            % (job_id, job.guest, job.target_id))
            del jobs[job_id]
        seen.add((job.guest, job.target_id))


# ---------------------------------------------------------------------------------------------------------------
# cluster.json: the rest of the model

def _model_dict(cfg):
    model = {
        "format": MODEL_FORMAT,
        "generation": cfg.generation,
        "nodes": {n.name: {"address": n.address, "host_key": n.host_key, "port": n.port} for n in cfg.nodes.values()},
        "storages": {s.id: {"type": s.type, "pool": s.pool} for s in cfg.storages.values()},
        "guests": {str(g.id): {"type": g.type, "node": g.node, "volumes": list(g.volumes), "hooks": dict(g.hooks)}
                   for g in cfg.guests.values()},
    }
    if cfg.forced:  # only once there is one: the files of a cluster that never forced a change stay as they were
        model["forced"] = [dict(entry) for entry in cfg.forced[-FORCED_KEPT:]]
    extensions = {job.id: {key: getattr(job, key) for key in EXTENSION_KEYS if getattr(job, key) is not None}
                  for job in cfg.jobs.values()}
    extensions = {job_id: options for job_id, options in extensions.items() if options}
    if extensions:  # likewise: a cluster without our job options keeps the files it had
        model["jobs"] = extensions
    return model


FORCED_KEPT = 20  # entries of ClusterConfig.forced kept in cluster.json


def format_model(cfg):
    """cluster.json's text: sorted keys, two-space indent, final newline (stable bytes for equal content)."""
    return json.dumps(_model_dict(cfg), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def parse_model(text, filename=MODEL_FILE):
    """A ClusterConfig without jobs from cluster.json's text; ConfigError naming the file and the entry."""
    return _parse_model(text, filename)[0]


def _parse_model(text, filename):
    """(ClusterConfig without jobs, {job id: our options of the job}) from cluster.json's text."""
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise ConfigError("%s is not valid JSON (%s); restore it from the previous generation directory" % (filename, exc)) from None
    reader = _ModelReader(filename)
    cfg = reader.read(data)
    extensions = reader.job_extensions(data)
    if reader.problems:
        raise ConfigError(reader.problems)
    return cfg, extensions


class _ModelReader:
    """Turns cluster.json's data into the model, collecting type errors instead of raising tracebacks."""

    def __init__(self, filename):
        self.filename = filename
        self.problems = []

    def read(self, data):
        cfg = ClusterConfig()
        if not isinstance(data, dict):
            self.problems.append("%s: the top level must be an object" % self.filename)
            return cfg
        if data.get("format", MODEL_FORMAT) != MODEL_FORMAT:
            self.problems.append("%s: format %s is not supported by this version (expects %d); upgrade storage-replication"
                                 % (self.filename, data.get("format"), MODEL_FORMAT))
        cfg.generation = self.value(data, "generation", int, 0, "the file")
        cfg.forced = self.value(data, "forced", list, [], "the file")
        if not all(isinstance(entry, dict) for entry in cfg.forced):
            self.problems.append("%s: 'forced' must be a list of objects" % self.filename)
        for name, item in self.section(data, "nodes").items():
            cfg.nodes[name] = Node(name=name, address=self.value(item, "address", str, "", "node '%s'" % name),
                                   host_key=self.value(item, "host_key", str, "", "node '%s'" % name),
                                   port=self.value(item, "port", int, 22, "node '%s'" % name))
        for sid, item in self.section(data, "storages").items():
            cfg.storages[sid] = Storage(id=sid, type=self.value(item, "type", str, "zfspool", "storage '%s'" % sid),
                                        pool=self.value(item, "pool", str, "rpool/data", "storage '%s'" % sid))
        for gid, item in self.section(data, "guests").items():
            what = "guest '%s'" % gid
            if not re.match(r"^[1-9][0-9]*$", gid):
                self.problems.append("%s: %s: guest IDs are integers %d..%d" % (self.filename, what, GUEST_ID_MIN, GUEST_ID_MAX))
                continue
            cfg.guests[int(gid)] = Guest(id=int(gid), type=self.value(item, "type", str, "", what),
                                         node=self.value(item, "node", str, "", what),
                                         volumes=self.value(item, "volumes", list, [], what),
                                         hooks=self.value(item, "hooks", dict, {}, what))
        return cfg

    def job_extensions(self, data):
        """{job id: {key: value}} of the "jobs" section (EXTENSION_KEYS only; values are checked with the job)."""
        extensions = {}
        for job_id, item in (self.section(data, "jobs") if isinstance(data, dict) else {}).items():
            unknown = sorted(set(item) - set(EXTENSION_KEYS))
            if unknown:
                self.problems.append("%s: job '%s': unknown option(s) %s" % (self.filename, job_id, ", ".join(unknown)))
            extensions[job_id] = {key: self.value(item, key, str, None, "job '%s'" % job_id)
                                  for key in EXTENSION_KEYS if key in item}
        return extensions

    def section(self, data, name):
        value = data.get(name, {})
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            self.problems.append("%s: '%s' must be an object of objects" % (self.filename, name))
            return {}
        return value

    def value(self, item, key, kind, default, what):
        value = item.get(key, default)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problems.append("%s: %s: '%s' must be of type %s, not %r" % (self.filename, what, key, kind.__name__, value))
            return default
        return value


# ---------------------------------------------------------------------------------------------------------------
# Load and save

def from_files(model_text, jobs_text, where=""):
    """The configuration described by the two files' texts (as pushed between nodes)."""
    prefix = where + "/" if where else ""
    cfg, extensions = _parse_model(model_text, prefix + MODEL_FILE)
    cfg.jobs, cfg.warnings = parse_replication_cfg(jobs_text, prefix + JOBS_FILE)
    for job_id, options in extensions.items():
        if job_id in cfg.jobs:  # a job pvesr's tools removed from replication.cfg takes its options with it
            for key, value in options.items():
                setattr(cfg.jobs[job_id], key, value)
    return cfg


def load(confdir=DEFAULT_CONFDIR):
    """The configuration in ``confdir``; a missing directory is empty (generation 0). No lock needed.

    ConfigCorrupt if the current generation is damaged (see the module's doc): never read as empty."""
    try:
        return _load_once(confdir)
    except FileNotFoundError:
        pass  # a concurrent save pruned the generation we had just resolved; the new current one is complete
    try:
        return _load_once(confdir)
    except FileNotFoundError as exc:
        raise ConfigCorrupt("%s is missing (the generation '%s' points to is incomplete)" % (exc.filename, CURRENT_LINK),
                            exc.filename) from None


def _load_once(confdir):
    current = os.path.join(confdir, CURRENT_LINK)
    if os.path.lexists(current):
        return _load_generation(os.path.realpath(current), _ParsedCache(confdir))
    # A hand-made directory (e.g. a copied Proxmox replication.cfg): read leniently, as pvesr does.
    return from_files(_read(os.path.join(confdir, MODEL_FILE)), _read(os.path.join(confdir, JOBS_FILE)), confdir)


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def _load_generation(directory, cache=None):
    """A generation directory we wrote: checked against its digest, then parsed strictly (or taken from ``cache``,
    a _ParsedCache, when it holds the parse of exactly these bytes)."""
    texts, sums = {}, []
    digests = _read_digests(directory)
    for name in (MODEL_FILE, JOBS_FILE):
        path = os.path.join(directory, name)
        with open(path, "rb") as handle:  # FileNotFoundError: load() retries, then reports it
            data = handle.read()
        sums.append(hashlib.sha256(data).hexdigest())
        if digests is not None and digests.get(name) != sums[-1]:
            raise ConfigCorrupt("%s does not match the sha256 recorded in %s when it was written"
                                % (path, DIGEST_FILE), path)
        try:
            texts[name] = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigCorrupt("%s is not UTF-8 text (%s)" % (path, exc), path) from None
    if not texts[MODEL_FILE].strip():  # we always write one; only a hand-made directory may lack it
        path = os.path.join(directory, MODEL_FILE)
        raise ConfigCorrupt("%s is empty" % path, path)
    key = [directory] + sums
    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        return cached
    try:
        cfg = from_files(texts[MODEL_FILE], texts[JOBS_FILE], directory)
    except ConfigError as exc:
        # The problem without its fix for hand-made files ("; restore it from ..."): ConfigCorrupt says what to do.
        raise ConfigCorrupt(exc.problems[0].split("; ", 1)[0], os.path.join(directory, MODEL_FILE)) from None
    if cfg.warnings:  # we never write a line the parser drops: one that it drops was damaged
        raise ConfigCorrupt(cfg.warnings[0], os.path.join(directory, JOBS_FILE))
    if cache is not None:
        cache.put(key, cfg)
    return cfg


class _ParsedCache:
    """``<confdir>/.parsed-cache.json``: the current generation as it parsed, so that a process that loads it (the
    runner's tick every minute, `status`) builds the objects from one compact JSON text instead of parsing and
    checking both files again (with ten thousand jobs a third of an idle tick).

    Never stale, never a way around the checks: it is keyed by the sha256 of the exact bytes ``load`` has just read
    and checked (digest against SHA256SUMS, UTF-8, not empty), so any change of either file, whatever its size or
    time stamps, misses it and the files are parsed strictly again, damage reported as ever. Only a strict parse
    without a warning is stored. The cache carries the sha256 of its own text and the field names of the model's
    classes: a damaged cache, or one written by another version, is ignored (and replaced). Failing to write it
    (a read-only directory, a user without write access) costs only the time."""

    FORMAT = 1
    MAX_BYTES = 256 << 20

    def __init__(self, confdir):
        self.path = os.path.join(confdir, CACHE_FILE)

    @staticmethod
    def _fields():
        return {cls.__name__: [f.name for f in dataclasses.fields(cls)] for cls in (Node, Storage, Guest, Job)}

    def get(self, key):
        """The configuration stored for ``key`` ([directory, sha256 of cluster.json, of replication.cfg]), or None."""
        try:
            with open(self.path, "rb") as handle:
                header, _newline, payload = handle.read(self.MAX_BYTES).partition(b"\n")
            head = json.loads(header)
            if head != {"format": self.FORMAT, "key": key, "fields": self._fields(),
                        "sha256": hashlib.sha256(payload).hexdigest()}:
                return None
            data = json.loads(payload)
            cfg = ClusterConfig(generation=data["generation"], forced=data["forced"])
            for table, cls in (("nodes", Node), ("storages", Storage), ("guests", Guest), ("jobs", Job)):
                setattr(cfg, table, {row[0]: cls(*row) for row in data[table]})
            return cfg
        except (OSError, ValueError, TypeError, KeyError, IndexError):
            return None  # no cache, or not one to trust: the files are parsed

    def put(self, key, cfg):
        fields = self._fields()

        def rows(table):  # each object's fields in order (not dataclasses.astuple: it copies every value)
            return [[getattr(item, name) for name in fields[type(item).__name__]] for item in table.values()]
        payload = json.dumps({"generation": cfg.generation, "forced": cfg.forced, "nodes": rows(cfg.nodes),
                              "storages": rows(cfg.storages), "guests": rows(cfg.guests), "jobs": rows(cfg.jobs)},
                             separators=(",", ":")).encode("utf-8")
        header = json.dumps({"format": self.FORMAT, "key": key, "fields": fields,
                             "sha256": hashlib.sha256(payload).hexdigest()}).encode("utf-8")
        with contextlib.suppress(OSError):
            atomic_write(self.path, [header, b"\n", payload])


def kept_generations(confdir=DEFAULT_CONFDIR):
    """The configurations of the generations kept in ``confdir`` (the last few), oldest first; damaged ones left
    out (they are reported where they are current)."""
    generations = os.path.join(confdir, GENERATIONS_DIR)
    kept = []
    for name in sorted((n for n in _listdir(generations) if n.isdigit()), key=int):
        try:
            kept.append(_load_generation(os.path.join(generations, name)))
        except (ConfigError, OSError):
            continue
    return kept


def _listdir(path):
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _read_digests(directory):
    """``{file name: sha256}`` from the generation's SHA256SUMS, or None for a directory written before it existed."""
    path = os.path.join(directory, DIGEST_FILE)
    try:
        with open(path, "rb") as handle:
            lines = handle.read().decode("ascii").splitlines()
        digests = dict(reversed(line.split("  ", 1)) for line in lines)
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, ValueError):
        digests = {}
    if sorted(digests) != sorted((JOBS_FILE, MODEL_FILE)):
        raise ConfigCorrupt("%s is not a list of the two files' sha256" % path, path)
    return digests


def _format_digests(content):
    return "".join("%s  %s\n" % (hashlib.sha256(content[name].encode("utf-8")).hexdigest(), name)
                   for name in (JOBS_FILE, MODEL_FILE))


def save(cfg, confdir=DEFAULT_CONFDIR):
    """Write ``cfg`` as a new generation if it differs from what ``confdir`` holds; True if written.

    A config with a higher generation than the one on disk is adopted as it is (a push from a peer); a changed
    config with the same generation gets generation + 1; an older generation is refused (safety rule 2).
    Nothing is written if validation fails.
    """
    cfg.validate()
    with config_lock(confdir):
        return _commit(cfg, load(confdir), confdir)


@contextlib.contextmanager
def edit(confdir=DEFAULT_CONFDIR):
    """Load under the config lock, yield the config to change, then save it (generation + 1) if it changed.

    An exception inside the block, or a failed validation, writes nothing.
    """
    with config_lock(confdir):
        on_disk = load(confdir)
        cfg = copy.deepcopy(on_disk)
        yield cfg
        cfg.validate()
        _commit(cfg, on_disk, confdir)


def adopt(cfg, confdir=DEFAULT_CONFDIR):
    """Write a configuration pushed by a peer, only if its generation is newer than ours; True if written.

    The same generation with the same content is a no-op; anything else is refused with the reason (safety rule 2).
    """
    cfg.validate()
    with config_lock(confdir):
        on_disk = load(confdir)
        if cfg.generation == on_disk.generation and cfg.same_content(on_disk):
            return False
        if cfg.generation <= on_disk.generation:
            raise ConfigError("refusing configuration generation %d: this node already has generation %d%s; push the "
                              "newest configuration (generation > %d)"
                              % (cfg.generation, on_disk.generation,
                                 " with different content" if cfg.generation == on_disk.generation else "",
                                 on_disk.generation))
        _write_generation(cfg, confdir)
        return True


def restore(cfg, confdir=DEFAULT_CONFDIR):
    """Replace this node's damaged configuration with ``cfg`` (what a majority of the peers hold), whatever the
    generations: the damaged one cannot be compared. The damaged generation directory is kept aside (renamed) for
    inspection. Returns the path of the damaged file in its new place (None if nothing was left to keep).

    A readable configuration is never replaced this way (ConfigError): ``adopt`` is the way for those."""
    cfg.validate()
    with config_lock(confdir):
        try:
            load(confdir)
        except ConfigCorrupt as damage:
            kept = _set_aside_current(confdir, damage.path)
            _write_generation(cfg, confdir)
            return kept
        raise ConfigError("the configuration in %s is readable: there is nothing to restore" % confdir)


def replace_conflicting(cfg, confdir=DEFAULT_CONFDIR):
    """Replace this node's readable configuration with ``cfg``, the version a majority holds under the same
    generation (only a change forced without quorum makes two); this node's own is kept aside as
    ``generations/<N>.conflict-<time>``. Returns that path."""
    cfg.validate()
    with config_lock(confdir):
        kept = _set_aside_current(confdir, None, CONFLICT_SUFFIX)
        _write_generation(cfg, confdir)
        return kept


def _set_aside_current(confdir, damaged_path, suffix=None):
    directory = os.path.realpath(os.path.join(confdir, CURRENT_LINK))
    if not os.path.isdir(directory):
        return None
    stamp = directory + (suffix or CORRUPT_SUFFIX) + time.strftime("%Y%m%dT%H%M%S")
    aside, number = stamp, 1
    while os.path.lexists(aside):  # damaged twice within a second
        aside, number = "%s-%d" % (stamp, number), number + 1
    os.rename(directory, aside)
    fsync_dir(os.path.dirname(directory))
    inside = os.path.relpath(os.path.realpath(damaged_path), directory) if damaged_path else "."
    return aside if inside.startswith("..") else os.path.normpath(os.path.join(aside, inside))


_GENERATION_NAME_RE = re.compile(r"^([0-9]+)(%s.*)?$" % re.escape(CORRUPT_SUFFIX))


def known_nodes(confdir=DEFAULT_CONFDIR):
    """The nodes of the newest generation whose cluster.json still parses: whom to ask when the current
    configuration is damaged. Generations kept aside as damaged count too (often only the other file is damaged,
    and the peers' host keys are checked anyway). {} if there is none."""
    generations = os.path.join(confdir, GENERATIONS_DIR)
    found = [(int(m.group(1)), not m.group(2), m.group(0)) for m in map(_GENERATION_NAME_RE.match,
             os.listdir(generations) if os.path.isdir(generations) else []) if m]
    for _number, _intact, name in sorted(found, reverse=True):
        try:
            return parse_model(_read(os.path.join(generations, name, MODEL_FILE))).nodes
        except ConfigError:
            continue
    return {}


def config_lock(confdir):
    os.makedirs(confdir, mode=0o755, exist_ok=True)
    return file_lock(os.path.join(confdir, LOCK_FILE), LOCK_TIMEOUT, "the cluster configuration in %s" % confdir,
                     "another change of the configuration is being written; try again")


def _commit(cfg, on_disk, confdir):
    if cfg.generation < on_disk.generation:
        raise ConfigError("the configuration in %s has generation %d, newer than this one (%d); reload it and apply the "
                          "change again" % (confdir, on_disk.generation, cfg.generation))
    same = cfg.same_content(on_disk)
    if cfg.generation == on_disk.generation:
        if same and _is_versioned(confdir):
            return False
        if not same:
            cfg.generation += 1
    _write_generation(cfg, confdir)
    return True


def _is_versioned(confdir):
    return os.path.lexists(os.path.join(confdir, CURRENT_LINK))


def write_generation(cfg, confdir=DEFAULT_CONFDIR):
    """Write ``cfg`` as its generation and make it current; the caller holds config_lock (the quorum acceptor's
    commit of a chosen configuration: cluster.py)."""
    cfg.validate()
    _write_generation(cfg, confdir)


def _write_generation(cfg, confdir):
    generations = os.path.join(confdir, GENERATIONS_DIR)
    os.makedirs(generations, mode=0o755, exist_ok=True)
    name = str(cfg.generation)
    final = os.path.join(generations, name)
    if os.path.lexists(final):
        # Left by a save that crashed before its switch: never current, since current is older.
        if os.path.realpath(final) == os.path.realpath(os.path.join(confdir, CURRENT_LINK)):
            raise ConfigError("generation %s in %s is current already; reload the configuration" % (name, confdir))
        shutil.rmtree(final)
    staging = tempfile.mkdtemp(prefix=".tmp-", dir=generations)
    os.chmod(staging, 0o755)
    content = cfg.content()
    for filename, text in content.items():
        write_synced(os.path.join(staging, filename), text)
    write_synced(os.path.join(staging, DIGEST_FILE), _format_digests(content))
    fsync_dir(staging)
    os.rename(staging, final)
    fsync_dir(generations)
    _replace_symlink(os.path.join(confdir, CURRENT_LINK), os.path.join(GENERATIONS_DIR, name))  # the commit
    fsync_dir(confdir)
    for filename in (JOBS_FILE, MODEL_FILE):
        _replace_symlink(os.path.join(confdir, filename), os.path.join(CURRENT_LINK, filename))
    fsync_dir(confdir)
    _prune(generations, cfg.generation)


def _replace_symlink(link, target):
    if os.path.islink(link) and os.readlink(link) == target:
        return
    tmp = "%s.tmp-%d" % (link, os.getpid())
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _prune(generations, current):
    """Keep the newest KEEP_GENERATIONS generations (for inspection); drop older ones and crashed staging dirs."""
    numbered = sorted(int(n) for n in os.listdir(generations) if n.isdigit())
    obsolete = [str(n) for n in numbered[:-KEEP_GENERATIONS] if n != current]
    obsolete += [n for n in os.listdir(generations) if n.startswith(".tmp-")]
    for name in obsolete:
        shutil.rmtree(os.path.join(generations, name), ignore_errors=False)
