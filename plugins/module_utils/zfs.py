# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ZFS command layer: argv builders, output parsers and feature detection.

Works on zfs-fuse 0.7 (pool version 23: no `zfs version`, no `list -p`, no `written`
property, one snapshot per `zfs snapshot` call) and on OpenZFS 2.x (`zfs version`,
`written@<snap>`, multi-dataset atomic snapshots, resumable and compressed streams).
Every command runs with LC_ALL=C and fails with a ZfsError carrying argv, rc and stderr.

What the node's ZFS can do is detected once (`Features`): on OpenZFS the engine receives with
`-s` and resumes from `receive_resume_token`, keeps a bookmark of every synced snapshot as a
fallback incremental base, holds the snapshots the next incremental needs, sends `-c` where the
data is compressed and `-w` (raw) for encrypted datasets.  On zfs-fuse the same calls take the
older paths (no token, no bookmark, no hold, plain streams).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time

from ansible_collections.storage.replication.plugins.module_utils.names import (
    REPLICA_PROPERTY, parse_replica_identity, probe_snapshot)

ZFS = "zfs"
C_LOCALE_ENV = {"LC_ALL": "C", "LANG": "C"}

# `zfs destroy` can answer "dataset is busy" for a moment after a receive on zfs-fuse.
BUSY_RETRY_SECONDS = 10.0

# The user hold the engine puts on the snapshots the next incremental needs (OpenZFS).
HOLD_TAG = "storage-replication"
# What `zfs get` prints for an unset receive_resume_token.
NO_TOKEN = ("-", "")

# dmu_replay_record: every record of a send stream starts with this 312-byte header.
DRR_HEADER_SIZE = 312
DRR_BEGIN, DRR_OBJECT, DRR_FREEOBJECTS, DRR_WRITE, DRR_FREE, DRR_END = range(6)
DRR_WRITE_BYREF, DRR_SPILL, DRR_WRITE_EMBEDDED = 6, 7, 8
# Records that carry file data written since the stream's base snapshot.
DATA_RECORDS = frozenset((DRR_WRITE, DRR_WRITE_BYREF, DRR_SPILL, DRR_WRITE_EMBEDDED))


class ZfsError(Exception):
    """A zfs command failed: carries the argv, the exit code and stderr."""

    def __init__(self, argv, rc, stderr):
        self.argv = list(argv)
        self.rc = rc
        self.stderr = (stderr or "").strip()
        super().__init__("command '%s' failed: exit code %s%s" % (
            " ".join(self.argv), rc, (": " + self.stderr) if self.stderr else ""))

    @property
    def busy(self):
        return "dataset is busy" in self.stderr

    @property
    def missing(self):
        return "does not exist" in self.stderr

    @property
    def no_such_hold(self):
        return "no such tag" in self.stderr


def run_command(argv, input_bytes=None, check=True):
    """Run argv (never through a shell) in the C locale; returns (rc, stdout, stderr) as text."""
    env = dict(os.environ)
    env.update(C_LOCALE_ENV)
    # pylint: disable-next=ansible-bad-function
    proc = subprocess.run(argv, input=input_bytes, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, check=False)
    stdout = proc.stdout.decode("utf-8", "replace")
    stderr = proc.stderr.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        raise ZfsError(argv, proc.returncode, stderr)
    return proc.returncode, stdout, stderr


# ---------------------------------------------------------------- parsers

def parse_get(text):
    """Parse `zfs get -Hp -o name,property,value ...` into {name: {property: value}}."""
    result = {}
    for line in text.splitlines():
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise ValueError("unexpected line in 'zfs get' output: %r" % line)
        name, prop, value = fields
        result.setdefault(name, {})[prop] = value
    return result


def split_snapshot(name):
    """'pool/ds@snap' -> ('pool/ds', 'snap'); a dataset name -> (name, None)."""
    dataset, sep, snap = name.partition("@")
    return dataset, (snap if sep else None)


def snapshot_tree(props_by_name):
    """From parse_get() output of type,guid,createtxg,creation: {dataset: {snap: info}}.

    Every dataset appears (also those without snapshots); info is
    {"guid": str, "createtxg": int, "creation": int}.  Snapshots keep creation order (createtxg).
    """
    tree = {}
    for name, props in props_by_name.items():
        dataset, snap = split_snapshot(name)
        snaps = tree.setdefault(dataset, {})
        if snap is not None:
            snaps[snap] = {
                "guid": props.get("guid", ""),
                "createtxg": int(props.get("createtxg", "0") or 0),
                "creation": int(props.get("creation", "0") or 0),
            }
    return {ds: dict(sorted(snaps.items(), key=lambda item: item[1]["createtxg"])) for ds, snaps in tree.items()}


def bookmark_tree(props_by_name, dataset):
    """From parse_get() output that lists bookmarks: {name: {guid, createtxg, creation}} of dataset's, oldest
    first."""
    marks = {}
    for name, props in props_by_name.items():
        owner, mark, bookmark = name.partition("#")
        if mark and owner == dataset:
            marks[bookmark] = {"guid": props.get("guid", ""), "createtxg": int(props.get("createtxg", "0") or 0),
                               "creation": int(props.get("creation", "0") or 0)}
    return dict(sorted(marks.items(), key=lambda item: item[1]["createtxg"]))


def stream_begin_guids(header):
    """(toguid, fromguid) of a send stream's BEGIN record (its first 312 bytes)."""
    if len(header) < DRR_HEADER_SIZE:
        raise ValueError("send stream shorter than one record")
    drr_type, = struct.unpack_from("<I", header, 0)
    if drr_type != DRR_BEGIN:
        raise ValueError("send stream does not start with a BEGIN record")
    toguid, fromguid = struct.unpack_from("<QQ", header, 8 + 8 + 8 + 8 + 4 + 4)
    return toguid, fromguid


def _record_payload_length(header):
    """Bytes following a record header in a (non-compressed) send stream."""
    drr_type, payloadlen = struct.unpack_from("<II", header, 0)
    body = 8
    if drr_type == DRR_BEGIN:
        return payloadlen
    if drr_type == DRR_OBJECT:
        bonuslen, = struct.unpack_from("<I", header, body + 8 + 4 + 4 + 4)
        return (bonuslen + 7) & ~7
    if drr_type == DRR_WRITE:
        length, = struct.unpack_from("<Q", header, body + 8 + 4 + 4 + 8)
        return length
    if drr_type == DRR_SPILL:
        length, = struct.unpack_from("<Q", header, body + 8)
        return length
    return 0


def stream_writes_data(stream):
    """True if a single-snapshot incremental send stream (a readable binary file) carries file data.

    Metadata-only changes (atime updates from reading the replica, chmod) produce OBJECT and FREE
    records but no WRITE records; a stream of an unmodified dataset is just BEGIN + END.
    Stops reading at the first data record, so a large divergence costs little.
    """
    while True:
        header = _read_exactly(stream, DRR_HEADER_SIZE)
        if not header:
            return False
        drr_type, = struct.unpack_from("<I", header, 0)
        if drr_type in DATA_RECORDS:
            return True
        if drr_type == DRR_END:
            continue
        _skip(stream, _record_payload_length(header))


def _read_exactly(stream, size):
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            if data:
                raise ValueError("send stream ends inside a record")
            return b""
        data += chunk
    return data


def _skip(stream, size):
    while size > 0:
        chunk = stream.read(min(size, 1 << 20))
        if not chunk:
            raise ValueError("send stream ends inside a record payload")
        size -= len(chunk)


# ---------------------------------------------------------------- argv builders

def send_argv(dataset, snapshot, base=None, replicate=True, properties=True, intermediates=True, compressed=False,
              raw=False):
    """`zfs send` of dataset@snapshot, full or incremental from base (-I keeps intermediate snapshots).

    A base starting with '#' is a bookmark: only `-i` can start from one, and not in a replication stream.
    """
    bookmark = bool(base) and base.startswith("#")
    replicate = replicate and not bookmark
    argv = [ZFS, "send"]
    if replicate:
        argv.append("-R")
    if properties and not replicate:
        argv.append("-p")
    if compressed:
        argv.append("-c")
    if raw:
        argv.append("-w")
    if base:
        flag = "-I" if intermediates and not bookmark else "-i"
        argv += [flag, "%s%s" % (dataset, base) if bookmark else "%s@%s" % (dataset, base)]
    argv.append("%s@%s" % (dataset, snapshot))
    return argv


def resume_send_argv(token):
    """`zfs send -t`: the rest of an interrupted stream (the token carries the snapshot, offset and flags)."""
    return [ZFS, "send", "-t", token]


def recv_argv(dataset, force=True, resumable=False, exclude=()):
    """`zfs recv` into dataset; -F rolls back to the base (callers check for divergence first).

    resumable (-s) keeps an interrupted receive's state and a receive_resume_token; exclude (-x) lets the
    received dataset inherit those properties from its new parent instead of taking the stream's.
    """
    argv = [ZFS, "recv"]
    if force:
        argv.append("-F")
    if resumable:
        argv.append("-s")
    for prop in exclude:
        argv += ["-x", prop]
    argv.append(dataset)
    return argv


def parse_send_size(text):
    """The stream size `zfs send -nvP` reports: its last 'size<TAB><bytes>' line; ValueError if there is none."""
    sizes = [line.split("\t")[1] for line in text.splitlines() if line.startswith("size\t")]
    if not sizes or not sizes[-1].strip().isdigit():
        raise ValueError("no size line in the dry run's output")
    return int(sizes[-1])


def dry_run_argv(argv):
    """A `zfs send` argv as a dry run that prints its size (`-nvP`), sending nothing."""
    return argv[:2] + ["-nvP"] + argv[2:]


def parse_resume_info(text):
    """(toname, toguid) from `zfs send -nvP -t <token>` output ('toname = pool/ds@snap', 'toguid = 0x1f...')."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(" = ")
        if sep and key in ("toname", "toguid"):
            fields[key] = value.strip()
    if "toname" not in fields or "toguid" not in fields:
        raise ValueError("no toname/toguid in the resume token's description")
    return fields["toname"], int(fields["toguid"], 0)


def bound_identity(values):
    """(identity or None, guid) of a dataset from its `zfs get` values: what REPLICA_PROPERTY says it is
    (names.parse_replica_identity) and its own guid, which a true identity names."""
    return parse_replica_identity(values.get(REPLICA_PROPERTY)), values.get("guid", "")


def _token(values):
    """A dataset's receive_resume_token from its `zfs get` values; None when it holds no interrupted receive."""
    token = values.get("receive_resume_token", "-")
    return None if token in NO_TOKEN else token


def snapshot_argv(names):
    return [ZFS, "snapshot"] + list(names)


def get_argv(properties, names, depth=None, types=None):
    """`zfs get` in exact numbers; depth 1 adds the datasets' snapshots (and direct children), 2 theirs too;
    ``types`` (OpenZFS) names the kinds listed ("bookmark" adds bookmarks, which are listed only when asked for)."""
    argv = [ZFS, "get", "-Hp", "-o", "name,property,value"]
    if depth is not None:
        argv += ["-d", str(depth)]
    if types is not None:
        argv += ["-t", ",".join(types)]
    return argv + [",".join(properties)] + list(names)


SNAPSHOT_PROPERTIES = ("type", "guid", "createtxg", "creation")
SEND_OPTION_PROPERTIES = ("compression", "encryption")
LISTED_TYPES = ("filesystem", "volume", "snapshot", "bookmark")


class Features:
    """What the local ZFS can do: `zfs version` answers on OpenZFS (0.8 and later) and not on zfs-fuse.

    Every OpenZFS that has `zfs version` has all of the features below (resumable receive and `send -c`
    came in 0.7, raw sends and `recv -x` in 0.8, bookmarks and holds long before); zfs-fuse 0.7 has none
    of them that the engine uses (it has holds, but its test clean-up and tools expect none).
    """

    def __init__(self, openzfs_version=None):
        self.openzfs_version = openzfs_version

    @property
    def openzfs(self):
        return self.openzfs_version is not None

    multi_snapshot = openzfs
    written_property = openzfs
    resumable_receive = openzfs
    compressed_send = openzfs
    raw_send = openzfs
    receive_exclude = openzfs
    bookmarks = openzfs
    holds = openzfs

    def as_dict(self):
        names = ("multi_snapshot", "written_property", "resumable_receive", "compressed_send", "raw_send",
                 "receive_exclude", "bookmarks", "holds")
        return dict({"implementation": "openzfs" if self.openzfs else "zfs-fuse", "version": self.openzfs_version},
                    **{name: getattr(self, name) for name in names})


# The last answer of `zfs version` in this process: {fingerprint: Features}, one entry.  A preloaded engine
# (preload.py) probes before it forks its commands, and they take the answer with them; each command uses it only
# while its fingerprint still holds, so a `zfs` upgraded or a kernel module loaded since is probed again.
_PROBED = {}
MODULE_VERSION_FILE = "/sys/module/zfs/version"


def zfs_fingerprint():
    """What `zfs version`'s answer depends on: the `zfs` binary this process runs (device, inode, size, mtime,
    ctime) and the loaded kernel module's version (none: zfs-fuse, or OpenZFS's module not loaded yet, when `zfs
    version` fails).  None when there is no `zfs` on the PATH."""
    binary = shutil.which(ZFS)
    if binary is None:
        return None
    try:
        found = os.stat(binary)
    except OSError:
        return None
    try:
        with open(MODULE_VERSION_FILE, "rb") as module:
            module_version = module.read(256)
    except OSError:
        module_version = None
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns, module_version)


def probe_features(run):
    """Features from `zfs version` run by ``run``; with the real ``run_command`` the answer is remembered for this
    process (and a preload's commands) while zfs_fingerprint() stays the same."""
    fingerprint = zfs_fingerprint() if run is run_command else None
    if fingerprint is not None and fingerprint in _PROBED:
        return _PROBED[fingerprint]
    rc, out, _err = run([ZFS, "version"], None, False)
    features = Features(parse_version(out) if rc == 0 else None)
    if fingerprint is not None:
        _PROBED.clear()
        _PROBED[fingerprint] = features
    return features


def parse_version(text):
    """First line of `zfs version` ('zfs-2.1.11-1') -> '2.1.11-1'."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[len("zfs-"):] if first.startswith("zfs-") else first or None


class Zfs:
    """Local ZFS operations; `run` is injectable for unit tests (argv, input, check) -> (rc, out, err)."""

    def __init__(self, run=run_command):
        self.run = run
        self._features = None

    @property
    def features(self):
        if self._features is None:
            self._features = probe_features(self.run)
        return self._features

    def exists(self, name):
        rc, _out, _err = self.run([ZFS, "get", "-H", "-o", "value", "type", name], None, False)
        return rc == 0

    def get(self, properties, names, depth=None, types=None):
        _rc, out, _err = self.run(get_argv(properties, names, depth, types), None, True)
        return parse_get(out)

    def snapshots(self, dataset):
        """{snap: {guid, createtxg, creation}} of one dataset, in creation order."""
        return snapshot_tree(self.get(SNAPSHOT_PROPERTIES, [dataset], 1)).get(dataset, {})

    def child_volumes(self, parent, look):
        """{dataset: (snapshots, (identity or None, guid))} of those of parent's direct children (a storage's volumes)
        that ``look(dataset, (identity, guid))`` picks: their snapshots ({snap: info}, as snapshots() gives them), what
        REPLICA_PROPERTY says each one is (names.parse_replica_identity) and the dataset's own guid, which a true
        identity names.  Two `zfs get`: who every child is, then the snapshots of those picked only (on a storage
        of hundreds of guests, listing all their snapshots was most of the time of a job's prepare)."""
        props = self.get(("guid", REPLICA_PROPERTY), [parent], 1)
        bound = {ds: bound_identity(values) for ds, values in props.items() if ds.rpartition("/")[0] == parent and "@" not in ds}
        picked = [ds for ds, identity in bound.items() if look(ds, identity)]
        tree = snapshot_tree(self.get(SNAPSHOT_PROPERTIES, picked, 1)) if picked else {}
        return {ds: (tree.get(ds, {}), bound[ds]) for ds in picked}

    def volumes(self, datasets):
        """{dataset: (snapshots, (identity or None, guid), receive_resume_token or None)} of those of ``datasets``
        that exist (the first two as child_volumes() gives them; the token where an interrupted receive into the
        dataset can be resumed, OpenZFS), in one `zfs get` that reads no other dataset (its cost does not grow with
        the storage's guests).  ZfsError for any failure but a dataset that does not exist."""
        props = self.volume_props(datasets, SNAPSHOT_PROPERTIES + (("receive_resume_token",)
                                                                   if self.features.resumable_receive else ()))
        tree = snapshot_tree(props)
        return {ds: (tree.get(ds, {}), bound_identity(props[ds]), _token(props[ds])) for ds in datasets if ds in props}

    def volume_props(self, datasets, properties=SNAPSHOT_PROPERTIES):
        """parse_get() of ``properties`` and REPLICA_PROPERTY of those of ``datasets`` that exist and of their
        snapshots: one `zfs get -d 1`.  ZfsError for any failure but a dataset that does not exist."""
        argv = get_argv(tuple(properties) + (REPLICA_PROPERTY,), datasets, 1)
        rc, out, err = self.run(argv, None, False)
        if rc != 0 and (not err.strip() or any("dataset does not exist" not in line for line in err.splitlines()
                                               if line.strip())):
            raise ZfsError(argv, rc, err)
        return parse_get(out)

    def replica_identity(self, dataset):
        """(identity or None, guid) of one dataset (see child_volumes)."""
        values = self.get(("guid", REPLICA_PROPERTY), [dataset]).get(dataset, {})
        return parse_replica_identity(values.get(REPLICA_PROPERTY)), values.get("guid", "")

    def set_property(self, dataset, prop, value):
        self.run([ZFS, "set", "%s=%s" % (prop, value), dataset], None, True)

    def create(self, dataset, parents=True):
        self.run([ZFS, "create"] + (["-p"] if parents else []) + [dataset], None, True)

    def snapshot(self, datasets, name):
        """Snapshot all datasets as @name: atomically in one call where ZFS allows several.

        zfs-fuse takes one per call; if one fails, the ones already made are destroyed again
        and the error is raised, so the set is all-or-nothing either way.
        """
        names = ["%s@%s" % (ds, name) for ds in datasets]
        if self.features.multi_snapshot or len(names) == 1:
            self.run(snapshot_argv(names), None, True)
            return
        made = []
        try:
            for full in names:
                self.run(snapshot_argv([full]), None, True)
                made.append(full)
        except ZfsError:
            for full in made:
                self.destroy(full)
            raise

    def destroy(self, name, recursive=False):
        """Destroy a dataset, snapshot or bookmark (retrying briefly while zfs-fuse reports it busy).

        The engine's own holds go first: a snapshot is only destroyed here when the engine no longer needs it.
        """
        if self.features.holds and "#" not in name:
            self.release_holds(name, recursive)
        self.run_while_busy([ZFS, "destroy"] + (["-r"] if recursive else []) + [name])

    def rename(self, old, new):
        self.run_while_busy([ZFS, "rename", old, new])

    def run_while_busy(self, argv):
        """Run argv, retrying with back-off while ZFS answers "dataset is busy" (zfs-fuse after a receive)."""
        deadline = time.monotonic() + BUSY_RETRY_SECONDS
        delay = 0.05
        while True:
            rc, _out, err = self.run(argv, None, False)
            if rc == 0:
                return
            error = ZfsError(argv, rc, err)
            if not error.busy or time.monotonic() >= deadline:
                raise error
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def rollback(self, dataset, snapshot):
        self.run([ZFS, "rollback", "-r", "%s@%s" % (dataset, snapshot)], None, True)

    def hold(self, tag, snapshot):
        self.run([ZFS, "hold", tag, snapshot], None, True)

    def release(self, tag, snapshot):
        self.run([ZFS, "release", tag, snapshot], None, True)

    def keep_for_next_sync(self, snapshot):
        """Hold the snapshot the next incremental starts from (OpenZFS), so that nobody destroys it by accident."""
        if self.features.holds:
            rc, _out, err = self.run([ZFS, "hold", HOLD_TAG, snapshot], None, False)
            if rc != 0 and "tag already exists" not in err:
                raise ZfsError([ZFS, "hold", HOLD_TAG, snapshot], rc, err)

    def release_holds(self, name, recursive=False):
        """Release the engine's hold on snapshot name, or with recursive on every held snapshot under dataset name."""
        if "@" in name:
            held = [name]
        elif recursive:
            rc, out, _err = self.run([ZFS, "get", "-Hp", "-r", "-t", "snapshot", "-o", "name,value", "userrefs", name],
                                     None, False)
            held = [line.split("\t")[0] for line in out.splitlines() if rc == 0 and line.split("\t")[-1] not in ("0", "-")]
        else:
            return
        for snapshot in held:
            rc, _out, err = self.run([ZFS, "release", HOLD_TAG, snapshot], None, False)
            error = ZfsError([ZFS, "release", HOLD_TAG, snapshot], rc, err)
            if rc != 0 and not (error.no_such_hold or error.missing):
                raise error

    def holds(self, snapshot):
        """The hold tags on a snapshot."""
        _rc, out, _err = self.run([ZFS, "holds", "-H", snapshot], None, True)
        return sorted(line.split("\t")[1].strip() for line in out.splitlines() if line.strip())

    # ------------------------------------------------------------ OpenZFS stream features

    def send_options(self, dataset):
        """{"compressed", "raw"} for send_argv: raw for encrypted datasets (the data stays encrypted on the wire
        and on the target, which needs no key), -c where the data is stored compressed (sent as stored)."""
        return self.send_options_of(self.get(SEND_OPTION_PROPERTIES, [dataset])[dataset]
                                    if self.features.compressed_send else {})

    def send_options_of(self, props):
        """send_options() from the dataset's SEND_OPTION_PROPERTIES, read already."""
        if not self.features.compressed_send:
            return {"compressed": False, "raw": False}
        raw = self.features.raw_send and props.get("encryption", "off") not in ("off", "-")
        return {"compressed": not raw and props.get("compression", "off") not in ("off", "-"), "raw": raw}

    def resume_tokens(self, parent):
        """{dataset: receive_resume_token} of parent's direct children holding an interrupted receive."""
        if not self.features.resumable_receive:
            return {}
        found = self.get(["receive_resume_token"], [parent], 1)
        return {name: _token(props) for name, props in found.items()
                if name.rpartition("/")[0] == parent and "@" not in name and _token(props) is not None}

    def resume_target(self, token):
        """(snapshot, guid) the token continues; ZfsError if this node cannot resume it (the snapshot is gone)."""
        return self._resume_dry_run(token, parse_resume_info)

    def resume_size(self, token):
        """The bytes the rest of an interrupted stream would carry (`zfs send -nvP -t`)."""
        return self._resume_dry_run(token, parse_send_size)

    def _resume_dry_run(self, token, parse):
        argv = dry_run_argv(resume_send_argv(token))
        _rc, out, err = self.run(argv, None, True)
        try:
            return parse(out + "\n" + err)
        except ValueError as exc:
            raise ZfsError(argv, 0, "unreadable resume token: %s" % exc) from exc

    def abort_resume(self, dataset):
        """`zfs recv -A`: drop an interrupted receive's saved state (for a first receive, the partial dataset)."""
        self.run([ZFS, "recv", "-A", dataset], None, True)

    def bookmark(self, dataset, snapshot):
        """dataset#snapshot, a bookmark of dataset@snapshot (OpenZFS): a base for `send -i` after the snapshot is gone."""
        self.run([ZFS, "bookmark", "%s@%s" % (dataset, snapshot), "%s#%s" % (dataset, snapshot)], None, True)

    def bookmarks(self, dataset):
        """{name: {guid, createtxg, creation}} of dataset's bookmarks, oldest first ({} without bookmark support)."""
        if not self.features.bookmarks:
            return {}
        return bookmark_tree(self.get(SNAPSHOT_PROPERTIES, [dataset], 1, ("bookmark",)), dataset)

    def source_listing(self, dataset):
        """(snapshots, bookmarks, send options) of a dataset this node sends, as snapshots(), bookmarks() and
        send_options() give them, from one `zfs get` where ZFS has bookmarks (each `zfs` command is a process
        start: tenths of a second on a slow CPU); zfs-fuse has neither bookmarks nor send options to read."""
        if not self.features.bookmarks:
            return self.snapshots(dataset), {}, self.send_options(dataset)
        props = self.get(SNAPSHOT_PROPERTIES + SEND_OPTION_PROPERTIES, [dataset], 1, LISTED_TYPES)
        snaps = snapshot_tree({name: values for name, values in props.items() if "#" not in name}).get(dataset, {})
        return snaps, bookmark_tree(props, dataset), self.send_options_of(props.get(dataset, {}))

    def written_since(self, dataset, snapshot):
        """True if file data was written to dataset after dataset@snapshot (later snapshots are the caller's check).

        OpenZFS: the `written@<snap>` property answers "nothing" at once; zfs-fuse has no such property.  Otherwise
        take a temporary snapshot and look for data records in the incremental stream between the two.
        """
        if self.features.written_property:
            props = self.get(["written@" + snapshot], [dataset])
            if int(props[dataset]["written@" + snapshot]) == 0:
                return False
            # Something was written, but reading files with atime=on writes too (metadata only): only data
            # records in the delta count, as on zfs-fuse (found by the OpenZFS tier: a replica read once was
            # kept aside as "modified").
        probe = probe_snapshot(os.getpid())
        self.run(snapshot_argv(["%s@%s" % (dataset, probe)]), None, True)
        try:
            return self._stream_has_data(send_argv(dataset, probe, base=snapshot, replicate=False, properties=False,
                                                   intermediates=False))
        finally:
            self.destroy("%s@%s" % (dataset, probe))

    def _stream_has_data(self, argv):
        env = dict(os.environ)
        env.update(C_LOCALE_ENV)
        # pylint: disable-next=ansible-bad-function
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            found = stream_writes_data(proc.stdout)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            _out, err = proc.communicate()
        if not found and proc.returncode != 0:
            raise ZfsError(argv, proc.returncode, err.decode("utf-8", "replace"))
        return found

    # ------------------------------------------------------------ estimates (run --check)

    def send_estimate(self, dataset, base=None, options=None):
        """(bytes or None, how) for a run's send of dataset from ``base`` (None: full; '#name': a bookmark) to a new
        snapshot of its data now, found without changing anything.

        A new snapshot cannot be sized before it exists: OpenZFS sizes the stream up to the newest snapshot there is
        with a dry run (`zfs send -nvP`) and adds what was written since (`written@<newest>`).  zfs-fuse has neither:
        a full stream is about the space the volume and its snapshots use; a delta cannot be told (None)."""
        snaps = self.snapshots(dataset)
        newest = list(snaps)[-1] if snaps else None
        if self.features.openzfs:
            if newest is None:
                return int(self.get(["referenced"], [dataset])[dataset]["referenced"]), "the space its data uses"
            since = int(self.get(["written@" + newest], [dataset])[dataset]["written@" + newest])
            if base is not None and base.lstrip("#") == newest:
                return since, "written since '%s'" % newest
            argv = dry_run_argv(send_argv(dataset, newest, base, **(options or {})))
            _rc, out, err = self.run(argv, None, True)
            return parse_send_size(out + "\n" + err) + since, "zfs send -nvP up to '%s' and written since" % newest
        if base is None:
            used = self.get(["usedbydataset", "usedbysnapshots"], [dataset])[dataset]
            return int(used["usedbydataset"]) + int(used["usedbysnapshots"]), "the space it and its snapshots use"
        return None, "zfs-fuse cannot size a delta without taking a snapshot"

    def copy_local_snapshot(self, source_snapshot, target_dataset, replicate=False):
        """Independent local copy of one snapshot's data as a new dataset; with ``replicate`` the dataset's older
        snapshots come along (`send -R`: same names and guids), else none."""
        env = dict(os.environ)
        env.update(C_LOCALE_ENV)
        dataset, snap = split_snapshot(source_snapshot)
        # pylint: disable-next=ansible-bad-function
        send = subprocess.Popen(send_argv(dataset, snap, replicate=replicate), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        # pylint: disable-next=ansible-bad-function
        recv = subprocess.run(recv_argv(target_dataset, force=False), stdin=send.stdout, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, check=False)
        send.stdout.close()
        _out, send_err = send.communicate()
        if send.returncode != 0:
            raise ZfsError(send.args, send.returncode, send_err.decode("utf-8", "replace"))
        if recv.returncode != 0:
            raise ZfsError(recv.args, recv.returncode, recv.stderr.decode("utf-8", "replace"))


# ---------------------------------------------------------------- looking only

# `zfs` subcommands that change something: a LookingZfs records them instead of running them.
CHANGING = frozenset(("create", "destroy", "snapshot", "snap", "rollback", "clone", "promote", "rename", "bookmark",
                      "set", "inherit", "hold", "release", "recv", "receive", "mount", "unmount", "upgrade"))


class LookingZfs(Zfs):
    """The ZFS of ``zfs`` for a plan (run --check): every read is real, every change is recorded in ``changes``
    (its argv) and answered as done, so that code written for a run walks through unchanged and changes nothing.

    What a run would only learn from a change is answered conservatively: whether data was written after a
    snapshot, where only a probe snapshot would tell (zfs-fuse), is taken as yes."""

    def __init__(self, zfs):
        super().__init__(run=self._looking_run)
        self.real_run = zfs.run
        self._features = zfs._features  # pylint: disable=protected-access
        self.changes = []

    def _looking_run(self, argv, input_bytes=None, check=True):
        if len(argv) > 1 and argv[1] in CHANGING:
            self.changes.append(list(argv))
            return 0, "", ""
        return self.real_run(argv, input_bytes, check)

    def written_since(self, dataset, snapshot):
        if self.features.written_property:
            return int(self.get(["written@" + snapshot], [dataset])[dataset]["written@" + snapshot]) != 0
        return True

    def copy_local_snapshot(self, source_snapshot, target_dataset, replicate=False):
        self.changes.append(["copy", source_snapshot, target_dataset] + (["-R"] if replicate else []))
