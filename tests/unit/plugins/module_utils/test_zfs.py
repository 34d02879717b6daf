# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the ZFS command layer: parsers, argv builders, feature detection, retries."""

from __future__ import annotations

import io
import struct

import pytest

from ansible_collections.storage.replication.plugins.module_utils import zfs as zfsmod
from ansible_collections.storage.replication.plugins.module_utils.zfs import (
    Zfs, ZfsError, parse_get, parse_version, recv_argv, send_argv, snapshot_tree, stream_begin_guids,
    stream_writes_data)

GET_OUTPUT = (
    "rpool/data/vm-100-disk-0\ttype\tfilesystem\n"
    "rpool/data/vm-100-disk-0\tguid\t111\n"
    "rpool/data/vm-100-disk-0\tcreatetxg\t5\n"
    "rpool/data/vm-100-disk-0\tcreation\t1700000000\n"
    "rpool/data/vm-100-disk-0@__replicate_100-0_1700000900__\ttype\tsnapshot\n"
    "rpool/data/vm-100-disk-0@__replicate_100-0_1700000900__\tguid\t18446744073709551615\n"
    "rpool/data/vm-100-disk-0@__replicate_100-0_1700000900__\tcreatetxg\t20\n"
    "rpool/data/vm-100-disk-0@__replicate_100-0_1700000900__\tcreation\t1700000900\n"
    "rpool/data/vm-100-disk-0@early\ttype\tsnapshot\n"
    "rpool/data/vm-100-disk-0@early\tguid\t7\n"
    "rpool/data/vm-100-disk-0@early\tcreatetxg\t10\n"
    "rpool/data/vm-100-disk-0@early\tcreation\t1700000100\n"
)


def test_parse_get_and_snapshot_tree_keep_exact_guids_and_creation_order():
    tree = snapshot_tree(parse_get(GET_OUTPUT))
    snaps = tree["rpool/data/vm-100-disk-0"]
    assert list(snaps) == ["early", "__replicate_100-0_1700000900__"]
    assert snaps["__replicate_100-0_1700000900__"] == {
        "guid": "18446744073709551615", "createtxg": 20, "creation": 1700000900}


def test_snapshot_tree_lists_datasets_without_snapshots():
    tree = snapshot_tree(parse_get("rpool/data\ttype\tfilesystem\nrpool/data\tguid\t3\n"))
    assert tree == {"rpool/data": {}}


def test_parse_get_rejects_malformed_lines():
    with pytest.raises(ValueError, match="unexpected line"):
        parse_get("rpool\tguid\n")


def test_send_argv_full_and_incremental():
    assert send_argv("rpool/data/vm-1", "s2") == ["zfs", "send", "-R", "rpool/data/vm-1@s2"]
    assert send_argv("rpool/data/vm-1", "s2", base="s1") == [
        "zfs", "send", "-R", "-I", "rpool/data/vm-1@s1", "rpool/data/vm-1@s2"]
    assert send_argv("p/d", "s2", base="s1", replicate=False, intermediates=False) == [
        "zfs", "send", "-p", "-i", "p/d@s1", "p/d@s2"]
    assert send_argv("p/d", "s", compressed=True) == ["zfs", "send", "-R", "-c", "p/d@s"]


def test_recv_argv():
    assert recv_argv("p/d") == ["zfs", "recv", "-F", "p/d"]
    assert recv_argv("p/d", force=False, resumable=True) == ["zfs", "recv", "-s", "p/d"]


def test_parse_version():
    assert parse_version("zfs-2.1.11-1\nzfs-kmod-2.1.11-1\n") == "2.1.11-1"
    assert parse_version("") is None


class FakeRun:
    """Records argv and answers from a script of (rc, stdout, stderr) per call."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, argv, input_bytes=None, check=True):
        self.calls.append(argv)
        rc, out, err = self.answers.pop(0)
        if check and rc:
            raise ZfsError(argv, rc, err)
        return rc, out, err


def test_feature_detection_zfs_fuse_has_no_version_command():
    run = FakeRun([(2, "", "unrecognized command 'version'")])
    features = Zfs(run).features
    assert not features.openzfs and not features.multi_snapshot and not features.written_property
    assert run.calls == [["zfs", "version"]]


def test_feature_detection_openzfs():
    features = Zfs(FakeRun([(0, "zfs-2.2.2-0\nzfs-kmod-2.2.2-0\n", "")])).features
    assert features.openzfs and features.multi_snapshot and features.written_property
    assert features.as_dict()["version"] == "2.2.2-0"


def test_snapshot_is_one_atomic_call_on_openzfs():
    run = FakeRun([(0, "zfs-2.2.2", ""), (0, "", "")])
    Zfs(run).snapshot(["p/a", "p/b"], "s")
    assert run.calls[-1] == ["zfs", "snapshot", "p/a@s", "p/b@s"]


def test_snapshot_on_zfs_fuse_undoes_partial_set_on_failure():
    run = FakeRun([(2, "", "no version"), (0, "", ""), (1, "", "out of space"), (0, "", "")])
    with pytest.raises(ZfsError, match="out of space"):
        Zfs(run).snapshot(["p/a", "p/b"], "s")
    assert run.calls[1:] == [["zfs", "snapshot", "p/a@s"], ["zfs", "snapshot", "p/b@s"], ["zfs", "destroy", "p/a@s"]]


def test_destroy_retries_while_busy(monkeypatch):
    monkeypatch.setattr(zfsmod.time, "sleep", lambda _s: None)
    run = FakeRun([(1, "", "cannot destroy 'p/a@s': dataset is busy")] * 2 + [(0, "", "")])
    Zfs(run).destroy("p/a@s")
    assert len(run.calls) == 3


def test_destroy_gives_up_after_deadline(monkeypatch):
    clock = iter(range(0, 1000, 5))
    monkeypatch.setattr(zfsmod.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(zfsmod.time, "sleep", lambda _s: None)
    run = FakeRun([(1, "", "dataset is busy")] * 10)
    with pytest.raises(ZfsError) as info:
        Zfs(run).destroy("p/a@s")
    assert info.value.busy and info.value.argv == ["zfs", "destroy", "p/a@s"] and info.value.rc == 1


def test_zfs_error_message_names_command_code_and_stderr():
    error = ZfsError(["zfs", "destroy", "p/x"], 1, "cannot open 'p/x': dataset does not exist\n")
    assert str(error) == "command 'zfs destroy p/x' failed: exit code 1: cannot open 'p/x': dataset does not exist"
    assert error.missing


def record(drr_type, payloadlen=0, body=b""):
    header = struct.pack("<II", drr_type, payloadlen) + body
    return header + b"\0" * (zfsmod.DRR_HEADER_SIZE - len(header))


def begin(toguid=5, fromguid=4):
    return record(zfsmod.DRR_BEGIN, body=struct.pack("<QQQIIQQ", 0x2F5BACBAC, 1, 0, 2, 0, toguid, fromguid))


def object_record(bonuslen):
    return record(zfsmod.DRR_OBJECT, body=struct.pack("<QIIII", 9, 19, 44, 512, bonuslen)) + b"b" * ((bonuslen + 7) & ~7)


def test_stream_begin_guids():
    assert stream_begin_guids(begin(toguid=99, fromguid=98)) == (99, 98)
    with pytest.raises(ValueError):
        stream_begin_guids(record(zfsmod.DRR_END))


def test_unmodified_incremental_stream_has_no_data():
    assert not stream_writes_data(io.BytesIO(begin() + record(zfsmod.DRR_END)))


def test_metadata_only_stream_has_no_data():
    stream = begin() + object_record(168) + record(zfsmod.DRR_FREE) + record(zfsmod.DRR_END)
    assert not stream_writes_data(io.BytesIO(stream))


def test_write_record_is_data_even_after_objects():
    stream = begin() + object_record(13) + record(zfsmod.DRR_WRITE) + b"x" * 4096
    assert stream_writes_data(io.BytesIO(stream))


def test_truncated_stream_is_an_error():
    with pytest.raises(ValueError, match="ends inside"):
        stream_writes_data(io.BytesIO(begin() + object_record(168)[:400]))


def test_child_volumes_lists_the_snapshots_of_the_picked_children_only():
    """Who every child of a storage is in one `zfs get`; the snapshots only of those a prepare looks at, in another
    (the pool's own snapshots and other guests' volumes are not listed)."""
    calls = []
    identity = "guest=100 job=100-0 source=node1 guid=11"
    answers = {
        "1 guid,storage-replication:replica rpool/data": [
            ("rpool/data", "guid", "1"), ("rpool/data@raw0", "guid", "2"),
            ("rpool/data/vm-100-disk-0", "guid", "11"), ("rpool/data/vm-100-disk-0", "storage-replication:replica", identity),
            ("rpool/data/vm-200-disk-0", "guid", "21"), ("rpool/data/vm-200-disk-0", "storage-replication:replica", "-")],
        "1 type,guid,createtxg,creation rpool/data/vm-100-disk-0": [
            ("rpool/data/vm-100-disk-0", "type", "filesystem"), ("rpool/data/vm-100-disk-0@s1", "type", "snapshot"),
            ("rpool/data/vm-100-disk-0@s1", "guid", "12"), ("rpool/data/vm-100-disk-0@s1", "createtxg", "5"),
            ("rpool/data/vm-100-disk-0@s1", "creation", "1700000000")],
    }

    def run(argv, _input=None, _check=True):
        key = " ".join(argv[argv.index("-d") + 1:])
        calls.append(key)
        return 0, "".join("%s\t%s\t%s\n" % line for line in answers[key]), ""

    looked = []
    found = zfsmod.Zfs(run=run).child_volumes("rpool/data", lambda ds, bound: looked.append((ds, bound)) or "100" in ds)
    assert calls == list(answers)
    assert [ds for ds, _bound in looked] == ["rpool/data/vm-100-disk-0", "rpool/data/vm-200-disk-0"]
    snaps, (who, guid) = found.pop("rpool/data/vm-100-disk-0")
    assert found == {} and guid == "11" and who["job"] == "100-0"
    assert snaps == {"s1": {"guid": "12", "createtxg": 5, "creation": 1700000000}}


def test_volumes_reads_the_named_datasets_only_and_skips_those_that_do_not_exist():
    calls = []
    identity = "guest=100 job=100-0 source=node1 guid=11"
    out = "".join("%s\t%s\t%s\n" % line for line in [
        ("rpool/data/vm-100-disk-0", "type", "filesystem"), ("rpool/data/vm-100-disk-0", "guid", "11"),
        ("rpool/data/vm-100-disk-0", "storage-replication:replica", identity),
        ("rpool/data/vm-100-disk-0@s1", "type", "snapshot"), ("rpool/data/vm-100-disk-0@s1", "guid", "12"),
        ("rpool/data/vm-100-disk-0@s1", "createtxg", "5"), ("rpool/data/vm-100-disk-0@s1", "creation", "1700000000"),
        ("rpool/data/vm-100-disk-0@s1", "storage-replication:replica", identity)])

    def run(argv, _input=None, _check=True):
        calls.append(argv)
        return 1, out, "cannot open 'rpool/data/vm-100-disk-1': dataset does not exist\n"

    found = zfsmod.Zfs(run=run).volumes(["rpool/data/vm-100-disk-0", "rpool/data/vm-100-disk-1"])
    gets = [argv for argv in calls if argv[1] == "get"]  # (`zfs version` first: zfs-fuse, no resume tokens to read)
    assert len(gets) == 1 and gets[0][-2:] == ["rpool/data/vm-100-disk-0", "rpool/data/vm-100-disk-1"]
    snaps, (who, guid), token = found.pop("rpool/data/vm-100-disk-0")
    assert found == {} and guid == "11" and who["job"] == "100-0" and token is None
    assert snaps == {"s1": {"guid": "12", "createtxg": 5, "creation": 1700000000}}


def test_volumes_read_the_resume_token_of_an_interrupted_receive_on_openzfs():
    out = "".join("%s\t%s\t%s\n" % line for line in [
        ("p/a", "type", "volume"), ("p/a", "guid", "1"), ("p/a", "receive_resume_token", "1-abc-def"),
        ("p/b", "type", "volume"), ("p/b", "guid", "2"), ("p/b", "receive_resume_token", "-")])
    calls = []

    def run(argv, _input=None, _check=True):
        calls.append(argv)
        return (0, "zfs-2.1.11-1\n", "") if argv[1] == "version" else (0, out, "")

    found = zfsmod.Zfs(run=run).volumes(["p/a", "p/b"])
    assert found["p/a"][2] == "1-abc-def" and found["p/b"][2] is None
    assert calls[-1][-3:] == ["type,guid,createtxg,creation,receive_resume_token,storage-replication:replica", "p/a",
                              "p/b"]


@pytest.mark.parametrize("err", ["cannot open 'rpool/data': I/O error\n", "",
                                 "cannot open 'a': dataset does not exist\nout of memory\n"])
def test_volumes_fails_on_anything_but_a_missing_dataset(err):
    zfs = zfsmod.Zfs(run=lambda argv, _input=None, _check=True: (1, "", err))
    with pytest.raises(zfsmod.ZfsError):
        zfs.volumes(["rpool/data/vm-100-disk-0"])
