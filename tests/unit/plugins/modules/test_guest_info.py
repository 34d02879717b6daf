# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""storage.replication.guest_info through its main(): owner, running from the status hook (on the owner only),
jobs, the replicas per node and the newest complete one, the nodes that did not answer.  Its query runs in the action
plugin on the controller; importing that here would turn this process into a controller (module warnings would go to
the display), so the lab test covers it (tests/integration/test_bad_day.py)."""

from __future__ import annotations

import json

import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import failover
from ansible_collections.storage.replication.plugins.modules import guest_info

VOLUMES = ["local-zfs:vm-100-disk-0", "local-zfs:vm-100-disk-1"]


@pytest.fixture
def paths(node_cluster, tmp_path, monkeypatch):
    """node1's directories, guests 100 (owned by node2, jobs to node1 and node3) and 200 (owned by node1, with
    status hooks), and the replica of guest 100 node1 holds."""
    statedir = tmp_path / "state"
    monkeypatch.setenv("STORAGE_REPLICATION_CONFDIR", node_cluster["confdir"])
    monkeypatch.setenv("STORAGE_REPLICATION_STATEDIR", str(statedir))
    with configmod.edit(node_cluster["confdir"]) as cfg:
        cfg.guests[100] = configmod.Guest(100, "vm", "node2", list(VOLUMES))
        cfg.jobs["100-0"] = configmod.Job(id="100-0", target="node1", schedule="*/5")
        cfg.jobs["100-1"] = configmod.Job(id="100-1", target="node3", rate=10.0)
        cfg.guests[200] = configmod.Guest(200, "service", "node1", ["local-zfs:subvol-200-disk-0"],
                                          hooks={"status": ["/bin/sh", "-c", "exit 3"], "start": ["/bin/true"]})
        cfg.guests[300] = configmod.Guest(300, "service", "node1", ["local-zfs:subvol-300-disk-0"],
                                          hooks={"status": ["/bin/sh", "-c", "echo broken; exit 7"]})
    (statedir / "guests").mkdir()
    (statedir / "guests" / "100.json").write_text(json.dumps(
        {"guest": {}, "job": "100-0", "source": "node2", "last_sync": 1767225600, "volumes": VOLUMES, "generation": 2}))
    return {"confdir": node_cluster["confdir"], "statedir": str(statedir)}


def by_id(result):
    return {guest["id"]: guest for guest in result["guests"]}


def test_this_node_only(paths, run_module):
    result = run_module(guest_info.main, {"peers": False}, check=True)
    assert result["changed"] is False and result["node"] == "node1" and result["unreachable_nodes"] == {}
    guests = by_id(result)
    assert sorted(guests) == [100, 200, 300]
    moved = guests[100]
    assert (moved["owner"], moved["owned_here"], moved["running"], moved["volumes"]) == ("node2", False, None, VOLUMES)
    assert [(j["id"], j["source"], j["target"], j["schedule"], j["rate"]) for j in moved["jobs"]] == [
        ("100-0", "node2", "node1", "*/5", None), ("100-1", "node2", "node3", None, 10.0)]
    assert moved["replicas"] == {"node1": {"last_sync": 1767225600, "time": failover.time_text(1767225600),
                                           "job": "100-0", "source": "node2", "complete": True}}
    assert moved["newest_replica"] == dict(moved["replicas"]["node1"], node="node1")
    # The status hook runs on the owner: exit 3 is "stopped"; a failing hook is a warning, not a failed module.
    assert (guests[200]["owned_here"], guests[200]["running"], guests[200]["hooks"]) == (True, False, ["start", "status"])
    assert guests[200]["replicas"] == {} and guests[200]["newest_replica"] is None
    assert guests[300]["running"] is None
    assert len(result["warnings"]) == 1 and "status hook of guest 300" in result["warnings"][0] \
        and "exit code 7: broken" in result["warnings"][0] and result["warnings"][0].endswith("running is null for guest 300")


def test_one_guest_and_an_unknown_one(paths, run_module):
    result = run_module(guest_info.main, {"guest": 200, "peers": False})
    assert [g["id"] for g in result["guests"]] == [200]
    unknown = run_module(guest_info.main, {"guest": 999, "peers": False})
    assert unknown["guests"] == [] and not unknown.get("failed")
    assert unknown["warnings"] == ["guest 999 is not in the cluster configuration of node 'node1' (guests: 100, 200, 300)"]


def test_the_peers_replicas_newest_complete_wins(paths, run_module, monkeypatch):
    """node3's replica is newer but misses a volume: node1's is the newest complete one; the owner's own record and
    an unreachable node are not replicas; a node with a newer configuration is a warning."""
    def survey(cfg, confdir, statedir):
        views = {"node1": failover.local_view(cfg, confdir, statedir)}
        views["node2"] = failover.NodeView("node2", True, cfg.generation, {100: {"job": "100-0", "last_sync": 1767229999,
                                                                                 "volumes": VOLUMES}})
        views["node3"] = failover.NodeView("node3", True, cfg.generation, {100: {
            "job": "100-1", "source": "node2", "last_sync": 1767226000, "volumes": VOLUMES[:1]}})
        views["node4"] = failover.NodeView("node4", False, error="unreachable at 10.0.0.4 port 22 (timed out)")
        views["node5"] = failover.NodeView("node5", True, cfg.generation + 1, {})
        return views
    monkeypatch.setattr(failover, "survey", survey)
    result = run_module(guest_info.main, {"guest": 100})
    guest = by_id(result)[100]
    assert sorted(guest["replicas"]) == ["node1", "node3"]
    assert guest["replicas"]["node3"]["complete"] is False and guest["replicas"]["node3"]["last_sync"] == 1767226000
    assert guest["newest_replica"]["node"] == "node1"
    assert result["unreachable_nodes"] == {"node4": "unreachable at 10.0.0.4 port 22 (timed out)"}
    assert result["warnings"] == ["node(s) 'node5' (3) hold a newer cluster configuration than this node ('node1', "
                                  "generation 2): this answer may be out of date - this node adopts the newer one at its "
                                  "runner's next run"]
