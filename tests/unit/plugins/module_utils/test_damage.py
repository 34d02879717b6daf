# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unreadable state or configuration is never taken as empty (issue 13, points 4 and 5): the state rebuilt from
the replication snapshots, the runner's refusal and restore, the restore from a majority of the peers, and an
interrupted run shown as such."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ansible_collections.storage.replication.plugins.module_utils import cluster
from ansible_collections.storage.replication.plugins.module_utils import config as C
from ansible_collections.storage.replication.plugins.module_utils import report as reportmod
from ansible_collections.storage.replication.plugins.module_utils import runner as R
from ansible_collections.storage.replication.plugins.module_utils import state as S
from ansible_collections.storage.replication.plugins.module_utils.zfs import ZfsError

from test_cluster import Peers, base_config  # pylint: disable=import-error
from test_runner import Node, make_config, notify_script  # pylint: disable=import-error

GARBAGE = (b"garbage", b"", b'{"100": {"local/node2": {"last_sync": 17', b"\x00\xff\xfe\x80")


def snapshots(table):
    """A snapshot_epochs factory over ``{dataset: {job_id: [epochs]}}``."""
    return lambda: lambda job_id, dataset: table.get(dataset, {}).get(job_id, [])


# ---------------------------------------------------------------------------------------------------------------
# Rebuilding the state from the replication snapshots

def test_the_one_common_snapshot_is_the_last_sync():
    cfg = make_config(guests=(100, 200, 300, 400), jobs_per_guest=2)
    cfg.guests[100].volumes.append("local-zfs:vm-100-disk-1")
    table = {
        # guest 100: two volumes; 1000 is on both, 900 only on one (a clean-up that stopped half way)
        "rpool/data/vm-100-disk-0": {"100-0": [900, 1000], "100-1": [500]},
        "rpool/data/vm-100-disk-1": {"100-0": [1000], "100-1": [500]},
        # guest 200: a run stopped between its snapshot and the clean-up: which one the target has is unknown
        "rpool/data/vm-200-disk-0": {"200-0": [1000, 1060]},
        # guests 300/400: never synced
    }
    rebuilt, notes = S.rebuild_state(cfg, "node1", snapshots(table)())
    assert rebuilt == {
        "100": {"local/node2": dict(S.JOB_STATE_DEFAULTS, last_sync=1000, last_try=1000, storeid_list=["local-zfs"]),
                "local/node3": dict(S.JOB_STATE_DEFAULTS, last_sync=500, last_try=500, storeid_list=["local-zfs"])},
        "200": {"local/node2": dict(S.JOB_STATE_DEFAULTS, last_sync=0, last_try=0, storeid_list=["local-zfs"])},
    }
    assert notes["100-0"] == "last sync 1000 (its replication snapshot)"
    assert notes["200-0"] == "2 replication snapshots (1000, 1060): the next run finds the base it shares with the target"
    assert notes["300-0"] == "no replication snapshot on all its volumes: it starts as a new job"
    assert S.rebuild_state(cfg, "node2", snapshots(table)()) == ({}, {})  # node2 runs none of them


@pytest.mark.parametrize("data", GARBAGE)
def test_an_unreadable_state_file_is_kept_aside_and_replaced(tmp_path, data):
    statefile = S.StateFile(str(tmp_path))
    (tmp_path / S.STATE_FILE).write_bytes(data)
    kept = statefile.replace_unreadable({"100": {"local/node2": {"last_sync": 5}}}, now=lambda: 1767225600)
    assert os.path.basename(kept).startswith("replication-state.json.corrupt-2026") and open(kept, "rb").read() == data
    assert statefile.read() == {"100": {"local/node2": {"last_sync": 5}}}
    assert statefile.replace_unreadable({}) is None and statefile.read() != {}  # readable: left alone


# ---------------------------------------------------------------------------------------------------------------
# The runner

def metrics(node):
    return open(node.settings["metrics_file"], encoding="utf-8").read().splitlines()


@pytest.mark.parametrize("data", GARBAGE)
def test_the_runner_rebuilds_a_damaged_state_and_runs_incrementally(tmp_path, data):
    node = Node(tmp_path, make_config(guests=(100,)))
    path = os.path.join(node.paths.statedir, S.STATE_FILE)
    with open(path, "wb") as handle:
        handle.write(data)
    seen = {}

    def run_job(cfg, job_id, **kwargs):
        seen[job_id] = S.StateFile(kwargs["statedir"]).job_state(cfg.jobs[job_id])["last_sync"]
        return node.run_job(cfg, job_id, **kwargs)
    result = node.runner(run_job=run_job, snapshot_epochs=snapshots({"rpool/data/vm-100-disk-0": {"100-0": [1000]}})).run()
    assert seen == {"100-0": 1000}  # the job ran from the rebuilt last sync: its base is found, no full send
    warning = result["warnings"][0]
    assert warning.startswith("state file %s is " % path)
    assert "it is kept as %s.corrupt-" % path in warning and "100-0: last sync 1000 (its replication snapshot)" in warning
    kept = [n for n in os.listdir(node.paths.statedir) if n.startswith(S.STATE_FILE + ".corrupt-")]
    assert len(kept) == 1 and open(os.path.join(node.paths.statedir, kept[0]), "rb").read() == data
    assert 'storage_replication_state_readable{node="node1"} 1' in metrics(node)


def test_the_runner_refuses_when_the_state_cannot_be_rebuilt(tmp_path):
    node = Node(tmp_path, make_config(guests=(100,)))
    path = os.path.join(node.paths.statedir, S.STATE_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("garbage")

    def zfs_down():
        def epochs(job_id, dataset):
            raise ZfsError(["zfs", "get"], 1, "connect: No such file or directory")
        return epochs
    with pytest.raises(R.RunnerRefused) as info:
        node.runner(snapshot_epochs=zfs_down).run()
    assert str(info.value).startswith("state file %s is not valid JSON" % path) and "\n" not in str(info.value)
    assert "rebuilding it from the replication snapshots failed" in str(info.value)
    assert node.events == [] and open(path, encoding="utf-8").read() == "garbage"
    assert 'storage_replication_state_readable{node="node1"} 0' in metrics(node)
    assert not any(line.startswith("storage_replication_job_") for line in metrics(node))


def damage_config(node):
    with open(os.path.join(node.paths.confdir, C.JOBS_FILE), "w", encoding="utf-8") as handle:
        handle.write("garbage\n")


def test_the_runner_refuses_a_damaged_configuration_it_cannot_restore(tmp_path):
    command, out = notify_script(tmp_path)
    node = Node(tmp_path, make_config(guests=(100,)), {"notify_command": command})
    damage_config(node)

    def restore(confdir, statedir):
        raise cluster.ClusterError("the cluster configuration of this node cannot be read: X; restoring it failed")
    for _run in range(4):
        with pytest.raises(R.RunnerRefused, match="restoring it failed"):
            node.runner(notify=True, restore=restore).run()
    assert node.events == [] and node.peer_checks == 0
    lines = metrics(node)
    assert 'storage_replication_config_readable{node="node1"} 0' in lines
    assert not any(line.startswith(("storage_replication_job_", "storage_replication_config_generation")) for line in lines)
    messages = [json.loads(line) for line in out.read_text().splitlines()]
    assert [m["event"] for m in messages] == ["config-unreadable"] * 3  # pvesr's cadence: 1, 2, 3, then 48
    assert messages[0]["severity"] == "error" and "restoring it failed" in messages[0]["body"]


def test_the_runner_restores_a_damaged_configuration_then_runs(tmp_path):
    cfg = make_config(guests=(100,))
    node = Node(tmp_path, cfg)
    damage_config(node)

    def restore(confdir, statedir):
        del statedir
        kept = C.restore(C.from_files(cfg.content()[C.MODEL_FILE], cfg.content()[C.JOBS_FILE]), confdir)
        return cluster.Restored(1, "node2", kept)
    result = node.runner(restore=restore).run()
    assert result["warnings"][0].startswith("restored cluster configuration generation 1 from node 'node2', the corrupt "
                                            "copy is kept as %s/generations/1.corrupt-" % node.paths.confdir)
    assert [j["job"] for j in result["jobs"]] == ["100-0"]
    assert 'storage_replication_config_readable{node="node1"} 1' in metrics(node)


def test_an_interrupted_run_is_shown_as_such(tmp_path):
    cfg = make_config(guests=(100,))
    job = cfg.jobs["100-0"]
    statefile = S.StateFile(str(tmp_path))
    gone = subprocess.Popen(["true"])  # pylint: disable=consider-using-with
    gone.wait()
    statefile.record_job_start(job, 1000, node="node1", pid=os.getpid())
    statefile.set_fields(job, pid=gone.pid)  # the run's process is gone: killed mid-job
    figures = reportmod.job_report(cfg, statefile.read(), "node1", 2000)[0]
    assert figures["status"] == S.STATUS_INTERRUPTED
    assert figures["state"].startswith("interrupted: the run started ") and "did not end" in figures["state"]
    statefile.record_job_end(job, 1000, 1.0)
    assert reportmod.job_report(cfg, statefile.read(), "node1", 2000)[0]["state"] == "OK"


# ---------------------------------------------------------------------------------------------------------------
# Restoring from the peers

def test_the_configuration_a_majority_of_the_peers_holds_is_restored(tmp_path):
    peers = Peers(tmp_path)
    for name in ("node1", "node2", "node3"):
        C.save(base_config(), peers.dirs[name])
    newer = base_config(generation=2)
    newer.guests[200] = C.Guest(200, "ct", "node2", ["local-zfs:subvol-200-disk-0"])
    C.adopt(newer, peers.dirs["node3"])
    with open(os.path.join(peers.dirs["node1"], C.JOBS_FILE), "w", encoding="utf-8") as handle:
        handle.write("garbage\n")

    def restore():
        return cluster.restore_config(peers.dirs["node1"], str(peers.state["node1"]), connect=peers.connect)

    peers.down.add("node2")
    with pytest.raises(cluster.ClusterError) as info:
        restore()
    assert "1 of 2 peers answered with a readable configuration and a majority is needed" in str(info.value)
    assert "node 'node2': unreachable" in str(info.value) and "\n" not in str(info.value)
    peers.down.clear()
    restored = restore()
    assert (restored.generation, restored.source) == (2, "node3")  # the newest of the majority
    assert open(restored.kept, encoding="utf-8").read() == "garbage\n"
    assert C.load(peers.dirs["node1"]) == newer
    assert restore() is None  # readable now


def test_a_damaged_node_serves_no_configuration_and_takes_no_push(tmp_path):
    peers = Peers(tmp_path)
    for name in ("node1", "node2", "node3"):
        C.save(base_config(), peers.dirs[name])
    with open(os.path.join(peers.dirs["node2"], C.JOBS_FILE), "w", encoding="utf-8") as handle:
        handle.write("garbage\n")
    with pytest.raises(cluster.ClusterError, match="node 'node2': node 'node2' answered|node 'node2'"):
        cluster.change_cluster(lambda cfg: cfg.add_job(C.Job("100-0", "node3")), peers.dirs["node1"],
                               str(peers.state["node1"]), connect=peers.connect)
    assert C.load(peers.dirs["node1"]).generation == 1
    with pytest.raises(C.ConfigCorrupt):  # nor does the damaged node change anything itself
        cluster.change_cluster(lambda cfg: cfg.add_job(C.Job("100-0", "node3")), peers.dirs["node2"],
                               str(peers.state["node2"]), connect=peers.connect)
    assert [C.load(peers.dirs[n]).generation for n in ("node1", "node3")] == [1, 1]
