# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Defects of the receiver that the fuzzer (tests/fuzz/fuzz_receiver.py) found, each reduced to a minimal request and
kept as a regression test now that the receiver refuses them.  A new finding goes here as xfail(strict=True) with its
reason, and into KNOWN in the fuzzer, until it is fixed.

The node: this node is node2 (generation 7); guest 100 is owned by node1 (replicated here), guest 200 by this node.
The ZFS layer records every call and knows a few datasets; a `zfs recv` process is recorded instead of started.
"""

from __future__ import annotations

import io
import json
import subprocess

import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import receive_stream
from ansible_collections.storage.replication.plugins.module_utils import receiver as receivermod
from ansible_collections.storage.replication.plugins.module_utils import serve as serving
from ansible_collections.storage.replication.plugins.module_utils.zfs import Features

from test_receiver import node_dirs

SNAP = "__replicate_100-0_1700000900__"
CHANGES = ("destroy", "rollback", "keep_for_next_sync", "abort_resume", "snapshot", "copy_local_snapshot", "recv",
           "set_property")


class RecordingZfs:
    """The few datasets of this node, and a record of every call."""

    def __init__(self):
        self.features = Features(None)
        self.calls = []
        self.datasets = {
            "rpool/data/vm-100-disk-0": {"__replicate_100-0_1700000000__": 1, SNAP: 2},
            "tank/vols/vm-100-disk-1": {SNAP: 3},
            "rpool/data/vm-200-disk-0": {"__replicate_200-0_1700000000__": 4},
            "rpool/data/vm-400-disk-0": {},
        }

    def _info(self, dataset):
        return {s: {"guid": str(t), "createtxg": t, "creation": 1700000000 + t}
                for s, t in self.datasets.get(dataset, {}).items()}

    def exists(self, name):
        return name in ("rpool/data", "tank/vols") or name in self.datasets

    def snapshots(self, dataset):
        return self._info(dataset)

    def child_volumes(self, parent, look):
        return {d: (self._info(d), (None, d)) for d in self.datasets if d.rpartition("/")[0] == parent and look(d, (None, d))}

    @staticmethod
    def replica_identity(dataset):
        return None, dataset

    def resume_tokens(self, parent):
        del parent
        return {}

    def written_since(self, dataset, snapshot):
        del dataset, snapshot
        return False

    def bookmarks(self, dataset):
        del dataset
        return {}

    def __getattr__(self, name):
        if name not in CHANGES:
            raise AttributeError(name)
        return lambda *args, **kwargs: self.calls.append((name,) + args)

    def changes(self):
        return [c for c in self.calls if c[0] in CHANGES]


class RecordingPopen:
    """`zfs recv` as the receiver starts it: recorded in the node's ZFS calls, fed to /dev/null, successful."""

    zfs = None

    def __init__(self, argv, stdin=None, stdout=None, stderr=None, env=None):
        del stdout, stderr, env
        RecordingPopen.zfs.calls.append(("recv", list(argv)))
        self.stdin = open("/dev/null", "wb") if stdin == subprocess.PIPE else None  # pylint: disable=consider-using-with
        self.returncode = None

    def communicate(self):
        self.stdin.close()
        self.returncode = 0
        return b"", b""


@pytest.fixture
def node(tmp_path, monkeypatch):
    cfg = configmod.ClusterConfig(generation=7)
    host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJiK4nz/cnY3cyAUYjpq4W13HzgqcR6J+KIvhTohaTcD"
    for name, address in (("node1", "10.0.0.1"), ("node2", "10.0.0.2")):
        cfg.nodes[name] = configmod.Node(name=name, address=address, host_key=host_key)
    cfg.storages["local-zfs"] = configmod.Storage(id="local-zfs", pool="rpool/data")
    cfg.storages["tank"] = configmod.Storage(id="tank", pool="tank/vols")
    cfg.guests[100] = configmod.Guest(id=100, type="vm", node="node1",
                                      volumes=["local-zfs:vm-100-disk-0", "tank:vm-100-disk-1"])
    cfg.guests[200] = configmod.Guest(id=200, type="vm", node="node2", volumes=["local-zfs:vm-200-disk-0"])
    cfg.guests[400] = configmod.Guest(id=400, type="vm", node="node1", volumes=["local-zfs:vm-400-disk-0"])
    for job, target in (("100-0", "node2"), ("200-0", "node1"), ("400-0", "node2")):
        cfg.jobs[job] = configmod.Job(id=job, target=target)
    confdir, statedir = node_dirs(tmp_path, cfg, "node2")
    zfs = RecordingZfs()
    monkeypatch.setattr(RecordingPopen, "zfs", zfs)
    monkeypatch.setattr(receive_stream.subprocess, "Popen", RecordingPopen)
    return receivermod.Receiver(confdir=confdir, statedir=statedir, zfs=zfs, now=lambda: 1700003600.0,
                                peer="node1")


def serve(receiver, command, stdin, tmp_path):
    """main() as the forced command runs it (stdin a real file: `receive` splices from its descriptor)."""
    path = tmp_path / "stdin"
    path.write_bytes(stdin)
    out = io.StringIO()
    with open(path, "rb") as handle:
        code = serving.main(environ={"SSH_ORIGINAL_COMMAND": command}, stdin=handle, stdout=out, receiver=receiver)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    reply = json.loads(lines[0])
    assert code == (0 if reply["ok"] else 1)
    return reply


def receive(**changes):
    args = {"job": "100-0", "guest": "100", "volume": "local-zfs:vm-100-disk-0",
            "snapshot": "__replicate_100-0_1700003600__", "base": SNAP, "generation": "7", "source": "node1"}
    args.update(changes)
    return "receive " + " ".join("%s=%s" % (k, v) for k, v in args.items() if v is not None)


def finalize(**changes):
    request = {"job": "100-0", "guest": 100, "volumes": ["local-zfs:vm-100-disk-0"], "last_sync": 1700000900,
               "guest_definition": {"type": "vm"}, "generation": 7, "source": "node1"}
    request.update(changes)
    return json.dumps(request).encode()


def prepare(**changes):
    request = {"job": "100-0", "guest": 100, "volumes": ["local-zfs:vm-100-disk-0"], "scan": [],
               "last_sync": 1700000900, "generation": 7, "source": "node1"}
    request.update(changes)
    return json.dumps(request).encode()


def assert_refused_without_change(receiver, reply, reason="invalid-argument"):
    assert not reply["ok"] and reply["reason"] == reason, reply
    assert receiver.zfs.changes() == []


# ---------------------------------------------------------------- safety rule 1

@pytest.mark.parametrize("resume", [None, "1"])
def test_receive_into_a_volume_of_a_guest_owned_here_is_refused(node, tmp_path, resume):
    reply = serve(node, receive(volume="local-zfs:vm-200-disk-0", base="__replicate_200-0_1700000000__",
                                resume=resume), b"\0" * 312, tmp_path)
    assert not reply["ok"] and reply["reason"] in ("owner", "invalid-argument", "not-guest-volume"), reply
    assert node.zfs.changes() == []


def test_abort_resume_on_a_volume_of_a_guest_owned_here_is_refused(node, tmp_path):
    request = {"job": "400-0", "guest": 400, "volume": "local-zfs:vm-200-disk-0", "generation": 7, "source": "node1"}
    reply = serve(node, "abort-resume", json.dumps(request).encode(), tmp_path)
    assert not reply["ok"] and reply["reason"] in ("owner", "invalid-argument", "not-guest-volume"), reply
    assert node.zfs.changes() == []


# ---------------------------------------------------------------- crashes: a traceback instead of the JSON answer

def test_receive_guest_in_superscript_digits_is_refused_not_a_crash(node, tmp_path):
    reply = serve(node, receive(guest="\u00b9\u2070\u2070"), b"", tmp_path)
    assert_refused_without_change(node, reply)


@pytest.mark.parametrize("operation", [{}, []])
def test_session_operation_that_is_not_a_string_is_refused_not_a_crash(node, operation):
    stdin = io.BytesIO((json.dumps({"operation": operation, "request": {}}) + "\n").encode())
    out = io.StringIO()
    code = serving.main(environ={"SSH_ORIGINAL_COMMAND": "session"}, stdin=stdin, stdout=out, receiver=node)
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == 0 and len(replies) == 1 and replies[0]["reason"] == "invalid-operation"


def test_prepare_scan_that_is_not_a_list_is_refused_not_a_crash(node, tmp_path):
    reply = serve(node, "prepare", prepare(scan=7), tmp_path)
    assert_refused_without_change(node, reply)


# ---------------------------------------------------------------- malformed requests that are carried out

def test_prepare_scan_that_is_not_a_list_is_refused(node, tmp_path):
    reply = serve(node, "prepare", prepare(scan={"local-zfs": 1}), tmp_path)
    assert_refused_without_change(node, reply)


@pytest.mark.parametrize("guest", ["\u0661\u0660\u0660", "0100"])
def test_receive_guest_that_is_not_a_plain_number_is_refused(node, tmp_path, guest):
    reply = serve(node, receive(guest=guest), b"\0" * 312, tmp_path)
    assert_refused_without_change(node, reply)


@pytest.mark.parametrize("operation, request_bytes", [
    ("abort-resume", json.dumps({"job": "400-0", "guest": 400, "volume": "local-zfs:vm-400-disk-0\n",
                                 "generation": 7, "source": "node1"}).encode()),
    ("prepare", prepare(source="node1\n")),
    ("prepare", prepare(job="100-0\n")),
    ("prepare", prepare(scan=["local-zfs\n"])),
    ("prepare", prepare(parent_snapname=SNAP + "\n")),
    ("finalize", finalize(volumes=["local-zfs:vm-100-disk-0\n"])),
])
def test_trailing_newline_is_refused_in_every_name(node, tmp_path, operation, request_bytes):
    reply = serve(node, operation, request_bytes, tmp_path)
    # a source ending in a newline is not the calling node's name: refused as claiming another node
    assert not reply["ok"] and reply["reason"] in ("invalid-argument", "wrong-source"), reply


def test_request_with_duplicate_keys_is_refused(node, tmp_path):
    request = prepare().replace(b'"job": "100-0"', b'"job": "200-0", "job": "100-0"')
    reply = serve(node, "prepare", request, tmp_path)
    assert not reply["ok"] and reply["reason"] == "invalid-argument", reply


@pytest.mark.parametrize("snapshot", ["__replicate_100-0_170000.3600__", "__replicate_100-0___",
                                      "__replicate_100-0_x:y__"])
def test_receive_snapshot_must_be_the_jobs_replicate_name(node, tmp_path, snapshot):
    reply = serve(node, receive(snapshot=snapshot), b"\0" * 312, tmp_path)
    assert_refused_without_change(node, reply)


def test_volume_name_with_dotdot_is_refused(node, tmp_path):
    reply = serve(node, "prepare", prepare(volumes=["local-zfs:vm..100-disk-0"]), tmp_path)
    assert_refused_without_change(node, reply)


# ---------------------------------------------------------------- validated after acting

def test_finalize_checks_every_volume_before_acting(node, tmp_path):
    reply = serve(node, "finalize", finalize(volumes=["local-zfs:vm-100-disk-0", "nosuch:vm-100-disk-1"]), tmp_path)
    assert_refused_without_change(node, reply, "not-guest-volume")


def test_drop_migration_copy_checks_every_volume_before_acting(node, tmp_path):
    node.zfs.datasets["rpool/data/vm-100-disk-0"]["__replicate_100-999999999_1700000000__"] = 5
    request = {"job": "100-999999999", "guest": 100, "volumes": ["local-zfs:vm-100-disk-0", "nosuch:vm-100-disk-1"],
               "generation": 7, "source": "node1"}
    reply = serve(node, "drop-migration-copy", json.dumps(request).encode(), tmp_path)
    assert_refused_without_change(node, reply, "not-guest-volume")


def test_finalize_without_guest_definition_changes_nothing(node, tmp_path):
    reply = serve(node, "finalize", finalize(guest_definition=None), tmp_path)
    assert_refused_without_change(node, reply)
