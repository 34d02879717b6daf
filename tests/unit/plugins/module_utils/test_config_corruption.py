# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A damaged configuration is never read as empty (DESIGN.md, safety rule 7): the digest of each generation,
strict parsing of the directories we wrote (legacy ones without a digest too), and the explicit restore."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess

import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as C
from ansible_collections.storage.replication.plugins.module_utils.config import ClusterConfig, ConfigCorrupt, ConfigError

from test_config import with_jobs  # pylint: disable=import-error


@pytest.fixture(name="confdir", params=["cold", "cached"])
def confdir_fixture(tmp_path, request):
    """A configuration directory holding with_jobs() as generation 1; "cached": loaded once, so that the parsed
    cache holds it (every damage below must be found all the same)."""
    C.save(with_jobs(), str(tmp_path))
    if request.param == "cached":
        assert C.load(str(tmp_path)) == saved() and (tmp_path / C.CACHE_FILE).exists()
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


# ---------------------------------------------------------------------------------------------------------------
# The parsed cache (config._ParsedCache): used when it holds exactly the bytes on disk, never stale

def parses_not(monkeypatch):
    """From now on parsing the files fails the test: a load must come from the cache."""
    def refused(*_args):
        raise AssertionError("the files were parsed again")
    monkeypatch.setattr(C, "from_files", refused)


def rewrite(confdir, name, text):
    """Replace a file of the current generation and record its sha256 in SHA256SUMS, as a careful hand-edit (or an
    attacker) would: the digest check passes, only the content changed."""
    directory = confdir / "current"
    (directory / name).write_text(text)
    sums = {n: hashlib.sha256((directory / n).read_bytes()).hexdigest() for n in (C.JOBS_FILE, C.MODEL_FILE)}
    (directory / C.DIGEST_FILE).write_text("".join("%s  %s\n" % (sums[n], n) for n in sorted(sums)))


def test_a_second_load_takes_the_cache_and_gets_its_own_objects(confdir, monkeypatch):
    first = C.load(str(confdir))
    parses_not(monkeypatch)
    second = C.load(str(confdir))
    assert second == first == saved() and second.content() == first.content()
    second.jobs["100-0"].rate = 99  # a caller changing its copy changes no other load's
    second.guests[100].volumes.append("local-zfs:vm-100-disk-9")
    assert C.load(str(confdir)) == first


def test_a_file_replaced_with_the_same_size_is_parsed_again(confdir, monkeypatch):
    C.load(str(confdir))
    jobs = (confdir / "current" / C.JOBS_FILE).read_text()
    changed = jobs.replace("schedule */5", "schedule */7", 1)
    assert len(changed) == len(jobs) and changed != jobs
    stat = os.stat(confdir / "current" / C.JOBS_FILE)
    rewrite(confdir, C.JOBS_FILE, changed)
    os.utime(confdir / "current" / C.JOBS_FILE, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    cfg = C.load(str(confdir))
    assert cfg.jobs["100-0"].schedule == "*/7"
    parses_not(monkeypatch)  # and that parse is what the cache holds now
    assert C.load(str(confdir)).jobs["100-0"].schedule == "*/7"


def test_garbage_behind_a_matching_digest_is_still_corruption(confdir):
    C.load(str(confdir))
    rewrite(confdir, C.JOBS_FILE, "garbage\n")
    assert "replication.cfg line 1 - ignore config line: garbage" in str(corrupt(confdir))
    rewrite(confdir, C.MODEL_FILE, "{")
    assert "cluster.json is not valid JSON" in str(corrupt(confdir))


def test_a_new_generation_is_loaded_not_the_cached_one(confdir, monkeypatch):
    C.load(str(confdir))
    cfg = saved()
    cfg.update_job("100-0", rate=20)
    assert C.save(cfg, str(confdir)) is True
    loaded = C.load(str(confdir))
    assert loaded.generation == 2 and loaded.jobs["100-0"].rate == 20
    parses_not(monkeypatch)
    assert C.load(str(confdir)) == loaded


@pytest.mark.parametrize("spoil", [
    lambda text: b"garbage",
    lambda text: text[:len(text) // 2],  # cut short
    lambda text: text.replace(b'"node2"', b'"node9"'),  # changed behind its own sha256
    lambda text: text.replace(b'"format": 1', b'"format": 2'),  # another version's
])
def test_a_damaged_cache_is_ignored_and_replaced(confdir, monkeypatch, spoil):
    C.load(str(confdir))
    cache = confdir / C.CACHE_FILE
    cache.write_bytes(spoil(cache.read_bytes()))
    assert C.load(str(confdir)) == saved()
    parses_not(monkeypatch)
    assert C.load(str(confdir)) == saved()


def test_the_cache_of_another_directory_is_not_taken(confdir, tmp_path_factory):
    C.load(str(confdir))
    other = tmp_path_factory.mktemp("other")
    cfg = saved()
    cfg.update_job("100-0", rate=20)
    C.save(cfg, str(other))
    # the same generation number, other files: the cache copied over must not answer for them
    (other / C.CACHE_FILE).write_bytes((confdir / C.CACHE_FILE).read_bytes())
    assert C.load(str(other)).jobs["100-0"].rate == 20
    head = json.loads((other / C.CACHE_FILE).read_bytes().partition(b"\n")[0])
    assert head["key"][0] == os.path.realpath(other / "current")


def test_a_directory_that_cannot_be_written_still_loads(confdir, monkeypatch):
    def refused(*_args, **_kwargs):
        raise PermissionError("read-only")
    monkeypatch.setattr(C, "atomic_write", refused)
    assert C.load(str(confdir)) == saved()
