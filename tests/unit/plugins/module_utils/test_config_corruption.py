# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A damaged configuration is never read as empty (DESIGN.md, safety rule 7): the digest of each generation,
strict parsing of the directories we wrote (legacy ones without a digest too), and the explicit restore."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as C
from ansible_collections.storage.replication.plugins.module_utils.config import ClusterConfig, ConfigCorrupt, ConfigError

from test_config import with_jobs  # pylint: disable=import-error


@pytest.fixture(name="confdir")
def confdir_fixture(tmp_path):
    """A configuration directory holding with_jobs() as generation 1."""
    C.save(with_jobs(), str(tmp_path))
    return tmp_path


def saved():
    """What the fixture's directory holds."""
    cfg = with_jobs()
    cfg.generation = 1
    return cfg


def damage(confdir, name, data):
    """Write through the stable symlink, as `printf garbage > /etc/storage-replication/replication.cfg` does."""
    (confdir / name).write_bytes(data)


def make_legacy(confdir):
    """A generation written before the digest existed."""
    os.unlink(confdir / "generations/1" / C.DIGEST_FILE)


def corrupt(confdir):
    with pytest.raises(ConfigCorrupt) as info:
        C.load(str(confdir))
    message = str(info.value)
    assert "\n" not in message and message.startswith("the cluster configuration of this node cannot be read: ")
    assert message.endswith("restore it from the peers with 'storage-replication restore-config' (the runner tries "
                            "this itself)")
    return info.value


def test_a_generation_carries_a_digest_that_sha256sum_checks(confdir):
    proc = subprocess.run(["sha256sum", "-c", C.DIGEST_FILE], cwd=confdir / "current", capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0 and proc.stdout == "replication.cfg: OK\ncluster.json: OK\n"
    assert C.load(str(confdir)) == saved()


@pytest.mark.parametrize("name, data", [
    ("replication.cfg", b"garbage\n"),
    ("replication.cfg", b""),
    ("replication.cfg", b"local: 100-0\n\ttarget node3\n\n"),  # parses cleanly, yet is not what was written
    ("cluster.json", b'{"generation": 1, "nodes": {'),  # truncated
    ("cluster.json", b"\x00\xff\xfe binary"),
])
def test_any_change_behind_the_digest_is_corruption(confdir, name, data):
    damage(confdir, name, data)
    error = corrupt(confdir)
    path = os.path.realpath(confdir / "generations/1" / name)
    assert error.path == path
    assert "%s does not match the sha256 recorded in SHA256SUMS when it was written" % path in str(error)


@pytest.mark.parametrize("name, data, problem", [
    ("replication.cfg", b"garbage\n", "replication.cfg line 1 - ignore config line: garbage"),
    ("replication.cfg", b"local: 100-0\n\ttarget node2\n\tbogus 1\n\n",
     "replication.cfg line 3 (section '100-0') - unable to parse value of 'bogus': unexpected property 'bogus'"),
    ("replication.cfg", b"local: 100-0\n\xff\xfe\n", "replication.cfg is not UTF-8 text"),
    ("cluster.json", b'{"generation": 1, "nodes": {', "cluster.json is not valid JSON"),
    ("cluster.json", b"", "cluster.json is empty"),
])
def test_a_legacy_generation_is_checked_by_parsing(confdir, name, data, problem):
    make_legacy(confdir)
    assert C.load(str(confdir)) == saved()  # accepted as it is
    damage(confdir, name, data)
    error = corrupt(confdir)
    assert problem in str(error)
    assert "restore it from the previous generation" not in str(error)  # the hand-made file's fix does not apply


def test_a_damaged_digest_file_is_corruption(confdir):
    damage(confdir, "current/" + C.DIGEST_FILE, b"nonsense")
    assert "SHA256SUMS is not a list of the two files' sha256" in str(corrupt(confdir))


def test_only_a_missing_directory_is_empty(tmp_path):
    assert C.load(str(tmp_path / "fresh")) == ClusterConfig()
    os.symlink("generations/9", tmp_path / "current")  # points nowhere: not a fresh node
    assert "generations/9/cluster.json is missing" in str(corrupt(tmp_path))


def test_nothing_is_committed_on_top_of_a_damaged_configuration(confdir):
    damage(confdir, "replication.cfg", b"garbage\n")
    before = sorted(p.name for p in (confdir / "generations").iterdir())
    changed = saved()
    changed.remove_job("100-1")
    with pytest.raises(ConfigCorrupt):
        C.save(changed, str(confdir))
    with pytest.raises(ConfigCorrupt):
        with C.edit(str(confdir)):
            pass
    newer = with_jobs()
    newer.generation = 5
    with pytest.raises(ConfigCorrupt):
        C.adopt(newer, str(confdir))  # a single peer's push is no restore
    assert sorted(p.name for p in (confdir / "generations").iterdir()) == before


def test_restore_replaces_the_damaged_generation_and_keeps_it(confdir):
    damage(confdir, "replication.cfg", b"garbage\n")
    peers = saved()
    kept = C.restore(peers, str(confdir))
    assert pathlib.Path(kept).read_bytes() == b"garbage\n"
    assert pathlib.Path(kept).parent.name.startswith("1" + C.CORRUPT_SUFFIX)
    assert C.load(str(confdir)) == peers
    with pytest.raises(ConfigError, match="is readable: there is nothing to restore"):
        C.restore(peers, str(confdir))


def test_the_peers_are_found_in_the_newest_generation_that_parses(confdir):
    cfg = C.load(str(confdir))
    cfg.update_job("100-0", rate=20)
    C.save(cfg, str(confdir))  # generation 2
    damage(confdir, "cluster.json", b"{")
    assert sorted(C.known_nodes(str(confdir))) == ["node1", "node2", "node3"]  # from generation 1
    assert C.known_nodes(str(confdir / "none")) == {}


def test_a_generation_kept_aside_still_names_the_peers(confdir):
    damage(confdir, "replication.cfg", b"garbage\n")
    C.restore(saved(), str(confdir))
    damage(confdir, "cluster.json", b"{")  # now the only numbered generation does not parse
    assert sorted(C.known_nodes(str(confdir))) == ["node1", "node2", "node3"]
    kept = C.restore(saved(), str(confdir))  # twice within a second: both damaged copies are kept
    assert pathlib.Path(kept).read_bytes() == b"{" and len(list((confdir / "generations").iterdir())) == 3
