# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Failover and migration planning: every rule, from the configuration and the nodes' answers alone."""

from __future__ import annotations

import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils.failover import (
    FailoverError, NodeView, newest_replica_snapshot, plan_failover, quorum, replica_snapshot_time)
from ansible_collections.storage.replication.plugins.module_utils.migrate import (
    MigrationError, copy_size, plan_migration, plan_summary)
from ansible_collections.storage.replication.plugins.module_utils.pruning import drop_job_snapshots

NOW = 1_800_000_000


def cluster(nodes=("node1", "node2", "node3")):
    cfg = configmod.ClusterConfig(generation=5)
    for index, name in enumerate(nodes):
        cfg.nodes[name] = configmod.Node(name=name, address="10.0.0.%d" % (index + 1))
    cfg.storages["local-zfs"] = configmod.Storage(id="local-zfs")
    for guest, owner in ((100, "node1"), (101, "node1"), (200, "node2")):
        cfg.guests[guest] = configmod.Guest(id=guest, type="service", node=owner, volumes=["local-zfs:subvol-%d-disk-0" % guest])
    cfg.jobs["100-0"] = configmod.Job(id="100-0", target="node2", source="node1")
    cfg.jobs["100-1"] = configmod.Job(id="100-1", target="node3", source="node1")
    cfg.jobs["101-0"] = configmod.Job(id="101-0", target="node3", source="node1")
    return cfg


def replica(guest, job, last_sync):
    return {"job": job, "last_sync": last_sync, "volumes": ["local-zfs:subvol-%d-disk-0" % guest]}


def views(cfg, down=("node1",), replicas=None, generations=None):
    replicas = replicas or {"node2": {100: replica(100, "100-0", NOW - 30)},
                            "node3": {100: replica(100, "100-1", NOW - 300), 101: replica(101, "101-0", NOW - 60)}}
    return {name: NodeView(name, name not in down, (generations or {}).get(name, cfg.generation), replicas.get(name, {}),
                           "unreachable" if name in down else None)
            for name in cfg.nodes}


def test_each_guest_goes_to_the_node_with_its_newest_replica():
    cfg = cluster()
    plan = plan_failover(cfg, "node2", "node1", views(cfg), now=NOW)
    assert [(g["guest"], g["to"], g["job"], g["recovery_point"], g["lost_writes_window"]) for g in plan["guests"]] == [
        (100, "node2", "100-0", NOW - 30, 30), (101, "node3", "101-0", NOW - 60, 60)]
    assert plan["guests"][0]["jobs_after"] == {"100-0": "node2 -> node1", "100-1": "node2 -> node3"}
    assert plan["moves"] == [{"id": 100, "node": "node2"}, {"id": 101, "node": "node3"}]
    assert plan["quorum"] == {"nodes": 3, "reachable": ["node2", "node3"], "needed": 2, "quorate": True}
    assert not plan["warnings"] and not plan["forced_quorum"] and not plan["unrecoverable"]
    assert plan["summary"][1].startswith("guest 100: node1 -> node2, from the replica of")


def test_to_overrides_the_choice_and_must_hold_a_replica():
    cfg = cluster()
    plan = plan_failover(cfg, "node2", "node1", views(cfg), guests=[100], to="node3", now=NOW)
    assert [(g["guest"], g["to"], g["recovery_point"]) for g in plan["guests"]] == [(100, "node3", NOW - 300)]
    plan = plan_failover(cfg, "node2", "node1", views(cfg), guests=[101], to="node2", now=NOW)
    assert plan["guests"] == [] and plan["unrecoverable"][0]["reason"] == "node 'node2' holds no complete replica of it (no replica at all)"
    assert plan["warnings"] == ["guest 101 cannot be recovered: node 'node2' holds no complete replica of it (no replica at all)"]


def test_a_replica_missing_a_volume_is_not_used():
    cfg = cluster()
    cfg.guests[100].volumes.append("local-zfs:subvol-100-disk-1")
    plan = plan_failover(cfg, "node2", "node1", views(cfg), guests=[100], now=NOW)
    assert plan["guests"] == [] and plan["unrecoverable"][0]["reason"] == "no surviving node that answers holds a complete replica of it"


@pytest.mark.parametrize("failed, local, extra, message", [
    ("node9", "node2", {}, "node 'node9' is not a node of the cluster configuration (nodes: node1, node2, node3)"),
    ("node2", "node2", {}, "node 'node2' is the node running this failover, so it has not failed"),
    ("node1", "node2", {"guests": [200]}, "guest 200 is owned by node 'node2', not by the failed node 'node1'"),
    ("node1", "node2", {"guests": [555]}, "guest 555 is not in the cluster configuration - nothing was changed; list only guests of 'node1' (100, 101)"),
    ("node1", "node2", {"to": "node1"}, "destination node 'node1' is the failed node"),
    ("node1", "node2", {"to": "node7"}, "destination node 'node7' is not a node of the cluster configuration"),
])
def test_bad_arguments_are_refused_with_the_object_named(failed, local, extra, message):
    cfg = cluster()
    with pytest.raises(FailoverError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_failover(cfg, local, failed, views(cfg), now=NOW, **extra)


def test_a_node_that_answers_is_never_failed_over():
    cfg = cluster()
    with pytest.raises(FailoverError, match="node 'node1' answers .*it has not failed"):
        plan_failover(cfg, "node2", "node1", views(cfg, down=()), now=NOW)


def test_an_unreachable_destination_is_refused():
    cfg = cluster()
    with pytest.raises(FailoverError, match="destination node 'node3' does not answer"):
        plan_failover(cfg, "node2", "node1", views(cfg, down=("node1", "node3")), to="node3", force_quorum=True, now=NOW)


def test_without_quorum_refused_unless_forced_with_a_loud_warning():
    cfg = cluster()
    with pytest.raises(FailoverError, match=r"no quorum: only 1 of 3 nodes answer \(node2\), 2 are needed - nothing was changed"):
        plan_failover(cfg, "node2", "node1", views(cfg, down=("node1", "node3")), now=NOW)
    plan = plan_failover(cfg, "node2", "node1", views(cfg, down=("node1", "node3")), force_quorum=True, now=NOW)
    assert plan["forced_quorum"] and plan["warnings"][0].startswith("QUORUM FORCED: only 1 of 3 nodes answer")
    assert "make NO other cluster change" in plan["warnings"][0]
    assert [g["guest"] for g in plan["guests"]] == [100] and plan["unrecoverable"][0]["guest"] == 101


def test_forcing_quorum_when_quorate_changes_nothing():
    cfg = cluster()
    plan = plan_failover(cfg, "node2", "node1", views(cfg), force_quorum=True, now=NOW)
    assert not plan["forced_quorum"] and not plan["warnings"]


def test_quorum_counts_the_configuration_not_the_answers():
    cfg = cluster(("node1", "node2", "node3", "node4"))
    votes = quorum(cfg, {"node1": NodeView("node1", True), "node2": NodeView("node2", True), "node9": NodeView("node9", True)})
    assert votes == {"nodes": 4, "reachable": ["node1", "node2"], "needed": 3, "quorate": False}


def test_a_newer_configuration_on_a_peer_stops_the_plan():
    cfg = cluster()
    with pytest.raises(FailoverError, match="'node3' hold a newer cluster configuration than this node"):
        plan_failover(cfg, "node2", "node1", views(cfg, generations={"node3": 6}), now=NOW)


def test_replication_snapshot_names():
    assert replica_snapshot_time("__replicate_100-0_1767225600__") == 1767225600
    assert replica_snapshot_time("__replicate_100-0_x__") is None and replica_snapshot_time("daily") is None
    snaps = {"__replicate_100-0_5__": {}, "__replicate_100-1_9__": {}, "manual": {}}
    assert newest_replica_snapshot(snaps) == "__replicate_100-1_9__"
    assert newest_replica_snapshot({"manual": {}}) is None


def test_migration_plan_reverses_the_job_to_the_target():
    cfg = cluster()
    plan = plan_migration(cfg, 100, "node2", "node1")
    assert plan == {"guest": 100, "source": "node1", "target": "node2", "mode": "delta", "job": "100-0",
                    "volumes": ["local-zfs:subvol-100-disk-0"], "jobs_after": {"100-0": "node2 -> node1", "100-1": "node2 -> node3"}}
    assert plan_summary(plan) == ("guest 100: node1 -> node2; stop, then the last delta by job 100-0 (node 'node2' holds its "
                                  "replica); jobs after: 100-0 node2 -> node1, 100-1 node2 -> node3")


def test_migration_to_a_node_without_replica_is_a_full_copy_and_the_jobs_keep_their_targets():
    cfg = cluster()
    plan = plan_migration(cfg, 101, "node2", "node1")
    assert (plan["mode"], plan["job"], plan["jobs_after"]) == ("full copy", "101-999999999", {"101-0": "node2 -> node3"})
    assert plan_summary(plan, 17_300_000) == (
        "guest 101: node1 -> node2; node 'node2' holds no replica: full copy of 1 volume(s), about 17 MB, while the guest runs, "
        "then the last delta with it stopped; jobs after: 101-0 node2 -> node3")
    assert "size unknown" in plan_summary(plan)
    cfg.guests[300] = configmod.Guest(id=300, type="service", node="node1")  # no job at all: a plain move
    assert plan_migration(cfg, 300, "node3", "node1")["jobs_after"] == {}
    cfg.move_guest(101, "node2")  # what the migration's ownership move does
    assert (cfg.jobs["101-0"].source, cfg.jobs["101-0"].target) == ("node2", "node3")


def test_the_copy_size_is_the_space_the_volumes_and_their_snapshots_use():
    class Zfs:
        def get(self, properties, names):
            assert properties == ("used",)
            return {name: {"used": "1500000"} for name in names}
    cfg = cluster()
    cfg.guests[101].volumes.append("local-zfs:subvol-101-disk-1")
    assert copy_size(cfg, 101, Zfs()) == 3_000_000


def test_dropping_the_copy_job_touches_only_its_own_snapshots_and_bookmarks():
    destroyed = []

    class Zfs:
        def snapshots(self, dataset):
            return {"__replicate_101-999999999_5__": {}, "__replicate_101-0_4__": {}, "__replicate_101-99999999_3__": {}}

        def bookmarks(self, dataset):
            return {"__replicate_101-999999999_5__": {}, "__replicate_101-0_4__": {}}

        def destroy(self, name):
            destroyed.append(name)
    said = []
    drop_job_snapshots(Zfs(), "101-999999999", "rpool/data/subvol-101-disk-0", said.append)
    assert destroyed == ["rpool/data/subvol-101-disk-0@__replicate_101-999999999_5__",
                         "rpool/data/subvol-101-disk-0#__replicate_101-999999999_5__"]
    assert len(said) == 2


@pytest.mark.parametrize("guest, target, local, change, message", [
    (100, "node1", "node1", None, "guest 100 is already owned by node 'node1': nothing to migrate"),
    (100, "node2", "node2", None, "guest 100 is owned by node 'node1', not by this node \\('node2'\\)"),
    (100, "node9", "node1", None, "target node 'node9' is not a node of the cluster configuration"),
    (999, "node2", "node1", None, "guest 999 is not in the cluster configuration"),
    (101, "node2", "node1", lambda cfg: (cfg.set_node(configmod.Node("node4", "10.0.0.4")),
                                         cfg.add_job(configmod.Job(id="101-999999999", target="node4"))),
     "replication job 101-999999999 exists, but its number is reserved for the full copy of a migration"),
    (100, "node2", "node1", lambda cfg: cfg.mark_job_for_removal("100-0"),
     "refusing to migrate replicated guest 100 whose replication job 100-0 is marked for removal"),
    (100, "node2", "node1", lambda cfg: cfg.update_job("100-0", disable=True), "replication job 100-0 .* is disabled"),
])
def test_migration_refusals(guest, target, local, change, message):
    cfg = cluster()
    if change:
        change(cfg)
    with pytest.raises(MigrationError, match=message):
        plan_migration(cfg, guest, target, local)
