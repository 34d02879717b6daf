# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Each failure of issue 4, for real on the lab: the job goes to the error state with a message naming cause and
fix, the previous replica stays intact (checksums), nothing blocks the next run, which succeeds incrementally once
the cause is gone.  Also the receiver's refusals (older generation, guest owned by the target)."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time

import pytest

import cluster_setup as cs
from lab._system import wait_until
from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from test_link_cut import receive_lock_free, receives_into, wait_mid_stream
from test_replicate import Cluster, job_snapshots

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def cluster(lab):
    return Cluster(lab)


class Replicated:
    """A guest with one volume replicated once to node2: the 'previous replica' each test checks."""

    def __init__(self, cluster, guest, megabytes=4, rate=None):
        self.cluster = cluster
        self.lab = cluster.lab
        self.name = "vm-%d-disk-0" % guest
        self.job_id = "%d-0" % guest
        self.guest = guest
        cluster.one_volume_guest(guest, megabytes, rate=rate)
        first = cluster.run(self.job_id)
        assert first["ok"], first["error"]
        self.snap = cluster.assert_replica("node2", self.name)
        self.checksum = cs.tree_checksum(self.lab, "node2", self.name, self.snap)

    def change_source(self, megabytes=1, offset_mb=0):
        cs.write_random(self.lab, "node1", self.name, "a.bin", megabytes, offset_mb=offset_mb)

    def assert_failed(self, result, *phrases, source_leftover_allowed=False):
        """Error state with the message; the source's last_sync snapshot kept; the new snapshot removed (zfs-fuse
        only: unless the daemon still sends from it after its client was killed; the next prepare removes it)."""
        assert not result["ok"]
        for phrase in phrases:
            assert phrase in result["error"], result["error"]
        state = cs.local_state(self.lab, "node1")[str(self.guest)]["local/node2"]
        assert state["fail_count"] >= 1 and state["error"] == result["error"] and "pid" not in state
        assert "end replication job with error: " + result["error"].split("\n")[0] in \
            cs.run_log(self.lab, "node1", self.job_id)
        snaps = job_snapshots(self.lab, "node1", self.name, self.job_id)
        assert snaps[0] == self.snap and (len(snaps) == 1 or source_leftover_allowed)

    def assert_failed_and_recovers(self, result, *phrases):
        """The run failed saying ``phrases``, the previous replica is intact, and the next run goes on from it."""
        self.assert_failed(result, *phrases)
        self.assert_previous_replica_intact()
        self.assert_recovers_incrementally()

    def assert_previous_replica_intact(self, unfinished_allowed=False):
        """The previous replica snapshot is there with its data.  zfs-fuse only: a receive whose client was killed
        completes inside the daemon, so the unfinished new snapshot may be there too (the next prepare drops it)."""
        snaps = job_snapshots(self.lab, "node2", self.name, self.job_id)
        assert snaps[0] == self.snap and (len(snaps) == 1 or unfinished_allowed)
        assert cs.tree_checksum(self.lab, "node2", self.name, self.snap) == self.checksum

    def assert_recovers_incrementally(self, expect_kept=False):
        result = self.cluster.run(self.job_id)
        assert result["ok"], result["error"]
        assert result["volumes"][0]["mode"] == "incremental" and result["volumes"][0]["base"] == self.snap
        assert bool(result["volumes"][0]["kept"]) == expect_kept  # nothing else mistaken for local changes
        new_snap = self.cluster.assert_replica("node2", self.name)
        assert job_snapshots(self.lab, "node2", self.name, self.job_id) == [new_snap]
        state = cs.local_state(self.lab, "node1")[str(self.guest)]["local/node2"]
        assert state["fail_count"] == 0 and "error" not in state
        return result


@pytest.mark.parametrize("guest, break_it, repair", [(110, "kill", "revive"), (111, "partition", "heal")],
                         ids=["node-killed", "link-down"])
def test_target_unreachable(cluster, guest, break_it, repair):
    rep = Replicated(cluster, guest)
    rep.change_source()
    getattr(cluster.lab, break_it)("node2")
    try:
        result = cluster.run(rep.job_id)
    finally:
        getattr(cluster.lab, repair)("node2")
    rep.assert_failed(result, "target node 'node2'", "is unreachable", "check that the node is up", "network path")
    assert cs.local_state(cluster.lab, "node1")[str(guest)]["local/node2"]["waiting_for_target"] is True
    rep.assert_previous_replica_intact()
    rep.assert_recovers_incrementally()


def test_host_key_mismatch_is_refused(cluster):
    rep = Replicated(cluster, 112)
    rep.change_source()
    real_key = cluster.cfg.nodes["node2"].host_key
    cluster.cfg.nodes["node2"].host_key = cluster.cfg.nodes["node3"].host_key
    cluster.push()
    try:
        result = cluster.run(rep.job_id)
    finally:
        cluster.cfg.nodes["node2"].host_key = real_key
        cluster.push()
    rep.assert_failed_and_recovers(result, "host key of target node 'node2' does not match", "record its new host key")


def test_unknown_node_key_is_refused(cluster):
    rep = Replicated(cluster, 113)
    rep.change_source()
    keys = {node: cluster.lab.exec(node, ["cat", "/root/.ssh/id_ed25519.pub"]).stdout.strip()
            for node in cluster.lab.nodes}
    cs.trust_peers(cluster.lab, "node2", {n: k for n, k in keys.items() if n != "node1"})
    try:
        result = cluster.run(rep.job_id)
    finally:
        cs.trust_peers(cluster.lab, "node2", keys)
    rep.assert_failed_and_recovers(result, "target node 'node2' refused this node's SSH key", "re-run the site playbook")


def test_storage_missing_on_target(cluster):
    rep = Replicated(cluster, 114)
    rep.change_source()
    cluster.cfg.storages["local-zfs"].pool = "rpool/elsewhere"
    cs.write_config(cluster.lab, cluster.cfg, nodes=["node2"])
    cluster.cfg.storages["local-zfs"].pool = cs.POOL
    try:
        result = cluster.run(rep.job_id)
    finally:
        cs.write_config(cluster.lab, cluster.cfg, nodes=["node2"])
    rep.assert_failed_and_recovers(result, "storage 'local-zfs': dataset 'rpool/elsewhere' does not exist on node "
                                   "'node2'", "zfs create rpool/elsewhere")


# A change of 40 MiB goes over OpenSSH, one of 6 MiB in the control connection's session (protocol.SESSION_STREAM_MAX)
OVER_SSH, IN_SESSION = 40, 6


@pytest.mark.parametrize("guest, megabytes", [(115, OVER_SSH), (122, IN_SESSION)], ids=["openssh", "session-chunks"])
def test_target_pool_full(cluster, guest, megabytes):
    rep = Replicated(cluster, guest)
    rep.change_source(megabytes=megabytes)
    cluster.lab.fill("node2")
    try:
        result = cluster.run(rep.job_id)
    finally:
        cluster.lab.unfill("node2")
    rep.assert_failed_and_recovers(result, "the pool on node 'node2' is full", "free space on that pool")


def _kill_mid_stream(cluster, rep, node, pattern):
    """Start the job, wait until `pattern` runs (the transfer), kill -9 it, return the run's result."""
    runner = subprocess.Popen(cluster.lab.exec_argv("node1", [
        "env", "PYTHONPATH=" + cs.PYTHONPATH, str(cs.PYTHON), "-m",
        "ansible_collections.storage.replication.plugins.module_utils.replicate", rep.job_id]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    pid = None
    while pid is None and time.monotonic() < deadline and runner.poll() is None:
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False).stdout.split()
        pid = int(found[0]) if found else None
        time.sleep(0.05)
    if pid is None:
        out, err = runner.communicate(timeout=120)
        raise AssertionError("the transfer never started: %s %s" % (out, err))
    time.sleep(1.0)  # well inside the rate-limited transfer
    os.kill(pid, signal.SIGKILL)
    out, err = runner.communicate(timeout=120)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(out + err) from None


def test_sending_process_killed_mid_stream(cluster):
    rep = Replicated(cluster, 116, rate=10)
    rep.change_source(megabytes=40)
    # zfs-fuse's zfs rewrites its argv in place: '@' shows as a space in /proc/<pid>/cmdline
    result = _kill_mid_stream(cluster, rep, "node1", "zfs send -R -I rpool/data/%s " % rep.name)
    rep.assert_failed(result, "failed on this node (killed by signal 9)", "what 'node2' held of this volume before is unchanged",
                      source_leftover_allowed=True)
    rep.assert_previous_replica_intact(unfinished_allowed=True)
    rep.assert_recovers_incrementally()
    # zfs-fuse leaks the daemon's hold on a snapshot whose `zfs send` client was killed: it stays "busy" until the
    # daemon restarts (runs are not blocked: its deletion is only warned about).  Restart node1's daemon so later
    # tests can destroy the volume.
    cluster.lab.kill("node1")
    cluster.lab.revive("node1")


@pytest.mark.parametrize("guest, megabytes, rate", [(117, OVER_SSH, 10), (123, IN_SESSION, 2)],
                         ids=["openssh", "session-chunks"])
def test_receiving_zfs_recv_killed_mid_stream(cluster, guest, megabytes, rate):
    rep = Replicated(cluster, guest, rate=rate)
    rep.change_source(megabytes=megabytes)
    result = _kill_mid_stream(cluster, rep, "node2", "zfs recv -F rpool/data/%s" % rep.name)
    rep.assert_failed(result, "failed on node 'node2'", "killed by signal 9", "previous replica is intact")
    rep.assert_previous_replica_intact(unfinished_allowed=True)
    rep.assert_recovers_incrementally()


def test_a_run_killed_mid_stream_in_the_session_leaves_the_replica_and_the_session_to_end(cluster):
    """The run itself killed with -9 while its stream goes in the session's chunks: the target's session sees its
    input end without the stream's end, its `zfs recv` gets a cut stream and fails, the receive lock is free, the
    previous replica is intact, and the next run goes on from it."""
    rep = Replicated(cluster, 124, rate=2)
    rep.change_source(megabytes=IN_SESSION)
    runner = subprocess.Popen(cluster.lab.exec_argv("node1", [
        "env", "PYTHONPATH=" + cs.PYTHONPATH, str(cs.PYTHON), "-m",
        "ansible_collections.storage.replication.plugins.module_utils.replicate", rep.job_id]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_mid_stream(cluster.lab, "node2", cs.dataset(rep.name))  # of a rate-limited stream of 3 s
    runner.kill()
    runner.wait(timeout=30)
    wait_until(lambda: not receives_into(cluster.lab, "node2", cs.dataset(rep.name))
               and receive_lock_free(cluster.lab, "node2", "%s:%s" % (cs.STORAGE, rep.name)), 30,
               "node2's receive to end", 0.1, error=AssertionError)
    rep.assert_previous_replica_intact(unfinished_allowed=True)
    rep.assert_recovers_incrementally()


def test_target_modified_since_last_replica_is_kept_aside(cluster):
    rep = Replicated(cluster, 118)
    rep.change_source()
    cs.write_random(cluster.lab, "node2", rep.name, "written-on-target.bin", 1)
    modified = cs.tree_checksum(cluster.lab, "node2", rep.name)
    result = rep.assert_recovers_incrementally(expect_kept=True)
    kept = result["volumes"][0]["kept"]
    assert len(kept) == 1 and kept[0].startswith("rpool/data/%s-diverged-" % rep.name)
    # the target's own data survives, whole, in the kept copy
    assert cluster.lab.exec("node2", ["python3", "-c", cs.CHECKSUM_SCRIPT, "/" + kept[0]]).stdout.strip() == modified
    assert "was modified on node 'node2' since the last replica: kept its data as '%s'" % kept[0] in \
        cs.run_log(cluster.lab, "node1", rep.job_id)
    cs.destroy(cluster.lab, "node2", kept[0])


def test_no_common_base_snapshot(cluster):
    rep = Replicated(cluster, 119)
    rep.change_source()
    dataset = cs.dataset(rep.name)
    cs.destroy(cluster.lab, "node2", dataset)
    cs.zfs(cluster.lab, "node2", "create", dataset)
    cs.zfs(cluster.lab, "node2", "snapshot", dataset + "@unrelated")
    result = cluster.run(rep.job_id)
    assert not result["ok"]
    assert result["error"] == ("No common base snapshot on volume(s) local-zfs:%s\nPlease remove the problematic "
                               "volume(s) from the replication target or delete and re-create the whole job %s"
                               % (rep.name, rep.job_id))
    assert cs.snapshots(cluster.lab, "node2", rep.name).keys() == {"unrelated"}  # nothing touched on the target
    assert job_snapshots(cluster.lab, "node1", rep.name, rep.job_id) == [rep.snap]
    cs.destroy(cluster.lab, "node2", dataset)  # the remedy the message names
    again = cluster.run(rep.job_id)
    assert again["ok"], again["error"]
    assert again["volumes"][0]["mode"] == "full"
    cluster.assert_replica("node2", rep.name)


def test_caller_with_older_generation_is_judged_by_its_guest(cluster):
    """Fencing by guest (issue 14 point 1): the target holds a newer configuration that changed something else (a
    job removed, another guest added); the run goes on.  Once the guest has moved in that newer configuration, the
    same caller is refused, and the replica is untouched."""
    rep = Replicated(cluster, 120)
    rep.change_source()
    held = cluster.cfg.generation
    newer = copy.deepcopy(cluster.cfg)
    newer.generation += 5
    newer.guests[129] = configmod.Guest(id=129, type="vm", node="node3", volumes=["local-zfs:vm-129-disk-0"])
    cs.write_config(cluster.lab, newer, nodes=["node2"])
    result = rep.assert_recovers_incrementally()
    assert result["volumes"][0]["bytes"] < 3 * 10 ** 6

    rep.change_source()
    newer.generation += 1
    newer.guests[120].node = "node3"
    cs.write_config(cluster.lab, newer, nodes=["node2"])
    rep.snap = cluster.assert_replica("node2", rep.name)
    rep.checksum = cs.tree_checksum(cluster.lab, "node2", rep.name, rep.snap)
    try:
        refused = cluster.run(rep.job_id)
    finally:
        cluster.cfg.generation = newer.generation + 1
        cluster.push()
    rep.assert_failed_and_recovers(refused, "node 'node1' asked for guest 120, which is owned by node 'node3'",
                                   "node 'node1' holds the older generation %d" % held)


def test_target_that_owns_the_guest_refuses(cluster):
    rep = Replicated(cluster, 121)
    rep.change_source()
    owned_here = copy.deepcopy(cluster.cfg)  # node2's view: the guest is its own (and so has no job to node2)
    owned_here.guests[121].node = "node2"
    del owned_here.jobs[rep.job_id]
    cs.write_config(cluster.lab, owned_here, nodes=["node2"])
    try:
        result = cluster.run(rep.job_id)
    finally:
        cs.write_config(cluster.lab, cluster.cfg, nodes=["node2"])
    rep.assert_failed_and_recovers(result, "guest 121 is owned by node 'node2' (this node)", "refusing to let 'node1' replicate")
