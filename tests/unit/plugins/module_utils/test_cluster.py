# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of cluster-wide changes: every node is a real configuration directory; only the SSH hop is replaced
by a direct call of the receiver operations (the lab tests in tests/integration/test_cli.py go through sshd)."""

from __future__ import annotations

import base64
import json

import pytest

from ansible_collections.storage.replication.plugins.module_utils import cluster
from ansible_collections.storage.replication.plugins.module_utils import config as C
from ansible_collections.storage.replication.plugins.module_utils import quorum
from ansible_collections.storage.replication.plugins.module_utils.protocol import Refused
from ansible_collections.storage.replication.plugins.module_utils.serve import CONTROL_OPERATIONS
from ansible_collections.storage.replication.plugins.module_utils.transport import RemoteError, TransportError

KEY = "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))).decode()
NODES = ("node1", "node2", "node3")


class Peers:
    """node name -> its confdir; ``down`` holds the names that cannot be reached."""

    def __init__(self, tmp_path):
        self.dirs = {name: str(tmp_path / name / "conf") for name in NODES}
        self.state = {name: tmp_path / name / "state" for name in NODES}
        self.down = set()
        self.calls = []
        for name in NODES:
            self.state[name].mkdir(parents=True)
            (self.state[name] / "local-node").write_text(name + "\n")

    def connect(self, name, address, host_key, key=None, port=22, timeout=None):
        del address, host_key, key, port, timeout
        return FakeChannel(self, name)

    def cfg(self, name):
        return C.load(self.dirs[name])

    def files(self):
        return {name: C.load(path).content() for name, path in self.dirs.items()}


class FakeChannel:
    """A control channel whose peer's receiver runs in this process (the operations table, as `serve` uses it)."""

    def __init__(self, peers, name):
        self.peers = peers
        self.node_name = name
        self.address, self.port = "10.0.0.%d" % (NODES.index(name) + 1), 22

    def connect(self):
        if self.node_name in self.peers.down:
            raise TransportError("down", unreachable=True) from ConnectionRefusedError("Connection refused")
        return self

    def call(self, operation, request, timeout=None):
        del timeout
        self.peers.calls.append((self.node_name, operation))
        receiver = type("R", (), {"confdir": self.peers.dirs[self.node_name], "node": self.node_name})()
        try:
            reply = CONTROL_OPERATIONS[operation](receiver, json.loads(json.dumps(request)))
        except (C.ConfigError, Refused) as exc:
            raise RemoteError(self.node_name, operation, {"ok": False, "error": str(exc)}) from None
        return dict(reply, ok=True)

    def close(self):
        pass


def base_config(generation=1):
    cfg = C.ClusterConfig(generation=generation)
    for number, name in enumerate(NODES, 1):
        cfg.nodes[name] = C.Node(name, "10.0.0.%d" % number, KEY)
    cfg.storages["local-zfs"] = C.Storage("local-zfs")
    cfg.guests[100] = C.Guest(100, "vm", "node1", ["local-zfs:vm-100-disk-0"])
    return cfg


@pytest.fixture(name="peers")
def peers_fixture(tmp_path):
    peers = Peers(tmp_path)
    for path in peers.dirs.values():
        C.save(base_config(), path)
    return peers


def change(peers, edit, node="node1", **options):
    return cluster.change_cluster(edit, peers.dirs[node], str(peers.state[node]), connect=peers.connect, **options)


def add_job(cfg):
    return cfg.add_job(C.Job("100-0", "node2", schedule="*/5", rate=10))


def test_a_change_reaches_every_node_with_generation_plus_one(peers):
    outcome = change(peers, add_job)
    assert outcome.changed and outcome.generation == 2
    assert {name: status for name, (status, _d) in outcome.nodes.items()} == {n: cluster.WRITTEN for n in NODES}
    for name in NODES:
        cfg = peers.cfg(name)
        assert cfg.generation == 2
        assert C.format_replication_cfg(cfg.jobs.values()) == "local: 100-0\n\ttarget node2\n\trate 10\n\tschedule */5\n\tsource node1\n\n"
    assert len(set(json.dumps(f, sort_keys=True) for f in peers.files().values())) == 1


def test_a_change_that_changes_nothing_contacts_no_node(peers):
    change(peers, add_job)
    peers.calls.clear()
    outcome = change(peers, lambda cfg: cfg.update_job("100-0", rate=10))
    assert not outcome.changed and outcome.generation == 2 and peers.calls == []


def test_an_invalid_change_writes_nothing_anywhere(peers):
    before = peers.files()
    with pytest.raises(C.ConfigError, match="Source and target must not be identical"):
        change(peers, lambda cfg: cfg.add_job(C.Job("100-0", "node1")))
    assert peers.files() == before and peers.calls == []


def test_an_unreachable_node_refuses_the_change_everywhere(peers):
    peers.down.add("node3")
    before = peers.files()
    refusal = (r"nothing was changed: node 'node3': unreachable at 10.0.0.3 port 22 \(Connection refused\) .* "
               r"allow unreachable nodes \(CLI --allow-unreachable, module option allow_unreachable; a majority, 2 of 3, "
               r"is still required\)")
    with pytest.raises(cluster.ClusterError, match=refusal):
        change(peers, add_job)
    assert peers.files() == before
    assert ("node2", quorum.ACCEPT) not in peers.calls and ("node2", quorum.COMMIT) not in peers.calls


def test_force_changes_the_reachable_nodes_and_the_missing_one_catches_up(peers):
    peers.down.add("node3")
    outcome = change(peers, add_job, force=True)
    assert outcome.nodes["node3"][0] == cluster.SKIPPED
    assert outcome.warnings == ["node 'node3' did not get generation 2 (unreachable at 10.0.0.3 port 22 (Connection refused)): "
                                "it adopts it from a peer at its next run"]
    assert [peers.cfg(n).generation for n in NODES] == [2, 2, 1]
    peers.down.clear()
    found = cluster.catch_up(peers.dirs["node3"], str(peers.state["node3"]), connect=peers.connect)
    assert (found.adopted, found.unreachable) == (2, {}) and found.source in ("node1", "node2")
    assert peers.cfg("node3").content() == peers.cfg("node1").content()


def test_a_change_built_on_an_older_generation_is_rebuilt_on_the_newer_one(peers):
    """Compare-and-swap: node2 holds generation 5 (a change node1 missed); node1's change is rebuilt on it and
    commits as generation 6 on every node, with both changes in it."""
    newer = base_config(generation=5)
    newer.add_job(C.Job("100-1", "node3"))
    C.save(newer, peers.dirs["node2"])
    outcome = change(peers, add_job)
    assert outcome.changed and outcome.generation == 6 and outcome.before.generation == 5
    assert [peers.cfg(n).generation for n in NODES] == [6, 6, 6]
    assert all(sorted(peers.cfg(n).jobs) == ["100-0", "100-1"] for n in NODES)


def test_a_change_that_no_longer_applies_to_the_newer_generation_is_refused(peers):
    newer = base_config(generation=5)
    newer.add_job(C.Job("100-0", "node3"))  # guest 100 goes to node3 already: a job to node2 is still fine,
    newer.guests[100].node = "node2"        # but node2 owns the guest now, so a job to node2 no longer applies
    newer.jobs["100-0"].target = "node3"
    C.save(newer, peers.dirs["node2"])
    with pytest.raises(cluster.ClusterError, match="the change no longer applies to it"):
        change(peers, lambda cfg: cfg.add_job(C.Job("100-1", "node2")))
    assert "100-1" not in peers.cfg("node2").jobs and peers.cfg("node2").generation == 5


def test_check_mode_asks_the_peers_and_writes_nothing(peers):
    before = peers.files()
    outcome = change(peers, add_job, check_mode=True)
    assert outcome.changed and outcome.generation == 2 and "100-0" in outcome.after.jobs
    assert peers.files() == before
    assert sorted(peers.calls) == [("node2", quorum.STATUS), ("node3", quorum.STATUS)]


def test_a_node_outside_the_configuration_may_not_change_it(peers, tmp_path):
    (peers.state["node1"] / "local-node").write_text("stranger\n")
    with pytest.raises(cluster.ClusterError, match=r"this node \('stranger'\) is not a node of the cluster configuration"):
        change(peers, add_job)


def test_a_commit_of_another_content_or_a_wrong_generation_is_refused(peers):
    change(peers, add_job)
    stale = base_config(generation=2)
    channel = FakeChannel(peers, "node2")
    reply = channel.call(quorum.COMMIT, {"source": "node3", "slot": 2, "content": stale.content()})
    assert reply["status"] == quorum.CONFLICT
    with pytest.raises(RemoteError, match="the chosen configuration says generation 2, its slot is 3"):
        channel.call(quorum.COMMIT, {"source": "node3", "slot": 3, "content": stale.content()})
    with pytest.raises(RemoteError, match="unknown request field"):
        channel.call(quorum.COMMIT, {"source": "node3", "slot": 3, "content": stale.content(), "shell": "rm"})
    assert peers.cfg("node2").generation == 2 and "100-0" in peers.cfg("node2").jobs


def test_catch_up_with_all_peers_equal_adopts_nothing(peers):
    peers.down.add("node2")
    found = cluster.catch_up(peers.dirs["node1"], str(peers.state["node1"]), connect=peers.connect)
    assert found.adopted is None and found.generation == 1 and list(found.unreachable) == ["node2"]


def test_catch_up_hands_its_connections_to_keep_instead_of_closing_them(peers, monkeypatch):
    """The runner keeps the peer check's connections for its jobs (channels.ChannelPool.adopt); none is closed."""
    kept = []
    monkeypatch.setattr(FakeChannel, "close", lambda _channel: pytest.fail("a kept connection was closed"))
    cluster.catch_up(peers.dirs["node1"], str(peers.state["node1"]), connect=peers.connect, keep=kept.append)
    assert sorted(channel.node_name for channel in kept) == ["node2", "node3"]


def test_a_conflict_left_by_a_forced_change_is_reported_and_resolved_by_the_majority(peers):
    """node3 forced generation 2 alone while node1 and node2 committed another generation 2: node3's catch-up
    reports the conflict, resolve-conflict takes the majority's version and keeps node3's own aside."""
    majority, forced = base_config(generation=2), base_config(generation=2)
    majority.add_job(C.Job("100-0", "node2"))
    forced.add_job(C.Job("100-0", "node3", comment="forced on the minority"))
    for name in ("node1", "node2"):
        C.save(majority, peers.dirs[name])
    C.save(forced, peers.dirs["node3"])
    found = cluster.catch_up(peers.dirs["node3"], str(peers.state["node3"]), connect=peers.connect)
    assert found.conflicts == ["node1", "node2"] and found.adopted is None
    resolved = cluster.resolve_conflict(peers.dirs["node3"], str(peers.state["node3"]), connect=peers.connect)
    assert resolved.generation == 2 and resolved.source == "node1" and ".conflict-" in resolved.kept
    assert peers.cfg("node3").content() == majority.content()
    kept = C.from_files(*(open("%s/%s" % (resolved.kept, f), encoding="utf-8").read() for f in (C.MODEL_FILE, C.JOBS_FILE)))
    assert kept.jobs["100-0"].comment == "forced on the minority"
    assert cluster.resolve_conflict(peers.dirs["node3"], str(peers.state["node3"]), connect=peers.connect) is None
    # on the majority's side there is nothing to resolve
    assert cluster.resolve_conflict(peers.dirs["node1"], str(peers.state["node1"]), connect=peers.connect) is None


def test_without_a_majority_only_force_quorum_commits_and_the_configuration_records_it(peers):
    peers.down.update({"node2", "node3"})
    with pytest.raises(cluster.ClusterError, match=r"no quorum: 1 of 3 nodes answered \(need 2\)"):
        change(peers, add_job, force=True)  # --allow-unreachable leaves out a minority, never more
    assert peers.cfg("node1").generation == 1
    outcome = change(peers, add_job, force_quorum=True)
    assert outcome.changed and outcome.forced and outcome.as_dict()["forced"] is True
    forced = peers.cfg("node1").forced
    assert len(forced) == 1 and forced[0]["generation"] == 2 and forced[0]["node"] == "node1"
    assert [peers.cfg(n).generation for n in NODES] == [2, 1, 1]
