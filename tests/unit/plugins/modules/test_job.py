# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""storage.replication.job through its main(): check mode, diff, changed, errors, the push to the peers."""

from __future__ import annotations

import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.modules import job as job_module


@pytest.fixture
def run(run_module):
    return lambda args, **kwargs: run_module(job_module.main, args, **kwargs)


def test_check_mode_reports_the_new_job_and_writes_nothing(node_cluster, run):
    result = run({"guest": 100, "target": "node2", "rate": 50}, check=True, diff=True)
    assert result["changed"] is True
    assert result["job"]["id"] == "100-0" and result["job"]["rate"] == 50
    assert result["diff"]["before"] == ""
    assert "local: 100-0\n\ttarget node2\n\trate 50\n" in result["diff"]["after"]
    assert node_cluster["load"]().generation == 1 and not node_cluster["load"]().jobs
    assert node_cluster["peers"].pushed == {}


def test_real_run_pushes_generation_2_and_a_second_run_changes_nothing(node_cluster, run):
    first = run({"guest": 100, "target": "node2", "schedule": "*/5"})
    assert first["changed"] is True and first["generation"] == 2
    assert node_cluster["peers"].pushed == {"node2": 2, "node3": 2}
    assert first["push"]["node1"]["status"] == "written"
    stored = node_cluster["load"]()
    assert stored.generation == 2 and stored.jobs["100-0"].schedule == "*/5"
    second = run({"guest": 100, "target": "node2", "schedule": "*/5"}, check=True)
    third = run({"guest": 100, "target": "node2", "schedule": "*/5"})
    assert second["changed"] is False and third["changed"] is False
    assert node_cluster["load"]().generation == 2


def test_diff_shows_the_section_before_and_after(node_cluster, run):
    run({"guest": 100, "target": "node2"})
    result = run({"id": "100-0", "target": "node2", "enabled": False, "comment": "paused"}, diff=True)
    assert result["diff"]["before"] == "local: 100-0\n\ttarget node2\n\tsource node1\n\n"
    assert result["diff"]["after"] == "local: 100-0\n\tcomment paused\n\tdisable\n\ttarget node2\n\tsource node1\n\n"


def test_invalid_schedule_fails_naming_the_job_and_changes_nothing(node_cluster, run):
    result = run({"guest": 100, "target": "node2", "schedule": "every tuesday"})
    assert result["failed"] is True
    assert "job of guest '100' to 'node2'" in result["msg"] and "invalid schedule" in result["msg"]
    assert "on node 'node1'" in result["msg"] and "Nothing was changed on any node" in result["msg"]
    assert node_cluster["load"]().generation == 1 and node_cluster["peers"].pushed == {}


def test_target_equal_to_owner_is_refused(node_cluster, run):
    result = run({"guest": 100, "target": "node1"})
    assert result["failed"] is True and "Source and target must not be identical" in result["msg"]
    assert node_cluster["load"]().jobs == {}


def test_duplicate_target_in_a_set_is_refused(node_cluster, run):
    jobs = [{"guest": 100, "target": "node2"}, {"guest": 100, "target": "node2", "rate": 5}]
    result = run({"jobs": jobs})
    assert result["failed"] is True and "jobs 1 and 2 are both job of guest '100' to 'node2'" in result["msg"]


def test_unreachable_peer_refuses_unless_allowed(node_cluster, run):
    node_cluster["peers"].down.add("node3")
    refused = run({"guest": 100, "target": "node2"})
    assert refused["failed"] is True and "node 'node3'" in refused["msg"] and node_cluster["load"]().jobs == {}
    allowed = run({"guest": 100, "target": "node2", "allow_unreachable": True})
    assert allowed["changed"] is True and allowed["push"]["node3"]["status"] == "skipped"
    assert any("node 'node3' did not get generation 2" in w for w in allowed["warnings"]), allowed["warnings"]


def test_missing_paramiko_says_to_reinstall_the_runner(node_cluster, run):
    node_cluster["peers"].connect_error = ModuleNotFoundError("No module named 'paramiko'", name="paramiko")
    result = run({"guest": 100, "target": "node2"})
    assert result["failed"] is True and "re-run the storage.replication.runner role" in result["msg"]
    assert "paramiko" in result["msg"]


def test_absent_marks_for_removal_and_force_drops(node_cluster, run):
    run({"guest": 100, "target": "node2"})
    marked = run({"id": "100-0", "state": "absent", "keep": True})
    assert marked["changed"] is True and node_cluster["load"]().jobs["100-0"].remove_job == "local"
    again = run({"id": "100-0", "state": "absent", "keep": True})
    assert again["changed"] is False
    dropped = run({"id": "100-0", "state": "absent", "force": True})
    assert dropped["changed"] is True and "100-0" not in node_cluster["load"]().jobs
    conflict = run({"id": "100-0", "state": "absent", "force": True, "keep": True})
    assert conflict["failed"] is True and "keep conflicts with force" in conflict["msg"]


def test_purge_marks_unlisted_jobs_for_removal(node_cluster, run):
    run({"jobs": [{"guest": 100, "target": "node2"}, {"guest": 100, "target": "node3"}]})
    result = run({"jobs": [{"guest": 100, "target": "node3"}], "purge": True})
    assert result["changed"] is True
    jobs = node_cluster["load"]().jobs
    assert jobs["100-0"].remove_job == "full" and jobs["100-1"].remove_job is None
    assert [j["id"] for j in result["jobs"]] == ["100-0", "100-1"]


def test_interval_warning_is_shown(node_cluster, run):
    result = run({"guest": 100, "target": "node2", "schedule": "2020-01-01 00:00"}, check=True)
    assert result["changed"] is True and result["warnings"]


def test_job_after_a_migration_is_not_created_again(node_cluster, run):
    run({"jobs": [{"guest": 100, "target": "node2"}, {"guest": 100, "target": "node3"}]})
    with configmod.edit(node_cluster["confdir"]) as cfg:
        cfg.move_guest(100, "node2")
    node_cluster["peers"].sync(node_cluster["confdir"])
    result = run({"jobs": [{"guest": 100, "target": "node2"}, {"guest": 100, "target": "node3"}], "purge": True})
    assert result["changed"] is False, result
    # The guest's drift warning says it (once per run); the job's result shows where it replicates now.
    assert not result.get("warnings"), result["warnings"]
    assert {(j["id"], j["source"], j["target"]) for j in result["jobs"]} == {("100-0", "node2", "node1"), ("100-1", "node2", "node3")}
    jobs = node_cluster["load"]().jobs
    assert jobs["100-0"].target == "node1" and jobs["100-0"].remove_job is None


def test_a_node_that_missed_a_change_adopts_it_before_computing_its_own(node_cluster, run):
    """node1 was down while job 100-0 was created (committed on node2 and, say, node4): purging every job from node1
    must see it, not find nothing to do in node1's older configuration."""
    newer = node_cluster["load"]()
    newer.jobs["100-0"] = configmod.Job(id="100-0", target="node2")
    newer.generation += 1
    configmod.save(newer, node_cluster["peers"].dirs["node2"])
    dry = run({"jobs": [], "purge": True}, check=True)
    assert dry["warnings"] == ["node 'node2' holds cluster configuration generation 2, newer than this node's (1): this "
                               "dry run is computed on this node's; the real run adopts the newer one first"]
    assert node_cluster["load"]().generation == 1
    result = run({"jobs": [], "purge": True})
    assert result["warnings"] == ["this node adopted cluster configuration generation 2 from node 'node2' first (it had "
                                  "missed changes)"]
    assert result["changed"] is True and result["generation"] == 3
    assert node_cluster["load"]().jobs["100-0"].remove_job == "full"


def test_keep_text_sets_restore_points_and_shows_in_the_diff(node_cluster, run):
    run({"guest": 100, "target": "node2"})
    result = run({"guest": 100, "target": "node2", "keep": "monthly=6,last=4"}, diff=True)
    assert result["changed"] is True and result["job"]["keep"] == "last=4,monthly=6"
    assert result["diff"]["after"] == "local: 100-0\n\ttarget node2\n\tsource node1\n# keep last=4,monthly=6\n\n"
    stored = node_cluster["load"]()
    assert stored.jobs["100-0"].keep == "last=4,monthly=6"
    assert "keep" not in stored.content()["replication.cfg"]  # pvesr's file stays pvesr's
    again = run({"guest": 100, "target": "node2", "keep": "last=4, monthly=6"})
    assert again["changed"] is False  # the same rules, written another way
    reset = run({"guest": 100, "target": "node2"})  # left out: pvesr's behaviour again
    assert reset["changed"] is True and node_cluster["load"]().jobs["100-0"].keep is None


def test_keep_in_a_set_and_bad_keep_is_named(node_cluster, run):
    result = run({"jobs": [{"guest": 100, "target": "node2", "keep": "daily=7", "keep_source": "last=2"}]})
    assert result["changed"] is True and result["jobs"][0]["keep_source"] == "last=2"
    bad = run({"jobs": [{"guest": 100, "target": "node2", "keep": "daily=seven"}]})
    assert bad["failed"] is True and "'daily=seven' is not <rule>=<count>" in bad["msg"]
    assert node_cluster["load"]().jobs["100-0"].keep == "daily=7"
    text_with_set = run({"jobs": [{"guest": 100, "target": "node2"}], "keep": "daily=7"})
    assert text_with_set["failed"] is True and "give each job's restore points as jobs[].keep" in text_with_set["msg"]


def test_keep_true_is_still_pvesr_delete_keep(node_cluster, run):
    run({"guest": 100, "target": "node2", "keep": "daily=7"})
    result = run({"id": "100-0", "state": "absent", "keep": "yes"})
    assert result["changed"] is True and node_cluster["load"]().jobs["100-0"].remove_job == "local"


def test_rate_windows_are_set_shown_and_a_bad_one_is_named_with_the_job(node_cluster, run):
    windows = "mon..fri 8..17:*: 10; *-12-24..26: unlimited"
    result = run({"jobs": [{"guest": 100, "target": "node2", "rate": 100, "rate_windows": windows}]})
    assert result["changed"] is True and result["jobs"][0]["rate_windows"] == windows
    assert run({"jobs": [{"guest": 100, "target": "node2", "rate": 100, "rate_windows": windows}]})["changed"] is False
    stored = node_cluster["load"]()
    assert "\trate 100\n" in stored.content()["replication.cfg"] and "rate_windows" not in stored.content()["replication.cfg"]
    bad = run({"jobs": [{"guest": 100, "target": "node2", "rate": 100, "rate_windows": "mon..fri 8..18: 10"}]})
    assert bad["failed"] is True
    assert "job of guest '100' to 'node2'" in bad["msg"] and "replication job '100-0': rate_windows: window 1 'mon..fri " \
        "8..18: 10': '8..18' alone is minutes" in bad["msg"], bad["msg"]
    assert node_cluster["load"]().jobs["100-0"].rate_windows == windows
