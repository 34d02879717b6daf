# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Self-fencing (fence.py) and the survivors' wait (failover.fence_decision), with an injected clock and probe."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import failover, fence
from ansible_collections.storage.replication.plugins.module_utils.state import LOCAL_NODE_FILE

T0 = 1_800_000_000
FENCE_AFTER = 60


def cluster(nodes=5):
    cfg = configmod.ClusterConfig(generation=3)
    for index in range(1, nodes + 1):
        name = "node%d" % index
        cfg.nodes[name] = configmod.Node(name=name, address="10.0.0.%d" % index)
    for guest, owner in ((100, "node1"), (101, "node1"), (200, "node2")):
        cfg.guests[guest] = configmod.Guest(id=guest, type="service", node=owner, volumes=[],
                                            hooks={"stop": ["stop", str(guest)], "kill": ["kill", str(guest)]})
    return cfg


class World:
    """Which peers answer, and the hooks' outcomes: {argv[0]: error or None}."""

    def __init__(self, tmp_path, nodes=5):
        self.cfg = cluster(nodes)
        self.up = set(self.cfg.nodes)
        self.hook_errors = {}
        self.ran = []
        self.statedir = str(tmp_path)
        self.fence = fence.Fence("node1", self.statedir, load_config=lambda: self.cfg,
                                 probe=lambda node: node.name in self.up,
                                 stop=lambda guest: fence.stop_guest(guest, run=self.run), fence_after=FENCE_AFTER,
                                 interval=5)

    def run(self, argv, timeout):
        self.ran.append((tuple(argv), timeout))
        return self.hook_errors.get(argv[0])

    def tick(self, now):
        return self.fence.tick(now)


@pytest.mark.parametrize("nodes, answering, quorate", [
    (3, 1, True), (3, 0, False), (5, 2, True), (5, 1, False), (4, 2, True), (4, 1, False), (2, 1, True), (2, 0, False),
    (1, 0, True)])
def test_quorum_is_this_node_and_the_answering_peers_against_half_of_the_nodes(tmp_path, nodes, answering, quorate):
    world = World(tmp_path, nodes)
    world.up = {"node%d" % i for i in range(2, 2 + answering)}
    state = world.tick(T0)
    assert state["quorate"] is quorate
    assert state["votes"] == 1 + answering


def test_a_node_cut_off_for_fence_after_stops_its_own_guests_and_refuses_starts(tmp_path):
    world = World(tmp_path)
    world.tick(T0)
    world.up = {"node2"}  # 2 of 5
    for now in range(T0 + 5, T0 + FENCE_AFTER, 5):
        state = world.tick(now)
        assert not state["quorate"] and state["since"] == T0 and not state["fenced"]
    assert world.ran == [] and fence.start_refusal(world.statedir) is None
    state = world.tick(T0 + FENCE_AFTER)
    assert state["fenced"]["since"] == T0 + FENCE_AFTER
    assert {g: r["result"] for g, r in state["fenced"]["guests"].items()} == {"100": "stopped", "101": "stopped"}
    assert sorted(world.ran) == [(("stop", "100"), fence.STOP_TIMEOUT), (("stop", "101"), fence.STOP_TIMEOUT)]
    assert "this node is fenced" in fence.start_refusal(world.statedir)
    world.tick(T0 + FENCE_AFTER + 5)
    assert len(world.ran) == 2, "a stopped guest is not stopped again"
    assert state["last_seen"] == {"node2": T0 + FENCE_AFTER, "node3": T0, "node4": T0, "node5": T0}


def test_regaining_quorum_before_fence_after_stops_nothing(tmp_path):
    world = World(tmp_path)
    world.tick(T0)
    world.up = set()
    world.tick(T0 + 30)
    world.tick(T0 + FENCE_AFTER - 1)
    world.up = {"node2", "node3"}
    state = world.tick(T0 + FENCE_AFTER + 5)
    assert state["quorate"] and state["since"] is None and not state["fenced"] and world.ran == []
    world.up = set()  # lost again: counted from the new last quorate tick, not the old loss
    assert not world.tick(T0 + FENCE_AFTER + 10)["fenced"]
    assert world.tick(T0 + 2 * FENCE_AFTER + 5)["fenced"]


def test_a_failing_or_hanging_stop_escalates_to_kill_and_a_failed_kill_is_retried_and_reported(tmp_path):
    world = World(tmp_path)
    world.tick(T0)
    world.up = set()
    world.hook_errors = {"stop": "did not finish within 10 s (killed)"}
    state = world.tick(T0 + FENCE_AFTER)
    assert {g: r["result"] for g, r in state["fenced"]["guests"].items()} == {"100": "killed", "101": "killed"}
    assert state["fenced"]["guests"]["100"]["attempts"] == ["stop hook: did not finish within 10 s (killed)"]
    assert (("kill", "100"), fence.KILL_TIMEOUT) in world.ran

    world.cfg.guests[102] = configmod.Guest(id=102, type="service", node="node1", hooks={"stop": ["stop", "102"]})
    state = world.tick(T0 + FENCE_AFTER + 5)
    assert state["fenced"]["guests"]["102"] == {"result": "failed", "time": T0 + FENCE_AFTER + 5, "attempts": [
        "stop hook: did not finish within 10 s (killed)", "no kill hook"]}
    assert "guest 102: failed" in fence.describe(state, "node1")
    assert "storage_replication_fence_stop_failed{node=\"node1\"} 1" in fence.metrics_text(state, "node1")
    world.hook_errors = {}
    ran = len(world.ran)
    state = world.tick(T0 + FENCE_AFTER + 10)
    assert state["fenced"]["guests"]["102"]["result"] == "stopped" and len(world.ran) == ran + 1, "only 102 is retried"


def test_quorum_back_clears_the_fence_but_restarts_nothing(tmp_path):
    world = World(tmp_path)
    world.tick(T0)
    world.up = set()
    world.tick(T0 + FENCE_AFTER)
    world.up = {"node2", "node3"}
    ran = list(world.ran)
    state = world.tick(T0 + FENCE_AFTER + 5)
    assert state["quorate"] and state["fenced"] is None and state["unfenced"]["guests"] == ["100", "101"]
    assert world.ran == ran and fence.start_refusal(world.statedir) is None


def test_a_restart_while_cut_off_keeps_the_time_quorum_was_lost(tmp_path):
    world = World(tmp_path)
    world.tick(T0)
    world.up = set()
    world.tick(T0 + 40)
    restarted = World(tmp_path)
    restarted.up = set()
    assert restarted.tick(T0 + FENCE_AFTER)["fenced"], "a crash loop must not postpone the fence"


def test_an_unreadable_configuration_uses_the_last_one_read(tmp_path):
    world = World(tmp_path)
    world.tick(T0)
    world.up = set()

    def broken():
        raise configmod.ConfigError("damaged")
    world.fence.load_config = broken
    state = world.tick(T0 + FENCE_AFTER)
    assert state["fenced"] and "unreadable" in state["error"]


def test_an_unreadable_fence_state_refuses_starts(tmp_path):
    (tmp_path / fence.STATE_FILE).write_text("{")
    assert "cannot be read" in fence.start_refusal(str(tmp_path))


def test_run_hook_kills_a_hanging_hook_and_its_children_within_the_timeout():
    started = time.monotonic()
    error = fence.run_hook(["sh", "-c", "sleep 30 & sleep 30"], 1)
    assert error == "did not finish within 1 s (killed)" and time.monotonic() - started < 5
    assert fence.run_hook([sys.executable, "-c", "print('no'); raise SystemExit(4)"], 5) == "exit code 4: no"
    assert fence.run_hook(["/nonexistent/hook"], 5).startswith("cannot run /nonexistent/hook")
    assert fence.run_hook(["true"], 5) is None


def test_set_guest_running_refuses_to_start_on_a_fenced_node(tmp_path):
    confdir, statedir = tmp_path / "etc", tmp_path / "lib"
    statedir.mkdir()
    (statedir / LOCAL_NODE_FILE).write_text("node1\n")
    cfg = cluster(3)
    for guest in cfg.guests.values():  # the configuration does not accept a kill hook yet (config.HOOK_NAMES)
        guest.hooks = {"start": ["true"], "stop": ["true"]}
    configmod.save(cfg, str(confdir))
    (statedir / fence.STATE_FILE).write_text(json.dumps({"fenced": {"since": T0, "guests": {"100": {"result": "stopped"}}},
                                                         "since": T0 - 60}))
    with pytest.raises(failover.FailoverError, match="guest 100 on node 'node1': this node is fenced"):
        failover.set_guest_running(100, True, str(confdir), str(statedir))
    assert failover.set_guest_running(100, False, str(confdir), str(statedir))["changed"]  # stopping is always allowed
    os.unlink(statedir / fence.STATE_FILE)
    assert failover.set_guest_running(100, True, str(confdir), str(statedir))["changed"]


# ------------------------------------------------------------------------- the survivors' wait

def survivor_state(last_seen_node1, tick=T0, watching_since=T0 - 3600, interval=5):
    return {"tick": tick, "watching_since": watching_since, "interval": interval, "fence_after": FENCE_AFTER,
            "last_seen": {"node1": last_seen_node1, "node3": tick}}


NEEDED = FENCE_AFTER + fence.margin(5)


def test_the_survivors_promote_only_after_fence_after_plus_the_margin_of_their_own_observation():
    early = failover.fence_decision("node1", "node2", survivor_state(T0 - 20), T0)
    assert not early["fenced"] and early["left"] == NEEDED - 20 and early["unreachable_for"] == 20
    assert "%d s left" % (NEEDED - 20) in early["text"] and "failed_node_is_off=true" in early["text"]
    late = failover.fence_decision("node1", "node2", survivor_state(T0 - NEEDED), T0)
    assert late["fenced"] and late["by"] == "waited" and late["left"] == 0


def test_the_wait_counts_only_time_a_running_fence_service_watched():
    never_seen = failover.fence_decision("node1", "node2", survivor_state(None, watching_since=T0 - 10), T0)
    assert not never_seen["fenced"] and never_seen["unreachable_for"] == 10 and "began watching" in never_seen["text"]
    stale = failover.fence_decision("node1", "node2", survivor_state(T0 - 3000, tick=T0 - 60), T0)
    assert not stale["fenced"] and stale["left"] is None and "is not running" in stale["text"]
    none = failover.fence_decision("node1", "node2", None, T0)
    assert not none["fenced"] and "has never run" in none["text"]


def test_powered_off_or_a_successful_fence_command_needs_no_wait():
    state = survivor_state(T0 - 5)
    off = failover.fence_decision("node1", "node2", state, T0, failed_node_is_off=True)
    assert off["fenced"] and off["by"] == "powered_off" and off["left"] == NEEDED - 5
    fenced = failover.fence_decision("node1", "node2", None, T0, fence_command=(True, "exit code 0"))
    assert fenced["fenced"] and fenced["by"] == "fence_command"
    failed = failover.fence_decision("node1", "node2", state, T0, fence_command=(False, "exit code 1: no power"))
    assert not failed["fenced"] and "the fence command failed: exit code 1: no power" in failed["text"]


def test_the_margin_covers_the_ticks_the_probe_and_both_hooks():
    assert fence.margin(5) == 2 * 5 + fence.PROBE_TIMEOUT + fence.STOP_TIMEOUT + fence.KILL_TIMEOUT + fence.SLACK


# ------------------------------------------------------------------------- the command line

def test_fence_once_and_fence_status_on_a_node_cut_off_from_everyone(tmp_path, monkeypatch, capsys):
    from ansible_collections.storage.replication.plugins.module_utils import cli  # pylint: disable=import-outside-toplevel
    confdir, statedir = tmp_path / "etc", tmp_path / "lib"
    statedir.mkdir()
    (statedir / LOCAL_NODE_FILE).write_text("node1\n")
    cfg = cluster(3)
    for index, node in enumerate(cfg.nodes.values()):
        node.address, node.port = "127.0.0.1", 1 + index  # nothing listens on ports 1..3: no peer answers
    for guest in cfg.guests.values():
        guest.hooks = {"stop": ["true"]}
    configmod.save(cfg, str(confdir))
    (confdir / "runner.json").write_text(json.dumps({"fence_after": 1, "metrics_file": str(tmp_path / "sr.prom")}))
    monkeypatch.setenv("STORAGE_REPLICATION_CONFDIR", str(confdir))
    monkeypatch.setenv("STORAGE_REPLICATION_STATEDIR", str(statedir))

    assert cli.main(["fence", "--once", "--output-format", "json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert not first["quorate"] and first["votes"] == 1 and not first["fenced"]
    time.sleep(1.1)
    assert cli.main(["fence", "--once"]) == 0
    assert "FENCED since" in capsys.readouterr().out
    assert cli.main(["fence-status", "--output-format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["fenced"]["guests"]["100"]["result"] == "stopped"
    assert "storage_replication_fence_fenced{node=\"node1\"} 1" in (tmp_path / "sr-fence.prom").read_text()
    assert cli.main(["fence", "--once", "--fence-after", "0"]) == 2


def test_the_fence_command_is_an_argv_and_only_exit_0_fences():
    assert failover.run_fence_command(["true"]) == (True, "exit code 0")
    assert failover.run_fence_command([sys.executable, "-c", "print('bmc down'); raise SystemExit(1)"]) == (
        False, "exit code 1: bmc down")
