# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""storage.replication.guest, storage and node through their main(): ownership, refusals, list forms, purge."""

from __future__ import annotations

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.modules import guest, node, storage

from conftest import HOST_KEY


def test_guest_owner_is_kept_after_a_move(node_cluster, run_module):
    with configmod.edit(node_cluster["confdir"]) as cfg:
        cfg.move_guest(100, "node2")
    node_cluster["peers"].sync(node_cluster["confdir"])
    args = {"id": 100, "type": "vm", "node": "node1", "volumes": ["local-zfs:vm-100-disk-0"]}
    result = run_module(guest.main, args, check=True)
    assert result["changed"] is False and result["guest"]["node"] == "node2"
    assert result["warnings"] == [
        "moved by a migration or failover, left where they run now: 100 on node2 - the inventory names where they "
        "started; to bring it in line set guest 100 node: node2 (README: 'Bringing the inventory in line')"]


def test_drift_is_one_line_for_every_moved_guest(node_cluster, run_module):
    with configmod.edit(node_cluster["confdir"]) as cfg:
        cfg.guests[200] = configmod.Guest(200, "ct", "node1", ["local-zfs:subvol-200-disk-0"])
        cfg.jobs["200-0"] = configmod.Job(id="200-0", target="node2")
        cfg.jobs["200-1"] = configmod.Job(id="200-1", target="node3")
        cfg.move_guest(100, "node2")
        cfg.move_guest(200, "node2")
    node_cluster["peers"].sync(node_cluster["confdir"])
    guests = [{"id": 100, "type": "vm", "node": "node1", "volumes": ["local-zfs:vm-100-disk-0"]},
              {"id": 200, "type": "ct", "node": "node1", "volumes": ["local-zfs:subvol-200-disk-0"]}]
    result = run_module(guest.main, {"guests": guests})
    assert result["changed"] is False
    assert result["warnings"] == [
        "moved by a migration or failover, left where they run now: 100 on node2, 200 on node2 - the inventory names "
        "where they started; to bring it in line set guest 100 node: node2; guest 200 node: node2 (its jobs' targets: "
        "node1, node3) (README: 'Bringing the inventory in line')"]


def test_new_guest_needs_its_node_and_type(node_cluster, run_module):
    no_node = run_module(guest.main, {"id": 300, "type": "ct"})
    assert no_node["failed"] and "a new guest needs the node it starts on" in no_node["msg"]
    no_type = run_module(guest.main, {"id": 300, "node": "node2"})
    assert no_type["failed"] and "guest '300': give its type" in no_type["msg"]
    assert 300 not in node_cluster["load"]().guests


def test_guest_with_unknown_storage_is_refused(node_cluster, run_module):
    result = run_module(guest.main, {"guests": [{"id": 300, "type": "ct", "node": "node2", "volumes": ["nosuch:subvol-300-disk-0"]}]})
    assert result["failed"] and "storage 'nosuch', which does not exist" in result["msg"]
    assert result["problems"] and node_cluster["load"]().generation == 1


def test_guest_diff_and_hooks(node_cluster, run_module):
    args = {"id": 100, "type": "vm", "node": "node1", "volumes": ["local-zfs:vm-100-disk-0"],
            "hooks": {"freeze": ["/usr/sbin/fsfreeze", "-f", "/srv"]}}
    result = run_module(guest.main, args, diff=True)
    assert result["changed"] is True
    assert '"hooks": {}' in result["diff"]["before"] and '"/usr/sbin/fsfreeze"' in result["diff"]["after"]
    assert node_cluster["load"]().guests[100].hook("freeze") == ["/usr/sbin/fsfreeze", "-f", "/srv"]
    bad = run_module(guest.main, dict(args, hooks={"freeze": "fsfreeze -f /srv"}))
    assert bad["failed"] and "never a shell string" in bad["msg"]


def test_storage_in_use_cannot_be_removed(node_cluster, run_module):
    result = run_module(storage.main, {"id": "local-zfs", "state": "absent"})
    assert result["failed"] and "guest '100'" in result["msg"] and "local-zfs" in result["msg"]
    assert "local-zfs" in node_cluster["load"]().storages


def test_storage_list_with_purge(node_cluster, run_module):
    added = run_module(storage.main, {"storages": [{"id": "local-zfs", "pool": "rpool/data"}, {"id": "tank", "pool": "tank/vols"}]})
    assert added["changed"] is True and [s["id"] for s in added["storages"]] == ["local-zfs", "tank"]
    purged = run_module(storage.main, {"storages": [{"id": "local-zfs", "pool": "rpool/data"}], "purge": True})
    assert purged["changed"] is True and list(node_cluster["load"]().storages) == ["local-zfs"]
    again = run_module(storage.main, {"storages": [{"id": "local-zfs", "pool": "rpool/data"}], "purge": True}, check=True)
    assert again["changed"] is False


def test_node_host_key_comment_is_dropped_and_kept_when_omitted(node_cluster, run_module):
    same = run_module(node.main, {"name": "node2", "address": "10.0.0.2", "host_key": HOST_KEY + " root@node2"})
    assert same["changed"] is False
    moved = run_module(node.main, {"name": "node2", "address": "10.0.0.22"})
    assert moved["changed"] is True and node_cluster["load"]().nodes["node2"].host_key == HOST_KEY


def test_node_in_use_cannot_be_purged(node_cluster, run_module):
    result = run_module(node.main, {"nodes": [{"name": "node2", "address": "10.0.0.2"}], "purge": True})
    assert result["failed"] and "node1" in result["msg"]
    assert sorted(node_cluster["load"]().nodes) == ["node1", "node2", "node3"]
