# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One replication run over real ZFS and SSH on the lab: full, incremental, several targets, volume changes, removal.

Every test that replicates compares the sha256 of the file tree at the source snapshot with the target's copy.
"""

from __future__ import annotations

import pytest

import cluster_setup as cs
from ansible_collections.storage.replication.plugins.module_utils import config as configmod

pytestmark = pytest.mark.lab


class Cluster:
    """The lab as a replication cluster; tests add guests and jobs, each with its own guest ID."""

    def __init__(self, lab):
        self.lab = lab
        self.cfg = cs.setup(lab)

    def guest(self, guest_id, volumes, owner="node1", hooks=None):
        for node in self.lab.nodes:
            for name in volumes:
                cs.destroy(self.lab, node, cs.dataset(name))
        for name in volumes:
            cs.create_volume(self.lab, owner, name)
        self.cfg.guests[guest_id] = configmod.Guest(id=guest_id, type="vm", node=owner, hooks=hooks or {},
                                                    volumes=["%s:%s" % (cs.STORAGE, n) for n in volumes])

    def one_volume_guest(self, guest_id, megabytes, target="node2", **options):
        """Guest ``guest_id`` on node1 with one volume holding ``megabytes`` of random data, and its job <guest>-0 to
        ``target``, pushed to every node; returns the volume's name."""
        name = "vm-%d-disk-0" % guest_id
        self.guest(guest_id, [name])
        self.job("%d-0" % guest_id, target, **options)
        self.push()
        cs.write_random(self.lab, "node1", name, "a.bin", megabytes)
        return name

    def job(self, job_id, target, **options):
        self.cfg.jobs[job_id] = configmod.Job(id=job_id, target=target, **options)

    def push(self):
        self.cfg.generation += 1
        cs.write_config(self.lab, self.cfg)

    def run(self, job_id, node="node1"):
        return cs.run_job(self.lab, node, job_id)

    def assert_replica(self, node, name, source="node1"):
        """The target's newest replication snapshot holds exactly the source's data at that snapshot."""
        target_snaps = [s for s in cs.snapshots(self.lab, node, name) if s.startswith("__replicate_")]
        assert target_snaps, "no replication snapshot of %s on %s" % (name, node)
        snap = target_snaps[-1]
        assert cs.snapshots(self.lab, source, name)[snap] == cs.snapshots(self.lab, node, name)[snap]
        assert cs.tree_checksum(self.lab, node, name, snap) == cs.tree_checksum(self.lab, source, name, snap)
        return snap


@pytest.fixture(scope="module")
def cluster(lab):
    return Cluster(lab)


def job_snapshots(lab, node, name, job_id):
    return [s for s in cs.snapshots(lab, node, name) if s.startswith("__replicate_%s_" % job_id)]


def test_full_then_incremental_sync(cluster):
    lab = cluster.lab
    cluster.one_volume_guest(100, 20)

    first = cluster.run("100-0")
    assert first["ok"], first["error"]
    assert [v["mode"] for v in first["volumes"]] == ["full"] and first["bytes"] > 20 * 10 ** 6
    snap1 = cluster.assert_replica("node2", "vm-100-disk-0")
    assert snap1 == "__replicate_100-0_%d__" % first["start"]

    cs.write_random(lab, "node1", "vm-100-disk-0", "a.bin", 2, offset_mb=5)
    second = cluster.run("100-0")
    assert second["ok"], second["error"]
    assert second["volumes"][0]["mode"] == "incremental" and second["volumes"][0]["base"] == snap1
    assert 2 * 10 ** 6 < second["bytes"] < 4 * 10 ** 6
    snap2 = cluster.assert_replica("node2", "vm-100-disk-0")
    # exactly one replication snapshot of the job on each side after a successful run
    assert job_snapshots(lab, "node1", "vm-100-disk-0", "100-0") == [snap2]
    assert job_snapshots(lab, "node2", "vm-100-disk-0", "100-0") == [snap2]

    state = cs.local_state(lab, "node1")["100"]["local/node2"]
    assert state["last_sync"] == second["start"] and state["fail_count"] == 0 and "error" not in state
    assert state["storeid_list"] == ["local-zfs"]
    log = cs.run_log(lab, "node1", "100-0")
    for line in ("100-0: start replication job", "100-0: guest => VM 100, running => 0",
                 "100-0: volumes => local-zfs:vm-100-disk-0",
                 "100-0: create snapshot '%s' on local-zfs:vm-100-disk-0" % snap2,
                 "100-0: using secure transmission, rate limit: none",
                 "100-0: incremental sync 'local-zfs:vm-100-disk-0' (%s => %s)" % (snap1, snap2),
                 "100-0: successfully imported 'local-zfs:vm-100-disk-0'",
                 "100-0: delete previous replication snapshot '%s' on local-zfs:vm-100-disk-0" % snap1,
                 "100-0: (remote_finalize_local_job) delete stale replication snapshot '%s' on "
                 "local-zfs:vm-100-disk-0" % snap1,
                 "100-0: end replication job"):
        assert line in log
    assert "volume 'local-zfs:vm-100-disk-0': sent %d bytes" % second["bytes"] in log
    # the target knows what it holds a replica of
    held = (lab.private_path("node2", "/var/lib/storage-replication") / "guests" / "100.json").read_text()
    assert '"source": "node1"' in held and '"last_sync": %d' % second["start"] in held

    # a small delta goes inline on the control connection (no OpenSSH handshake, no second receiver process)
    lab.exec("node1", ["dd", "if=/dev/urandom", "of=/%s/c.bin" % cs.dataset("vm-100-disk-0"), "bs=256K", "count=1",
                       "status=none"])
    third = cluster.run("100-0")
    assert third["ok"], third["error"]
    assert third["volumes"][0]["mode"] == "incremental" and 0.25 * 2 ** 20 < third["bytes"] < 2 ** 20
    snap3 = cluster.assert_replica("node2", "vm-100-disk-0")
    assert job_snapshots(lab, "node2", "vm-100-disk-0", "100-0") == [snap3]
    assert "volume 'local-zfs:vm-100-disk-0': sent %d bytes" % third["bytes"] in cs.run_log(lab, "node1", "100-0")
    assert "inline on the control connection" in cs.run_log(lab, "node1", "100-0")


def test_several_targets_keep_each_others_bases(cluster):
    lab = cluster.lab
    cluster.guest(101, ["vm-101-disk-0"])
    cluster.job("101-0", "node2")
    cluster.job("101-1", "node3")
    cluster.push()
    cs.write_random(lab, "node1", "vm-101-disk-0", "a.bin", 8)
    for round_number in range(2):
        for job_id, target in (("101-0", "node2"), ("101-1", "node3")):
            cs.write_random(lab, "node1", "vm-101-disk-0", "b.bin", 1, offset_mb=round_number)
            result = cluster.run(job_id)
            assert result["ok"], result["error"]
            assert result["volumes"][0]["mode"] == ("full" if round_number == 0 else "incremental")
            cluster.assert_replica(target, "vm-101-disk-0")
    # the source keeps one snapshot per job: neither job deleted the other's base
    assert len(job_snapshots(lab, "node1", "vm-101-disk-0", "101-0")) == 1
    assert len(job_snapshots(lab, "node1", "vm-101-disk-0", "101-1")) == 1


def test_added_volume_goes_full_removed_volume_is_cleaned_on_target(cluster):
    lab = cluster.lab
    cluster.one_volume_guest(102, 4)
    assert cluster.run("102-0")["ok"]

    cs.create_volume(lab, "node1", "vm-102-disk-1")
    cs.write_random(lab, "node1", "vm-102-disk-1", "b.bin", 3)
    cluster.cfg.guests[102].volumes.append("local-zfs:vm-102-disk-1")
    cluster.push()
    result = cluster.run("102-0")
    assert result["ok"], result["error"]
    assert {v["volume"]: v["mode"] for v in result["volumes"]} == {
        "local-zfs:vm-102-disk-0": "incremental", "local-zfs:vm-102-disk-1": "full"}
    cluster.assert_replica("node2", "vm-102-disk-0")
    cluster.assert_replica("node2", "vm-102-disk-1")

    cluster.cfg.guests[102].volumes.remove("local-zfs:vm-102-disk-1")
    cluster.push()
    result = cluster.run("102-0")
    assert result["ok"], result["error"]
    assert not cs.exists(lab, "node2", cs.dataset("vm-102-disk-1"))
    assert cs.exists(lab, "node1", cs.dataset("vm-102-disk-1"))  # never touched on the source
    assert "(remote_prepare_local_job) 102-0: delete stale volume 'local-zfs:vm-102-disk-1'" in \
        cs.run_log(lab, "node1", "102-0")
    cluster.assert_replica("node2", "vm-102-disk-0")


@pytest.mark.parametrize("mode", ["full", "local"])
def test_remove_job(cluster, mode):
    lab = cluster.lab
    guest = 103 if mode == "full" else 104
    name = "vm-%d-disk-0" % guest
    job_id = "%d-0" % guest
    cluster.guest(guest, [name])
    cluster.job(job_id, "node2")
    cluster.push()
    cs.write_random(lab, "node1", name, "a.bin", 2)
    assert cluster.run(job_id)["ok"]
    cluster.cfg.jobs[job_id].remove_job = mode
    cluster.push()
    result = cluster.run(job_id)
    assert result["ok"], result["error"]
    log = cs.run_log(lab, "node1", job_id)
    assert "start job removal - mode '%s'" % mode in log and "job removed" in log
    assert job_snapshots(lab, "node1", name, job_id) == []
    assert cs.exists(lab, "node1", cs.dataset(name))
    assert cs.exists(lab, "node2", cs.dataset(name)) == (mode == "local")
    assert str(guest) not in cs.local_state(lab, "node1")
    node_cfg = configmod.load(str(lab.private_path("node1", "/etc/storage-replication")))
    assert job_id not in node_cfg.jobs
    del cluster.cfg.jobs[job_id]
    cluster.cfg.generation = node_cfg.generation


def test_freeze_and_thaw_hooks_surround_the_snapshot(cluster):
    lab = cluster.lab
    marks = "/var/log/storage-replication/hooks-105"
    hooks = {"freeze": ["sh", "-c", "echo freeze >> %s" % marks], "thaw": ["sh", "-c", "echo thaw >> %s" % marks]}
    cluster.guest(105, ["vm-105-disk-0", "vm-105-disk-1"], hooks=hooks)
    cluster.job("105-0", "node2")
    cluster.push()
    cs.write_random(lab, "node1", "vm-105-disk-0", "a.bin", 1)
    result = cluster.run("105-0")
    assert result["ok"], result["error"]
    lines = result["log"]
    snap = "__replicate_105-0_%d__" % result["start"]
    order = [lines.index("freeze guest filesystem"), lines.index("create snapshot '%s' on local-zfs:vm-105-disk-0" % snap),
             lines.index("create snapshot '%s' on local-zfs:vm-105-disk-1" % snap), lines.index("thaw guest filesystem")]
    assert order == sorted(order)
    assert (lab.private_path("node1", "/var/log/storage-replication") / "hooks-105").read_text() == "freeze\nthaw\n"
    # one snapshot name on both volumes, both replicated
    for name in ("vm-105-disk-0", "vm-105-disk-1"):
        assert cluster.assert_replica("node2", name) == snap
