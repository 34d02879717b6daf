# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Planned migration on the lab with a running workload: node1 -> node2 and back, only deltas, no record lost."""

from __future__ import annotations

import pytest

import cluster_setup as cs
from ansible_runner import run_playbook
from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from workload.guest import ServiceGuest, assert_continuous, config_of, runs_of, setup_cluster

pytestmark = pytest.mark.lab

GUEST = 300
MIGRATE_TASK = "Stop the guest, send the last delta, hand over the job state and the ownership (on the owner)"


@pytest.fixture(scope="module")
def service(lab):
    cfg = setup_cluster(lab)
    guest = ServiceGuest(lab, GUEST)
    guest.create("node1")
    cfg.guests[GUEST] = guest.definition("node1")
    cfg.jobs["%d-0" % GUEST] = configmod.Job(id="%d-0" % GUEST, target="node2", schedule="*/1")
    cfg.jobs["%d-1" % GUEST] = configmod.Job(id="%d-1" % GUEST, target="node3", schedule="*/1")
    cfg.generation += 1
    cs.write_config(lab, cfg)
    guest.start("node1")
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
