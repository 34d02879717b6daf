# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the receiver's gate: every argument validated, anything else refused, no ZFS command run for a
refused request (the lab tests cover what the operations do)."""

from __future__ import annotations

import io
import json

import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils.names import REPLICA_PROPERTY, replica_identity
from ansible_collections.storage.replication.plugins.module_utils.protocol import CHUNK_HEADER, stream_chunks
from ansible_collections.storage.replication.plugins.module_utils.receiver import Receiver
from ansible_collections.storage.replication.plugins.module_utils.serve import main
from ansible_collections.storage.replication.plugins.module_utils.zfs import Features, Zfs


class NoZfs:
    """Any ZFS call from a refused request is a bug."""

    def __getattr__(self, name):
        raise AssertionError("ZFS touched by a refused request: %s" % name)


@pytest.fixture
def receiver(tmp_path):
    cfg = configmod.ClusterConfig(generation=7)
    host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJiK4nz/cnY3cyAUYjpq4W13HzgqcR6J+KIvhTohaTcD"
    for name, address in (("node1", "10.0.0.1"), ("node2", "10.0.0.2"), ("node3", "10.0.0.3")):
        cfg.nodes[name] = configmod.Node(name=name, address=address, host_key=host_key)
    cfg.storages["local-zfs"] = configmod.Storage(id="local-zfs", pool="rpool/data")
    cfg.guests[100] = configmod.Guest(id=100, type="vm", node="node1", volumes=["local-zfs:vm-100-disk-0"])
    cfg.guests[200] = configmod.Guest(id=200, type="vm", node="node2", volumes=["local-zfs:vm-200-disk-0"])
    cfg.guests[300] = configmod.Guest(id=300, type="vm", node="node3", volumes=["local-zfs:vm-300-disk-0"])
    cfg.jobs["100-0"] = configmod.Job(id="100-0", target="node2")
    cfg.jobs["100-1"] = configmod.Job(id="100-1", target="node3")
    cfg.jobs["300-0"] = configmod.Job(id="300-0", target="node2")
    cfg.jobs["200-0"] = configmod.Job(id="200-0", target="node1")
    confdir, statedir = node_dirs(tmp_path, cfg, "node2")
    return Receiver(confdir=confdir, statedir=statedir, zfs=NoZfs(), peer="node1")


def node_dirs(tmp_path, cfg, node):
    """(confdir, statedir) of a node holding ``cfg``."""
    confdir, statedir = tmp_path / "etc", tmp_path / "lib"
    confdir.mkdir()
    statedir.mkdir()
    configmod.save(cfg, str(confdir))
    (statedir / "local-node").write_text(node + "\n")
    return str(confdir), str(statedir)


def serve(receiver, command, request=None, raw=None):
    out = io.StringIO()
    stdin = io.BytesIO(raw if raw is not None else json.dumps(request or {}).encode())
    code = main(environ={"SSH_ORIGINAL_COMMAND": command}, stdin=stdin, stdout=out, receiver=receiver)
    reply = json.loads(out.getvalue())
    assert (code == 0) == reply["ok"]
    return reply


def prepare_request(**changes):
    request = {"job": "100-0", "guest": 100, "volumes": ["local-zfs:vm-100-disk-0"], "scan": [], "last_sync": 0,
               "generation": 7, "source": "node1"}
    request.update(changes)
    return request


@pytest.mark.parametrize("command", ["", "sh -c id", "zfs destroy rpool", "prepare --force", "PREPARE"])
def test_only_the_engines_operations_are_allowed(receiver, command):
    reply = serve(receiver, command)
    assert not reply["ok"] and reply["reason"] == "invalid-operation"


@pytest.mark.parametrize("changes, message", [
    ({"job": "100-0; rm -rf /"}, "invalid job ID"),
    ({"job": "99-0", "guest": 99}, "invalid job ID"),
    ({"job": "101-0"}, "job '101-0' does not belong to guest 100"),
    ({"volumes": ["local-zfs:../../etc"]}, "invalid volume"),
    ({"volumes": "local-zfs:vm-100-disk-0"}, "invalid volume list"),
    ({"scan": ["Local ZFS"]}, "invalid storage ID"),
    ({"last_sync": -1}, "invalid last_sync"),
    ({"last_sync": True}, "invalid last_sync"),
    ({"extra": 1}, "unknown request field(s) extra"),
])
def test_bad_arguments_are_refused_before_anything_runs(receiver, changes, message):
    reply = serve(receiver, "prepare", prepare_request(**changes))
    assert not reply["ok"] and message in reply["error"] and reply["reason"] == "invalid-argument"


def test_not_json_is_refused(receiver):
    reply = serve(receiver, "prepare", raw=b"{nope")
    assert not reply["ok"] and "not valid JSON" in reply["error"]


class ListingZfs(NoZfs):
    """A target that holds nothing yet: prepare only lists."""

    class features:  # pylint: disable=invalid-name
        @staticmethod
        def as_dict():
            return {"implementation": "openzfs"}

    @staticmethod
    def exists(_name):
        return True

    @staticmethod
    def child_volumes(_pool, _look):
        return {}

    @staticmethod
    def resume_tokens(_pool):
        return {}


class OwnVolumesZfs(ListingZfs):
    """A target whose storage holds ``held`` ({dataset: (snapshots, (identity, guid))}); listing the whole storage
    is a failure of the test (a prepare that need not search for stale replicas reads only its own volumes)."""

    def __init__(self, held):
        self.held = held
        self.asked = []

    @staticmethod
    def child_volumes(_pool, _look):
        raise AssertionError("the whole storage was listed")

    def volumes(self, datasets):
        self.asked.append(list(datasets))
        return {ds: (self.held[ds] + (None,))[:3] for ds in datasets if ds in self.held}

    @staticmethod
    def resume_tokens(_pool):
        raise AssertionError("the whole storage was listed for resume tokens")


def test_a_prepare_without_stale_search_reads_only_the_jobs_own_volumes(receiver):
    snaps = {"__replicate_100-0_1700000000__": {"guid": "12", "createtxg": 5, "creation": 1700000000}}
    identity = {"guest": 100, "job": "100-0", "source": "node1", "guid": "11"}
    receiver.zfs = OwnVolumesZfs({"rpool/data/vm-100-disk-0": (snaps, (identity, "11"))})
    reply = serve(receiver, "prepare", prepare_request(last_sync=1700000000, stale_search=False))
    assert reply["ok"], reply
    assert receiver.zfs.asked == [["rpool/data/vm-100-disk-0"]]
    assert reply["volumes"] == {"local-zfs:vm-100-disk-0": {"__replicate_100-0_1700000000__": {
        "id": "12", "timestamp": 1700000000}}}


def test_a_prepare_without_stale_search_finds_an_interrupted_receive_in_the_same_read(receiver):
    snaps = {"__replicate_100-0_1700000000__": {"guid": "12", "createtxg": 5, "creation": 1700000000}}
    identity = {"guest": 100, "job": "100-0", "source": "node1", "guid": "11"}
    receiver.zfs = OwnVolumesZfs({"rpool/data/vm-100-disk-0": (snaps, (identity, "11"), "1-token")})
    reply = serve(receiver, "prepare", prepare_request(last_sync=1700000000, stale_search=False))
    assert reply["ok"] and reply["resume_tokens"] == {"local-zfs:vm-100-disk-0": "1-token"}, reply
    assert receiver.zfs.asked == [["rpool/data/vm-100-disk-0"]]


def test_a_prepare_without_stale_search_still_refuses_another_guests_replica(receiver):
    """The ownership check of the job's own volumes does not depend on the search: a dataset at the volume's name
    that is guest 300's true replica is refused, and nothing is changed (no snapshot of it is dropped)."""
    snaps = {"__replicate_100-0_1600000000__": {"guid": "12", "createtxg": 5, "creation": 1600000000}}
    identity = {"guest": 300, "job": "300-0", "source": "node3", "guid": "31"}
    receiver.zfs = OwnVolumesZfs({"rpool/data/vm-100-disk-0": (snaps, (identity, "31"))})
    reply = serve(receiver, "prepare", prepare_request(last_sync=1700000000, stale_search=False))
    assert not reply["ok"] and reply["reason"] == "not-ours", reply
    assert "is a replica of guest 300 (job 300-0 from node 'node3')" in reply["error"]


@pytest.mark.parametrize("value", ["no", 0, None, [False]])
def test_stale_search_must_be_true_or_false(receiver, value):
    reply = serve(receiver, "prepare", prepare_request(stale_search=value))
    assert not reply["ok"] and reply["reason"] == "invalid-argument" and "invalid stale_search" in reply["error"]


def test_an_older_generation_is_judged_by_what_the_request_depends_on(receiver):
    """Fencing by guest: node1's generation 6 still says it owns guest 100 and that 100-0 goes here - as generation 7
    does; a change elsewhere since (a job removal, another guest) does not fail its run."""
    receiver.zfs = ListingZfs()
    reply = serve(receiver, "prepare", prepare_request(generation=6))
    assert reply["ok"] and reply["volumes"] == {}, reply


def test_a_session_asks_once_whether_a_storage_dataset_exists_and_again_for_one_found_missing(receiver):
    asked = []

    class CountingZfs(ListingZfs):
        @staticmethod
        def exists(name):
            asked.append(name)
            return name != "rpool/gone"
    receiver.zfs = CountingZfs()
    request = prepare_request(scan=["local-zfs"])
    assert serve(receiver, "prepare", request)["ok"] and asked == ["rpool/data"]  # the volume and the scan: one look
    assert serve(receiver, "prepare", request)["ok"] and asked == ["rpool/data"]  # the session's next request
    cfg = configmod.load(receiver.confdir)
    cfg.storages["local-zfs"].pool = "rpool/gone"
    configmod.save(cfg, receiver.confdir)
    missing = prepare_request(generation=8)
    replies = [serve(receiver, "prepare", missing), serve(receiver, "prepare", missing)]
    assert all(not r["ok"] and r["reason"] == "storage-missing" for r in replies)  # a missing one: asked every time
    assert asked == ["rpool/data", "rpool/gone", "rpool/gone"]


def test_an_older_generation_whose_guest_moved_is_refused(receiver):
    cfg = configmod.load(receiver.confdir)
    cfg.guests[100].node = "node3"
    cfg.jobs["100-1"].target = "node1"
    configmod.save(cfg, receiver.confdir)
    reply = serve(receiver, "prepare", prepare_request(generation=7))
    assert not reply["ok"] and reply["reason"] == "not-owner"
    assert ("which is owned by node 'node3' in the cluster configuration on node 'node2' (generation 8): only the "
            "owner replicates a guest - refused - node 'node1' holds the older generation 7") in reply["error"]


def test_guest_owned_here_is_refused(receiver):
    reply = serve(receiver, "prepare", prepare_request(job="200-0", guest=200, volumes=["local-zfs:vm-200-disk-0"]))
    assert not reply["ok"] and reply["reason"] == "owner"
    assert "guest 200 is owned by node 'node2' (this node)" in reply["error"]


@pytest.mark.parametrize("arguments, message", [
    ["job=100-0 guest=100 volume=local-zfs:vm-100-disk-0 snapshot=__replicate_100-1_5__ generation=7 source=node1",
     "not a replication snapshot of job '100-0'"],
    ["job=100-0 guest=100 volume=local-zfs:vm-100-disk-0 snapshot=x;id generation=7 source=node1", "invalid snapshot"],
    ["job=100-0 guest=100 volume=/dev/sda snapshot=__replicate_100-0_5__ generation=7 source=node1", "invalid volume"],
    ["job=100-0 guest=100 job=100-0", "invalid argument 'job=100-0'"],
    ["job=100-0 guest=100 force=1", "invalid argument 'force=1'"],
])
def test_receive_arguments_are_checked(receiver, arguments, message):
    reply = serve(receiver, "receive " + arguments, raw=b"")
    assert not reply["ok"] and message in reply["error"]


def test_session_answers_each_request_in_turn(receiver):
    lines = [{"operation": "list", "request": {"generation": 7, "source": "node1"}},
             {"operation": "destroy", "request": {}},
             {"operation": "prepare", "request": prepare_request(generation=3, job="100-7")}]
    stdin = io.BytesIO(b"".join((json.dumps(line) + "\n").encode() for line in lines) + b"not json\n")
    out = io.StringIO()
    assert main(environ={"SSH_ORIGINAL_COMMAND": "session"}, stdin=stdin, stdout=out, receiver=receiver) == 0
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["ok"] for r in replies] == [True, False, False, False]
    assert replies[0]["replicas"] == {}
    assert replies[1]["reason"] == "invalid-operation"
    assert replies[2]["reason"] == "unknown-job" and replies[3]["reason"] == "invalid-argument"


def session_lines(receiver, payload):
    out = io.StringIO()
    code = main(environ={"SSH_ORIGINAL_COMMAND": "session"}, stdin=io.BytesIO(payload), stdout=out, receiver=receiver)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def request_line(operation, request):
    return (json.dumps({"operation": operation, "request": request}) + "\n").encode()


def test_refused_inline_stream_is_consumed_and_the_session_goes_on(receiver):
    """The stream bytes after a refused receive are read, never taken for the next request."""
    stream = b'{"operation": "destroy"}\n' + b"\0" * 100
    arguments = ["job=100-0", "guest=100", "volume=local-zfs:vm-100-disk-0", "snapshot=__replicate_100-1_5__",
                 "generation=7", "source=node1"]
    code, replies = session_lines(receiver, request_line("receive", {"arguments": arguments, "bytes": len(stream)})
                                  + stream + request_line("list", {"generation": 7, "source": "node1"}))
    assert code == 0 and [r["ok"] for r in replies] == [False, True]
    assert "not a replication snapshot of job '100-0'" in replies[0]["error"] and replies[1]["replicas"] == {}


@pytest.mark.parametrize("request_fields, message", [
    [{"arguments": []}, "invalid inline stream size None"],
    [{"arguments": [], "bytes": 2 ** 21}, "invalid inline stream size 2097152 (at most 1048576 bytes)"],
    [{"arguments": [], "bytes": 50}, "the inline stream ended after 10 of 50 bytes"],
])
def test_inline_stream_that_cannot_be_framed_ends_the_session(receiver, request_fields, message):
    code, replies = session_lines(receiver, request_line("receive", request_fields) + b"x" * 10)
    assert code == 1 and len(replies) == 1
    assert replies[0]["reason"] == "stream-framing" and message in replies[0]["error"]


RECEIVE_ARGUMENTS = ["job=100-0", "guest=100", "volume=local-zfs:vm-100-disk-0", "snapshot=__replicate_100-1_5__",
                     "generation=7", "source=node1"]


@pytest.mark.parametrize("request_fields, message", [
    [{"arguments": RECEIVE_ARGUMENTS, "chunked": True}, "not a replication snapshot of job '100-0'"],
    [{"arguments": RECEIVE_ARGUMENTS, "chunked": True, "bytes": 5}, "unknown request field(s) bytes"],
    [{"arguments": "job=100-0", "chunked": True}, "invalid receive arguments 'job=100-0'"],
])
def test_a_refused_chunked_stream_is_read_to_its_end_and_the_session_goes_on(receiver, request_fields, message):
    """Chunks that look like requests are stream, never taken for the next request."""
    chunks = b"".join(stream_chunks(b'{"operation": "destroy"}\n' * 20000))
    code, replies = session_lines(receiver, request_line("receive", request_fields) + chunks
                                  + request_line("list", {"generation": 7, "source": "node1"}))
    assert code == 0 and [r["ok"] for r in replies] == [False, True]
    assert message in replies[0]["error"] and replies[1]["replicas"] == {}


def test_a_chunked_stream_that_cannot_be_framed_ends_the_session(receiver):
    code, replies = session_lines(receiver, request_line("receive", {"arguments": RECEIVE_ARGUMENTS, "chunked": True})
                                  + CHUNK_HEADER.pack(5) + b"abcde" + request_line("list", {}))
    assert code == 1 and len(replies) == 1 and replies[0]["reason"] == "stream-framing"


def _peer_moved_guest_200_to_node1(receiver, generation):
    """What cluster.catch_up would adopt from a peer: guest 200 now owned by node1 (a failover)."""
    cfg = configmod.load(receiver.confdir)
    cfg.guests[200].node = "node1"
    cfg.jobs["200-0"].target = "node2"  # the job's direction turns with its guest
    cfg.generation = generation
    configmod.save(cfg, receiver.confdir)


def test_newer_caller_makes_this_node_adopt_before_judging(receiver, monkeypatch):
    """node2 was down while guest 200 failed over to node1: node1's newer request is judged on the adopted config."""
    from ansible_collections.storage.replication.plugins.module_utils import cluster

    def catch_up(confdir, statedir):
        _peer_moved_guest_200_to_node1(receiver, 8)
        return cluster.CatchUp(7)
    monkeypatch.setattr(cluster, "catch_up", catch_up)
    request = prepare_request(job="200-0", guest=200, volumes=["local-zfs:vm-200-disk-0"], generation=8)
    assert receiver.check_caller(request, 200) == "node1"  # not refused as the owner any more
    assert receiver.cfg.generation == 8 and receiver.cfg.guests[200].node == "node1"


def test_newer_caller_that_cannot_be_caught_up_with_is_refused(receiver, monkeypatch):
    from ansible_collections.storage.replication.plugins.module_utils import cluster
    monkeypatch.setattr(cluster, "catch_up", lambda confdir, statedir: cluster.CatchUp(7))
    reply = serve(receiver, "prepare", prepare_request(job="200-0", guest=200, volumes=["local-zfs:vm-200-disk-0"],
                                                       generation=9))
    assert not reply["ok"] and reply["reason"] == "stale-generation"
    assert "could only reach generation 7" in reply["error"]
    assert configmod.load(receiver.confdir).guests[200].node == "node2"


# ---------------------------------------------------------------- who may ask (DESIGN.md, safety rule 3)

RECEIVE_300_AS_100 = ("receive job=100-0 guest=100 volume=local-zfs:vm-300-disk-0 snapshot=__replicate_100-0_5__ "
                      "base=__replicate_300-0_4__ generation=7 source=node1")


@pytest.mark.parametrize("peer, command, request_fields, reason, message", [
    # A key installed before keys were bound to their nodes runs nothing.
    (None, "prepare", prepare_request(), "unbound-key", "this key is not bound to a node"),
    (None, "list", {"generation": 7}, "unbound-key", "re-run the runner role"),
    (None, "get-config", {"generation": 7}, "unbound-key", "re-run the runner role"),
    # The request's source is checked against the key, never believed.
    ("node3", "prepare", prepare_request(), "wrong-source", "says it comes from node 'node1', but it came with the key "
     "of node 'node3'"),
    ("node1", "quorum-commit", {"source": "node3", "slot": 8, "content": {}}, "wrong-source", "node 'node3'"),
    # Only the guest's owner replicates it.
    ("node3", "prepare", prepare_request(source="node3"), "not-owner", "node 'node3' asked for guest 100, which is "
     "owned by node 'node1'"),
    ("nodex", "prepare", prepare_request(source="nodex"), "not-a-node", "node 'nodex' is not a node of the cluster"),
    # The attack of issue 13 point 2: guest 100's owner names guest 300's volume.
    ("node1", "prepare", prepare_request(volumes=["local-zfs:vm-300-disk-0"]), "not-guest-volume",
     "volume(s) local-zfs:vm-300-disk-0 are not volumes of guest 100"),
    ("node1", RECEIVE_300_AS_100, None, "not-guest-volume", "not volumes of guest 100"),
    ("node1", "finalize", {"job": "100-0", "guest": 100, "volumes": ["local-zfs:vm-300-disk-0"], "last_sync": 5,
                           "guest_definition": {}, "generation": 7, "source": "node1"},
     "not-guest-volume", "not volumes of guest 100"),
    ("node1", "abort-resume", {"job": "100-0", "guest": 100, "volume": "local-zfs:vm-300-disk-0", "reason": "x",
                               "generation": 7, "source": "node1"}, "not-guest-volume", "not volumes of guest 100"),
    # Jobs: only one of this guest's that replicates to this node.
    ("node1", "prepare", prepare_request(job="100-5"), "unknown-job", "job '100-5' is not in the cluster configuration"),
    ("node1", "prepare", prepare_request(job="100-1"), "wrong-target", "job '100-1' replicates guest 100 to node 'node3'"),
    ("node3", "prepare", prepare_request(job="300-0", guest=300, volumes=["local-zfs:vm-100-disk-0"], source="node3"),
     "not-guest-volume", "not volumes of guest 300"),
    ("node1", "prepare", prepare_request(guest=300), "invalid-argument", "job '100-0' does not belong to guest 300"),
    ("node1", "prepare", prepare_request(guest=400, job="400-0"), "unknown-guest", "guest 400 is not in the cluster"),
])
def test_requests_are_judged_by_the_calling_nodes_key(receiver, peer, command, request_fields, reason, message):
    receiver.peer = peer
    reply = serve(receiver, command, request_fields, raw=b"" if request_fields is None else None)
    assert not reply["ok"] and reply["reason"] == reason and message in reply["error"], reply


@pytest.mark.parametrize("argument", [
    "volume=local-zfs:../vm-100-disk-0", "volume=local-zfs:vm-100-disk-0/child", "volume=local-zfs:vm-100-disk-0@x",
    "volume=local-zfs:vm%2f100", "volume=local-zfs:-o", "volume=local-zfs:", "snapshot=__replicate_100-0_5__/x",
    "snapshot=-F", "snapshot=__replicate_100-0_5__@y", "base=-o", "base=a/b", "base=..", "base=a%00",
])
def test_hostile_names_never_reach_zfs(receiver, argument):
    arguments = dict(a.split("=", 1) for a in ("job=100-0 guest=100 volume=local-zfs:vm-100-disk-0 "
                                               "snapshot=__replicate_100-0_5__ generation=7 source=node1").split())
    key, value = argument.split("=", 1)
    arguments[key] = value
    reply = serve(receiver, "receive " + " ".join("%s=%s" % item for item in arguments.items()), raw=b"")
    assert not reply["ok"] and reply["reason"] in ("invalid-argument", "not-guest-volume"), reply


class StampedZfs(NoZfs):
    """A target whose vm-100-disk-0 is, by its identity, a replica of guest 300."""

    features = Features(None)

    def __init__(self, identity_guest):
        self.identity_guest = identity_guest

    @staticmethod
    def exists(_name):
        return True

    def replica_identity(self, _dataset):
        return {"guest": self.identity_guest, "job": "%d-0" % self.identity_guest, "source": "node3",
                "guid": "42"}, "42"

    def volume_props(self, datasets, _properties):
        """What `zfs get -d 1` says of each (existing) dataset: its guid, and the identity naming the other guest."""
        value = replica_identity(self.identity_guest, "%d-0" % self.identity_guest, "node3", "42")
        return {dataset: {"guid": "42", REPLICA_PROPERTY: value} for dataset in datasets}


def test_a_dataset_bound_to_another_guest_is_never_touched(receiver):
    receiver.zfs = StampedZfs(300)
    reply = serve(receiver, "receive job=100-0 guest=100 volume=local-zfs:vm-100-disk-0 snapshot=__replicate_100-0_5__ "
                            "base=__replicate_100-0_4__ generation=7 source=node1", raw=b"")
    assert not reply["ok"] and reply["reason"] == "not-ours"
    assert "is a replica of guest 300 (job 300-0 from node 'node3'), not of guest 100" in reply["error"]


class ScriptedZfs:
    """A real zfs.Zfs over a scripted `zfs` command: `zfs get` answers from ``held`` ({name: {property: value}},
    snapshots included), `zfs destroy` removes; every command is recorded."""

    def __init__(self, held):
        self.held, self.commands = held, []
        self.zfs = Zfs(run=self.run)

    def run(self, argv, _input, check):
        self.commands.append(argv[1:])
        if argv[1] == "version":  # zfs-fuse (no holds to take or release)
            return 1, "", "unrecognized command 'version'"
        if argv[1] == "get":  # get -Hp -o name,property,value [-d 1] PROPERTIES NAME...
            depth = "-d" in argv
            at = argv.index("-d") + 2 if depth else argv.index("-o") + 2
            properties, names = argv[at].split(","), argv[at + 1:]
            if depth:
                names = [n for n in self.held if n.partition("@")[0] in names]
            lines = ["%s\t%s\t%s" % (n, p, self.held[n].get(p, "-")) for n in names for p in properties]
            return 0, "\n".join(lines) + "\n", ""
        if argv[1] == "destroy":
            del self.held[argv[-1]]
            return 0, "", ""
        raise AssertionError("unexpected zfs command %s" % argv)


def two_volume_target(receiver, second_identity):
    """Guest 100 with two volumes; the target holds both replicas, each with snapshots 4 and 5 of job 100-0."""
    cfg = configmod.load(receiver.confdir)
    cfg.guests[100].volumes.append("local-zfs:vm-100-disk-1")
    cfg.generation = 8
    configmod.save(cfg, receiver.confdir)
    held = {"rpool/data": {"type": "filesystem"}}
    for disk, identity in (("vm-100-disk-0", replica_identity(100, "100-0", "node1", "10")),
                           ("vm-100-disk-1", second_identity)):
        held["rpool/data/" + disk] = {"type": "volume", "guid": "10", REPLICA_PROPERTY: identity}
        for stamp in (4, 5):
            held["rpool/data/%s@__replicate_100-0_%d__" % (disk, stamp)] = {
                "type": "snapshot", "guid": str(stamp), "createtxg": str(stamp), "creation": str(stamp)}
    return ScriptedZfs(held)


def finalize_request():
    return {"job": "100-0", "guest": 100, "volumes": ["local-zfs:vm-100-disk-0", "local-zfs:vm-100-disk-1"],
            "last_sync": 5, "guest_definition": {}, "generation": 8, "source": "node1"}


def test_finalize_reads_each_replica_once_and_keeps_the_newest_snapshot(receiver):
    scripted = two_volume_target(receiver, replica_identity(100, "100-0", "node1", "10"))
    receiver.zfs = scripted.zfs
    reply = serve(receiver, "finalize", finalize_request())
    assert reply["ok"], reply
    gets = [c for c in scripted.commands if c[0] == "get"]
    # both replicas with their identities and snapshots at once (they exist: so does the storage's dataset)
    assert len(gets) == 1
    assert gets[0][-1:] == ["rpool/data/vm-100-disk-1"] and gets[0][-2:-1] == ["rpool/data/vm-100-disk-0"]
    assert [c for c in scripted.commands if c[0] == "destroy"] == [
        ["destroy", "rpool/data/vm-100-disk-%d@__replicate_100-0_4__" % disk] for disk in (0, 1)]


@pytest.mark.parametrize("second, reason", [
    (replica_identity(300, "300-0", "node3", "10"), "not-ours"),  # bound to another guest
    (None, "replica-missing"),  # not there at all
])
def test_finalize_touches_no_volume_when_a_later_one_is_not_the_guests_replica(receiver, second, reason):
    scripted = two_volume_target(receiver, second)
    if second is None:
        scripted.held = {n: v for n, v in scripted.held.items() if "vm-100-disk-1" not in n}
    receiver.zfs = scripted.zfs
    reply = serve(receiver, "finalize", finalize_request())
    assert not reply["ok"] and reply["reason"] == reason and "vm-100-disk-1" in reply["error"]
    assert not [c for c in scripted.commands if c[0] != "get"]
    assert "rpool/data/vm-100-disk-0@__replicate_100-0_4__" in scripted.held
