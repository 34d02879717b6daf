# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the OpenZFS feature paths of the ZFS layer and of their absence on zfs-fuse.

The real thing is proven in tests/openzfs (QEMU guests with the OpenZFS kernel module) and, for the zfs-fuse
side, by the lab tests; these pin the argv the engine builds and the decisions it takes from probe output, and
(with a real `zfs` program of their own on the PATH) when `zfs version` is run again.
"""

from __future__ import annotations

import pytest

from ansible_collections.storage.replication.plugins.module_utils import preload
from ansible_collections.storage.replication.plugins.module_utils import zfs as zfsmod
from ansible_collections.storage.replication.plugins.module_utils.zfs import (
    HOLD_TAG, Zfs, ZfsError, parse_resume_info, recv_argv, resume_send_argv, send_argv)

OPENZFS = (0, "zfs-2.1.11-1\nzfs-kmod-2.1.11-1\n", "")
ZFS_FUSE = (2, "", "unrecognized command 'version'")


class Script:
    """A fake `run`: answers each argv from a list of (argv prefix, (rc, out, err)); records the calls."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, argv, input_bytes=None, check=True):
        self.calls.append(argv)
        for index, (prefix, answer) in enumerate(self.answers):
            if argv[:len(prefix)] == list(prefix):
                del self.answers[index]
                rc, out, err = answer
                if check and rc:
                    raise ZfsError(argv, rc, err)
                return answer
        raise AssertionError("unexpected command %r" % argv)


def test_zfs_fuse_takes_the_old_paths_without_a_single_openzfs_command():
    run = Script((["zfs", "version"], ZFS_FUSE), (["zfs", "destroy"], (0, "", "")))
    zfs = Zfs(run)
    assert zfs.send_options("rpool/data/vm-1") == {"compressed": False, "raw": False}
    assert zfs.resume_tokens("rpool/data") == {}
    assert zfs.bookmarks("rpool/data/vm-1") == {}
    zfs.keep_for_next_sync("rpool/data/vm-1@s")
    zfs.destroy("rpool/data/vm-1@s")
    assert run.calls == [["zfs", "version"], ["zfs", "destroy", "rpool/data/vm-1@s"]]
    assert zfs.features.as_dict() == {
        "implementation": "zfs-fuse", "version": None, "multi_snapshot": False, "written_property": False,
        "resumable_receive": False, "compressed_send": False, "raw_send": False, "receive_exclude": False,
        "bookmarks": False, "holds": False}


def test_openzfs_features_are_all_on():
    features = Zfs(Script((["zfs", "version"], OPENZFS))).features
    assert all(value for key, value in features.as_dict().items() if key not in ("implementation", "version"))
    assert features.as_dict()["implementation"] == "openzfs"


@pytest.mark.parametrize("props, expected", [
    ("compression\tlz4\nencryption\toff\n", {"compressed": True, "raw": False}),
    ("compression\toff\nencryption\toff\n", {"compressed": False, "raw": False}),
    ("compression\tlz4\nencryption\taes-256-gcm\n", {"compressed": False, "raw": True}),
])
def test_send_options_compressed_where_stored_compressed_raw_where_encrypted(props, expected):
    out = "".join("p/d\t%s\n" % line for line in props.strip().split("\n"))
    zfs = Zfs(Script((["zfs", "version"], OPENZFS), (["zfs", "get"], (0, out, ""))))
    assert zfs.send_options("p/d") == expected


def test_send_argv_raw_compressed_and_bookmark_base():
    assert send_argv("p/d", "s2", raw=True) == ["zfs", "send", "-R", "-w", "p/d@s2"]
    # a bookmark base: -i only and no replication stream (zfs send refuses -R/-I from a bookmark)
    assert send_argv("p/d", "s2", base="#s1", compressed=True) == ["zfs", "send", "-p", "-c", "-i", "p/d#s1", "p/d@s2"]
    assert resume_send_argv("1-abc") == ["zfs", "send", "-t", "1-abc"]


def test_recv_argv_excludes_properties():
    expected = ["zfs", "recv", "-F", "-s", "-x", "encryption", "p/d"]
    assert recv_argv("p/d", resumable=True, exclude=("encryption",)) == expected


def test_resume_tokens_lists_only_children_with_a_token():
    out = ("rpool/data\treceive_resume_token\t-\n"
           "rpool/data/vm-1\treceive_resume_token\t1-f00-c0-789c\n"
           "rpool/data/vm-2\treceive_resume_token\t-\n")
    run = Script((["zfs", "version"], OPENZFS), (["zfs", "get"], (0, out, "")))
    assert Zfs(run).resume_tokens("rpool/data") == {"rpool/data/vm-1": "1-f00-c0-789c"}
    assert run.calls[1] == ["zfs", "get", "-Hp", "-o", "name,property,value", "-d", "1", "receive_resume_token",
                            "rpool/data"]


def test_parse_resume_info_reads_toname_and_toguid():
    text = ("resume token contents:\nnvlist version: 0\n\tobject = 0x3\n\toffset = 0x800000\n\tbytes = 0x801a3c\n"
            "\ttoguid = 0x6a4bd06e1b9f6a35\n\ttoname = rpool/data/vm-300-disk-0@__replicate_300-0_1764150000__\n"
            "full\trpool/data/vm-300-disk-0@__replicate_300-0_1764150000__\t201326592\n")
    assert parse_resume_info(text) == ("rpool/data/vm-300-disk-0@__replicate_300-0_1764150000__", 0x6a4bd06e1b9f6a35)
    with pytest.raises(ValueError):
        parse_resume_info("cannot resume send: 'x' used in the initial send no longer exists\n")


def test_resume_target_of_a_stale_token_is_a_zfs_error():
    err = "cannot resume send: 'p/d@s' used in the initial send no longer exists\n"
    zfs = Zfs(Script((["zfs", "version"], OPENZFS), (["zfs", "send", "-nvP", "-t"], (255, "", err))))
    with pytest.raises(ZfsError, match="no longer exists"):
        zfs.resume_target("1-abc")


def test_destroy_releases_the_engines_hold_first_and_ignores_a_missing_one():
    run = Script((["zfs", "version"], OPENZFS),
                 (["zfs", "release"], (1, "", "cannot release hold from snapshot 'p/d@s': no such tag on this dataset")),
                 (["zfs", "destroy"], (0, "", "")))
    Zfs(run).destroy("p/d@s")
    assert run.calls[1:] == [["zfs", "release", HOLD_TAG, "p/d@s"], ["zfs", "destroy", "p/d@s"]]


def test_recursive_destroy_releases_holds_on_every_held_snapshot():
    userrefs = "p/d@a\t0\np/d@b\t1\n"
    run = Script((["zfs", "version"], OPENZFS), (["zfs", "get"], (0, userrefs, "")), (["zfs", "release"], (0, "", "")),
                 (["zfs", "destroy"], (0, "", "")))
    Zfs(run).destroy("p/d", recursive=True)
    assert run.calls[2:] == [["zfs", "release", HOLD_TAG, "p/d@b"], ["zfs", "destroy", "-r", "p/d"]]


def test_a_real_release_failure_is_not_swallowed():
    run = Script((["zfs", "version"], OPENZFS), (["zfs", "release"], (1, "", "permission denied")))
    with pytest.raises(ZfsError, match="permission denied"):
        Zfs(run).destroy("p/d@s")


def get_lines(rows):
    """`zfs get -Hp -o name,property,value` output of {name: {property: value}}."""
    return "".join("%s\t%s\t%s\n" % (name, prop, value) for name, values in rows.items() for prop, value in values.items())


def mark(guid, createtxg):
    return {"type": "bookmark", "guid": guid, "createtxg": createtxg, "creation": 1700000000 + createtxg}


def test_bookmarks_parse_in_creation_order():
    out = get_lines({"p/d#__replicate_1-0_9__": mark(22, 90), "p/d#__replicate_1-0_5__": mark(11, 50)})
    zfs = Zfs(Script((["zfs", "version"], OPENZFS), (["zfs", "get"], (0, out, ""))))
    assert list(zfs.bookmarks("p/d")) == ["__replicate_1-0_5__", "__replicate_1-0_9__"]
    assert zfs.run.calls[-1] == ["zfs", "get", "-Hp", "-o", "name,property,value", "-d", "1", "-t", "bookmark",
                                 "type,guid,createtxg,creation", "p/d"]


def test_a_sent_datasets_snapshots_bookmarks_and_send_options_come_from_one_command():
    out = get_lines({
        "p/d": {"type": "filesystem", "guid": 1, "createtxg": 2, "creation": 3, "compression": "lz4", "encryption": "off"},
        "p/d@__replicate_1-0_9__": {"type": "snapshot", "guid": 7, "createtxg": 90, "creation": 1700000900},
        "p/d#__replicate_1-0_5__": mark(11, 50),
        "p/d/child": {"type": "filesystem", "guid": 8, "createtxg": 60, "creation": 4},  # its own are not listed
    })
    run = Script((["zfs", "version"], OPENZFS), (["zfs", "get"], (0, out, "")))
    snaps, marks, options = Zfs(run).source_listing("p/d")
    assert list(snaps) == ["__replicate_1-0_9__"] and snaps["__replicate_1-0_9__"]["guid"] == "7"
    assert marks == {"__replicate_1-0_5__": {"guid": "11", "createtxg": 50, "creation": 1700000050}}
    assert options == {"compressed": True, "raw": False}
    assert run.calls[1:] == [["zfs", "get", "-Hp", "-o", "name,property,value", "-d", "1", "-t",
                              "filesystem,volume,snapshot,bookmark",
                              "type,guid,createtxg,creation,compression,encryption", "p/d"]]


def test_hold_is_idempotent():
    exists = "cannot hold snapshot 'p/d@s': tag already exists on this dataset"
    run = Script((["zfs", "version"], OPENZFS), (["zfs", "hold"], (1, "", exists)))
    Zfs(run).keep_for_next_sync("p/d@s")
    assert run.calls[-1] == ["zfs", "hold", HOLD_TAG, "p/d@s"]


@pytest.fixture
def fake_zfs(tmp_path, monkeypatch):
    """A real `zfs` on the PATH that answers `zfs version` as OpenZFS and counts its runs, and a module version file
    of its own; nothing remembered from an earlier probe."""
    binary = tmp_path / "bin" / "zfs"
    binary.parent.mkdir()
    runs = tmp_path / "runs"
    binary.write_text("#!/bin/sh\necho run >> %s\necho zfs-2.2.2-1\necho zfs-kmod-2.2.2-1\n" % runs)
    binary.chmod(0o755)
    module = tmp_path / "module-version"
    module.write_text("2.2.2-1\n")
    monkeypatch.setenv("PATH", str(binary.parent))
    monkeypatch.setattr(zfsmod, "MODULE_VERSION_FILE", str(module))
    monkeypatch.setattr(zfsmod, "_PROBED", {})
    return binary, module, lambda: len(runs.read_text().splitlines()) if runs.exists() else 0


def test_zfs_version_is_run_once_while_the_binary_and_the_kernel_module_stay_the_same(fake_zfs):
    binary, module, runs = fake_zfs
    assert Zfs().features.openzfs_version == "2.2.2-1" and runs() == 1
    assert Zfs().features.openzfs and runs() == 1  # a second command (a preload's fork) asks nothing
    module.write_text("2.2.3-1\n")  # another kernel module loaded
    assert Zfs().features.openzfs and runs() == 2
    upgraded = binary.with_name("zfs.dpkg-new")  # the package upgraded, as dpkg does it: a new file renamed over
    upgraded.write_text(binary.read_text().replace("2.2.2", "2.2.3"))
    upgraded.chmod(0o755)
    upgraded.rename(binary)
    assert Zfs().features.openzfs_version == "2.2.3-1" and runs() == 3
    module.unlink()  # no kernel module at all
    Zfs().features  # pylint: disable=expression-not-assigned
    assert runs() == 4


def test_a_scripted_run_is_never_answered_from_the_real_zfs_probe(fake_zfs):
    Zfs().features  # pylint: disable=expression-not-assigned
    run = Script((["zfs", "version"], ZFS_FUSE))
    assert not Zfs(run).features.openzfs and run.calls == [["zfs", "version"]]


def test_no_zfs_on_the_path_is_never_remembered(fake_zfs, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert zfsmod.zfs_fingerprint() is None
    with pytest.raises(OSError):
        Zfs().features  # pylint: disable=expression-not-assigned
    assert not zfsmod._PROBED  # pylint: disable=protected-access


def test_the_preload_probes_when_it_starts_and_its_commands_ask_no_more(fake_zfs):
    _binary, _module, runs = fake_zfs
    preload.load_engine()
    assert runs() == 1
    assert Zfs().features.openzfs_version == "2.2.2-1" and runs() == 1
