# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Planned migration on the lab with a running workload: node1 -> node2 and back, only deltas, no record lost."""

from __future__ import annotations

import pytest

import cluster_setup as cs
from ansible_runner import run_playbook
from workload.guest import assert_continuous, config_of, runs_of, serve_guest, setup_cluster

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(module_lab):
    """This module migrates rewrites the whole cluster configuration: a lab of its own, not the session's."""
    return module_lab


GUEST = 300
MIGRATE_TASK = "Copy the data, stop the guest, send the last delta, hand over the job state and the ownership (on the owner)"


@pytest.fixture(scope="module")
def service(lab):
    guest = serve_guest(lab, setup_cluster(lab), GUEST, ["node2", "node3"])
    for job in ("%d-0" % GUEST, "%d-1" % GUEST):
        result = cs.run_job(lab, "node1", job)
        assert result["ok"] and result["volumes"][0]["mode"] == "full", result
    yield guest
    for node in lab.nodes:
        guest.stop(node)


def migrate(lab, guest, target, check=False):
    run = run_playbook(lab.inventory_path, "playbooks/migrate.yml", check=check,
                       extra_vars={"guest": guest.id, "target": target})
    run.assert_ok()
    return run, run.task_results(MIGRATE_TASK)[0]


def assert_moved(lab, guest, owner, old_owner):
    generations = {node: config_of(lab, node).generation for node in lab.nodes}
    assert len(set(generations.values())) == 1, generations
    for node in lab.nodes:
        cfg = config_of(lab, node)
        assert cfg.guests[guest.id].node == owner
        assert cfg.jobs["%d-0" % guest.id].target == old_owner and cfg.jobs["%d-0" % guest.id].source == owner
        assert cfg.jobs["%d-1" % guest.id].target == "node3" and cfg.jobs["%d-1" % guest.id].source == owner
    assert guest.running(owner) and not guest.running(old_owner)


def test_migrate_check_mode_changes_nothing(lab, service):
    before = {node: config_of(lab, node).generation for node in lab.nodes}
    run, result = migrate(lab, service, "node2", check=True)
    assert result["plan"]["job"] == "%d-0" % GUEST and result["sync"] is None
    assert {node: config_of(lab, node).generation for node in lab.nodes} == before
    assert service.running("node1") and not service.running("node2")
    assert run.changed_count() >= 1  # the migration would change the cluster


def test_migrate_refuses_bad_requests(lab, service):
    for extra, message in (({"guest": GUEST, "target": "node1"}, "already owned by node 'node1'"),
                           ({"guest": 999, "target": "node2"}, "guest 999 is not in the cluster configuration")):
        run = run_playbook(lab.inventory_path, "playbooks/migrate.yml", extra_vars=extra)
        assert run.rc != 0
        assert message in run.stdout, run.describe()
    assert service.running("node1")


def test_migrate_there_and_back_sends_only_deltas(lab, service):
    service.wait_records("node1", 10)
    _run, there = migrate(lab, service, "node2")
    sync = there["sync"]
    assert [v["mode"] for v in sync["volumes"]] == ["incremental"]
    snapshot = "__replicate_%d-0_%d__" % (GUEST, sync["start"])
    full = service.full_send_bytes("node2", snapshot)
    assert sync["bytes"] * 20 < full, (sync["bytes"], full)
    assert_moved(lab, service, "node2", "node1")
    state = cs.local_state(lab, "node2")[str(GUEST)]
    assert state["local/node1"]["last_sync"] == sync["start"]

    service.wait_records("node2", 10)
    _run, back = migrate(lab, service, "node1")
    assert [v["mode"] for v in back["sync"]["volumes"]] == ["incremental"]
    assert back["sync"]["bytes"] * 20 < full
    assert_moved(lab, service, "node1", "node2")

    service.wait_records("node1", 5)
    service.stop("node1")
    records = service.records("node1")
    assert_continuous(records)
    assert [run[0] for run in runs_of(records)] == ["node1", "node2", "node1"]
    print("migration figures: final delta %d and %d bytes, full send %d bytes" % (sync["bytes"], back["sync"]["bytes"], full))


LONE_GUEST = 301  # one job, to node2; node3 holds no replica of it
LONE_JOB, COPY_JOB = "%d-0" % LONE_GUEST, "%d-999999999" % LONE_GUEST


@pytest.fixture(scope="module")
def lone(lab, service):
    guest = serve_guest(lab, config_of(lab, "node1"), LONE_GUEST, ["node2"])
    result = cs.run_job(lab, "node1", LONE_JOB)
    assert result["ok"] and result["volumes"][0]["mode"] == "full", result
    yield guest
    for node in lab.nodes:
        guest.stop(node)


def sha256_of(lab, node, path):
    return lab.exec(node, ["sha256sum", path]).stdout.split()[0]


def test_migrate_to_a_node_without_replica_copies_in_full_and_the_jobs_keep_their_targets(lab, lone):
    before = {node: config_of(lab, node).generation for node in lab.nodes}
    _run, dry = migrate(lab, lone, "node3", check=True)
    assert dry["plan"]["mode"] == "full copy" and "node 'node3' holds no replica: full copy of 1 volume(s), about" in dry["summary"]
    assert {node: config_of(lab, node).generation for node in lab.nodes} == before and not lone.datasets("node3")

    lone.wait_records("node1", 10)
    run, moved = migrate(lab, lone, "node3")
    assert "node 'node1' keeps its copy of guest %d's volumes" % LONE_GUEST in " ".join((run.stdout + run.stderr).split())
    assert [v["mode"] for v in moved["full_copy"]["volumes"]] == ["full"], moved
    assert [v["mode"] for v in moved["sync"]["volumes"]] == ["incremental"], moved
    assert moved["sync"]["bytes"] * 20 < moved["full_copy"]["bytes"], moved  # stopped only for the last delta
    assert {node: config_of(lab, node).generation for node in lab.nodes} == {node: before["node1"] + 1 for node in lab.nodes}
    for node in lab.nodes:
        cfg = config_of(lab, node)
        assert cfg.guests[LONE_GUEST].node == "node3" and COPY_JOB not in cfg.jobs
        assert (cfg.jobs[LONE_JOB].source, cfg.jobs[LONE_JOB].target) == ("node3", "node2")
    assert lone.running("node3") and not lone.running("node1")

    # The data: node1's volume is as the guest left it; node3 has the same ballast and records, then its own.
    source_records = lone.records("node1")
    ballast = "/%s/ballast.bin" % cs.dataset(lone.name)
    assert sha256_of(lab, "node3", ballast) == sha256_of(lab, "node1", ballast)
    lone.wait_records("node3", 5)
    records = lone.records("node3")
    assert records[:len(source_records)] == source_records
    assert_continuous(records)
    assert [run[0] for run in runs_of(records)] == ["node1", "node3"]

    # No trace of the copy: its snapshots, its replica record, its state entry.
    for node in ("node1", "node3"):
        assert not [s for s in cs.snapshots(lab, node, lone.name) if COPY_JOB in s], node
    assert not (lab.private_path("node3", "/var/lib/storage-replication") / "guests" / ("%d.json" % LONE_GUEST)).exists()
    assert list(cs.local_state(lab, "node1").get(str(LONE_GUEST), {})) == ["local/node2"]
    assert list(cs.local_state(lab, "node3")[str(LONE_GUEST)]) == ["local/node2"]

    # The job now runs from node3, incrementally: its snapshot travelled with the copy, guid and all.
    node3_snaps, node2_snaps = cs.snapshots(lab, "node3", lone.name), cs.snapshots(lab, "node2", lone.name)
    base = [s for s in node2_snaps if LONE_JOB in s]
    assert len(base) == 1 and node3_snaps[base[0]] == node2_snaps[base[0]]
    result = cs.run_job(lab, "node3", LONE_JOB)
    assert result["ok"] and [(v["mode"], v["base"]) for v in result["volumes"]] == [("incremental", base[0])], result
    assert result["bytes"] * 20 < moved["full_copy"]["bytes"]
    downtime = records[len(source_records)]["time"] - source_records[-1]["time"]
    print("no-replica migration figures: full copy %d bytes in %.1f s while running, last delta %d bytes, guest down "
          "%.1f s, next run from node3 %d bytes" % (moved["full_copy"]["bytes"], sum(v["seconds"] for v in moved["full_copy"]["volumes"]),
                                                    moved["sync"]["bytes"], downtime, result["bytes"]))
