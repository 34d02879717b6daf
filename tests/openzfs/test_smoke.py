# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The OpenZFS smoke: the engine on the kernel's OpenZFS, in `make test` also without hardware virtualisation.

Two QEMU guests made a cluster of the engine alone (no Ansible: the full tier, test_openzfs_replication.py, proves
the installation).  One zvol replicated in full, then incrementally, then incrementally from the bookmark once the
base snapshot is gone, then once more after someone wrote to the replica on the target (its data kept aside first);
another one's first transfer killed mid-stream (kill -9 of the source's `zfs send`) and resumed from the target's
receive_resume_token, then one of its incrementals the same way (the target's prepare then reads the job's own
volumes only, and finds the token in that read).  Both nodes run the preloaded engine, so the
CLI's runs and the peers' logins (`serve`: control sessions and streams) start from it.  After every successful run
the data at the synced snapshot is compared by sha256 on both sides, with the mode the engine reports, its job
state and its holds.
"""

from __future__ import annotations

import pytest

from oz_cluster import MiB, POOL, assert_ok, check_resumed, interrupt_mid_stream, kill_zfs_send, modes

pytestmark = pytest.mark.lab


def synced_snapshot(cluster, job):
    return "__replicate_%s_%d__" % (job, cluster.job_state(job)["last_sync"])


def assert_synced(cluster, job, name, result):
    """The run's snapshot is the job's last sync, holds the same data on both nodes, and is the job's only
    snapshot on the target; the source keeps it with its bookmark (the next incremental's base).  Returns the
    snapshot and the sha256 of its data."""
    state = cluster.job_state(job)
    assert state["last_sync"] == result["start"] and state["fail_count"] == 0 and "error" not in state, state
    snapshot = synced_snapshot(cluster, job)
    digest = cluster.zvol_checksum("node1", name, snapshot)
    assert cluster.zvol_checksum("node2", name, snapshot) == digest
    dataset = "%s/%s" % (POOL, name)
    assert [s for s in cluster.snapshots("node2", dataset) if s.startswith("__replicate_")] == [snapshot]
    assert snapshot in cluster.snapshots("node1", dataset) and snapshot in cluster.bookmarks("node1", dataset)
    cluster.assert_no_orphaned_holds()
    return snapshot, digest


def test_zvol_full_then_incremental_then_from_the_bookmark(smoke):
    name, dataset = "vm-900-disk-0", "%s/vm-900-disk-0" % POOL
    smoke.create_zvol("node1", name, "32M", 8)
    result = assert_ok(smoke.run_job("900-0"))
    assert modes(result) == ["full"] and result["bytes"] >= 8 * MiB
    first, first_digest = assert_synced(smoke, "900-0", name, result)
    smoke.write_zvol("node1", name, 2, offset_mb=16)
    result = assert_ok(smoke.run_job("900-0"))
    assert modes(result) == ["incremental"] and result["volumes"][0]["base"] == first
    assert 2 * MiB < result["bytes"] < 3 * MiB, "a 2 MiB change sent as %d bytes" % result["bytes"]
    base, base_digest = assert_synced(smoke, "900-0", name, result)
    assert base_digest != first_digest, "the change is in the replica"
    # The base snapshot destroyed on the source (the engine's hold refuses it first): its bookmark is the base.
    refused = smoke.zfs("node1", "destroy", "%s@%s" % (dataset, base), check=False)
    assert refused.returncode != 0 and "busy" in refused.stderr, "the engine's hold protects the base snapshot"
    smoke.zfs("node1", "release", "storage-replication", "%s@%s" % (dataset, base))
    smoke.zfs("node1", "destroy", "%s@%s" % (dataset, base))
    smoke.write_zvol("node1", name, 1, offset_mb=24)
    result = assert_ok(smoke.run_job("900-0"))
    assert modes(result) == ["incremental"] and result["volumes"][0]["base"] == "#" + base
    assert MiB < result["bytes"] < 2 * MiB, "a 1 MiB change from the bookmark sent as %d bytes" % result["bytes"]
    last, last_digest = assert_synced(smoke, "900-0", name, result)
    assert last_digest != base_digest, "the change is in the replica"
    assert result["volumes"][0]["kept"] == [], "a replica only read (checksums) is not kept aside"
    # Someone writes to the replica: the next incremental keeps its data aside before `zfs recv -F` rolls it back
    # (the receive reads `written` with the replica's snapshots).
    smoke.write_zvol("node2", name, 1, offset_mb=4)
    written_there = smoke.zvol_checksum("node2", name)
    assert written_there != last_digest
    smoke.write_zvol("node1", name, 1, offset_mb=8)
    result = assert_ok(smoke.run_job("900-0"))
    assert modes(result) == ["incremental"] and result["volumes"][0]["base"] == last
    assert assert_synced(smoke, "900-0", name, result)[1] != last_digest, "the change is in the replica"
    [aside] = result["volumes"][0]["kept"]
    assert aside.startswith(dataset + "-") and smoke.zvol_checksum("node2", aside[len(POOL) + 1:]) == written_there


def test_killed_transfer_resumes_from_the_token(smoke):
    name, dataset = "vm-910-disk-0", "%s/vm-910-disk-0" % POOL
    smoke.create_zvol("node1", name, "32M", 24)

    def kill_preloaded_send():
        assert smoke.preloaded_commands("node1") == 1, "the CLI's run started from node1's preloaded engine"
        assert smoke.preloaded_commands("node2") >= 1, "the receive (a peer's login) started from node2's"
        kill_zfs_send(smoke, dataset)

    rx_before = interrupt_mid_stream(smoke, "910-0", dataset, 4 * MiB, kill_preloaded_send)
    state = smoke.job_state("910-0")
    assert state["fail_count"] == 1 and state["last_sync"] == 0 and state["error"], state
    kept = [s for s in smoke.snapshots("node1", dataset) if s.startswith("__replicate_910-0_")]
    assert len(kept) == 1, "the source keeps the interrupted run's snapshot: %s" % kept
    result = check_resumed(smoke, "910-0", dataset, rx_before, kept[0],
                           lambda node: smoke.zvol_checksum(node, name, synced_snapshot(smoke, "910-0")))
    state = smoke.job_state("910-0")
    assert state["last_sync"] == result["start"] and state["fail_count"] == 0 and "error" not in state, state
    # An incremental killed too: the target's prepare reads the job's own volumes only (same volumes as the last
    # sync), and finds the token in that read.
    base = synced_snapshot(smoke, "910-0")
    smoke.write_zvol("node1", name, 12, offset_mb=4)
    rx_before = interrupt_mid_stream(smoke, "910-0", dataset, 3 * MiB, lambda: kill_zfs_send(smoke, dataset))
    kept = [s for s in smoke.snapshots("node1", dataset) if s.startswith("__replicate_910-0_") and s != base]
    assert len(kept) == 1, "the source keeps the interrupted run's snapshot and the base: %s" % kept
    check_resumed(smoke, "910-0", dataset, rx_before, kept[0],
                  lambda node: smoke.zvol_checksum(node, name, synced_snapshot(smoke, "910-0")), base=base)
