# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""`storage-replication status` on one node, in process, with a fixed clock: the exact table and JSON figures of a
job that synced, one that waits for its offline target, one that never ran and one marked for removal."""

from __future__ import annotations

import base64
import os
import json
import time
import types

import pytest

from ansible_collections.storage.replication.plugins.module_utils import cli
from ansible_collections.storage.replication.plugins.module_utils import config as C
from ansible_collections.storage.replication.plugins.module_utils.state import LOCAL_NODE_FILE, STATE_FILE

KEY = "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))).decode()
NOW = 1767225720  # 2026-01-01 00:02:00 UTC
UNREACHABLE = "node3: ssh: connect to host 10.0.0.3 port 22: No route to host"


def cluster():
    cfg = C.ClusterConfig(generation=3)
    for number, name in enumerate(("node1", "node2", "node3"), 1):
        cfg.nodes[name] = C.Node(name, "10.0.0.%d" % number, KEY)
    cfg.storages["local-zfs"] = C.Storage("local-zfs")
    for guest in (100, 200, 300):
        cfg.guests[guest] = C.Guest(guest, "vm", "node1", ["local-zfs:vm-%d-disk-0" % guest])
    cfg.jobs["100-0"] = C.Job("100-0", "node2", source="node1")
    cfg.jobs["100-1"] = C.Job("100-1", "node3", schedule="*/30", source="node1")
    cfg.jobs["200-0"] = C.Job("200-0", "node2", schedule="*/5", source="node1")
    cfg.jobs["300-0"] = C.Job("300-0", "node3", source="node1", remove_job="full")
    return cfg


STATE = {
    "100": {
        "local/node2": {"last_iteration": NOW - 60, "last_try": NOW - 60, "last_sync": NOW - 60, "fail_count": 0,
                        "duration": 1.2081164530000024},
        # two failed tries because node3 could not be reached: pvesr would stop; we retry 30 minutes after the last
        "local/node3": {"last_iteration": NOW - 600, "last_try": NOW - 600, "last_sync": NOW - 7200, "fail_count": 2,
                        "duration": 20.5, "error": UNREACHABLE, "waiting_for_target": True},
    },
    # 200-0 never ran: no state
    "300": {"local/node3": {"last_iteration": NOW - 60, "last_try": NOW - 60, "last_sync": NOW - 900, "fail_count": 0,
                            "duration": 2.0}},
}


@pytest.fixture(name="node1")
def node1_fixture(tmp_path, monkeypatch):
    confdir, statedir = tmp_path / "etc", tmp_path / "lib"
    statedir.mkdir()
    (statedir / LOCAL_NODE_FILE).write_text("node1\n")
    (statedir / STATE_FILE).write_text(json.dumps(STATE))
    C.save(cluster(), str(confdir))
    monkeypatch.setenv("STORAGE_REPLICATION_CONFDIR", str(confdir))
    monkeypatch.setenv("STORAGE_REPLICATION_STATEDIR", str(statedir))
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    # The command's clock stops at NOW; everything else of the time module is the real one.
    clock = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    clock.time = lambda: NOW + 0.25
    monkeypatch.setattr(cli, "time", clock)
    yield
    monkeypatch.undo()
    time.tzset()


def status(capsys, *args):
    assert cli.main(["status"] + list(args)) == 0
    out = capsys.readouterr()
    assert out.err == ""
    return out.out


def test_status_table_says_waiting_for_target_and_pending_for_a_job_that_never_ran(node1, capsys):
    assert status(capsys).splitlines() == [
        "JobID      Enabled    Target                           LastSync             NextSync   Duration  FailCount State",
        "100-0      Yes        local/node2           2026-01-01_00:01:00  2026-01-01_00:15:00 1.208116453          0 OK",
        "100-1      Yes        local/node3           2025-12-31_22:02:00  2026-01-01_00:22:00       20.5          2 "
        "waiting for target: " + UNREACHABLE,
        "200-0      Yes        local/node2                             -              pending          -          0 OK",
        "300-0      Yes        local/node3           2025-12-31_23:47:00              pending          2          0 OK",
    ]


def test_status_json_says_when_each_job_is_due_in_epoch_seconds_of_now(node1, capsys):
    jobs = {job["id"]: job for job in json.loads(status(capsys, "--output-format", "json"))}
    assert {job_id: (job["next_sync"], job["status"], job["state"]) for job_id, job in jobs.items()} == {
        "100-0": (NOW + 780, "ok", "OK"),
        "100-1": (NOW - 600 + 1800, "waiting for target", "waiting for target: " + UNREACHABLE),
        # pvesr's own values here are 900 (the first */5 event after 1970) and 1 (a removal is always due)
        "200-0": (NOW, "ok", "OK"),
        "300-0": (NOW, "removal pending", "OK"),
    }
    assert (jobs["200-0"]["last_sync"], jobs["200-0"]["lag"]) == (0, None)


def test_status_shows_the_limit_now_of_a_job_with_rate_windows(node1, capsys):
    confdir = os.environ["STORAGE_REPLICATION_CONFDIR"]
    cfg = C.load(confdir)
    cfg.jobs["100-0"].rate, cfg.jobs["100-0"].rate_windows = 100, "thu 0:*: 10; 1..23:*: unlimited"  # NOW: Thu 00:02
    cfg.generation += 1
    C.save(cfg, confdir)
    lines = status(capsys).splitlines()
    assert len(lines) == 6 and lines[-1] == ("100-0: rate limit now 10 MByte/s (window 'thu 0:*' of "
                                             "'thu 0:*: 10; 1..23:*: unlimited')")
    jobs = {job["id"]: job for job in json.loads(status(capsys, "--output-format", "json"))}
    assert (jobs["100-0"]["rate"], jobs["100-0"]["rate_now"], jobs["100-0"]["rate_window"]) == (100, 10, "thu 0:*")
    assert (jobs["100-1"]["rate_now"], jobs["100-1"]["rate_window"], jobs["100-1"]["rate_windows"]) == (None, None, None)
