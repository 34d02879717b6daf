# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The names replication uses and the patterns that validate them, in one place (the bottom layer: imports nothing).

A name that reaches a `zfs` argv or a path is checked against one of these first.  None of them admits a '/',
'@', '#', '%', whitespace or a leading '-', so a checked name can neither leave its storage's dataset nor be read
as an option.
"""

from __future__ import annotations

import re

GUEST_ID_MIN = 100
GUEST_ID_MAX = 999999999
JOBNUM_MAX = 999999999
# \Z, not $: '$' also matches before a final newline, and a name ending in "\n" must not pass.  ASCII only.
JOB_ID_RE = re.compile(r"\A[1-9][0-9]{2,8}-[0-9]{1,9}\Z", re.ASCII)
NODE_RE = re.compile(r"\A[a-zA-Z0-9]([a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?\Z", re.ASCII)
STORAGE_RE = re.compile(r"\A[a-z][a-z0-9\-_.]*[a-z0-9]\Z", re.ASCII)
VOLUME_NAME_MAX = 200
# A volume's name within its storage (a dataset name below the storage's pool): no '/', '@', '%', '..' or leading '-'.
VOLUME_NAME_RE = re.compile(r"\A(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.\-]{0,%d}\Z" % (VOLUME_NAME_MAX - 1), re.ASCII)
VOLUME_RE = re.compile(r"\A(?!.*\.\.)[a-z][a-z0-9\-_.]*[a-z0-9]:[A-Za-z0-9][A-Za-z0-9_.\-]{0,%d}\Z" % (VOLUME_NAME_MAX - 1),
                       re.ASCII)
SNAPSHOT_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}\Z", re.ASCII)
REPLICATION_SNAPSHOT_RE = re.compile(r"\A__replicate_([1-9][0-9]{2,8}-[0-9]{1,9})_([0-9]{1,19})__\Z", re.ASCII)
# A number as it travels in a receive's key=value arguments: plain ASCII digits, no sign, no leading zero.
NUMBER_RE = re.compile(r"\A(0|[1-9][0-9]{0,17})\Z", re.ASCII)

# The ZFS user property that binds a replica to its guest and job (DESIGN.md, safety rule 2).  Its value names the
# dataset's own guid, so that a copy made with `zfs send -R | zfs recv` (which carries user properties along) is a
# new dataset with another guid, and is never mistaken for the replica it was copied from.
REPLICA_PROPERTY = "storage-replication:replica"


# Every snapshot the engine makes starts so: a replica's snapshot without it is someone else's, which a receive with
# -F would destroy.
ENGINE_SNAPSHOT_PREFIX = "__replicate_"


def replication_snapshot(job, epoch):
    """pvesr's snapshot name: ``__replicate_<job>_<epoch>__``."""
    return "%s%s_%d__" % (ENGINE_SNAPSHOT_PREFIX, job, epoch)


def probe_snapshot(pid):
    """The short-lived snapshot that tells whether data was written since another (zfs.Zfs.written_since)."""
    return "%sprobe_%d__" % (ENGINE_SNAPSHOT_PREFIX, pid)


def kept_aside_snapshot(stamp):
    """The short-lived snapshot a replica's diverged data is copied aside from (receiver.keep_aside)."""
    return "__kept_%s__" % stamp


def is_job_snapshot(name, job):
    """A replication snapshot of exactly this job (pvesr's prefix test lets job 100-1 claim 100-10's, and any
    ending after the prefix pass: here the whole name must be ``__replicate_<job>_<epoch>__``)."""
    parsed = parse_replication_snapshot(name)
    return parsed is not None and parsed[0] == job


def parse_replication_snapshot(name):
    """(job, epoch) of a replication snapshot's name, or None."""
    match = REPLICATION_SNAPSHOT_RE.match(name)
    return (match.group(1), int(match.group(2))) if match else None


def migration_copy_job(guest):
    """The one-off job that copies a guest to a node without a replica during a migration (its snapshots name it)."""
    return "%d-%d" % (guest, JOBNUM_MAX)


def job_guest(job):
    """The guest ID a (valid) job ID belongs to: '100-2' -> 100."""
    return int(job.split("-")[0])


def replica_identity(guest, job, source, guid):
    """The value of REPLICA_PROPERTY on a replica of ``guest`` made by ``job`` from ``source``."""
    return "guest=%d job=%s source=%s guid=%s" % (guest, job, source, guid)


def parse_replica_identity(value):
    """{guest, job, source, guid} of a REPLICA_PROPERTY value, or None when it is not one (unset: '-')."""
    fields = dict(part.partition("=")[::2] for part in (value or "").split())
    if set(fields) != {"guest", "job", "source", "guid"} or not fields["guest"].isdigit():
        return None
    if not JOB_ID_RE.match(fields["job"]) or not NODE_RE.match(fields["source"]):
        return None
    return {"guest": int(fields["guest"]), "job": fields["job"], "source": fields["source"], "guid": fields["guid"]}
