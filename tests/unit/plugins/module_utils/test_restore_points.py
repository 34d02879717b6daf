# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of restore points around the grid: listing and pruning on a node (points.py, on an in-memory ZFS),
making room on a full pool (oldest first, never the newest or a base), choosing a point and planning a rollback
or a failover to it (rollback.py, failover.py), and a rollback from a point the owner holds.  The lab test
(tests/integration/test_restore_points_lab.py) runs the ransomware story on real nodes."""

from __future__ import annotations

import time

import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import failover, points, retention, rollback
from ansible_collections.storage.replication.plugins.module_utils.names import replication_snapshot

DATASET = "rpool/data/subvol-100-disk-0"
VOLUME = "local-zfs:subvol-100-disk-0"
T0 = 1767225600  # 2026-01-01 00:00 UTC


class Features:
    def __init__(self, openzfs):
        self.holds = self.bookmarks = openzfs


class FakeZfs:
    """Datasets with snapshots in creation order, each {guid, createtxg, creation, used, referenced, userrefs};
    ``free`` bytes in the pool; a destroyed snapshot gives its ``used`` back. Records every command."""

    def __init__(self, openzfs=False, free=1 << 30):
        self.features = Features(openzfs)
        self.datasets = {}
        self.free = free
        self.txg = 0
        self.log = []

    def add(self, dataset, names, used=1000):
        snaps = self.datasets.setdefault(dataset, {})
        for name in names:
            self.txg += 1
            snaps[name] = {"guid": str(9000 + self.txg), "createtxg": self.txg, "creation": T0 + self.txg,
                           "used": used, "referenced": 5000, "userrefs": 0}

    def get(self, properties, names, depth=None):
        found = {}
        for name in names:
            dataset, _sep, snap = name.partition("@")
            if snap:
                found[name] = {p: str(self.datasets[dataset][snap].get(p, 0)) for p in properties}
                continue
            found[name] = {"available": str(self.free), "usedbysnapshots": str(
                sum(i["used"] for i in self.datasets[name].values())), "guid": "1", "type": "filesystem"}
            for snap, info in (self.datasets[name].items() if depth else ()):
                found["%s@%s" % (name, snap)] = dict({p: str(info.get(p, 0)) for p in properties}, type="snapshot")
        return found

    def snapshots(self, dataset):
        return {k: dict(v) for k, v in self.datasets[dataset].items()}

    def exists(self, name):
        dataset, _sep, snap = name.partition("@")
        return dataset in self.datasets and (not snap or snap in self.datasets[dataset])

    def run_while_busy(self, argv):
        self.log.append(argv)
        dataset, _sep, snaps = argv[-1].partition("@")
        for snap in snaps.split(","):
            self.free += self.datasets[dataset].pop(snap)["used"]

    def destroy(self, name, recursive=False):
        self.log.append(["destroy"] + (["-r"] if recursive else []) + [name])
        dataset, _sep, snap = name.partition("@")
        if snap:
            self.free += self.datasets[dataset].pop(snap)["used"]
        else:
            del self.datasets[dataset]

    def release_holds(self, name, recursive=False):
        self.log.append(["release", name])
        dataset, _sep, snap = name.partition("@")
        self.datasets[dataset][snap]["userrefs"] = 0

    def snapshot(self, datasets, name):
        for dataset in datasets:
            self.add(dataset, [name])

    def copy_local_snapshot(self, source, target, replicate=False):
        dataset, _sep, snap = source.partition("@")
        names = list(self.datasets[dataset]) if replicate else [snap]
        self.datasets[target] = {n: dict(self.datasets[dataset][n]) for n in names[:names.index(snap) + 1]}
        self.log.append(["copy", source, target, replicate])

    def rollback(self, dataset, snap):
        self.log.append(["rollback", dataset, snap])
        names = list(self.datasets[dataset])
        for newer in names[names.index(snap) + 1:]:
            del self.datasets[dataset][newer]

    def replica_identity(self, dataset):
        return None, "1"


def names(*offsets, job="100-0"):
    return [replication_snapshot(job, T0 + 900 * k) for k in offsets]


# ---------------------------------------------------------------------------------------------------------------
# points.py: prune, holds, make room

@pytest.mark.parametrize("openzfs", [False, True])
def test_prune_destroys_exactly_what_the_grid_drops_and_only_the_jobs_own(openzfs):
    zfs = FakeZfs(openzfs)
    zfs.add(DATASET, names(*range(10)) + names(3, job="100-1") + ["manual"])
    said = []
    deleted = points.prune(zfs, said.append, "100-0", DATASET, zfs.snapshots(DATASET), retention.parse("last=3"),
                           protected=[names(0)[0]], localtime=time.gmtime)
    assert deleted == set(names(*range(1, 7)))
    assert set(zfs.datasets[DATASET]) == set(names(0, 7, 8, 9) + names(3, job="100-1") + ["manual"])
    assert said[0] == "delete restore point '%s' on %s (not kept by keep=last=3)" % (names(1)[0], DATASET)
    destroys = [argv for argv in zfs.log if argv[0] == "zfs"]
    assert len(destroys) == (1 if openzfs else 6)  # OpenZFS: one command for the batch


def test_release_older_holds_keeps_only_the_base_held():
    zfs = FakeZfs(openzfs=True)
    zfs.add(DATASET, names(0, 1, 2))
    for snap in zfs.datasets[DATASET].values():
        snap["userrefs"] = 1
    points.release_older_holds(zfs, DATASET, points.listing(zfs, DATASET), "100-0", names(2)[0])
    assert [argv for argv in zfs.log if argv[0] == "release"] == [["release", "%s@%s" % (DATASET, n)] for n in names(0, 1)]


def test_make_room_prunes_oldest_first_never_newest_or_base_and_only_when_it_can_help():
    zfs = FakeZfs(free=500)
    zfs.add(DATASET, names(0, 1, 2, 3, 4), used=1000)
    said = []
    pruned = points.make_room(zfs, said.append, "100-0", {VOLUME: DATASET}, need=2200, protected=[names(1)[0]])
    assert pruned == names(0, 2)  # the base (1) is skipped; 500 + 1000 + 1000 >= 2200
    assert "deleted the oldest restore point '%s'" % names(0)[0] in said[0]
    assert points.make_room(zfs, said.append, "100-0", {VOLUME: DATASET}, need=10 ** 9) == []
    assert "not enough for the next point" in said[-1]
    assert points.make_room(zfs, said.append, "100-0", {VOLUME: DATASET}, need=None,
                            protected=[names(1)[0]]) == names(3)  # one at a time when the need is not known
    assert points.make_room(zfs, said.append, "100-0", {VOLUME: DATASET}, need=None, protected=[names(1)[0]]) == []
    assert set(zfs.datasets[DATASET]) == set(names(1, 4))  # the base and the newest are left


def test_summary_counts_points_on_every_volume():
    listed = {"a": {n: {"used": 10} for n in names(0, 1, 2)}, "b": {n: {"used": 5} for n in names(1, 2)}}
    assert points.summary(listed, "100-0") == {"count": 2, "oldest": T0 + 900, "newest": T0 + 1800, "bytes": 40}


# ---------------------------------------------------------------------------------------------------------------
# Choosing a point

def point(offset, volumes=(VOLUME,), job="100-0"):
    return {"snapshot": replication_snapshot(job, T0 + 900 * offset), "job": job, "time": T0 + 900 * offset,
            "time_text": rollback.time_text(T0 + 900 * offset), "volumes": {v: {"used": 1, "referenced": 7} for v in volumes}, "complete": True}


def test_node_points_groups_volumes_and_marks_incomplete_ones():
    reply = {VOLUME: {names(1)[0]: {"job": "100-0", "time": T0 + 900, "used": 3, "referenced": 9},
                      names(2)[0]: {"job": "100-0", "time": T0 + 1800, "used": 4, "referenced": 9}},
             "local-zfs:subvol-100-disk-1": {names(2)[0]: {"job": "100-0", "time": T0 + 1800, "used": 5, "referenced": 9}}}
    found = rollback.node_points(reply, [VOLUME, "local-zfs:subvol-100-disk-1"])
    assert [(p["snapshot"], p["complete"], p["bytes"]) for p in found] == [(names(2)[0], True, 9), (names(1)[0], False, 3)]


@pytest.mark.parametrize("text, expected", [
    ("__replicate_100-0_1767225600__", ("snapshot", "__replicate_100-0_1767225600__")),
    ("1767225600", ("time", 1767225600)),
])
def test_parse_point(text, expected):
    assert rollback.parse_point(text) == expected


def test_parse_point_local_time_and_refusals():
    assert rollback.parse_point("2026-01-01 01:00") == ("time", int(time.mktime((2026, 1, 1, 1, 0, 0, 0, 0, -1))))
    assert rollback.parse_point("2026-01-01T01:00:30")[1] == int(time.mktime((2026, 1, 1, 1, 0, 30, 0, 0, -1)))
    with pytest.raises(rollback.RollbackError, match="neither a restore point's snapshot name"):
        rollback.parse_point("yesterday")
    with pytest.raises(rollback.RollbackError, match="is in the future"):
        rollback.parse_point("2026-01-02 00:00", now=T0)


def test_pick_holder_newest_at_or_before_the_time_preferring_the_owner():
    candidates = {"node1": [point(4), point(2)], "node2": [point(6), point(4), point(1)], "node3": [point(3)]}
    assert rollback.pick_holder(candidates, ("time", T0 + 900 * 5), prefer=["node1"])[0] == "node1"
    assert rollback.pick_holder(candidates, ("time", T0 + 900 * 5))[0] == "node1"  # a tie: by name
    assert rollback.pick_holder(candidates, ("time", T0 + 900 * 6))[0] == "node2"
    assert rollback.pick_holder(candidates, ("snapshot", names(3)[0]))[0] == "node3"
    assert rollback.pick_holder(candidates, ("time", T0 - 1)) == (None, None)
    incomplete = dict(point(9), complete=False)
    assert rollback.pick_holder({"node2": [incomplete]}, ("time", T0 + 900 * 9)) == (None, None)


# ---------------------------------------------------------------------------------------------------------------
# Planning

def cluster(keep_source=None):
    cfg = configmod.ClusterConfig(generation=3)
    for name in ("node1", "node2", "node3"):
        cfg.nodes[name] = configmod.Node(name, "10.0.0.%s" % name[-1])
    cfg.storages["local-zfs"] = configmod.Storage("local-zfs", pool="rpool/data")
    cfg.guests[100] = configmod.Guest(100, "service", "node1", [VOLUME])
    cfg.jobs["100-0"] = configmod.Job("100-0", "node2", keep="last=5", keep_source=keep_source, source="node1")
    cfg.jobs["100-1"] = configmod.Job("100-1", "node3", source="node1")
    return cfg


def view(*pts, owner=False, reachable=True):
    return {"reachable": reachable, "error": None if reachable else "down", "owner": owner, "points": list(pts)}


def test_plan_pulls_back_from_the_replica_and_names_the_job_that_cannot_continue():
    survey = {"node1": view(point(9), owner=True), "node2": view(point(9), point(5), point(3)), "node3": view(point(9))}
    plan = rollback.plan_rollback(cluster(), 100, str(T0 + 900 * 6), "node1", survey, "20260101000000")
    assert (plan["point"]["snapshot"], plan["from"], plan["local"]) == (names(5)[0], "node2", False)
    assert plan["volumes"][VOLUME] == {"dataset": DATASET, "kept": DATASET + "-rollback-20260101000000",
                                       "newer": [names(9)[0]], "referenced": 7}
    assert plan["jobs"]["100-0"].startswith("continues incrementally from %s" % names(5)[0])
    assert "finds no common base" in plan["jobs"]["100-1"]
    assert "pulled back from node node2" in plan["summary"][0]


def test_plan_prefers_a_local_point_and_refuses_off_the_owner_or_without_a_point():
    survey = {"node1": view(point(5), owner=True), "node2": view(point(5)), "node3": view(reachable=False)}
    plan = rollback.plan_rollback(cluster("last=5"), 100, names(5)[0], "node1", survey, "x")
    assert (plan["from"], plan["local"]) == ("node1", True)
    assert "did not answer" in plan["jobs"]["100-1"]
    with pytest.raises(rollback.RollbackError, match="owned by node 'node1', not by this node"):
        rollback.plan_rollback(cluster(), 100, names(5)[0], "node2", survey, "x")
    with pytest.raises(rollback.RollbackError, match="no node holds a restore point .* at or before .*not asked: node3"):
        rollback.plan_rollback(cluster(), 100, str(T0 - 60), "node1", survey, "x")


def test_failover_plan_to_a_point_takes_the_node_with_the_newest_point_before_it():
    cfg = cluster()
    views = {"node1": failover.NodeView("node1", False, error="down"),
             "node2": failover.NodeView("node2", True, 3, {100: {"job": "100-0", "last_sync": T0 + 900 * 9, "volumes": [VOLUME]}}),
             "node3": failover.NodeView("node3", True, 3, {100: {"job": "100-1", "last_sync": T0 + 900 * 8, "volumes": [VOLUME]}})}
    found = {100: {"node2": view(point(9), point(4)), "node3": view(point(8), point(6, job="100-0"))}}
    plan = failover.plan_failover(cfg, "node2", "node1", views, point=str(T0 + 900 * 7), points=found, now=T0 + 900 * 10)
    item = plan["guests"][0]
    assert (item["to"], item["point"]["snapshot"], item["recovery_point"]) == ("node3", names(6)[0], T0 + 900 * 6)
    assert "restore point %s" % names(6)[0] in plan["summary"][1]
    none = failover.plan_failover(cfg, "node2", "node1", views, point=str(T0), points=found, now=T0 + 900 * 10)
    assert none["guests"] == [] and "holds a restore point at or before" in none["unrecoverable"][0]["reason"]
    with pytest.raises(failover.FailoverError, match="neither a restore point"):
        failover.plan_failover(cfg, "node2", "node1", views, point="soon", points=found)


# ---------------------------------------------------------------------------------------------------------------
# A rollback to a point the owner holds (keep_source): copy aside whole, then roll back

def test_rollback_to_a_local_point_keeps_everything_aside_first(tmp_path, monkeypatch):
    confdir, statedir = tmp_path / "etc", tmp_path / "lib"
    statedir.mkdir()
    (statedir / "local-node").write_text("node1\n")
    configmod.save(cluster("last=5"), str(confdir))
    zfs = FakeZfs()
    zfs.datasets["rpool/data"] = {}
    zfs.add(DATASET, names(1, 2, 3))
    monkeypatch.setattr(rollback, "survey_points", lambda cfg, guest, *a, **k: {
        "node1": view(point(3), point(2), point(1), owner=True), "node2": view(reachable=False),
        "node3": view(reachable=False)})
    dry = rollback.rollback_guest(100, names(2)[0], check_mode=True, confdir=str(confdir), statedir=str(statedir),
                                  zfs=zfs, now=lambda: T0)
    assert dry["changed"] is False and zfs.log == []
    done = rollback.rollback_guest(100, names(2)[0], confdir=str(confdir), statedir=str(statedir), zfs=zfs,
                                   now=lambda: T0)
    kept = DATASET + "-rollback-20260101000000"
    assert done["volumes"][VOLUME]["kept"] == kept and done["volumes"][VOLUME]["restored"] == names(2)[0]
    assert list(zfs.datasets[DATASET]) == names(1, 2)  # back to the point
    assert set(names(1, 2, 3)) <= set(zfs.datasets[kept])  # the newer point and the state before are in the copy
    steps = [argv[0] for argv in zfs.log]
    assert steps.index("copy") < steps.index("rollback")  # nothing is replaced before it is kept


def test_cli_refuses_bad_keep_rules_before_anything(capsys):
    from ansible_collections.storage.replication.plugins.module_utils import cli  # pylint: disable=import-outside-toplevel
    assert cli.main(["create-local-job", "100-0", "node2", "--keep", "daily=7,minutely=1"]) == cli.EXIT_BAD_INPUT
    assert "unknown rule 'minutely'" in capsys.readouterr().err
    assert cli.main(["update", "100-0", "--keep-source", "last"]) == cli.EXIT_BAD_INPUT
    assert "'last' is not <rule>=<count>" in capsys.readouterr().err
    assert cli.size_text(1536) == "1.5 KiB" and cli.size_text(12) == "12 B"
