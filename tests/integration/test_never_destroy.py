# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Never destroy what is not ours (issue 13, DESIGN.md safety rules 2, 3 and 6), for real on the lab.

An operator's copy of a replica on the target survives the job's runs and its removal; a peer that names another
guest's volume, another job or another node is refused and changes nothing; a multi-volume first sync killed in
the middle recovers by itself at the next run.  Each test checks the data by checksum, not only the exit codes.
"""

from __future__ import annotations

import pytest

import cluster_setup as cs
from ansible_collections.storage.replication.plugins.module_utils.names import REPLICA_PROPERTY
from test_replicate import Cluster, job_snapshots
from test_replicate_failures import _kill_mid_stream

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def cluster(lab):
    return Cluster(lab)


def replicate_once(cluster, guest, owner="node1", target="node2", megabytes=2):
    name = "vm-%d-disk-0" % guest
    cluster.guest(guest, [name], owner=owner)
    cluster.job("%d-0" % guest, target)
    cluster.push()
    cs.write_random(cluster.lab, owner, name, "a.bin", megabytes)
    result = cluster.run("%d-0" % guest, node=owner)
    assert result["ok"], result["error"]
    return name, cluster.assert_replica(target, name, source=owner)


def test_an_operators_copy_of_a_replica_survives_the_job_and_its_removal(cluster):
    lab = cluster.lab
    name, snap = replicate_once(cluster, 150)
    copy = cs.POOL + "/backup-before-upgrade"
    cs.destroy(lab, "node2", copy)
    # The copy carries the job's snapshot and, through -R, the replica's identity property: it is still not ours.
    lab.exec("node2", ["sh", "-c", "zfs send -R %s@%s | zfs recv %s" % (cs.dataset(name), snap, copy)])
    copied = cs.tree_checksum(lab, "node2", "backup-before-upgrade", snap)
    try:
        cs.write_random(lab, "node1", name, "a.bin", 1)
        again = cluster.run("150-0")
        assert again["ok"], again["error"]
        # The same volumes as at the last sync: the target looks at the job's own volumes only, not at the copy.
        left_alone = "'%s' carries snapshots of job 150-0 but is not a replica this job made: left alone" % copy
        assert left_alone not in "\n".join(again["log"])
        cluster.assert_replica("node2", name)
        cluster.cfg.jobs["150-0"].remove_job = "full"
        cluster.push()
        removed = cluster.run("150-0")
        assert removed["ok"], removed["error"]
        assert left_alone in "\n".join(removed["log"])  # the removal searches the storage: it saw the copy
        assert not cs.exists(lab, "node2", cs.dataset(name))  # the job's own replica went, as pvesr's removal does
        assert cs.snapshots(lab, "node2", "backup-before-upgrade").keys() == {snap}
        assert cs.tree_checksum(lab, "node2", "backup-before-upgrade", snap) == copied
    finally:
        cs.destroy(lab, "node2", copy)


def test_a_replica_that_became_another_guests_is_refused_and_kept(cluster):
    """Guest 153's replica on node2 made a true replica of guest 154 (its identity property rewritten, as an
    operator's reuse of the dataset or a hostile peer would): 153-0's next run, whose volumes are those of its last
    sync (so the target looks at them only), is refused and changes nothing there; with the identity back it runs."""
    lab = cluster.lab
    name, _snap = replicate_once(cluster, 153)
    replica = cs.dataset(name)
    identity = cs.zfs(lab, "node2", "get", "-H", "-o", "value", REPLICA_PROPERTY, replica).stdout.strip()
    guid = cs.zfs(lab, "node2", "get", "-Hp", "-o", "value", "guid", replica).stdout.strip()
    assert identity.startswith("guest=153 job=153-0 ")
    cs.zfs(lab, "node2", "set", "%s=guest=154 job=154-0 source=node1 guid=%s" % (REPLICA_PROPERTY, guid), replica)
    try:
        before = cs.snapshots(lab, "node2", name)
        checksum = cs.tree_checksum(lab, "node2", name)
        cs.write_random(lab, "node1", name, "a.bin", 1)
        refused = cluster.run("153-0")
        assert not refused["ok"], "\n".join(refused["log"])
        assert "is a replica of guest 154 (job 154-0 from node 'node1'), not of guest 153: refused" in refused["error"]
        assert cs.snapshots(lab, "node2", name) == before and cs.tree_checksum(lab, "node2", name) == checksum
    finally:
        cs.zfs(lab, "node2", "set", "%s=%s" % (REPLICA_PROPERTY, identity), replica)
    again = cluster.run("153-0")
    assert again["ok"], again["error"]
    cluster.assert_replica("node2", name)


def _send_as_node1(lab, name, snap, base, arguments):
    """What a hostile node1 can do with its own replication key: feed node2's forced command an incremental stream
    of its own making, with arguments of its choosing.  Returns the receiver's JSON reply line."""
    node2 = lab.address("node2")
    # node2's host key as the engine pins it (the known_hosts its runs wrote, keyed by node name)
    argv = ("zfs send -i @%s %s@%s | ssh -i /root/.ssh/id_ed25519 -o BatchMode=yes -o StrictHostKeyChecking=yes "
            "-o UserKnownHostsFile=/var/lib/storage-replication/known_hosts -o HostKeyAlias=node2 root@%s %s"
            % (base, cs.dataset(name), snap, node2, arguments))
    proc = lab.exec("node1", ["sh", "-c", argv], check=False)
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr


@pytest.mark.parametrize("claim, reason", [
    ("job=152-0 guest=152 volume=local-zfs:vm-151-disk-0 source=node1", "not-guest-volume"),
    ("job=151-0 guest=151 volume=local-zfs:vm-151-disk-0 source=node1", "owner"),
    ("job=151-0 guest=151 volume=local-zfs:vm-151-disk-0 source=node3", "wrong-source"),
    ("job=152-5 guest=152 volume=local-zfs:vm-152-disk-0 source=node1", "unknown-job"),
], ids=["another-guests-volume", "guest-owned-by-target", "claims-another-node", "job-not-configured"])
def test_a_peer_cannot_make_a_node_destroy_a_guest_it_owns(cluster, claim, reason):
    """Issue 13 point 2: guest 151 is node2's, replicated to node1; node1 owns guest 152 (job 152-0 to node2)."""
    lab = cluster.lab
    owned, base = replicate_once(cluster, 151, owner="node2", target="node1")
    replicate_once(cluster, 152)
    before = cs.snapshots(lab, "node2", owned)
    checksum = cs.tree_checksum(lab, "node2", owned)
    hostile = "__replicate_152-0_1900000000__"
    cs.zfs(lab, "node1", "snapshot", "%s@%s" % (cs.dataset(owned), hostile))
    reply = _send_as_node1(lab, owned, hostile, base, "receive %s snapshot=%s base=%s generation=%d" % (
        claim, hostile, base, cluster.cfg.generation))
    assert '"reason": "%s"' % reason in reply and '"ok": false' in reply, reply
    again = cluster.run("152-0")
    assert again["ok"], again["error"]
    assert cs.snapshots(lab, "node2", owned) == before  # guest 151 on its owner: untouched
    assert cs.tree_checksum(lab, "node2", owned) == checksum
    cs.zfs(lab, "node1", "destroy", "%s@%s" % (cs.dataset(owned), hostile))


def test_an_interrupted_first_sync_of_several_volumes_recovers_by_itself(cluster):
    """Issue 13 point 3: disk-0 arrives whole, disk-1's stream is killed; the next run ends the job's first sync
    without anyone removing anything, and both replicas equal the source."""
    lab = cluster.lab
    names = ["vm-153-disk-0", "vm-153-disk-1"]
    cluster.guest(153, names)
    cluster.job("153-0", "node2", rate=10)
    cluster.push()
    cs.write_random(lab, "node1", names[0], "a.bin", 2)
    cs.write_random(lab, "node1", names[1], "a.bin", 40)

    class Guest153:
        job_id = "153-0"

    result = _kill_mid_stream(cluster, Guest153, "node1", "zfs send -R rpool/data/%s " % names[1])
    assert not result["ok"] and "killed by signal 9" in result["error"]
    first = job_snapshots(lab, "node2", names[0], "153-0")
    assert len(first) == 1  # disk-0 arrived whole
    assert "volume(s) local-zfs:%s arrived complete on 'node2' with snapshot '%s'" % (names[0], first[0]) in \
        cs.run_log(lab, "node1", "153-0")
    assert first[0] in job_snapshots(lab, "node1", names[0], "153-0")  # its base stays on the source too
    # zfs-fuse keeps a hold on a snapshot whose `zfs send` client was killed until its daemon restarts.
    lab.kill("node1")
    lab.revive("node1")

    again = cluster.run("153-0")
    assert again["ok"], again["error"]
    modes = {v["volume"]: (v["mode"], v["base"]) for v in again["volumes"]}
    assert modes["local-zfs:" + names[0]] == ("incremental", first[0])
    assert modes["local-zfs:" + names[1]][0] == "full"
    for name in names:
        snap = cluster.assert_replica("node2", name)
        assert job_snapshots(lab, "node2", name, "153-0") == [snap] == job_snapshots(lab, "node1", name, "153-0")[-1:]
    cs.write_random(lab, "node1", names[1], "c.bin", 1)
    third = cluster.run("153-0")  # its prepare drops what the cut run left on the source, as pvesr's does
    assert third["ok"] and [v["mode"] for v in third["volumes"]] == ["incremental", "incremental"], third
    for name in names:
        snap = cluster.assert_replica("node2", name)
        assert job_snapshots(lab, "node2", name, "153-0") == [snap] == job_snapshots(lab, "node1", name, "153-0")
