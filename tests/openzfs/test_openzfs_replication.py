# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The engine on OpenZFS 2.x: QEMU guests with the kernel module, replicating over their own network.

Full and incremental runs of zvols (vm-<id>-disk-<n>) and filesystems (subvol-<id>-disk-<n>) to one and two
targets; transfers interrupted by a kill and by a link going down, resumed from the receive resume token with
about one full stream's bytes in total; a stale token cleared and reported; a bookmark as the incremental base
once the base snapshot is gone; holds on exactly the snapshots the next incremental needs; compressed and raw
sends; a non-raw stream inheriting the target's encryption as pvesr receives it.  Data is compared by sha256.
"""

from __future__ import annotations

import json

import pytest

from oz_cluster import (ENC_POOL, ENGINE, KEY_FILE, MiB, POOL, assert_ok, check_resumed, interrupt_mid_stream,
                        kill_zfs_send, modes)

pytestmark = pytest.mark.lab


# ---------------------------------------------------------------- feature detection

def test_feature_detection_finds_openzfs_and_all_its_features(cluster):
    code = "import json; from %s.zfs import Zfs; print(json.dumps(Zfs().features.as_dict()))" % ENGINE
    features = json.loads(cluster.engine_python("node1", code))
    version = cluster.zfs("node1", "version").stdout.splitlines()[0]
    assert features.pop("implementation") == "openzfs"
    assert "zfs-" + features.pop("version") == version
    assert features == dict.fromkeys(features, True) and len(features) == 8


# ---------------------------------------------------------------- end to end

def test_zvols_full_then_incremental_to_every_target(cluster):
    names = ["vm-100-disk-0", "vm-100-disk-1"]
    for name in names:
        cluster.create_zvol("node1", name, "64M", 24)
    targets = [("100-0", "node2"), ("100-1", "node3")][:len(cluster.nodes) - 1]
    for job, target in targets:
        result = assert_ok(cluster.run_job(job))
        assert modes(result) == ["full", "full"]
        for name in names:
            assert cluster.zvol_checksum(target, name) == cluster.zvol_checksum("node1", name)
    cluster.write_zvol("node1", names[0], 2, offset_mb=40)
    for job, target in targets:
        result = assert_ok(cluster.run_job(job))
        assert modes(result) == ["incremental", "incremental"]
        sent = {v["volume"]: v["bytes"] for v in result["volumes"]}
        assert 2 * MiB < sent["local-zfs:" + names[0]] < 3 * MiB and sent["local-zfs:" + names[1]] < MiB // 4
        for name in names:
            assert cluster.zvol_checksum(target, name) == cluster.zvol_checksum("node1", name)
            last = "__replicate_%s_%d__" % (job, cluster.job_state(job)["last_sync"])
            # Only the job's last snapshot of its own; the other job's arrive too (-I carries intermediates, as pvesr)
            assert [s for s in cluster.snapshots(target, "%s/%s" % (POOL, name)) if s.startswith("__replicate_%s_" % job)] == [last]
            assert last in cluster.snapshots("node1", "%s/%s" % (POOL, name))
            assert last in cluster.bookmarks("node1", "%s/%s" % (POOL, name))
    cluster.assert_no_orphaned_holds()


def test_filesystem_incremental_after_reading_the_replica_keeps_nothing_aside(cluster):
    dataset = "%s/subvol-200-disk-0" % POOL
    cluster.filesystem_with_data(dataset, 8)
    assert modes(assert_ok(cluster.run_job("200-0"))) == ["full"]
    assert cluster.tree_checksum("node2", dataset) == cluster.tree_checksum("node1", dataset)  # reads: atime
    cluster.write_file("node1", dataset, "b.bin", 1)
    result = assert_ok(cluster.run_job("200-0"))
    assert modes(result) == ["incremental"] and result["volumes"][0]["kept"] == []
    cluster.assert_same_files(dataset, holds=False)
    assert not [d for d in cluster.zfs("node2", "list", "-H", "-o", "name", "-r", POOL).stdout.split() if "-diverged-" in d]
    cluster.assert_no_orphaned_holds()


# ---------------------------------------------------------------- resumable receive

def test_killed_transfer_resumes_from_the_token(cluster):
    name, dataset = "vm-300-disk-0", "%s/vm-300-disk-0" % POOL
    cluster.create_zvol("node1", name, "256M", 96)
    rx_before = interrupt_mid_stream(cluster, "300-0", dataset, 40 * MiB, lambda: kill_zfs_send(cluster, dataset))
    kept = [s for s in cluster.snapshots("node1", dataset) if s.startswith("__replicate_300-0_")]
    assert len(kept) == 1, "the source keeps the interrupted run's snapshot: %s" % kept
    check_resumed(cluster, "300-0", dataset, rx_before, kept[0], lambda node: cluster.zvol_checksum(node, name))


def test_transfer_cut_by_link_down_resumes_from_the_token(cluster):
    name, dataset = "vm-310-disk-0", "%s/vm-310-disk-0" % POOL
    cluster.create_zvol("node1", name, "256M", 96)
    try:
        rx_before = interrupt_mid_stream(cluster, "310-0", dataset, 40 * MiB, lambda: cluster.tier.partition("node2"))
        # The source's run has ended, but the target's receive never saw its connection close: it is still running
        # (until its stall deadline), and once the link is back it may take in the source's last packets and move its
        # saved state on: the next run's prepare waits for it to end before it reads the token.
        leftover = cluster.receives_running("node2", dataset)
        assert leftover, "the target's receive ended although its connection never closed"
    finally:
        cluster.tier.heal("node2")
    kept = [s for s in cluster.snapshots("node1", dataset) if s.startswith("__replicate_310-0_")]
    assert len(kept) == 1
    check_resumed(cluster, "310-0", dataset, rx_before, kept[0], lambda node: cluster.zvol_checksum(node, name))
    assert cluster.receives_running("node2", dataset) == []


def test_stale_token_is_cleared_and_reported(cluster):
    dataset = "%s/subvol-320-disk-0" % POOL
    cluster.filesystem_with_data(dataset, 96, "big.bin")
    interrupt_mid_stream(cluster, "320-0", dataset, 40 * MiB, lambda: kill_zfs_send(cluster, dataset))
    for snap in cluster.snapshots("node1", dataset):  # the snapshot the token continues is lost on the source
        cluster.zfs("node1", "destroy", "%s@%s" % (dataset, snap))
    result = assert_ok(cluster.run_job("320-0"))
    assert modes(result) == ["full"]
    log = cluster.log("320-0")
    assert "clear stale resume token on 'local-zfs:subvol-320-disk-0'" in log
    assert "cleared stale resume token on 'local-zfs:subvol-320-disk-0'" in log  # the target's own line
    assert cluster.resume_token("node2", dataset) is None
    cluster.assert_same_files(dataset)


# ---------------------------------------------------------------- bookmarks and holds

def test_bookmark_is_the_incremental_base_once_the_snapshot_is_gone(cluster):
    dataset = "%s/subvol-400-disk-0" % POOL
    cluster.filesystem_with_data(dataset, 8)
    assert_ok(cluster.run_job("400-0"))
    base = "%s@__replicate_400-0_%d__" % (dataset, cluster.job_state("400-0")["last_sync"])
    refused = cluster.zfs("node1", "destroy", base, check=False)
    assert refused.returncode != 0 and "busy" in refused.stderr, "the engine's hold protects the base snapshot"
    cluster.zfs("node1", "release", "storage-replication", base)
    cluster.zfs("node1", "destroy", base)
    cluster.write_file("node1", dataset, "b.bin", 1)
    result = assert_ok(cluster.run_job("400-0"))
    assert modes(result) == ["incremental"] and result["volumes"][0]["base"].startswith("#__replicate_400-0_")
    assert result["bytes"] < 2 * MiB
    cluster.assert_same_files(dataset)


def test_target_unreachable_then_back_leaves_only_the_needed_holds(cluster):
    dataset = "%s/subvol-700-disk-0" % POOL
    cluster.filesystem_with_data(dataset, 4)
    assert_ok(cluster.run_job("700-0"))
    cluster.write_file("node1", dataset, "b.bin", 1)
    cluster.tier.partition("node2")
    try:
        failed = cluster.run_job("700-0")
    finally:
        cluster.tier.heal("node2")
    assert not failed["ok"] and "node2" in failed["error"] and "unreachable" in failed["error"]
    cluster.assert_no_orphaned_holds()
    result = assert_ok(cluster.run_job("700-0"))
    assert modes(result) == ["incremental"]
    cluster.assert_same_files(dataset)


# ---------------------------------------------------------------- compressed, raw, encryption

def test_compressible_data_goes_compressed_as_stored(cluster):
    dataset = "%s/subvol-600-disk-0" % POOL
    cluster.zfs("node1", "create", dataset)
    cluster.sh("node1", "yes 'storage replication on OpenZFS' | head -c 33554432 > /%s/text" % dataset)
    result = assert_ok(cluster.run_job("600-0"))
    assert "compressed as stored (-c)" in cluster.log("600-0")
    assert result["bytes"] < 8 * MiB, "32 MiB of text sent as %d bytes" % result["bytes"]
    cluster.assert_same_files(dataset, holds=False)


def test_encrypted_dataset_is_sent_raw_and_stays_encrypted_on_the_target(cluster):
    dataset = "%s/subvol-500-disk-0" % ENC_POOL
    cluster.zfs("node1", "create", "-o", "encryption=on", "-o", "keyformat=passphrase", "-o",
                "keylocation=file://" + KEY_FILE, dataset)
    cluster.write_file("node1", dataset, "secret.bin", 4)
    assert modes(assert_ok(cluster.run_job("500-0"))) == ["full"]
    cluster.write_file("node1", dataset, "more.bin", 1)
    assert modes(assert_ok(cluster.run_job("500-0"))) == ["incremental"]
    assert "raw (encrypted on the wire and on the target)" in cluster.log("500-0")
    props = cluster.zfs("node2", "get", "-H", "-o", "value", "encryption,keystatus,encryptionroot", dataset).stdout.split()
    assert props == ["aes-256-gcm", "unavailable", dataset], "the replica is encrypted with the source's key only"
    key = cluster.tier.exec("node1", ["cat", KEY_FILE]).stdout
    cluster.tier.put("node2", "/root/key-500", key.encode(), "0600")
    cluster.zfs("node2", "load-key", "-L", "file:///root/key-500", dataset)
    cluster.zfs("node2", "mount", dataset)
    cluster.assert_same_files(dataset, holds=False)


def test_plain_dataset_inherits_the_targets_encryption_as_pvesr_receives(cluster):
    dataset = "%s/subvol-510-disk-0" % ENC_POOL
    cluster.filesystem_with_data(dataset, 2)
    assert_ok(cluster.run_job("510-0"))
    props = cluster.zfs("node2", "get", "-H", "-o", "value", "encryption,keystatus,encryptionroot", dataset).stdout.split()
    assert props == ["aes-256-gcm", "available", ENC_POOL]
    cluster.assert_same_files(dataset, holds=False)


@pytest.mark.parametrize("node", ["node1", "node2"])
def test_no_engine_hold_is_left_on_a_snapshot_the_engine_no_longer_needs(cluster, node):
    held = cluster.holds(node)
    assert all(tags == ["storage-replication"] and "@__replicate_" in snap for snap, tags in held.items())
    cluster.assert_no_orphaned_holds()


# ---------------------------------------------------------------- restore points on a zvol (keep, keep_source)

def test_restore_points_on_a_zvol_with_holds_and_bookmarks_and_a_rollback_to_one(cluster):
    """Job 800-0 keeps last=3 on node2 and last=2 on node1: after five runs node2 holds three points and node1 two,
    each side holds (with the engine's tag) only the newest, node1 bookmarks only the newest; a rollback of the zvol
    to the older point node1 kept copies the current zvol aside whole, brings it back, and the job continues
    incrementally from the point (node2 keeps its newer points aside first); no stray hold anywhere."""
    name, job = "vm-800-disk-0", "800-0"
    dataset = "%s/%s" % (POOL, name)
    cluster.create_zvol("node1", name, "64M", 8)
    sums = {}
    for run in range(5):
        cluster.write_zvol("node1", name, 1, offset_mb=10 + run)
        result = assert_ok(cluster.run_job(job))
        sums[result["start"]] = cluster.zvol_checksum("node1", name)
    starts = sorted(sums)
    points = ["__replicate_%s_%d__" % (job, start) for start in starts]
    assert [s for s in cluster.snapshots("node2", dataset) if s.startswith("__replicate_800-0_")] == points[-3:]
    assert [s for s in cluster.snapshots("node1", dataset) if s.startswith("__replicate_800-0_")] == points[-2:]
    assert [b for b in cluster.bookmarks("node1", dataset) if b.startswith("__replicate_800-0_")] == points[-1:]
    cluster.assert_no_orphaned_holds()
    before = cluster.zvol_checksum("node1", name)

    code = ("import json; from %s import rollback; print(json.dumps(rollback.rollback_guest(800, %r)))"
            % (ENGINE, points[-2]))
    done = json.loads(cluster.engine_python("node1", code).strip().splitlines()[-1])
    kept = done["volumes"]["local-zfs:" + name]["kept"]
    assert done["local"] is True and done["point"]["snapshot"] == points[-2]
    assert cluster.zvol_checksum("node1", name) == sums[starts[-2]]
    assert cluster.zvol_checksum("node1", kept.split("/", 2)[2]) == before  # the state before, kept whole
    assert points[-1] in cluster.snapshots("node1", kept)

    result = assert_ok(cluster.run_job(job))
    assert modes(result) == ["incremental"] and result["volumes"][0]["base"] == points[-2]
    assert result["volumes"][0]["kept"], "node2 keeps its newer point aside before rolling back to the base"
    assert cluster.zvol_checksum("node2", name) == cluster.zvol_checksum("node1", name)
    cluster.assert_no_orphaned_holds()
