# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Coverage-guided fuzzing of the receiving side (serve.py, protocol.py, authority.py, receiver.py,
receive_stream.py), with atheris.

What is fuzzed: the public entry points of the receiver, exactly as the SSH forced command drives them:
``serve.main(argv, environ, stdin, stdout, receiver)`` with SSH_ORIGINAL_COMMAND in ``environ`` (``receive
key=value ...`` with a stream on stdin, a control operation with one JSON request on stdin, or ``session`` with JSON
lines, some followed by inline stream bytes).  ``handle``, ``session`` and ``answer`` are reached through it.

The node behind it is real as far as the receiver can tell, but harmless: a temporary confdir and statedir holding a
small valid cluster configuration written by config.py (generation 7, this node is ``node2``), and a ZFS layer that is
the real ``zfs.Zfs`` class driven by an in-memory emulator of the ``zfs`` commands it runs (``FakeZfs``).  Every
process the receiver would start (``zfs recv``, ``zfs send``) goes to the same emulator; any other process, any SSH
connection (cluster.catch_up is replaced by a local adoption of a prepared generation 8) and any signal to another
process is refused and reported.  Nothing on the machine is touched.

One input is one SSH session (``Case``)::

    <flavor> <peer>\\n            flavor "openzfs" or "zfs-fuse" (the node's ZFS); peer: the calling node
    <SSH_ORIGINAL_COMMAND>\\n
    <stdin bytes>

The oracle (``check``), every violation of which is a defect:

1. crash: no exception may leave ``main()`` (the peer would get a traceback instead of its JSON answer);
2. reply: every reply is exactly one JSON line holding an object with ``ok`` true or false, one per request, and
   main's exit code says the same (0 for ok; a session ends with 0, or 1 after a stream-framing refusal);
3. malformed: every ZFS command that changes something (destroy, rollback, recv, snapshot, hold, release, ...) must
   come from a request that passes the strict validator below, which is written independently of the engine, and
   its own arguments must pass it too: job ID ``^[1-9][0-9]{2,8}-[0-9]{1,9}$`` whose guest is the request's guest;
   guest and generation plain ASCII integers (JSON numbers, never booleans); the source a node name; volumes
   ``<storage>:<name>`` of a configured zfspool storage, names of ``[A-Za-z0-9_.-]`` with no ``..``, ``/``, ``@``,
   ``%``, whitespace or leading ``-``; the snapshots it destroys, rolls back or holds the job's own
   ``__replicate_<job>_<epoch>__`` (or a temporary one the same request made); JSON requests valid UTF-8 without
   duplicate keys or non-finite numbers; never a volume of a guest this node owns (DESIGN safety rule 1);
4. refused-after-acting: a request refused as invalid (``invalid-argument``/``invalid-operation``) must have
   changed nothing (DESIGN rule 8: arguments are validated before use).

When the receiver knows who is calling (the ``peer`` argument being added to ``main``/``Receiver``; detected from their
signatures and passed when accepted), the oracle checks DESIGN rule 3 too: the caller owns the guest of every change,
and a volume received into, rolled back or resumed belongs to that guest.

Defects already reported (``KNOWN``) are counted, not failed, unless ``--strict``: each has a strict xfail test in
tests/unit/plugins/module_utils/test_receiver_fuzz_findings.py; when it is fixed, remove its entry here.  A new kind of
defect is recorded once (its input as ``defect-<signature>-<hash>`` in the artifacts directory) and the run goes on,
so that one run reports every kind it meets; the run then fails.  ``--stop-on-defect`` stops at the first instead.

To reach the receiver's paths the emulator injects failures from the stream's first bytes (``FAIL``, ``FAILCREATED``,
``ENOSPC``, ``PARTIAL``, ``KILLED``; ``EPIPE`` anywhere in the input makes ``zfs recv`` die at once), the calling node
``node9`` makes catching up with a newer generation fail, one volume has a receive left by a run that was cut off and
that does not end (the harness holds its receive lock; the receiver waits 0 s for it), and protocol.MAX_REQUEST is
lowered to 4096 bytes during the run so that its size checks are within libFuzzer's -max_len.  Durability (fsync)
is switched off in the harness process: it is not what is fuzzed.

Run (from the work tree, with PYTHONPATH as the Makefile sets it)::

    python tests/fuzz/fuzz_receiver.py --seconds 600 [--corpus build/fuzz/corpus] [--strict] [--stop-on-defect]
    python tests/fuzz/fuzz_receiver.py --replay FILE...       # one input each, deterministic: replies, changes, verdict
    python tests/fuzz/fuzz_receiver.py --coverage-only DIR... # line coverage of the receiver reached by corpora

The run relays libFuzzer's INITED/DONE lines and the new defects, then prints a summary (also in <workdir>/summary.json):
executions and executions per second, libFuzzer's ``cov:``/``ft:`` at the start (seeds) and at the end (edges and
features of the instrumented engine modules), the corpus size, the known and new defects hit, and the line coverage
of the receiving side's modules and of the receiver operations in cluster.py that the final corpus reaches (replayed
in a fresh process under a line tracer, without atheris).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import fcntl
import fnmatch
import hashlib
import inspect
import io
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for _path in (os.path.join(REPO, "build", "collections"), REPO):
    if _path not in sys.path:
        sys.path.insert(0, _path)

PKG = "ansible_collections.storage.replication.plugins.module_utils"
ENGINE = {}  # name -> module, filled by load_engine()

LOCAL_NODE = "node2"
GENERATION = 7
NOW = 1700003600.0
MAX_LEN = 8192
LEFTOVER_RECEIVE = "local-zfs:subvol-300-disk-1"  # its receive lock is held throughout (a receive that does not end)
MAX_REQUEST = 4096  # protocol.MAX_REQUEST (4 MiB) during the run, so that its size checks are reachable

# ---------------------------------------------------------------------------------------------------------------
# Defects found and reported: signature -> the xfail test that reproduces it.  The run counts them without stopping.

KNOWN = {  # fnmatch patterns of signatures -> the xfail test that reproduces it (none open today: every finding of
    # the first runs is fixed, and its test in test_receiver_fuzz_findings.py guards it)
}


def is_known(signature):
    return any(fnmatch.fnmatchcase(signature, pattern) for pattern in KNOWN)


# ---------------------------------------------------------------------------------------------------------------
# The engine, imported once (instrumented by atheris in the fuzzing worker)

def load_engine():
    if ENGINE:
        return ENGINE
    import importlib  # pylint: disable=import-outside-toplevel
    for name in ("config", "state", "zfs", "protocol", "authority", "receive_stream", "receiver", "serve",
                 "cluster", "migrate", "names", "quorum"):
        ENGINE[name] = importlib.import_module("%s.%s" % (PKG, name))
    return ENGINE


def accepts(function, name):
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def peer_supported():
    engine = load_engine()
    return accepts(engine["receiver"].Receiver.__init__, "peer") or accepts(engine["serve"].main, "peer")


# ---------------------------------------------------------------------------------------------------------------
# The cluster the receiver judges requests against

def cluster_config(generation=GENERATION):
    configmod = load_engine()["config"]
    cfg = configmod.ClusterConfig(generation=generation)
    host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJiK4nz/cnY3cyAUYjpq4W13HzgqcR6J+KIvhTohaTcD"
    for index, name in enumerate(("node1", "node2", "node3"), 1):
        cfg.nodes[name] = configmod.Node(name=name, address="10.0.0.%d" % index, host_key=host_key)
    cfg.storages["local-zfs"] = configmod.Storage(id="local-zfs", pool="rpool/data")
    cfg.storages["tank"] = configmod.Storage(id="tank", pool="tank/vols")
    cfg.storages["gone-zfs"] = configmod.Storage(id="gone-zfs", pool="gone/data")  # its dataset does not exist here
    cfg.storages["backup-dir"] = configmod.Storage(id="backup-dir", type="dir", pool="var/lib/vz")  # not replicatable
    guests = ((100, "vm", "node1", ["local-zfs:vm-100-disk-0", "tank:vm-100-disk-1", "local-zfs:vm-100-disk-2"]),
              (200, "vm", "node2", ["local-zfs:vm-200-disk-0"]),           # owned by this node
              (300, "ct", "node3", ["local-zfs:subvol-300-disk-0", "local-zfs:subvol-300-disk-1"]),
              (400, "vm", "node1", ["local-zfs:vm-400-disk-0"]))           # first receive interrupted (OpenZFS)
    for gid, gtype, node, volumes in guests:
        cfg.guests[gid] = configmod.Guest(id=gid, type=gtype, node=node, volumes=volumes)
    for job, target in (("100-0", "node2"), ("200-0", "node1"), ("300-0", "node2"), ("400-0", "node2")):
        cfg.jobs[job] = configmod.Job(id=job, target=target)
    return cfg


def next_generation_config():
    """What a peer holds at generation 8: guest 200 failed over to node1 (its job now comes back here, to node2)."""
    cfg = cluster_config(GENERATION + 1)
    cfg.guests[200].node = "node1"
    cfg.jobs["200-0"].target = "node2"
    return cfg


def zfs_template():
    """The datasets of this node: {name: {"snaps": {snap: info}, "written", "token", "holds", "bookmarks"}}."""
    txg = [10]

    def snaps(*names):
        result = OrderedDict()
        for name in names:
            txg[0] += 1
            result[name] = {"guid": str(1000 + txg[0]), "createtxg": txg[0], "creation": 1700000000 + txg[0]}
        return result

    def ds(*names, written=False, token=None):
        return {"snaps": snaps(*names), "written": written, "token": token, "holds": {}, "bookmarks": OrderedDict()}
    datasets = {name: ds() for name in ("rpool", "rpool/data", "tank", "tank/vols")}
    datasets["rpool/data/vm-100-disk-0"] = ds("__replicate_100-0_1700000000__", "__replicate_100-0_1700000900__",
                                              "__replicate_100-0_1700001800__")  # the last one never recorded
    datasets["tank/vols/vm-100-disk-1"] = ds("__replicate_100-0_1700000900__", "__replicate_100-999999999_1700000950__",
                                             written=True)  # changed here; a migration's copy job left a snapshot
    datasets["rpool/data/vm-100-disk-9"] = ds("__replicate_100-0_1700000000__")  # removed from the guest: stale
    datasets["rpool/data/vm-200-disk-0"] = ds("__replicate_200-0_1700000000__")  # the guest this node owns
    datasets["rpool/data/subvol-300-disk-0"] = ds("__replicate_300-0_1700000000__", "before-upgrade")
    datasets["rpool/data/vm-400-disk-0"] = ds(token="1-e3f1a2b-c8-789c")  # an interrupted first receive
    datasets["rpool/data/vm-%d-disk-0" % 999999999] = ds("__replicate_999999999-999999999_1700000000__")
    datasets["rpool/data/subvol-300-disk-0"]["holds"]["__replicate_300-0_1700000000__"] = {"backup-tool"}
    datasets["rpool/data/subvol-300-disk-1"] = ds()  # a receive a cut run left into it still runs (LEFTOVER_RECEIVE)
    datasets["rpool/data/vm-100-disk-0"]["bookmarks"]["__replicate_100-0_1700000000__"] = {
        "guid": "1011", "createtxg": 11, "creation": 1700000011}
    return datasets, txg[0]


# ---------------------------------------------------------------------------------------------------------------
# The ZFS emulator

MUTATING = frozenset(("destroy", "rollback", "recv", "receive", "snapshot", "hold", "release", "rename", "set",
                      "inherit", "create", "clone", "promote", "bookmark", "allow", "unallow", "mount", "unmount",
                      "upgrade", "redact", "change-key", "load-key", "unload-key"))


@dataclasses.dataclass
class Command:
    argv: list
    request: int           # index of the request (reply) it belongs to
    rc: int
    cfg: object            # the configuration in force when it ran
    existed: dict          # {dataset: snapshot names} of the datasets it named, before it ran

    @property
    def mutating(self):
        return len(self.argv) > 1 and self.argv[1] in MUTATING


class FakeZfs:
    """Runs `zfs` argv lists against an in-memory pool, as the real command would answer them (LC_ALL=C)."""

    def __init__(self, harness):
        self.harness = harness
        self.openzfs = False
        self.datasets = {}
        self.txg = 0
        self.journal = []

    def reset(self, openzfs):
        self.openzfs = openzfs
        template, txg = self.harness.zfs_template
        self.datasets = copy.deepcopy(template)
        self.txg = txg
        self.journal = []

    # -- helpers
    def _tick(self):
        self.txg += 1
        return {"guid": str(5000 + self.txg), "createtxg": self.txg, "creation": int(NOW) + self.txg}

    def _children(self, name):
        prefix = name + "/"
        return sorted(d for d in self.datasets if d.startswith(prefix))

    def _exists(self, name):
        dataset, sep, snap = name.partition("@")
        if dataset not in self.datasets:
            return False
        return not sep or snap in self.datasets[dataset]["snaps"]

    @staticmethod
    def _missing(name):
        return 1, "", "cannot open '%s': dataset does not exist\n" % name

    # -- the Zfs.run interface
    def run(self, argv, input_bytes=None, check=True):
        del input_bytes
        argv = list(argv)
        snapshot_before = self._names_before(argv)
        rc, out, err = self.dispatch(argv)
        self.journal.append(Command(argv, self.harness.request_index(), rc, self.harness.config_now(), snapshot_before))
        if check and rc != 0:
            raise load_engine()["zfs"].ZfsError(argv, rc, err)
        return rc, out, err

    def _names_before(self, argv):
        existed = {}
        for name in argv[2:]:
            if isinstance(name, str) and not name.startswith("-"):
                dataset = name.partition("@")[0].partition("#")[0]
                if dataset in self.datasets:
                    existed[dataset] = list(self.datasets[dataset]["snaps"])
        return existed

    def dispatch(self, argv):
        if len(argv) < 2 or argv[0] != "zfs" or not all(isinstance(a, str) for a in argv):
            return 2, "", "unrecognized command\n"
        verb, args = argv[1], argv[2:]
        handler = getattr(self, "do_" + verb.replace("-", "_"), None)
        if handler is None:
            return 2, "", "unrecognized command '%s'\n" % verb
        try:
            return handler(args)
        except (IndexError, ValueError, KeyError) as exc:
            return 2, "", "usage: %s (%s)\n" % (verb, exc)

    def do_version(self, args):
        del args
        if self.openzfs:
            return 0, "zfs-2.1.11-1\nzfs-kmod-2.1.11-1\n", ""
        return 2, "", "unrecognized command 'version'\n"

    def do_get(self, args):
        opts, rest = {}, list(args)
        while rest and rest[0].startswith("-"):
            flag = rest.pop(0)
            if flag in ("-o", "-d", "-t", "-s"):
                opts[flag] = rest.pop(0)
            else:
                for letter in flag[1:]:
                    opts["-" + letter] = True
        props, names = rest[0].split(","), rest[1:]
        if opts.get("-o") == "value":  # Zfs.exists
            if not all(self._exists(n) for n in names):
                return self._missing(names[0])
            return 0, "".join(("snapshot" if "@" in n else "filesystem") + "\n" for n in names), ""
        if opts.get("-r"):  # Zfs.release_holds: the held snapshots below a dataset
            if opts.get("-t") != "snapshot" or props != ["userrefs"]:
                return 2, "", "bad property list\n"
            lines = []
            for name in names:
                if name not in self.datasets:
                    return self._missing(name)
                for dataset in [name] + self._children(name):
                    for snap in self.datasets[dataset]["snaps"]:
                        refs = len(self.datasets[dataset]["holds"].get(snap, ()))
                        lines.append("%s@%s\t%d" % (dataset, snap, refs))
            return 0, "".join(l + "\n" for l in lines), ""
        depth = int(opts.get("-d", "0"))
        lines = []
        for name in names:
            if not self._exists(name):
                return self._missing(name)
            for entity in self._within(name, depth):
                for prop in props:
                    value = self._property(entity, prop)
                    if value is None:
                        return 1, "", "cannot get property '%s' of '%s'\n" % (prop, entity)
                    lines.append("%s\t%s\t%s" % (entity, prop, value))
        return 0, "".join(l + "\n" for l in lines), ""

    def _within(self, name, depth):
        if "@" in name:
            return [name]
        found = []
        for dataset in [name] + self._children(name):
            level = dataset.count("/") - name.count("/")
            if level <= depth:
                found.append(dataset)
            if level + 1 <= depth:
                found += ["%s@%s" % (dataset, s) for s in self.datasets[dataset]["snaps"]]
        return found

    def _property(self, entity, prop):
        dataset, sep, snap = entity.partition("@")
        info = self.datasets[dataset]["snaps"].get(snap) if sep else None
        if prop == "type":
            return "snapshot" if sep else "filesystem"
        if prop == "guid" and not sep:  # every dataset its own guid, as ZFS gives one
            return str(int(hashlib.sha256(dataset.encode()).hexdigest()[:12], 16))
        if prop in ("guid", "createtxg", "creation"):
            return str(info[prop]) if info else str({"guid": 7, "createtxg": 1, "creation": 1699990000}[prop])
        if prop == "receive_resume_token" and self.openzfs:
            return "-" if sep else (self.datasets[dataset]["token"] or "-")
        if prop in ("compression", "encryption"):
            return "off"
        if ":" in prop:  # a user property (the replica identity): unset is "-", as zfs prints it
            return "-" if sep else self.datasets[dataset].get("user", {}).get(prop, "-")
        if prop in ("used", "referenced", "usedbysnapshots", "available"):  # space figures of restore points
            return str({"used": 4096, "referenced": 65536, "usedbysnapshots": 8192, "available": 1 << 30}[prop])
        if prop == "userrefs":
            return str(len(self.datasets[dataset]["holds"].get(snap, ()))) if sep else "-"
        if prop == "written" and self.openzfs:  # since the newest snapshot; a snapshot's: since the one before it
            return "8192" if sep or self.datasets[dataset]["written"] else "0"
        if prop.startswith("written@") and self.openzfs and not sep:
            if prop[len("written@"):] not in self.datasets[dataset]["snaps"]:
                return None
            return "8192" if self.datasets[dataset]["written"] else "0"
        return None

    def do_set(self, args):
        assignment, name = args
        prop, sep, value = assignment.partition("=")
        if not sep or ":" not in prop:
            return 2, "", "bad property assignment '%s'\n" % assignment
        if name not in self.datasets:
            return self._missing(name)
        self.datasets[name].setdefault("user", {})[prop] = value
        return 0, "", ""

    def do_destroy(self, args):
        recursive = args[:1] == ["-r"]
        names = args[1:] if recursive else args
        if len(names) != 1:
            return 2, "", "usage: destroy\n"
        name = names[0]
        dataset, sep, snap = name.partition("@")
        if "#" in dataset:
            dataset, _sep, mark = dataset.partition("#")
            if dataset not in self.datasets or mark not in self.datasets[dataset]["bookmarks"]:
                return self._missing(name)
            del self.datasets[dataset]["bookmarks"][mark]
            return 0, "", ""
        if dataset not in self.datasets:
            return self._missing(name)
        if sep:
            if snap not in self.datasets[dataset]["snaps"]:
                return 1, "", "could not find any snapshots to destroy; check snapshot names.\n"
            if self.datasets[dataset]["holds"].get(snap, set()) - {"storage-replication"}:
                return 1, "", "cannot destroy snapshot %s: dataset is busy\n" % name
            del self.datasets[dataset]["snaps"][snap]
            self.datasets[dataset]["holds"].pop(snap, None)
            return 0, "", ""
        for gone in [dataset] + self._children(dataset):
            held = [snap for snap, tags in self.datasets[gone]["holds"].items() if tags - {"storage-replication"}]
            if held and recursive:
                return 1, "", "cannot destroy snapshot %s@%s: dataset is busy\n" % (gone, held[0])
        if not recursive and (self.datasets[dataset]["snaps"] or self._children(dataset)):
            return 1, "", "cannot destroy '%s': filesystem has children\nuse '-r' to destroy the following " \
                          "datasets:\n" % dataset
        for gone in [dataset] + self._children(dataset):
            del self.datasets[gone]
        return 0, "", ""

    def do_rollback(self, args):
        if len(args) != 2 or args[0] != "-r" or "@" not in args[1]:
            return 2, "", "usage: rollback\n"
        dataset, _sep, snap = args[1].partition("@")
        if not self._exists(args[1]):
            return self._missing(args[1])
        snaps = self.datasets[dataset]["snaps"]
        base = snaps[snap]["createtxg"]
        for name in [s for s, i in snaps.items() if i["createtxg"] > base]:
            del snaps[name]
        self.datasets[dataset]["written"] = False
        return 0, "", ""

    def do_recv(self, args):
        if args[:1] == ["-A"] and len(args) == 2:
            dataset = args[1]
            entry = self.datasets.get(dataset)
            if entry is None or not entry["token"]:
                return 1, "", "'%s' does not have any resumable receive state to abort\n" % dataset
            entry["token"] = None
            if not entry["snaps"]:
                del self.datasets[dataset]
            return 0, "", ""
        return 2, "", "usage: receive (the emulator takes streams through Popen)\n"

    do_receive = do_recv

    def receive_stream(self, argv, data):
        """`zfs recv [-F] [-s] [-x prop] dataset` fed with data: (rc, stderr)."""
        dataset = argv[-1]
        parent = dataset.rpartition("/")[0]
        if data.startswith(b"KILLED"):
            return -9, ""
        if data.startswith(b"FAILCREATED") and parent in self.datasets:  # failed after creating the dataset
            self.datasets.setdefault(dataset, {"snaps": OrderedDict(), "written": False, "token": None, "holds": {},
                                               "bookmarks": OrderedDict()})
            return 1, "cannot receive new filesystem stream: checksum mismatch\n"
        if data.startswith(b"FAIL"):
            return 1, "cannot receive new filesystem stream: invalid backup stream\n"
        if data.startswith(b"ENOSPC"):
            return 1, "cannot receive incremental stream: out of space\n"
        if parent not in self.datasets:
            return 1, "cannot open '%s': dataset does not exist\n" % parent
        if data.startswith(b"PARTIAL"):
            if "-s" in argv:
                entry = self.datasets.setdefault(dataset, {"snaps": OrderedDict(), "written": False, "token": None,
                                                           "holds": {}, "bookmarks": OrderedDict()})
                entry["token"] = "1-partial-%d" % self.txg
            return 1, "cannot receive: checksum mismatch or incomplete stream.\nPartially received snapshot is " \
                      "saved.\n"
        entry = self.datasets.get(dataset)
        if entry is None:
            entry = self.datasets[dataset] = {"snaps": OrderedDict(), "written": False, "token": None, "holds": {},
                                              "bookmarks": OrderedDict()}
        entry["token"] = None
        entry["snaps"]["__received_%d__" % self.txg] = self._tick()
        entry["written"] = False
        return 0, ""

    def do_snapshot(self, args):
        for name in args:
            dataset, sep, snap = name.partition("@")
            if not sep or dataset not in self.datasets:
                return self._missing(name)
            if snap in self.datasets[dataset]["snaps"]:
                return 1, "", "cannot create snapshot '%s': dataset already exists\n" % name
        for name in args:
            dataset, _sep, snap = name.partition("@")
            self.datasets[dataset]["snaps"][snap] = self._tick()
        return 0, "", ""

    def _holds(self, name, create=False):
        """The hold tags of snapshot ``name`` (with ``create``, a set stored for it)."""
        dataset, _sep, snap = name.partition("@")
        holds = self.datasets[dataset]["holds"]
        return holds.setdefault(snap, set()) if create else holds.get(snap, set())

    def do_hold(self, args):
        tag, name = args
        if not self._exists(name) or "@" not in name:
            return self._missing(name)
        holds = self._holds(name, create=True)
        if tag in holds:
            return 1, "", "cannot hold snapshot '%s': tag already exists on this dataset\n" % name
        holds.add(tag)
        return 0, "", ""

    def do_release(self, args):
        tag, name = args
        if not self._exists(name):
            return self._missing(name)
        holds = self._holds(name)
        if tag not in holds:
            return 1, "", "cannot release hold from snapshot '%s': no such tag on this dataset\n" % name
        holds.discard(tag)
        return 0, "", ""

    def do_holds(self, args):
        name = args[-1]
        if not self._exists(name):
            return self._missing(name)
        tags = sorted(self._holds(name))
        return 0, "".join("%s\t%s\tThu Jan  1 00:00 2026\n" % (name, t) for t in tags), ""

    def do_list(self, args):
        name = args[-1]
        if "bookmark" not in args or name not in self.datasets:
            return self._missing(name)
        marks = self.datasets[name]["bookmarks"]
        return 0, "".join("%s#%s\t%s\t%d\t%d\n" % (name, m, i["guid"], i["createtxg"], i["creation"])
                          for m, i in marks.items()), ""

    def do_rename(self, args):
        old, new = args[-2:]
        if old not in self.datasets:
            return self._missing(old)
        self.datasets[new] = self.datasets.pop(old)
        return 0, "", ""

    def do_bookmark(self, args):
        source, mark = args
        if not self._exists(source):
            return self._missing(source)
        dataset, _sep, snap = source.partition("@")
        self.datasets[dataset]["bookmarks"][mark.partition("#")[2]] = dict(self.datasets[dataset]["snaps"][snap])
        return 0, "", ""

    def send_stream(self, argv):
        """A send stream: BEGIN, a WRITE record if the dataset was written to since the base, END."""
        target = argv[-1]
        dataset = target.partition("@")[0]
        if not self._exists(target):
            return 1, b"", ("cannot open '%s': dataset does not exist\n" % target).encode()
        zfsmod = load_engine()["zfs"]
        records = [zfsmod.DRR_BEGIN]
        if self.datasets[dataset]["written"]:
            records.append(zfsmod.DRR_WRITE)
        records.append(zfsmod.DRR_END)
        stream = b""
        for drr_type in records:
            header = bytearray(312)
            struct.pack_into("<II", header, 0, drr_type, 0)
            stream += bytes(header)
        return 0, stream, b""


class FakeProcess:
    """subprocess.Popen for `zfs send` and `zfs recv`.  A receive's stdin is a real pipe (the receiver splices into
    it, as into the real `zfs recv`), drained by a thread and judged on communicate(); with "EPIPE" anywhere in the
    session's input the receive dies at once (the writer gets EPIPE).  Anything but zfs is refused and reported."""

    def __init__(self, harness, argv, stdin=None, stdout=None, stderr=None, **_kwargs):
        self.harness = harness
        self.args = argv
        self.returncode = None
        self.pid = 0
        argv = list(argv) if isinstance(argv, (list, tuple)) else [argv]
        self.argv = argv
        self.stdin = None
        self._reader = None
        self._chunks = []
        self._stdout_data = b""
        self._stderr = b""
        if not argv or argv[0] != "zfs" or len(argv) < 2 or argv[1] not in ("send", "recv", "receive"):
            harness.spawned.append(argv)
            self._stderr = b"harness: process refused\n"
            self._final = 127
        elif argv[1] == "send":
            self._final, self._stdout_data, self._stderr = harness.zfs.send_stream(argv)
        else:
            self._final = None
        if stdin == subprocess.PIPE:
            read_fd, write_fd = os.pipe()
            self.stdin = os.fdopen(write_fd, "wb")
            if harness.case is not None and b"EPIPE" in harness.case.stdin:
                os.close(read_fd)
                self._final = 1 if self._final is None else self._final
                self._stderr = self._stderr or b"cannot receive: invalid stream (bad magic number)\n"
            else:
                self._reader = threading.Thread(target=self._drain, args=(read_fd,), daemon=True)
                self._reader.start()
        self.stdout = io.BytesIO(self._stdout_data) if stdout == subprocess.PIPE else None
        self.stderr = io.BytesIO(self._stderr) if stderr == subprocess.PIPE else None

    def _drain(self, fd):
        try:
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                self._chunks.append(chunk)
        finally:
            os.close(fd)

    def _finish(self):
        if self.returncode is not None:
            return
        if self._reader is not None:
            self._reader.join()
        if self._final is None:  # a receive: judge what it was fed
            before = self.harness.zfs._names_before(self.argv)  # pylint: disable=protected-access
            rc, err = self.harness.zfs.receive_stream(self.argv, b"".join(self._chunks))
            self.harness.zfs.journal.append(Command(self.argv, self.harness.request_index(), rc,
                                                    self.harness.config_now(), before))
            self._final, self._stderr = rc, err.encode()
        elif self.argv[1:2] in (["recv"], ["receive"]):
            self.harness.zfs.journal.append(Command(self.argv, self.harness.request_index(), self._final,
                                                    self.harness.config_now(), {}))
        self.returncode = self._final

    def communicate(self, input=None, timeout=None):  # pylint: disable=redefined-builtin
        del input, timeout
        if self.stdin is not None and not self.stdin.closed:
            try:
                self.stdin.close()
            except OSError:
                pass
        self._finish()
        return b"", self._stderr

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        del timeout
        self._finish()
        return self.returncode

    def kill(self):
        pass

    terminate = kill

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.communicate()


def fake_subprocess_run(harness):
    def run(argv, input=None, stdout=None, stderr=None, check=False, **_kwargs):  # pylint: disable=redefined-builtin
        del stdout, stderr
        argv = list(argv)
        if argv[:2] in (["zfs", "recv"], ["zfs", "receive"]) and "-A" not in argv:
            before = harness.zfs._names_before(argv)  # pylint: disable=protected-access
            rc, err = harness.zfs.receive_stream(argv, input if isinstance(input, bytes) else b"copy")
            harness.zfs.journal.append(Command(argv, harness.request_index(), rc, harness.config_now(), before))
            out = b""
        elif argv[:1] == ["zfs"]:
            rc, out, err = harness.zfs.run(argv, input, False)
            out = out.encode()
        else:
            harness.spawned.append(argv)
            rc, out, err = 127, b"", "harness: process refused\n"
        result = subprocess.CompletedProcess(argv, rc, out, err.encode())
        if check and rc != 0:
            raise subprocess.CalledProcessError(rc, argv, out, err.encode())
        return result
    return run


# ---------------------------------------------------------------------------------------------------------------
# One SSH session

@dataclasses.dataclass
class Case:
    flavor: str
    peer: str
    command: str
    stdin: bytes

    @classmethod
    def parse(cls, data):
        header, _sep, rest = data.partition(b"\n")
        command, _sep, stdin = rest.partition(b"\n")
        words = header.split()
        flavor = "openzfs" if words[:1] == [b"openzfs"] else "zfs-fuse"
        peer = words[1].decode("ascii", "replace") if len(words) > 1 else "node1"
        # What sshd puts in the environment: no NUL (C strings); Python decodes with surrogateescape.
        command = command.split(b"\0")[0].decode("utf-8", "surrogateescape")
        return cls(flavor, peer, command, stdin)

    def encode(self):
        return b"%s %s\n%s\n%s" % (self.flavor.encode(), self.peer.encode("ascii", "replace"),
                                   self.command.encode("utf-8", "surrogateescape"), self.stdin)


class TrackingReader:
    """stdin: a real file (so `receive` can splice from its descriptor), remembering what each request consumed."""

    def __init__(self, harness, data):
        self.harness = harness
        fd = os.memfd_create("fuzz-stdin")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        self.file = os.fdopen(fd, "rb")
        self.consumed = {}  # request index -> [("line"|"read", bytes)]

    def _log(self, kind, data):
        self.consumed.setdefault(self.harness.request_index(), []).append((kind, data))
        return data

    def readline(self, *args):
        return self._log("line", self.file.readline(*args))

    def read(self, *args):
        return self._log("read", self.file.read(*args))

    def fileno(self):
        return self.file.fileno()

    def close(self):
        self.file.close()


class ReplyWriter:
    """stdout: each write is one reply."""

    def __init__(self):
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return len(text)

    def flush(self):
        pass


@dataclasses.dataclass
class Violation:
    signature: str
    message: str

    def __str__(self):
        return "%s: %s" % (self.signature, self.message)


@dataclasses.dataclass
class Outcome:
    case: Case
    writes: list
    rc: object
    error: object           # (exception, formatted traceback) or None
    journal: list
    consumed: dict
    spawned: list
    violations: list = dataclasses.field(default_factory=list)

    @property
    def replies(self):
        found = []
        for text in self.writes:
            try:
                found.append(json.loads(text))
            except ValueError:
                found.append(None)
        return found


class Harness:
    """A node with a temporary confdir/statedir and the ZFS emulator; execute() runs one Case through main()."""

    def __init__(self, root=None):
        self.engine = load_engine()
        self.root = root or tempfile.mkdtemp(prefix="fuzz-receiver-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                                             else None)
        self.confdir = os.path.join(self.root, "etc")
        self.statedir = os.path.join(self.root, "lib")
        self.pristine = os.path.join(self.root, "pristine")
        self.zfs_template = zfs_template()
        self.zfs = FakeZfs(self)
        self.spawned, self.signalled = [], []
        self.case = None
        self._writer = None
        self._cfg_cache = (None, None)
        self.peer_mode = peer_supported()
        configmod = self.engine["config"]
        self.next_files = next_generation_config().content()
        with self.patched():
            os.makedirs(os.path.join(self.pristine, "etc"))
            os.makedirs(os.path.join(self.pristine, "lib", "lock"))
            configmod.save(cluster_config(), os.path.join(self.pristine, "etc"))
            with open(os.path.join(self.pristine, "lib", "local-node"), "w", encoding="utf-8") as handle:
                handle.write(LOCAL_NODE + "\n")
        self._fingerprint = None
        self.restore()

    # -- the node's files
    def _print(self):
        """What the node's files are now (restore() copies them back only when this changed).  The lock files do not
        count: what they hold (the last holder's pid) means nothing once their holder has ended."""
        found = []
        for base in (self.confdir, self.statedir):
            for root, dirs, files in os.walk(base):
                if root == os.path.join(self.statedir, "lock"):
                    continue
                dirs.sort()
                for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                    path = os.path.join(root, name)
                    stat = os.lstat(path)
                    found.append((path, stat.st_mtime_ns, stat.st_size,
                                  os.readlink(path) if os.path.islink(path) else None))
        return found

    def restore(self):
        if self._fingerprint is not None and self._print() == self._fingerprint:
            return
        for name in ("etc", "lib"):
            target = os.path.join(self.root, name)
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(os.path.join(self.pristine, name), target, symlinks=True)
        self._fingerprint = self._print()

    def config_now(self):
        configmod = self.engine["config"]
        current = os.path.join(self.confdir, configmod.CURRENT_LINK)
        key = os.path.realpath(current) if os.path.lexists(current) else None
        if self._cfg_cache[0] != key or key is None:
            try:
                cfg = configmod.load(self.confdir)
            except Exception:  # pylint: disable=broad-except
                cfg = None
            self._cfg_cache = (key, cfg)
        return self._cfg_cache[1]

    def request_index(self):
        return len(self._writer.writes) if self._writer is not None else 0

    # -- what the receiver may not do for real
    def fake_catch_up(self, confdir=None, statedir=None, *args, **kwargs):
        """cluster.catch_up without SSH: a peer holds generation 8, adopted when this node is older."""
        del statedir, args, kwargs
        configmod = self.engine["config"]
        cluster = self.engine["cluster"]
        confdir = confdir or self.confdir
        current = configmod.load(confdir)
        if self.case is not None and self.case.peer == "node9":  # a caller whose peers do not answer
            raise cluster.ClusterError("node 'node1' holds cluster configuration generation %d, newer than this "
                                       "node's %d, and adopting it failed: node1 does not answer"
                                       % (GENERATION + 1, current.generation))
        found = cluster.CatchUp(current.generation)
        if current.generation < GENERATION + 1:
            cfg = configmod.from_files(self.next_files[configmod.MODEL_FILE], self.next_files[configmod.JOBS_FILE])
            configmod.adopt(cfg, confdir)
            found.adopted, found.source, found.generation = cfg.generation, "node1", cfg.generation
        return found

    def leftover_receive(self):
        """The receive lock of LEFTOVER_RECEIVE held, as by a receive a cut run left behind that does not end."""
        path = os.path.join(self.statedir, "lock", "receive-%s.lock" % LEFTOVER_RECEIVE)

        @contextlib.contextmanager
        def held():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)
        return held()

    def patched(self):
        harness = self

        class Patches:
            def __enter__(self):
                cluster = harness.engine["cluster"]
                zfsmod = harness.engine["zfs"]
                protocol = harness.engine["protocol"]
                self.saved = [(subprocess, "Popen", subprocess.Popen), (subprocess, "run", subprocess.run),
                              (os, "fsync", os.fsync), (os, "kill", os.kill),
                              (cluster, "catch_up", cluster.catch_up),
                              (zfsmod, "BUSY_RETRY_SECONDS", zfsmod.BUSY_RETRY_SECONDS),
                              (protocol, "MAX_REQUEST", protocol.MAX_REQUEST)]
                subprocess.Popen = lambda argv, *a, **k: FakeProcess(harness, argv, *a, **k)
                subprocess.run = fake_subprocess_run(harness)
                os.fsync = lambda fd: None  # durability is not what is fuzzed; keeps an execution fast
                os.kill = lambda pid, sig: harness.signalled.append((pid, sig))
                cluster.catch_up = harness.fake_catch_up
                zfsmod.BUSY_RETRY_SECONDS = 0  # "dataset is busy" answered at once, not retried for 10 s
                protocol.MAX_REQUEST = MAX_REQUEST  # the size limits are reachable within libFuzzer's -max_len
                return self

            def __exit__(self, *exc):
                for owner, name, value in self.saved:
                    setattr(owner, name, value)
        return Patches()

    def make_receiver(self, peer):
        rmod = self.engine["receiver"]
        zfsmod = self.engine["zfs"]
        kwargs = {"confdir": self.confdir, "statedir": self.statedir, "zfs": zfsmod.Zfs(run=self.zfs.run),
                  "now": lambda: NOW}
        if accepts(rmod.Receiver.__init__, "peer"):
            kwargs["peer"] = peer
        receiver = rmod.Receiver(**kwargs)
        receiver.leftover_wait = 0  # a receive left behind is waited for 0 s: the harness holds its lock throughout
        return receiver

    def execute(self, case):
        serving = self.engine["serve"]
        self.restore()
        self.zfs.reset(case.flavor == "openzfs")
        self.spawned, self.signalled = [], []
        self.case = case
        self._cfg_cache = (None, None)
        writer = ReplyWriter()
        reader = None
        error, rc = None, None
        with self.patched(), self.leftover_receive():
            try:
                receiver = self.make_receiver(case.peer)
                self._writer = writer
                reader = TrackingReader(self, case.stdin)
                kwargs = {"argv": ["--peer", case.peer], "environ": {"SSH_ORIGINAL_COMMAND": case.command},
                          "stdin": reader, "stdout": writer, "receiver": receiver}
                if accepts(serving.main, "peer"):
                    kwargs["peer"] = case.peer
                rc = serving.main(**kwargs)
            except Exception as exc:  # pylint: disable=broad-except
                error = (exc, traceback.format_exc())
            finally:
                self._writer = None
                if reader is not None:
                    reader.close()
        self.case = None
        outcome = Outcome(case, writer.writes, rc, error, self.zfs.journal, reader.consumed if reader else {},
                          self.spawned + [["kill"] + list(s) for s in self.signalled])
        outcome.violations = check(outcome, self.peer_mode)
        return outcome


# ---------------------------------------------------------------------------------------------------------------
# The strict, independent validator

J_RE = re.compile(r"\A[1-9][0-9]{2,8}-[0-9]{1,9}\Z", re.ASCII)
GUEST_TEXT_RE = re.compile(r"\A[1-9][0-9]{2,8}\Z", re.ASCII)
INT_TEXT_RE = re.compile(r"\A[0-9]{1,19}\Z", re.ASCII)
NODE_STRICT_RE = re.compile(r"\A[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\Z", re.ASCII)
STORAGE_STRICT_RE = re.compile(r"\A[a-z][a-z0-9_.-]*[a-z0-9]\Z", re.ASCII)
NAME_STRICT_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}\Z", re.ASCII)
SNAP_STRICT_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}\Z", re.ASCII)
ENGINE_TEMP_RE = re.compile(r"\A(__kept_[0-9]{14}__|__replicate_probe_[0-9]+__)\Z", re.ASCII)
RECEIVE_KEYS = ("job", "guest", "volume", "snapshot", "base", "generation", "source", "resume", "raw")


class Malformed(Exception):
    def __init__(self, rule, detail, value=None):
        if isinstance(value, str) and value.endswith("\n"):
            rule = "trailing-newline"  # the classic: a regex's $ also matches before a final newline
        super().__init__("%s: %s" % (rule, detail))
        self.rule = rule
        self.operation = None


def strict_name(name, what):
    if not isinstance(name, str) or not NAME_STRICT_RE.match(name) or ".." in name or name.startswith("-"):
        raise Malformed("bad-%s-name" % what, "%s name %r" % (what, name), name)
    return name


def strict_volume(volume, cfg):
    if not isinstance(volume, str):
        raise Malformed("bad-volume", "volume %r is not a string" % (volume,))
    storage, sep, name = volume.partition(":")
    if not sep:
        raise Malformed("bad-volume", "volume %r has no storage" % volume)
    if not STORAGE_STRICT_RE.match(storage) or cfg is None or storage not in cfg.storages \
            or cfg.storages[storage].type != "zfspool":
        raise Malformed("bad-volume-storage", "volume %r is not on a configured zfspool storage" % volume, storage)
    strict_name(name, "volume")
    return volume


def strict_snapshot_of(snap, job):
    if not isinstance(snap, str) or not re.match(r"\A__replicate_%s_[0-9]{1,19}__\Z" % re.escape(job), snap, re.ASCII):
        raise Malformed("bad-snapshot", "snapshot %r is not a replication snapshot of job %r" % (snap, job), snap)
    return snap


def strict_int(value, what, minimum=0, maximum=2 ** 63):
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise Malformed("bad-%s" % what, "%s %r" % (what, value))
    return value


def strict_job(job, guest):
    if not isinstance(job, str) or not J_RE.match(job):
        raise Malformed("bad-job", "job ID %r" % (job,), job)
    if int(job.split("-")[0]) != guest:
        raise Malformed("job-guest-mismatch", "job %r of guest %r" % (job, guest))
    return job


def strict_json(data):
    """Valid UTF-8 JSON without duplicate keys or non-finite numbers."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed("json-bad-utf8", str(exc)) from None

    def pairs(items):
        keys = [k for k, _v in items]
        if len(set(keys)) != len(keys):
            raise Malformed("json-duplicate-key", "duplicate keys in %r" % (keys,))
        return dict(items)

    def constant(name):
        raise Malformed("json-non-finite", name)
    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except RecursionError:
        raise Malformed("json-too-deep", "nesting") from None
    except ValueError as exc:
        raise Malformed("json-invalid", str(exc)) from None


@dataclasses.dataclass
class Context:
    operation: str
    job: object = None
    guest: object = None
    volumes: tuple = ()


def strict_request(operation, request, cfg):
    """The strict reading of one control request; Malformed if it is not what the runner sends."""
    if not isinstance(request, dict):
        raise Malformed("not-an-object", repr(request)[:80])
    if "source" in request and not (isinstance(request["source"], str) and NODE_STRICT_RE.match(request["source"])):
        raise Malformed("bad-source", repr(request["source"]), request["source"])
    if "generation" in request:
        strict_int(request["generation"], "generation")
    guest = request.get("guest")
    if guest is not None:
        strict_int(guest, "guest", 100, 999999999)
    job = None
    if "job" in request:
        job = strict_job(request["job"], guest)
    volumes = []
    for key in ("volumes",):
        if key in request:
            if not isinstance(request[key], list):
                raise Malformed("bad-volume", "volumes %r" % (request[key],))
            volumes += [strict_volume(v, cfg) for v in request[key]]
    if "volume" in request:
        volumes.append(strict_volume(request["volume"], cfg))
    if not isinstance(request.get("scan", []), list):
        raise Malformed("scan-not-a-list", repr(request.get("scan"))[:80])
    for storage in request.get("scan", []):
        if not isinstance(storage, str) or not STORAGE_STRICT_RE.match(storage):
            raise Malformed("bad-storage", repr(storage), storage)
    if request.get("parent_snapname") is not None:
        parent = request["parent_snapname"]
        if not isinstance(parent, str) or not SNAP_STRICT_RE.match(parent) or ".." in parent:
            raise Malformed("bad-snapshot", "parent %r" % (parent,), parent)
    if "last_sync" in request:
        strict_int(request["last_sync"], "last_sync")
    return Context(operation, job, guest, tuple(volumes))


def strict_receive(tokens, cfg):
    args = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or key not in RECEIVE_KEYS or key in args:
            raise Malformed("bad-receive-argument", repr(token))
        args[key] = value
    for key in ("guest",):
        if not GUEST_TEXT_RE.match(args.get(key) or ""):
            raise Malformed("bad-guest", "guest=%r" % args.get(key))
    if not INT_TEXT_RE.match(args.get("generation") or ""):
        raise Malformed("bad-generation", "generation=%r" % args.get("generation"))
    if not NODE_STRICT_RE.match(args.get("source") or ""):
        raise Malformed("bad-source", "source=%r" % args.get("source"))
    guest = int(args["guest"])
    job = strict_job(args.get("job"), guest)
    volume = strict_volume(args.get("volume"), cfg)
    strict_snapshot_of(args.get("snapshot"), job)
    if "base" in args and (not SNAP_STRICT_RE.match(args["base"]) or ".." in args["base"]):
        raise Malformed("bad-snapshot", "base=%r" % args["base"])
    return Context("receive", job, guest, (volume,))


def request_context(outcome, index, cfg):
    """The strict reading of request ``index`` of the session; Malformed, or None if it cannot be told apart."""
    command = outcome.case.command
    tokens = command.split()
    if command.strip() != "session":
        if not tokens:
            raise Malformed("no-operation", repr(command))
        if tokens[0] != "receive" and len(tokens) != 1:
            raise Malformed("bad-operation", repr(command))
        if tokens[0] == "receive":
            for token in tokens[1:]:
                if not token.isascii() or not token.isprintable():
                    raise Malformed("non-ascii-argument", repr(token))
            return strict_receive(tokens[1:], cfg)
        return strict_request(tokens[0], strict_json(outcome.case.stdin or b"{}"), cfg)
    pieces = outcome.consumed.get(index, [])
    lines = [data for kind, data in pieces if kind == "line"]
    if not lines:
        return None
    message = strict_json(lines[0])
    if not isinstance(message, dict):
        raise Malformed("not-an-object", repr(message)[:80])
    operation = message.get("operation")
    request = message.get("request")
    if operation == "receive":
        framing = {"arguments", "chunked"} if isinstance(request, dict) and "chunked" in request else \
            {"arguments", "bytes"}
        if not isinstance(request, dict) or set(request) - framing:
            raise Malformed("bad-receive-request", repr(request)[:120])
        if "chunked" in request and request["chunked"] is not True:
            raise Malformed("bad-chunked", repr(request["chunked"])[:40])
        arguments = request.get("arguments")
        if not isinstance(arguments, list) or not all(isinstance(a, str) for a in arguments):
            raise Malformed("bad-receive-argument", repr(arguments)[:120])
        for token in arguments:
            if not token.isascii() or not token.isprintable() or " " in token:
                raise Malformed("non-ascii-argument", repr(token))
        if "chunked" not in request:
            strict_int(request.get("bytes"), "inline-size", 0, 1 << 20)
        return strict_receive(arguments, cfg)
    return strict_request(str(operation), request, cfg)


def operation_of(outcome, index):
    """The operation name of request ``index``, for the violation's signature."""
    tokens = outcome.case.command.split()
    if outcome.case.command.strip() != "session":
        return tokens[0] if tokens else "?"
    lines = [data for kind, data in outcome.consumed.get(index, []) if kind == "line"]
    try:
        message = json.loads(lines[0])
        return str(message.get("operation"))[:40]
    except (IndexError, ValueError, AttributeError, UnicodeDecodeError):
        return "?"


def owner_of_volume(cfg, volume):
    for guest in cfg.guests.values():
        if volume in guest.volumes:
            return guest
    return None


def volume_of_dataset(cfg, dataset):
    """'rpool/data/vm-100-disk-0' -> 'local-zfs:vm-100-disk-0' via the configured pools; None if outside them."""
    for storage in cfg.storages.values():
        if storage.type == "zfspool" and dataset.startswith(storage.pool + "/"):
            return "%s:%s" % (storage.id, dataset[len(storage.pool) + 1:])
    return None


def check_command(command, context, made, seen, peer, peer_mode):
    """Malformed if a changing command's own arguments are not those of the request's job and volumes.

    made: the snapshots this request created itself; seen: {dataset: snapshot names} as the request found them."""
    argv, cfg = command.argv, command.cfg
    verb = argv[1]
    if cfg is None:
        raise Malformed("no-config", "a change with no readable configuration: %r" % argv)
    flags = {"destroy": {"-r"}, "rollback": {"-r"}, "recv": {"-F", "-s", "-A", "-x"}, "receive": {"-F", "-s", "-A", "-x"},
             "snapshot": set(), "hold": set(), "release": set(), "set": set()}
    if verb not in flags:
        raise Malformed("unexpected-command", repr(argv))
    operands, rest = [], list(argv[2:])
    while rest:
        item = rest.pop(0)
        if item in flags[verb]:
            if item == "-x":
                if rest[:1] != ["encryption"]:
                    raise Malformed("option-injection", repr(argv))
                rest.pop(0)
            continue
        operands.append(item)
    if verb in ("hold", "release"):
        if operands[:1] != ["storage-replication"]:
            raise Malformed("unexpected-hold-tag", repr(argv))
        operands = operands[1:]
    if verb == "set":
        check_identity(operands[:1], context, peer)
        operands = operands[1:]
    if len(operands) != 1 and verb != "snapshot":
        raise Malformed("option-injection", "unexpected operands %r" % (argv,))
    for operand in operands:
        if operand.startswith("-") or any(ch.isspace() for ch in operand) or not operand.isprintable():
            raise Malformed("option-injection", "operand %r" % operand)
        dataset, sep, snap = operand.partition("@")
        mark = None
        if "#" in dataset:
            dataset, _s, mark = dataset.partition("#")
        volume = volume_of_dataset(cfg, dataset)
        if volume is None:
            raise Malformed("outside-storages", "%s of %r outside every configured zfspool storage" % (verb, operand))
        name = volume.partition(":")[2]
        diverged = re.match(r"\A(.+)-diverged-[0-9]{14}\Z", name)
        strict_name(name, "volume")
        owner = owner_of_volume(cfg, volume)
        if owner is None and diverged:
            owner = owner_of_volume(cfg, volume.rsplit("-diverged-", 1)[0])
        if owner is not None and owner.node == LOCAL_NODE:
            raise Malformed("owned-here", "%s of %r: guest %d is owned by this node" % (verb, operand, owner.id))
        if context.guest is not None and context.guest in cfg.guests and cfg.guests[context.guest].node == LOCAL_NODE:
            raise Malformed("owned-here", "%s for guest %d, owned by this node" % (verb, context.guest))
        snapshot = snap if sep else mark
        if snapshot is not None:
            if verb == "snapshot":
                if not ENGINE_TEMP_RE.match(snapshot):
                    raise Malformed("bad-snapshot", "%s of %r: not a temporary snapshot of the engine" % (verb, operand))
            elif not (ENGINE_TEMP_RE.match(snapshot) and operand in made):
                if context.job is None:
                    raise Malformed("bad-snapshot", "%s of %r with no job in the request" % (verb, operand))
                strict_snapshot_of(snapshot, context.job)
        elif verb == "destroy" and not diverged:
            in_request = volume in context.volumes
            carries_job = context.job is not None and any(
                s.startswith("__replicate_%s_" % context.job) for s in seen.get(dataset, ()))
            if not in_request and not carries_job:
                raise Malformed("destroy-unrelated", "destroy of %r: neither a requested volume nor one carrying "
                                "job %s's snapshots" % (operand, context.job))
        if peer_mode:
            guest = cfg.guests.get(context.guest) if context.guest is not None else None
            if guest is None or guest.node != peer:
                raise Malformed("peer-not-owner", "%s of %r for guest %s requested by '%s', which does not own it"
                                % (verb, operand, context.guest, peer))
            if verb in ("recv", "receive", "rollback") and volume not in guest.volumes and not diverged:
                raise Malformed("peer-foreign-volume", "%s of %r: not a volume of guest %d" % (verb, operand, guest.id))


def check_identity(assignment, context, peer):
    """The only property the receiver sets: the replica identity of the request's own guest, job and caller."""
    engine = load_engine()
    prop, _sep, value = (assignment or [""])[0].partition("=")
    identity = engine["names"].parse_replica_identity(value) if prop == engine["names"].REPLICA_PROPERTY else None
    if identity is None or identity["guest"] != context.guest or identity["job"] != context.job \
            or (peer is not None and identity["source"] != peer):
        raise Malformed("bad-identity", "set %r for guest %s job %s by %s" % (assignment, context.guest, context.job,
                                                                              peer))


def crash_signature(exc, formatted):
    frames = traceback.extract_tb(exc.__traceback__)
    where = "?"
    for frame in frames:
        if "/plugins/module_utils/" in frame.filename.replace("\\", "/"):
            where = "%s.%s" % (os.path.basename(frame.filename)[:-3], frame.name)
    del formatted
    return "crash:%s:%s" % (type(exc).__name__, where)


def check(outcome, peer_mode=False):
    """Every violation of the oracle (see the module's doc) by one execution."""
    found = []
    if outcome.error is not None:
        exc, formatted = outcome.error
        found.append(Violation(crash_signature(exc, formatted),
                               "%s escaped main():\n%s" % (type(exc).__name__, formatted)))
    for argv in outcome.spawned:
        found.append(Violation("spawn", "the receiver started or signalled something the harness refused: %r"
                               % (argv,)))
    session = outcome.case.command.strip() == "session"
    replies = outcome.replies
    for reply in replies:
        # The receiver answers a defect as "internal-error" rather than with a traceback: still a crash here.
        if isinstance(reply, dict) and reply.get("reason") == "internal-error":
            cause = re.search(r"internal error of the receiver \((\w+):", str(reply.get("error")))
            found.append(Violation("crash:%s:internal-error" % (cause.group(1) if cause else "?"), str(reply.get("error"))))
    for index, (text, reply) in enumerate(zip(outcome.writes, replies)):
        if not text.endswith("\n") or text.count("\n") != 1 or not isinstance(reply, dict) \
                or not isinstance(reply.get("ok"), bool):
            found.append(Violation("reply-format", "reply %d is not one JSON line with ok true/false: %r"
                                   % (index, text[:200])))
    if outcome.error is None:
        if not session:
            if len(outcome.writes) != 1:
                found.append(Violation("reply-count", "%d replies to one request" % len(outcome.writes)))
            elif isinstance(replies[0], dict) and outcome.rc != (0 if replies[0].get("ok") else 1):
                found.append(Violation("reply-exit-code", "exit code %r with ok %r" % (outcome.rc, replies[0].get("ok"))))
        else:
            framing = bool(replies) and isinstance(replies[-1], dict) and replies[-1].get("reason") == "stream-framing"
            if outcome.rc != (1 if framing else 0):
                found.append(Violation("reply-exit-code", "session ended with %r" % (outcome.rc,)))
    changes = {}
    for command in outcome.journal:
        if command.mutating:
            changes.setdefault(command.request, []).append(command)
    for index, commands in sorted(changes.items()):
        reply = replies[index] if index < len(replies) and isinstance(replies[index], dict) else {}
        if operation_of(outcome, index) == "plan":  # run --check: a plan looks and never changes anything
            found.append(Violation("plan-changed", "plan request %d ran %s" % (index, [c.argv for c in commands])))
        if reply.get("reason") in ("invalid-argument", "invalid-operation"):
            found.append(Violation("refused-after-acting:%s" % operation_of(outcome, index), "request %d was refused (%s: %s) after it ran %s" % (
                index, reply.get("reason"), str(reply.get("error"))[:160], [c.argv for c in commands])))
        try:
            context = request_context(outcome, index, commands[0].cfg)
            if context is None:
                raise Malformed("unattributed", "changes with no request read")
            made, seen = set(), {}
            for command in outcome.journal:
                if command.request == index:
                    for dataset, snaps in command.existed.items():
                        seen.setdefault(dataset, set()).update(snaps)
            for command in commands:
                check_command(command, context, made, seen, outcome.case.peer, peer_mode)
                if command.argv[1] == "snapshot":
                    made.update(command.argv[2:])
        except Malformed as exc:
            found.append(Violation("malformed:%s:%s" % (operation_of(outcome, index), exc.rule), "request %d reached ZFS (%s) but is malformed: %s" % (
                index, [c.argv for c in commands], exc)))
    return found


# ---------------------------------------------------------------------------------------------------------------
# Seeds: valid requests of every operation, and hostile ones

def _request(operation, request, flavor="openzfs", peer="node1"):
    return Case(flavor, peer, operation, json.dumps(request).encode()).encode()


def _receive(arguments, stream=b"\0" * 312, flavor="openzfs", peer="node1"):
    return Case(flavor, peer, "receive " + " ".join(arguments), stream).encode()


def _chunked_stream(data):
    """(the chunked stream at the start of ``data`` up to and with its end, or all of it if it has none; the rest)."""
    at = 0
    while at + 4 <= len(data):
        size = int.from_bytes(data[at:at + 4], "big")
        at += 4 + size
        if size == 0 or at > len(data):
            break
    return data[:at], data[at:]


def _chunks(data, size):
    """``data`` as a session's chunked stream, in chunks of ``size`` bytes, with its end."""
    return b"".join(len(data[i:i + size]).to_bytes(4, "big") + data[i:i + size]
                    for i in range(0, len(data), size)) + bytes(4)


def _session(lines, flavor="openzfs"):
    body = b""
    for line in lines:
        if isinstance(line, bytes):
            body += line
        else:
            body += (json.dumps(line) + "\n").encode()
    return Case(flavor, "node1", "session", body).encode()


def receive_args(**changes):
    args = OrderedDict([("job", "100-0"), ("guest", "100"), ("volume", "local-zfs:vm-100-disk-0"),
                        ("snapshot", "__replicate_100-0_1700003600__"), ("base", "__replicate_100-0_1700000900__"),
                        ("generation", "7"), ("source", "node1")])
    for key, value in changes.items():
        if value is None:
            args.pop(key, None)
        else:
            args[key] = value
    return ["%s=%s" % (k, v) for k, v in args.items()]


def prepare(**changes):
    request = {"job": "100-0", "guest": 100, "volumes": ["local-zfs:vm-100-disk-0", "tank:vm-100-disk-1"],
               "scan": ["local-zfs", "tank"], "last_sync": 1700000900, "parent_snapname": None,
               "generation": 7, "source": "node1"}
    request.update(changes)
    return request


def seeds():
    """[(name, bytes, expect)]: expect True (accepted), False (refused), None (no expectation: hostile)."""
    configmod = load_engine()["config"]
    files8 = next_generation_config().content()
    ballot = [1, "node1", "00000000000000ab"]
    base7 = load_engine()["quorum"].Version.of(GENERATION, cluster_config().content()).json()
    finalize = {"job": "100-0", "guest": 100, "volumes": ["local-zfs:vm-100-disk-0", "tank:vm-100-disk-1"],
                "last_sync": 1700000900, "guest_definition": {"type": "vm", "name": "web"}, "generation": 7,
                "source": "node1"}
    inline = OrderedDict(arguments=receive_args(base=None, volume="local-zfs:vm-100-disk-2"), bytes=400)
    chunked = OrderedDict(arguments=receive_args(base=None, volume="local-zfs:vm-100-disk-2"), chunked=True)
    valid = [
        ("prepare", _request("prepare", prepare())),
        # run --check: prepare looking only (what it would delete is said, nothing is)
        ("plan", _request("plan", prepare())),
        ("plan-zfs-fuse", _request("plan", prepare(), "zfs-fuse")),
        ("plan-remove-job", _request("plan", prepare(volumes=[], last_sync=1, force=True))),
        ("prepare-zfs-fuse", _request("prepare", prepare(), "zfs-fuse")),
        ("prepare-first-sync", _request("prepare", prepare(last_sync=0))),
        ("prepare-remove-job", _request("prepare", prepare(volumes=[], last_sync=1, force=True))),
        ("prepare-parent", _request("prepare", prepare(parent_snapname="__replicate_100-0_1700000000__"))),
        ("prepare-interrupted-first", _request("prepare", prepare(job="400-0", guest=400, last_sync=0, scan=[],
                                                                  volumes=["local-zfs:vm-400-disk-0"]))),
        ("prepare-newer-generation", _request("prepare", prepare(job="200-0", guest=200, generation=8, scan=[],
                                                                 volumes=["local-zfs:vm-200-disk-0"],
                                                                 last_sync=1700000000))),
        ("finalize", _request("finalize", finalize)),
        ("finalize-zfs-fuse", _request("finalize", finalize, "zfs-fuse")),
        ("list", _request("list", {"generation": 7, "source": "node1"})),
        ("list-guest", _request("list", {"guest": 100, "generation": 7, "source": "node1"})),
        ("points", _request("points", {"guest": 100, "generation": 7, "source": "node1"})),
        ("make-room", _request("make-room", {"job": "100-0", "guest": 100, "volumes": ["local-zfs:vm-100-disk-0"],
                                             "last_sync": 1700000900, "generation": 7, "source": "node1"})),
        ("abort-resume", _request("abort-resume", {"job": "400-0", "guest": 400, "volume": "local-zfs:vm-400-disk-0",
                                                   "reason": "token expired", "generation": 7, "source": "node1"})),
        ("get-config", _request("get-config", {"generation": 7, "source": "node1", "content": True})),
        ("quorum-status", _request("quorum-status", {"content": True, "source": "node1"})),
        ("quorum-prepare", _request("quorum-prepare", {"slot": 8, "ballot": ballot, "source": "node1"})),
        ("quorum-accept", _request("quorum-accept", {"slot": 8, "ballot": ballot, "content": files8, "base": base7,
                                                     "source": "node1"})),
        ("quorum-commit", _request("quorum-commit", {"slot": 8, "content": files8, "source": "node1"})),
        ("set-state", _request("set-state", {"guest": 100, "generation": 7, "source": "node1", "states": {
            "local/node2": {"last_sync": 1700000900, "fail_count": 0}}})),
        ("drop-migration-copy", _request("drop-migration-copy", {
            "job": "100-999999999", "guest": 100, "volumes": ["tank:vm-100-disk-1"],
            "generation": 7, "source": "node1"})),
        ("receive-incremental", _receive(receive_args())),
        ("receive-incremental-diverged", _receive(receive_args(volume="tank:vm-100-disk-1"))),
        ("receive-incremental-zfs-fuse", _receive(receive_args(volume="tank:vm-100-disk-1"), flavor="zfs-fuse")),
        ("receive-full", _receive(receive_args(base=None, volume="local-zfs:vm-100-disk-2"))),
        ("receive-full-raw", _receive(receive_args(base=None, volume="local-zfs:vm-100-disk-2", raw="1"))),
        ("receive-resume", _receive(receive_args(base=None, job="400-0", guest="400", volume="local-zfs:vm-400-disk-0",
                                                 snapshot="__replicate_400-0_1700003600__", resume="1"))),
        ("prepare-held-snapshot", _request("prepare", prepare(job="300-0", guest=300, scan=[], last_sync=1,
                                                              volumes=["local-zfs:subvol-300-disk-0"], source="node3"),
                                           peer="node3")),
        # fencing by guest: an older generation that agrees on the guest's owner and the job is no reason to refuse
        ("prepare-older-generation", _request("prepare", prepare(generation=6))),
        ("prepare-scan-unusable-storages", _request("prepare", prepare(scan=["gone-zfs", "backup-dir", "tank"]))),
        ("session-finalize-then-remove-job", _session([
            {"operation": "finalize", "request": finalize},
            {"operation": "list", "request": {"generation": 7, "source": "node1"}},
            {"operation": "prepare", "request": prepare(volumes=[], last_sync=1, force=True)}])),
        ("session-chunked", _session([
            {"operation": "prepare", "request": prepare()},
            {"operation": "receive", "request": chunked}, _chunks(b"\0" * 400, 150),
            {"operation": "finalize", "request": finalize}])),
        ("session", _session([
            {"operation": "prepare", "request": prepare()},
            {"operation": "receive", "request": inline}, b"\0" * 400,
            {"operation": "finalize", "request": finalize},
            {"operation": "list", "request": {"guest": 100, "generation": 7, "source": "node1"}}])),
    ]
    refused = [
        ("receive-failed-stream", _receive(receive_args(base=None, volume="local-zfs:vm-100-disk-2"), b"FAIL")),
        ("receive-enospc", _receive(receive_args(), b"ENOSPC")),
        ("receive-partial", _receive(receive_args(base=None, volume="local-zfs:vm-100-disk-2"), b"PARTIAL")),
        ("receive-exists", _receive(receive_args(base=None))),
        ("receive-killed", _receive(receive_args(), b"KILLED")),
        ("receive-failed-created", _receive(receive_args(base=None, volume="local-zfs:vm-100-disk-2"), b"FAILCREATED")),
        ("receive-broken-pipe", _receive(receive_args(), b"EPIPE" + b"\0" * 300)),
        ("prepare-stuck-leftover-receive", _request("prepare", prepare(job="300-0", guest=300, scan=[],
                                                                       volumes=["local-zfs:subvol-300-disk-1"],
                                                                       source="node3"), peer="node3")),
        ("prepare-peer-unreachable", Case("openzfs", "node9", "prepare", json.dumps(prepare(generation=8)).encode())
         .encode()),
        ("receive-foreign-snapshot", _receive(receive_args(job="300-0", guest="300", base="__replicate_300-0_1700000000__",
                                                           volume="local-zfs:subvol-300-disk-0",
                                                           snapshot="__replicate_300-0_1700003600__",
                                                           source="node3"), peer="node3")),
        ("prepare-owned-here", _request("prepare", prepare(job="200-0", guest=200, volumes=["local-zfs:vm-200-disk-0"]))),
        ("prepare-claims-another-node", _request("prepare", prepare(source="node3"))),
        ("prepare-not-the-owner", _request("prepare", prepare(source="node3"), peer="node3")),
        ("prepare-future-generation", _request("prepare", prepare(generation=9))),
        ("prepare-missing-storage", _request("prepare", prepare(volumes=["gone-zfs:vm-100-disk-0"], scan=[]))),
        ("prepare-dir-storage", _request("prepare", prepare(volumes=["backup-dir:vm-100-disk-0"], scan=[]))),
        ("prepare-dotdot", _request("prepare", prepare(volumes=["local-zfs:../../etc"]))),
        ("prepare-slash", _request("prepare", prepare(volumes=["local-zfs:vm-100-disk-0/child"]))),
        ("prepare-at", _request("prepare", prepare(volumes=["local-zfs:vm-100-disk-0@snap"]))),
        ("prepare-percent", _request("prepare", prepare(volumes=["local-zfs:vm-100-disk-0%recv"]))),
        ("prepare-option", _request("prepare", prepare(volumes=["local-zfs:-o"]))),
        ("prepare-bool-guest", _request("prepare", prepare(guest=True))),
        ("prepare-bool-last-sync", _request("prepare", prepare(last_sync=True))),
        ("prepare-float", _request("prepare", prepare(last_sync=1e400))),
        ("prepare-huge-int", _request("prepare", prepare(last_sync=2 ** 80))),
        ("receive-dashdash", _receive(["--"] + receive_args())),
        ("receive-option", _receive(receive_args(volume="local-zfs:-F"))),
        ("receive-dotdot", _receive(receive_args(volume="local-zfs:.."))),
        ("receive-wrong-job-snapshot", _receive(receive_args(snapshot="__replicate_100-1_1700003600__"))),
        ("receive-duplicate", _receive(receive_args() + ["job=300-0"])),
        ("receive-superscript-guest", _receive(receive_args(guest="\u00b9\u2070\u2070"))),
        ("receive-arabic-guest", _receive(receive_args(guest="\u0661\u0660\u0660"))),
        ("session-huge-inline", _session([{"operation": "receive", "request": {"arguments": receive_args(),
                                                                               "bytes": 2 ** 40}}])),
        ("session-bool-inline", _session([{"operation": "receive", "request": {"arguments": receive_args(),
                                                                               "bytes": True}}])),
        ("session-chunked-failed-stream", _session([
            {"operation": "receive", "request": chunked}, _chunks(b"FAIL" + b"\0" * 300, 100),
            {"operation": "list", "request": {"generation": 7, "source": "node1"}}])),
        ("session-chunked-oversized-chunk", _session([{"operation": "receive", "request": chunked},
                                                      (2 ** 31).to_bytes(4, "big") + b"\0" * 64])),
        ("session-chunked-no-end", _session([{"operation": "receive", "request": chunked}, _chunks(b"\0" * 64, 64)[:-4]])),
        ("session-chunked-not-true", _session([{"operation": "receive", "request": {"arguments": receive_args(),
                                                                                    "chunked": 1}}])),
        ("session-bad-utf8", _session([b'{"operation": "list", "request": {"source": "\xff"}}\n'])),
        ("session-not-object", _session([b"[1, 2]\n", b"null\n", b'"prepare"\n'])),
        ("bad-utf8-request", Case("openzfs", "node1", "prepare", b'{"job": "\xc3\x28"}').encode()),
        ("duplicate-keys", Case("openzfs", "node1", "prepare",
                                json.dumps(prepare()).replace('"job": "100-0"', '"job": "200-0", "job": "100-0"')
                                .encode()).encode()),
        ("shell", Case("openzfs", "node1", "sh -c id", b"").encode()),
        ("empty", Case("openzfs", "node1", "", b"").encode()),
        ("quorum-commit-wrong-slot", _request("quorum-commit", {"slot": 9, "content": files8, "source": "node1"})),
        ("quorum-commit-garbage", _request("quorum-commit", {"slot": 8, "source": "node1", "content": {
            configmod.MODEL_FILE: "{", configmod.JOBS_FILE: ""}})),
        ("quorum-prepare-bad-ballot", _request("quorum-prepare", {"slot": 8, "ballot": "x", "source": "node1"})),
        ("set-state-bad", _request("set-state", {"guest": 100, "generation": 7, "source": "node1",
                                                 "states": {"../x": 1}})),
        ("drop-copy-wrong-job", _request("drop-migration-copy", {"job": "100-0", "guest": 100, "volumes": [],
                                                                 "generation": 7, "source": "node1"})),
    ]
    return [(n, d, True) for n, d in valid] + [(n, d, False) for n, d in refused]


def write_seeds(directory):
    os.makedirs(directory, exist_ok=True)
    for name, data, _expect in seeds():
        with open(os.path.join(directory, "seed-" + name), "wb") as handle:
            handle.write(data)


DICTIONARY = ["prepare", "plan", "finalize", "list", "abort-resume", "get-config", "quorum-status", "quorum-prepare",
              "quorum-accept", "quorum-commit", "slot", "ballot", "base", "set-state",
              "drop-migration-copy", "receive", "session", "operation", "request", "arguments", "bytes", "job",
              "guest", "volumes", "volume", "scan", "last_sync", "parent_snapname", "force", "generation", "source",
              "guest_definition", "reason", "content", "files", "states", "resume=1", "raw=1", "base=", "snapshot=",
              "__replicate_", "__replicate_100-0_", "100-0", "local-zfs:", "tank:", "gone-zfs:", "backup-dir:",
              "vm-100-disk-0", "..", "/", "@", "%", "-o", "--", "\n", "\x00", "\\n", "\\u0000", "\\ud800", "true", "1e999", "node1", "node2",
              "999999999", "local/node2", "openzfs", "zfs-fuse", "FAIL", "PARTIAL", "ENOSPC"]


def write_dictionary(path):
    with open(path, "w", encoding="utf-8") as handle:
        for token in DICTIONARY:
            text = "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else "\\x%02X" % b
                           for b in token.encode("utf-8"))
            handle.write('"%s"\n' % text)


# ---------------------------------------------------------------------------------------------------------------
# Structure-aware mutation (half the time; libFuzzer's own byte mutations the other half)

PALETTE = ["gone-zfs", "backup-dir", ["gone-zfs", "backup-dir"], "100-0", "200-0", "300-0", "400-0",
           "999999999-999999999", "100-1", "99-0", "100-0\n", " 100-0", "100",
           100, 200, 300, 400, 999999999, 99, 0, -1, 7, 8, 9, 6, True, False, None, 1.5, 1e308, 2 ** 63, 2 ** 64,
           "7", "", [], {}, [[]], {"a": {}}, "local-zfs:vm-100-disk-0", "tank:vm-100-disk-1", "local-zfs:vm-200-disk-0",
           "local-zfs:vm-400-disk-0", "local-zfs:subvol-300-disk-0", "local-zfs:../x", "local-zfs:a/b",
           "local-zfs:a@b", "local-zfs:a%b", "local-zfs:-o", "local-zfs:a b", "local-zfs:vm-100-disk-0\n",
           "gone-zfs:vm-100-disk-0", "backup-dir:x", "local-zfs", "tank", "local-zfs\n", "__replicate_100-0_1700000900__",
           "__replicate_100-0_1700000000__", "__replicate_100-0_1700003600__", "__replicate_100-0_\n__", "-F", "--",
           "node1", "node2", "node3", "node1\n", "\u0661\u0660\u0660", "\u00b2", "\ud800", "x" * 300,
           ["local-zfs:vm-100-disk-0"], ["local-zfs:vm-100-disk-0", "tank:vm-100-disk-1"], ["local-zfs"],
           {"local/node2": {"last_sync": 1}}, {"type": "vm"}]
OPERATIONS = ["prepare", "plan", "finalize", "list", "abort-resume", "get-config", "quorum-status", "quorum-prepare",
              "quorum-accept", "quorum-commit", "set-state",
              "drop-migration-copy", "receive", "destroy", "session"]
KEYS = ["job", "guest", "volumes", "volume", "scan", "last_sync", "parent_snapname", "force", "generation", "source",
        "guest_definition", "reason", "content", "files", "states", "operation", "request", "arguments", "bytes"]


def _mutate_json(value, rng, depth=0):
    if isinstance(value, dict) and value and rng.random() < 0.8 - depth * 0.1:
        key = rng.choice(list(value))
        choice = rng.random()
        if choice < 0.6:
            value[key] = _mutate_json(value[key], rng, depth + 1)
        elif choice < 0.75:
            del value[key]
        else:
            value[rng.choice(KEYS)] = copy.deepcopy(rng.choice(PALETTE))
        return value
    if isinstance(value, list) and value and rng.random() < 0.7:
        index = rng.randrange(len(value))
        value[index] = _mutate_json(value[index], rng, depth + 1)
        return value
    return copy.deepcopy(rng.choice(PALETTE))


def _mutate_token(token, rng):
    key, sep, _value = token.partition("=")
    value = rng.choice(PALETTE)
    if isinstance(value, (dict, list)) or value is None:
        value = ""
    return "%s%s%s" % (key if sep else rng.choice(RECEIVE_KEYS), "=", value if isinstance(value, str) else
                       json.dumps(value))


def structured_mutation(data, rng):
    case = Case.parse(data)
    roll = rng.random()
    if roll < 0.05:
        case.flavor = "zfs-fuse" if case.flavor == "openzfs" else "openzfs"
        return case.encode()
    if roll < 0.1:
        case.command = rng.choice(OPERATIONS)
        return case.encode()
    tokens = case.command.split()
    if tokens[:1] == ["receive"]:
        args = tokens[1:]
        action = rng.random()
        if args and action < 0.7:
            index = rng.randrange(len(args))
            args[index] = _mutate_token(args[index], rng)
        elif args and action < 0.85:
            del args[rng.randrange(len(args))]
        else:
            args.append(_mutate_token(rng.choice(RECEIVE_KEYS) + "=", rng))
        case.command = " ".join(["receive"] + args)
        return case.encode()
    if case.command.strip() == "session":
        return _mutate_session(case, rng)
    try:
        request = json.loads(case.stdin.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    case.stdin = json.dumps(_mutate_json(request, rng)).encode()
    return case.encode()


def _mutate_session(case, rng):
    items, rest = [], case.stdin
    while rest:
        line, sep, rest = rest.partition(b"\n")
        items.append(line + sep)
        try:
            message = json.loads(line)
        except ValueError:
            continue
        request = message.get("request") if isinstance(message, dict) else None
        if isinstance(request, dict) and request.get("chunked") is True:
            stream, rest = _chunked_stream(rest)  # one item: mutated as a whole, never split into requests
            items.append(stream)
        elif isinstance(request, dict) and isinstance(request.get("bytes"), int) and 0 <= request["bytes"] <= 4096:
            items.append(rest[:request["bytes"]])
            rest = rest[request["bytes"]:]
    lines = [i for i, item in enumerate(items) if item.startswith(b"{")]
    action = rng.random()
    if lines and action < 0.7:
        index = rng.choice(lines)
        try:
            message = json.loads(items[index])
        except ValueError:
            return None
        message = _mutate_json(message, rng)
        items[index] = (json.dumps(message) + "\n").encode()
    elif items and action < 0.85:
        index = rng.randrange(len(items))
        items.insert(rng.randrange(len(items) + 1), items[index])
    elif items:
        del items[rng.randrange(len(items))]
    case.stdin = b"".join(items)
    return case.encode()


# ---------------------------------------------------------------------------------------------------------------
# Running: the fuzzing worker (atheris) and the supervising parent

class Defect(Exception):
    """Oracle violations of one input (with --stop-on-defect, libFuzzer saves the input as a crash artifact)."""

    def __init__(self, violations):
        super().__init__("\n".join("DEFECT %s" % v for v in violations))
        self.violations = violations


def one_input(harness, data, strict=False, stats=None):
    outcome = harness.execute(Case.parse(data))
    new = []
    for violation in outcome.violations:
        if not strict and is_known(violation.signature):
            if stats is not None:
                stats[violation.signature] = stats.get(violation.signature, 0) + 1
            continue
        new.append(violation)
    if new:
        raise Defect(new)
    return outcome


def worker(args, libfuzzer_argv):
    import atheris  # pylint: disable=import-outside-toplevel
    with atheris.instrument_imports(include=[PKG]):
        load_engine()
    harness = Harness(root=args.node_dir)  # libFuzzer ends the process with exit(): the supervisor removes it
    known_hits, new_hits = {}, {}
    last_report = [time.monotonic()]

    def report():
        print("KNOWN %s" % json.dumps(known_hits, sort_keys=True), file=sys.stderr, flush=True)
        print("NEW %s" % json.dumps(new_hits, sort_keys=True), file=sys.stderr, flush=True)

    def test_one_input(data):
        try:
            one_input(harness, data, args.strict, known_hits)
        except Defect as exc:
            if args.stop_on_defect:
                raise
            for violation in exc.violations:
                if violation.signature not in new_hits:
                    name = re.sub(r"[^A-Za-z0-9_.-]", "_", violation.signature)
                    path = os.path.join(args.artifacts, "defect-%s-%s" % (name, hashlib.sha1(data).hexdigest()[:12]))
                    with open(path, "wb") as handle:
                        handle.write(data)
                    print("NEWDEFECT %s %s\n%s" % (violation.signature, path, str(violation)[:3000]), file=sys.stderr,
                          flush=True)
                new_hits[violation.signature] = new_hits.get(violation.signature, 0) + 1
        if time.monotonic() - last_report[0] > 5:
            last_report[0] = time.monotonic()
            report()

    def custom_mutator(data, max_size, seed):
        rng = random.Random(seed)
        if rng.random() < 0.5:
            try:
                mutated = structured_mutation(data, rng)
            except Exception:  # pylint: disable=broad-except
                mutated = None
            if mutated is not None and len(mutated) <= max_size:
                return mutated
        return atheris.Mutate(data, max_size)

    atheris.Setup([sys.argv[0]] + libfuzzer_argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


STAT_RE = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)(?:.*exec/s: (\d+))?")

# What line coverage is measured on: the receiving side's modules whole, and the receiver operations that live in
# other modules.
COVERAGE_SCOPE = {"serve": None, "protocol": None, "authority": None, "receiver": None, "receive_stream": None,
                  "pruning": None, "names": None,
                  "cluster": ("serve_get_config", "serve_quorum", "serve_quorum_here", "_commit", "_committed",
                              "_content_config"),
                  "quorum": None}


def line_coverage(files, scope=None):
    """{label: (lines run, executable lines, lines not run)} when the inputs in ``files`` are replayed.

    Call it in a fresh process: the tracer goes in before the engine is imported, so that what runs at import
    (class bodies, decorators, the operation table) counts as run."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    scope = COVERAGE_SCOPE if scope is None else scope
    origins = {m: importlib.util.find_spec("%s.%s" % (PKG, m)).origin for m in scope}
    paths = {os.path.realpath(path): m for m, path in origins.items()}
    ran = {m: set() for m in scope}

    def tracer(frame, event, _arg):
        module = paths.get(os.path.realpath(frame.f_code.co_filename)) if event == "call" else None
        if module is None:
            return None

        def local(frame, event, _arg):
            if event == "line":
                ran[module].add(frame.f_lineno)
            return local
        ran[module].add(frame.f_lineno)
        return local
    threading.settrace(tracer)
    sys.settrace(tracer)
    try:
        load_engine()
        harness = Harness()
        for path in files:
            with open(path, "rb") as handle:
                data = handle.read()
            try:
                harness.execute(Case.parse(data))
            except Exception:  # pylint: disable=broad-except
                pass
    finally:
        sys.settrace(None)
        threading.settrace(None)
    shutil.rmtree(harness.root, ignore_errors=True)

    def lines_of(code):
        found = {line for _s, _e, line in code.co_lines() if line is not None}
        for const in code.co_consts:
            if hasattr(const, "co_lines"):
                found |= lines_of(const)
        return found

    def functions(code):
        for const in code.co_consts:
            if hasattr(const, "co_lines"):
                yield const
                yield from functions(const)
    result = {}
    for module, path in origins.items():
        with open(path, encoding="utf-8") as handle:
            top = compile(handle.read(), path, "exec")
        if scope[module] is None:
            executable = lines_of(top)
            label = "%s.py" % module
        else:
            executable = set()
            for code in functions(top):
                if code.co_name in scope[module]:
                    executable |= lines_of(code)
            label = "%s.py (%s)" % (module, ", ".join(scope[module]))
        hit = ran[module] & executable
        result[label] = (len(hit), len(executable), sorted(executable - hit))
    return result


def supervise(args, extra):
    """Run the atheris worker for args.seconds, relay its progress, then summarise (and measure line coverage)."""
    work = args.workdir or tempfile.mkdtemp(prefix="fuzz-receiver-run-")
    corpus = args.corpus or os.path.join(work, "corpus")
    artifacts = os.path.abspath(args.artifacts or os.path.join(work, "artifacts"))
    os.makedirs(corpus, exist_ok=True)
    os.makedirs(artifacts, exist_ok=True)
    seed_dir = os.path.join(work, "seeds")
    load_engine()
    write_seeds(seed_dir)
    dictionary = os.path.join(work, "receiver.dict")
    write_dictionary(dictionary)
    libfuzzer = [corpus, seed_dir, "-max_total_time=%d" % args.seconds, "-max_len=%d" % MAX_LEN,
                 "-artifact_prefix=%s/" % artifacts, "-dict=%s" % dictionary, "-timeout=20", "-rss_limit_mb=2048",
                 "-print_final_stats=1", "-seed=%d" % args.seed] + extra
    if args.runs is not None:
        libfuzzer.append("-runs=%d" % args.runs)
    node_dir = os.path.join(work, "node")
    shutil.rmtree(node_dir, ignore_errors=True)
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--artifacts", artifacts, "--node-dir", node_dir] + \
        (["--strict"] if args.strict else []) + (["--stop-on-defect"] if args.stop_on_defect else []) + ["--"] + libfuzzer
    print("fuzz_receiver: %s" % " ".join(command), flush=True)
    started = time.monotonic()
    # pylint: disable-next=consider-using-with
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, errors="replace")
    first, last, executions, known, new, details = None, None, None, {}, {}, []
    with open(os.path.join(work, "fuzz.log"), "w", encoding="utf-8") as log:
        for line in proc.stderr:
            log.write(line)
            match = STAT_RE.match(line)
            if match:
                last = match
                first = first or match
            if line.startswith("stat::number_of_executed_units:"):
                executions = int(line.split(":")[-1])
            if line.startswith("KNOWN "):
                known = json.loads(line[6:])
            if line.startswith("NEW "):
                new.update(json.loads(line[4:]))
            if line.startswith("NEWDEFECT "):
                signature = line.split()[1]
                new[signature] = max(new.get(signature, 0), 1)
            if line.startswith("NEWDEFECT") or "Uncaught Python exception" in line or details and len(details) < 400:
                details.append(line.rstrip())
            if not args.quiet and (match and match.group(2) in ("INITED", "DONE") or line.startswith("NEWDEFECT")
                                   or line.startswith("==") or line.startswith("Test unit")
                                   or args.verbose and match):
                print(line.rstrip(), flush=True)
        out = proc.stdout.read()
        rc = proc.wait()
    shutil.rmtree(node_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    if last is not None and executions is None:
        executions = int(last.group(1))
    files = sorted(os.path.join(corpus, f) for f in os.listdir(corpus))
    summary = {"seconds": round(elapsed, 1), "executions": executions,
               "exec_per_second": round(executions / elapsed) if executions else None,
               "cov_initial": int(first.group(3)) if first else None, "ft_initial": int(first.group(4)) if first else None,
               "cov": int(last.group(3)) if last else None, "ft": int(last.group(4)) if last else None,
               "corpus": len(files), "known_defects_hit": known, "new_defects": new, "libfuzzer_exit_code": rc,
               "workdir": work}
    if not args.no_coverage:  # in a fresh process (see line_coverage)
        report = os.path.join(work, "coverage.json")
        subprocess.run([sys.executable, os.path.abspath(__file__), "--coverage-only", corpus, seed_dir,
                        "--coverage-limit", str(args.coverage_limit), "--coverage-json", report], check=False,
                       stdout=subprocess.DEVNULL)
        if os.path.exists(report):
            with open(report, encoding="utf-8") as handle:
                coverage = json.load(handle)
            summary["line_coverage"] = {m: "%d/%d (%.0f%%)" % (h, t, 100.0 * h / t) for m, (h, t, _x) in coverage.items()}
            summary["lines_not_reached"] = {m: _ranges(x) for m, (_h, _t, x) in coverage.items()}
    if out.strip():
        print(out.rstrip())
    with open(os.path.join(work, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=1, sort_keys=True)
    print("fuzz_receiver summary: %s" % json.dumps(summary, sort_keys=True), flush=True)
    failed = rc != 0 or bool(new)
    if failed:
        print("fuzz_receiver: DEFECT(S) FOUND (libFuzzer exit code %d, new: %s); inputs in %s; log %s/fuzz.log; replay "
              "one with: %s --replay FILE" % (rc, ", ".join(sorted(new)) or "-", artifacts, work, __file__))
        print("\n".join(details[:400]))
    return 1 if failed else 0


def replay(paths, strict):
    harness = Harness()
    failures = 0
    try:
        for path in paths:
            with open(path, "rb") as handle:
                data = handle.read()
            outcome = harness.execute(Case.parse(data))
            print("== %s: %r" % (path, Case.parse(data)))
            for text in outcome.writes:
                print("   reply: %s" % text.rstrip()[:400])
            for command in outcome.journal:
                if command.mutating:
                    print("   zfs: %s (rc %d)" % (" ".join(command.argv), command.rc))
            for violation in outcome.violations:
                known = is_known(violation.signature)
                failures += strict or not known
                print("   %s %s" % ("KNOWN" if known else "DEFECT", violation))
    finally:
        shutil.rmtree(harness.root, ignore_errors=True)
    return 1 if failures else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        argv, extra = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60")))
    parser.add_argument("--runs", type=int, help="stop after this many executions")
    parser.add_argument("--corpus", help="corpus directory, kept and grown across runs (default: a new temp one)")
    parser.add_argument("--artifacts", help="where a defect's input is written")
    parser.add_argument("--workdir", help="directory for seeds, dictionary, log and summary")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--strict", action="store_true", help="known (reported) defects count as defects too")
    parser.add_argument("--stop-on-defect", action="store_true",
                        help="stop at the first defect (libFuzzer writes crash-*); default: record each new kind of "
                             "defect once (defect-* in the artifacts directory) and go on")
    parser.add_argument("--verbose", action="store_true", help="relay every libFuzzer progress line")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--no-coverage", action="store_true", help="skip the line-coverage replay of the corpus")
    parser.add_argument("--coverage-limit", type=int, default=5000)
    parser.add_argument("--coverage-only", metavar="DIR", nargs="+", help="replay these corpus directories and print "
                        "the line coverage they reach")
    parser.add_argument("--coverage-json", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--replay", nargs="+", metavar="FILE")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--node-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args, extra)
    if args.replay:
        return replay(args.replay, args.strict)
    if args.coverage_only:
        files = []
        for directory in args.coverage_only:
            files += sorted(os.path.join(directory, f) for f in os.listdir(directory))[:args.coverage_limit]
        coverage = line_coverage(files)
        if args.coverage_json:
            with open(args.coverage_json, "w", encoding="utf-8") as handle:
                json.dump(coverage, handle)
        for label, (hit, total, missing) in coverage.items():
            print("%s: %d/%d lines (%.0f%%); not reached: %s"
                  % (label, hit, total, 100.0 * hit / total, _ranges(missing)))
        return 0
    return supervise(args, extra)


def _ranges(lines):
    spans, start, prev = [], None, 0
    for line in lines:
        if start is None:
            start = prev = line
        elif line == prev + 1:
            prev = line
        else:
            spans.append("%d-%d" % (start, prev) if prev != start else str(start))
            start = prev = line
    if start is not None:
        spans.append("%d-%d" % (start, prev) if prev != start else str(start))
    return ",".join(spans)


if __name__ == "__main__":
    sys.exit(main())
