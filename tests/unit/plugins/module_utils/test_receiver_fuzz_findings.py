# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Defects of the receiver found by the fuzzer (tests/fuzz/fuzz_receiver.py), each reduced to a minimal request.

Every test states what the receiver must do and is marked xfail(strict=True) while receiver.py does otherwise: when a
fix lands, its test passes, strict xfail turns that into a failure, and the fix removes the marker here and the
matching entry of KNOWN in tests/fuzz/fuzz_receiver.py (so that the fuzzer reports a regression as a new defect).

The node: this node is node2 (generation 7); guest 100 is owned by node1 (replicated here), guest 200 by this node.
The ZFS layer records every call and knows a few datasets; a `zfs recv` process is recorded instead of started.
"""

from __future__ import annotations

import io
import json
import subprocess

import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import receiver as receivermod
from ansible_collections.storage.replication.plugins.module_utils.zfs import Features

SNAP = "__replicate_100-0_1700000900__"
CHANGES = ("destroy", "rollback", "keep_for_next_sync", "abort_resume", "snapshot", "copy_local_snapshot", "recv")


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

    def child_snapshots(self, parent):
        return {d: self._info(d) for d in self.datasets if d.rpartition("/")[0] == parent}

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
    confdir = tmp_path / "etc"
    confdir.mkdir()
    configmod.save(cfg, str(confdir))
    statedir = tmp_path / "lib"
    statedir.mkdir()
    (statedir / "local-node").write_text("node2\n")
    zfs = RecordingZfs()
    monkeypatch.setattr(RecordingPopen, "zfs", zfs)
    monkeypatch.setattr(receivermod.subprocess, "Popen", RecordingPopen)
    monkeypatch.setattr(receivermod.orphans, "leftover_receives", lambda datasets: {})
    return receivermod.Receiver(confdir=str(confdir), statedir=str(statedir), zfs=zfs, now=lambda: 1700003600.0)


def serve(receiver, command, stdin, tmp_path):
    """main() as the forced command runs it (stdin a real file: `receive` splices from its descriptor)."""
    path = tmp_path / "stdin"
    path.write_bytes(stdin)
    out = io.StringIO()
    with open(path, "rb") as handle:
        code = receivermod.main(environ={"SSH_ORIGINAL_COMMAND": command}, stdin=handle, stdout=out, receiver=receiver)
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

@pytest.mark.xfail(strict=True, reason="receive checks that the request's guest is not owned here, but not that the "
                   "volume belongs to that guest: node1 (owner of guest 100) runs `zfs recv -F` into the volume of "
                   "guest 200, which this node owns (DESIGN safety rules 1 and 3)")
@pytest.mark.parametrize("resume", [None, "1"])
def test_receive_into_a_volume_of_a_guest_owned_here_is_refused(node, tmp_path, resume):
    reply = serve(node, receive(volume="local-zfs:vm-200-disk-0", base="__replicate_200-0_1700000000__",
                                resume=resume), b"\0" * 312, tmp_path)
    assert not reply["ok"] and reply["reason"] in ("owner", "invalid-argument"), reply
    assert node.zfs.changes() == []


@pytest.mark.xfail(strict=True, reason="abort-resume does not check that the volume belongs to the request's guest: "
                   "`zfs recv -A` runs on a volume of a guest this node owns")
def test_abort_resume_on_a_volume_of_a_guest_owned_here_is_refused(node, tmp_path):
    request = {"job": "400-0", "guest": 400, "volume": "local-zfs:vm-200-disk-0", "generation": 7, "source": "node1"}
    reply = serve(node, "abort-resume", json.dumps(request).encode(), tmp_path)
    assert not reply["ok"] and reply["reason"] in ("owner", "invalid-argument"), reply
    assert node.zfs.changes() == []


# ---------------------------------------------------------------- crashes: a traceback instead of the JSON answer

@pytest.mark.xfail(strict=True, reason="_int_or_none: str.isdigit() is true for superscript digits, int() then raises "
                   "ValueError, which answer() does not catch: the peer gets a traceback, not a JSON reply")
def test_receive_guest_in_superscript_digits_is_refused_not_a_crash(node, tmp_path):
    reply = serve(node, receive(guest="\u00b9\u2070\u2070"), b"", tmp_path)
    assert_refused_without_change(node, reply)


@pytest.mark.xfail(strict=True, reason="session_request: `operation not in CONTROL_OPERATIONS` raises TypeError for an "
                   "unhashable operation (a JSON object or list), which escapes answer() and ends the session "
                   "with a traceback")
@pytest.mark.parametrize("operation", [{}, []])
def test_session_operation_that_is_not_a_string_is_refused_not_a_crash(node, operation):
    stdin = io.BytesIO((json.dumps({"operation": operation, "request": {}}) + "\n").encode())
    out = io.StringIO()
    code = receivermod.main(environ={"SSH_ORIGINAL_COMMAND": "session"}, stdin=stdin, stdout=out, receiver=node)
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == 0 and len(replies) == 1 and replies[0]["reason"] == "invalid-operation"


@pytest.mark.xfail(strict=True, reason="prepare iterates `scan` without checking that it is a list: a number raises "
                   "TypeError (a traceback instead of the answer)")
def test_prepare_scan_that_is_not_a_list_is_refused_not_a_crash(node, tmp_path):
    reply = serve(node, "prepare", prepare(scan=7), tmp_path)
    assert_refused_without_change(node, reply)


# ---------------------------------------------------------------- malformed requests that are carried out

@pytest.mark.xfail(strict=True, reason="prepare iterates `scan` without checking that it is a list: an object is taken "
                   "for the list of its keys and scanned")
def test_prepare_scan_that_is_not_a_list_is_refused(node, tmp_path):
    reply = serve(node, "prepare", prepare(scan={"local-zfs": 1}), tmp_path)
    assert_refused_without_change(node, reply)


@pytest.mark.xfail(strict=True, reason="_int_or_none takes any text int() reads: Unicode digits (guest=١٠٠, "
                   "str.isdigit) and leading zeros (guest=0100) are taken for guest 100 and the stream is received")
@pytest.mark.parametrize("guest", ["\u0661\u0660\u0660", "0100"])
def test_receive_guest_that_is_not_a_plain_number_is_refused(node, tmp_path, guest):
    reply = serve(node, receive(guest=guest), b"\0" * 312, tmp_path)
    assert_refused_without_change(node, reply)


@pytest.mark.xfail(strict=True, reason="every pattern of receiver.py ends in $, which also matches before a final "
                   "newline: a job, node, storage, volume or snapshot name ending in \\n passes (use \\Z or fullmatch)")
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
    assert not reply["ok"] and reply["reason"] == "invalid-argument", reply


@pytest.mark.xfail(strict=True, reason="json.loads keeps the last of duplicate keys: a request whose fields a "
                   "different parser would read differently is carried out")
def test_request_with_duplicate_keys_is_refused(node, tmp_path):
    request = prepare().replace(b'"job": "100-0"', b'"job": "200-0", "job": "100-0"')
    reply = serve(node, "prepare", request, tmp_path)
    assert not reply["ok"] and reply["reason"] == "invalid-argument", reply


@pytest.mark.xfail(strict=True, reason="is_job_snapshot only checks the prefix and the trailing '__': a receive "
                   "snapshot of job 100-0 whose epoch is not a number passes")
@pytest.mark.parametrize("snapshot", ["__replicate_100-0_170000.3600__", "__replicate_100-0___",
                                      "__replicate_100-0_x:y__"])
def test_receive_snapshot_must_be_the_jobs_replicate_name(node, tmp_path, snapshot):
    reply = serve(node, receive(snapshot=snapshot), b"\0" * 312, tmp_path)
    assert_refused_without_change(node, reply)


@pytest.mark.xfail(strict=True, reason="VOLUME_RE allows '..' inside a volume name (vm..100-disk-0): issue 13's "
                   "validation forbids '..' in every name")
def test_volume_name_with_dotdot_is_refused(node, tmp_path):
    reply = serve(node, "prepare", prepare(volumes=["local-zfs:vm..100-disk-0"]), tmp_path)
    assert_refused_without_change(node, reply)


# ---------------------------------------------------------------- validated after acting

@pytest.mark.xfail(strict=True, reason="finalize resolves each volume's storage inside its loop: it holds and destroys "
                   "snapshots of the first volume, then refuses the second one's unknown storage")
def test_finalize_checks_every_volume_before_acting(node, tmp_path):
    reply = serve(node, "finalize", finalize(volumes=["local-zfs:vm-100-disk-0", "nosuch:vm-100-disk-1"]), tmp_path)
    assert_refused_without_change(node, reply, "storage-missing")


@pytest.mark.xfail(strict=True, reason="drop-migration-copy resolves each volume's storage inside its loop: it "
                   "destroys the copy job's snapshots of the first volume, then refuses the second")
def test_drop_migration_copy_checks_every_volume_before_acting(node, tmp_path):
    node.zfs.datasets["rpool/data/vm-100-disk-0"]["__replicate_100-999999999_1700000000__"] = 5
    request = {"job": "100-999999999", "guest": 100, "volumes": ["local-zfs:vm-100-disk-0", "nosuch:vm-100-disk-1"],
               "generation": 7, "source": "node1"}
    reply = serve(node, "drop-migration-copy", json.dumps(request).encode(), tmp_path)
    assert_refused_without_change(node, reply, "storage-missing")


@pytest.mark.xfail(strict=True, reason="finalize checks guest_definition only after it has held the kept snapshot and "
                   "destroyed the older ones: a request refused as invalid has already changed the replica")
def test_finalize_without_guest_definition_changes_nothing(node, tmp_path):
    reply = serve(node, "finalize", finalize(guest_definition=None), tmp_path)
    assert_refused_without_change(node, reply)
