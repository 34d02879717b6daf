# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""`run --check`: what a run would send, found without changing anything on either node.

The ZFS that only looks (zfs.LookingZfs), the size estimates on OpenZFS and zfs-fuse, the target's ``plan``
operation (its prepare looking only, driven through the fuzzer's ZFS emulator), the source's plan of a job, the
runner's check of the due jobs and the CLI's text.  The lab test (tests/integration/test_cli.py) runs it for real.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from ansible_collections.storage.replication.plugins.module_utils import cli, plan
from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import runner as R
from ansible_collections.storage.replication.plugins.module_utils.state import StateFile
from ansible_collections.storage.replication.plugins.module_utils.transport import TransportError
from ansible_collections.storage.replication.plugins.module_utils.zfs import (
    LookingZfs, Zfs, dry_run_argv, parse_send_size, send_argv)

from test_runner import Node, make_config  # pylint: disable=import-error
from test_zfs_openzfs_features import OPENZFS, ZFS_FUSE, Script  # pylint: disable=import-error

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "fuzz"))
import fuzz_receiver  # noqa: E402  pylint: disable=wrong-import-position,import-error

DS = "rpool/data/vm-100-disk-0"
SNAPS = "%s\ttype\tfilesystem\n%s@__replicate_100-0_1700000000__\tguid\t11\n" \
        "%s@__replicate_100-0_1700000000__\tcreatetxg\t5\n%s@__replicate_100-0_1700000000__\tcreation\t1700000000\n" \
        "%s@mine\tguid\t12\n%s@mine\tcreatetxg\t9\n%s@mine\tcreation\t1700000500\n" % ((DS,) * 7)
SNAPSHOT_GET = ["zfs", "get", "-Hp", "-o", "name,property,value", "-d", "1"]


def get(prop, value, name=DS):
    return (["zfs", "get", "-Hp", "-o", "name,property,value", prop, name], (0, "%s\t%s\t%s\n" % (name, prop, value), ""))


# ---------------------------------------------------------------------------------------------------------------
# The ZFS layer

def test_a_looking_zfs_reads_for_real_and_only_records_changes():
    script = Script((["zfs", "version"], OPENZFS), (SNAPSHOT_GET, (0, SNAPS, "")))
    looking = LookingZfs(Zfs(script))
    assert list(looking.snapshots(DS)) == ["__replicate_100-0_1700000000__", "mine"]
    looking.destroy(DS + "@mine")
    looking.snapshot([DS], "x")
    looking.rollback(DS, "mine")
    looking.set_property(DS, "a:b", "c")
    assert [argv[1] for argv in looking.changes] == ["release", "destroy", "snapshot", "rollback", "set"]
    assert sorted(argv[1] for argv in script.calls) == ["get", "version"]  # nothing that changes reached zfs


def test_a_looking_zfs_takes_no_probe_snapshot_to_tell_whether_data_was_written():
    zfs_fuse = LookingZfs(Zfs(Script((["zfs", "version"], ZFS_FUSE))))
    assert zfs_fuse.written_since(DS, "mine") is True and zfs_fuse.changes == []
    openzfs = LookingZfs(Zfs(Script((["zfs", "version"], OPENZFS), get("written@mine", "0"))))
    assert openzfs.written_since(DS, "mine") is False and openzfs.changes == []


def test_the_dry_run_size_is_its_last_size_line():
    assert dry_run_argv(["zfs", "send", "-I", "a@1", "a@2"]) == ["zfs", "send", "-nvP", "-I", "a@1", "a@2"]
    assert parse_send_size("incremental\t1\ta@2\t4096\nsize\t4096\n") == 4096
    with pytest.raises(ValueError):
        parse_send_size("cannot open 'a@2': dataset does not exist\n")


def test_openzfs_estimates_an_incremental_by_a_dry_run_to_the_newest_snapshot_and_what_was_written_since():
    base = "__replicate_100-0_1700000000__"
    dry = dry_run_argv(send_argv(DS, "mine", base))
    script = Script((["zfs", "version"], OPENZFS), (SNAPSHOT_GET, (0, SNAPS, "")), get("written@mine", "1000"),
                    (dry, (0, "incremental\t%s\t%s@mine\t5000\nsize\t5000\n" % (base, DS), "")))
    assert Zfs(script).send_estimate(DS, base) == (6000, "zfs send -nvP up to 'mine' and written since")
    assert dry in script.calls


def test_openzfs_estimates_from_the_newest_snapshot_itself_by_what_was_written_since():
    script = Script((["zfs", "version"], OPENZFS), (SNAPSHOT_GET, (0, SNAPS, "")), get("written@mine", "1000"))
    assert Zfs(script).send_estimate(DS, "mine") == (1000, "written since 'mine'")


def test_openzfs_estimates_a_volume_without_snapshots_by_its_data():
    script = Script((["zfs", "version"], OPENZFS), (SNAPSHOT_GET, (0, DS + "\ttype\tfilesystem\n", "")),
                    get("referenced", "77"))
    assert Zfs(script).send_estimate(DS) == (77, "the space its data uses")


def test_zfs_fuse_estimates_a_full_stream_by_the_space_used_and_cannot_size_a_delta():
    used = (["zfs", "get", "-Hp", "-o", "name,property,value", "usedbydataset,usedbysnapshots", DS],
            (0, "%s\tusedbydataset\t300\n%s\tusedbysnapshots\t20\n" % (DS, DS), ""))
    script = Script((["zfs", "version"], ZFS_FUSE), (SNAPSHOT_GET, (0, SNAPS, "")), used, (SNAPSHOT_GET, (0, SNAPS, "")))
    zfs = Zfs(script)
    assert zfs.send_estimate(DS) == (320, "the space it and its snapshots use")
    assert zfs.send_estimate(DS, "mine") == (None, "zfs-fuse cannot size a delta without taking a snapshot")
    assert not [argv for argv in script.calls if "-nvP" in argv]


# ---------------------------------------------------------------------------------------------------------------
# The target's `plan`: its prepare, looking only

@pytest.fixture(scope="module")
def harness():
    node = fuzz_receiver.Harness()
    yield node
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.rmtree(node.root, ignore_errors=True)


@pytest.mark.parametrize("flavor", ["openzfs", "zfs-fuse"])
@pytest.mark.parametrize("request_fields", [{}, {"last_sync": 0}, {"volumes": [], "last_sync": 1, "force": True}])
def test_the_target_plans_what_prepare_would_leave_without_changing_anything(harness, flavor, request_fields):
    request = json.dumps(fuzz_receiver.prepare(**request_fields)).encode()
    planned = harness.execute(fuzz_receiver.Case(flavor, "node1", "plan", request))
    assert [c.argv for c in planned.journal if c.mutating] == [] and planned.violations == []
    prepared = harness.execute(fuzz_receiver.Case(flavor, "node1", "prepare", request))
    changes = [c.argv for c in prepared.journal if c.mutating]
    plan_reply, prepare_reply = planned.replies[0], prepared.replies[0]
    assert plan_reply["ok"] and prepare_reply["ok"]
    assert plan_reply["volumes"] == prepare_reply["volumes"] and plan_reply["resume_tokens"] == prepare_reply["resume_tokens"]
    assert bool(changes) == any("delete" in line or "roll back" in line for line in plan_reply["log"])
    if flavor == "openzfs":  # what prepare did, the plan said it would do, line by line
        assert [line for line in prepare_reply["log"] if not line.startswith("end the receive")] == plan_reply["log"]
    # zfs-fuse: whether a replica holds data newer than an unfinished snapshot takes a probe snapshot to tell, so a
    # plan assumes it does and says the snapshot goes as stale instead of by a rollback: it goes all the same


def test_the_target_does_not_adopt_a_newer_generation_for_a_plan(harness):
    request = json.dumps(fuzz_receiver.prepare(generation=8)).encode()
    planned = harness.execute(fuzz_receiver.Case("openzfs", "node1", "plan", request))
    reply = planned.replies[0]
    assert reply["ok"] and [c.argv for c in planned.journal if c.mutating] == []
    assert "this node holds cluster configuration generation 7, node 'node1' 8: a run makes it adopt the newer one " \
           "first" in reply["log"]
    assert configmod.load(harness.confdir).generation == 7


def test_a_plan_says_a_receive_left_behind_still_runs_and_waits_for_nothing(harness):
    """The harness holds the receive lock of one volume, as a receive a cut run left behind (fuzz_receiver.py)."""
    request = json.dumps(fuzz_receiver.prepare(job="300-0", guest=300, scan=[], source="node3",
                                               volumes=[fuzz_receiver.LEFTOVER_RECEIVE])).encode()
    planned = harness.execute(fuzz_receiver.Case("openzfs", "node3", "plan", request))
    prepared = harness.execute(fuzz_receiver.Case("openzfs", "node3", "prepare", request))
    assert planned.replies[0]["ok"] and planned.violations == [], planned.replies
    assert "a receive into '%s' left by an interrupted run is still running; a run waits for it to end itself" \
        % fuzz_receiver.LEFTOVER_RECEIVE in planned.replies[0]["log"]
    assert prepared.replies[0]["reason"] == "receive-busy"


# ---------------------------------------------------------------------------------------------------------------
# The source's plan of a job

class Channel:
    """The target's side of a plan: answers `plan` with what it would leave."""

    def __init__(self, reply=None, error=None):
        self.reply, self.error, self.calls = reply, error, []

    def __call__(self, *args, **kwargs):
        return self

    def __enter__(self):
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc):
        return False

    def call(self, operation, request):
        self.calls.append((operation, request))
        return dict(self.reply, ok=True)


def source_zfs(*more):
    """This node's ZFS (OpenZFS): the job's volume with its last replication snapshot and one of the user's."""
    return Zfs(Script((["zfs", "version"], OPENZFS), (SNAPSHOT_GET, (0, SNAPS, "")),
                      (["zfs", "list", "-H", "-p", "-t", "bookmark"], (0, "", "")),
                      (["zfs", "get", "-Hp", "-o", "name,property,value", "compression,encryption", DS],
                       (0, "%s\tcompression\toff\n%s\tencryption\toff\n" % (DS, DS), "")), *more))


def test_a_job_plans_an_incremental_from_the_snapshot_both_sides_hold(tmp_path):
    cfg = make_config(guests=(100,))
    StateFile(str(tmp_path)).set_fields(cfg.jobs["100-0"], last_sync=1700000000)
    base = "__replicate_100-0_1700000000__"
    remote = {"local-zfs:vm-100-disk-0": {base: {"id": "11", "timestamp": 1700000000}}}
    channel = Channel({"volumes": remote, "resume_tokens": {}, "log": ["delete stale replication snapshot 'x'"]})
    zfs = source_zfs((SNAPSHOT_GET, (0, SNAPS, "")), get("written@mine", "1000"),
                     (dry_run_argv(send_argv(DS, "mine", base)), (0, "size\t5000\n", "")))
    planned = plan.plan_job(cfg, "100-0", node="node1", statedir=str(tmp_path), zfs=zfs, connect=channel)
    assert planned["ok"], planned
    assert planned["volumes"] == [{"volume": "local-zfs:vm-100-disk-0", "mode": "incremental", "base": base,
                                   "estimated_bytes": 6000, "estimate": "zfs send -nvP up to 'mine' and written since"}]
    assert planned["estimated_bytes"] == 6000 and planned["log"] == ["on 'node2': delete stale replication snapshot 'x'"]
    assert channel.calls[0][0] == "plan" and channel.calls[0][1]["last_sync"] == 1700000000
    assert plan.summary(planned) == "would run now to 'node2': about 6 KB"
    assert plan.volume_lines(planned) == ["local-zfs:vm-100-disk-0: incremental from '%s', about 6 KB (zfs send -nvP "
                                          "up to 'mine' and written since)" % base]


def test_a_job_whose_target_holds_nothing_plans_a_full_stream(tmp_path):
    cfg = make_config(guests=(100,))
    channel = Channel({"volumes": {}, "resume_tokens": {}, "log": []})
    zfs = source_zfs((SNAPSHOT_GET, (0, SNAPS, "")), get("written@mine", "10"),
                     (dry_run_argv(send_argv(DS, "mine")), (0, "size\t900\n", "")))
    planned = plan.plan_job(cfg, "100-0", node="node1", statedir=str(tmp_path), zfs=zfs, connect=channel)
    assert [(v["mode"], v["base"], v["estimated_bytes"]) for v in planned["volumes"]] == [("full", None, 910)]


def test_a_plan_says_why_the_run_would_fail(tmp_path):
    cfg = make_config(guests=(100,))
    down = Channel(error=TransportError("target node 'node2' (10.0.0.2) is unreachable: timed out", True))
    planned = plan.plan_job(cfg, "100-0", node="node1", statedir=str(tmp_path), zfs=source_zfs(), connect=down)
    assert not planned["ok"] and "is unreachable" in planned["error"] and planned["volumes"] == []
    assert plan.summary(planned).startswith("would fail - target node 'node2'")
    no_base = Channel({"volumes": {"local-zfs:vm-100-disk-0": {"other": {"id": "99"}}}, "resume_tokens": {}, "log": []})
    planned = plan.plan_job(cfg, "100-0", node="node1", statedir=str(tmp_path), zfs=source_zfs(), connect=no_base)
    assert not planned["ok"] and planned["error"].startswith("No common base snapshot on volume(s) local-zfs:vm-100-disk-0")


# ---------------------------------------------------------------------------------------------------------------
# The runner's check and the CLI

def test_the_runner_plans_the_due_jobs_in_order_and_writes_nothing(tmp_path):
    cfg = make_config(guests=(100, 200))
    node = Node(tmp_path, cfg)
    planned = []

    def fake_plan(cfg, job_id, node, statedir):
        planned.append(job_id)
        return {"job": job_id, "target": "node2", "ok": True, "error": None, "volumes": [], "estimated_bytes": None,
                "log": []}
    before = sorted(os.listdir(node.paths.statedir))
    result = R.Runner(node.paths, node.settings, run_job=node.run_job, catch_up=node.catch_up).check(plan=fake_plan)
    assert planned == ["100-0", "200-0"] and result["check"] and result["next"] is None
    assert sorted(os.listdir(node.paths.statedir)) == before and node.peer_checks == 0 and not node.events
    assert not os.path.exists(node.settings["metrics_file"])


def test_the_runner_says_which_job_is_due_next_when_none_is_due(tmp_path):
    cfg = make_config(guests=(100,))
    node = Node(tmp_path, cfg)
    StateFile(node.paths.statedir).set_fields(cfg.jobs["100-0"], last_try=2000000000 - 60, last_sync=2000000000 - 60)
    result = R.Runner(node.paths, node.settings, now=lambda: 2000000000).check(plan=lambda *a, **k: 1 / 0)
    assert result["jobs"] == [] and result["next"]["job"] == "100-0" and result["next"]["at"] > 2000000000
    assert cli._check_text(result).startswith("nothing is due now; next: 100-0 at ")  # pylint: disable=protected-access


def test_a_checked_single_job_must_be_one_this_node_runs(tmp_path):
    cfg = make_config(guests=(100,))
    cfg.jobs["100-0"].disable = True
    node = Node(tmp_path, cfg)
    with pytest.raises(R.RunnerRefused, match="job '100-0' is disabled"):
        R.Runner(node.paths, node.settings).check("100-0")


def test_the_cli_refuses_check_with_mail(capsys):
    assert cli.main(["run", "--check", "--mail"]) == cli.EXIT_BAD_INPUT
    assert "--check sends nothing, no notification either" in capsys.readouterr().err
