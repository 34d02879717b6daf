# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The connection keeper (keeper.py, issue 19) on the lab: runs borrow its sessions and stay correct, and whatever
goes wrong around it (a run killed mid-job, the keeper killed, garbage on its socket, a user who is not root, a link
cut under a kept session) changes nothing but the speed.

node1 runs `storage-replication keep`; its jobs go to node2.  A session is seen from node2: its `serve` process
(the forced command) in node2's network namespace.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time

import pytest

import cluster_setup as cs
from lab._system import wait_until
from ansible_collections.storage.replication.plugins.module_utils.kept import master_path
from ansible_collections.storage.replication.plugins.module_utils.protocol import SESSION_STREAM_MAX
from ansible_collections.storage.replication.plugins.module_utils.transport import NODE_KEY
from test_link_cut import STALL_SECONDS, receives_into, wait_mid_stream
from test_replicate import Cluster

pytestmark = pytest.mark.lab

GUEST = 560
JOB = "560-0"
VOLUME = "vm-560-disk-0"
SOCKET = "/run/storage-replication/keeper.sock"
BIG_MB = SESSION_STREAM_MAX // (1 << 20) + 4  # a stream that goes over OpenSSH, not in the session


class Keeper:
    """`storage-replication keep` in node1, started and stopped by the tests."""

    def __init__(self, lab):
        self.lab = lab
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.lab.exec_argv("node1", [cs.LAUNCHER, "keep"]), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        assert "keeping connections" in self.proc.stdout.readline()

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def kept(module_lab):
    cluster = Cluster(module_lab)
    cluster.one_volume_guest(GUEST, BIG_MB)
    keeper = Keeper(module_lab)
    keeper.start()
    try:
        yield cluster, keeper
    finally:
        keeper.stop()


def sessions(lab, node="node2"):
    """The PIDs of the `serve` processes (sessions and single operations) running in ``node``."""
    return {pid for pid, argv in lab.processes(node).items() if "serve" in argv and "--peer" in argv}


def settled_sessions(lab, expected, deadline_s=10.0):
    """The sessions once their number is ``expected`` (a closed session's process takes a moment to end)."""
    deadline = time.monotonic() + deadline_s
    while len(found := sessions(lab)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def changed_run(cluster, megabytes=1):
    """A change on the source, then the job's run (replicate's own entry point); the result, checked to have
    synced, with its replica equal to the source at the synced snapshot."""
    cs.write_random(cluster.lab, "node1", VOLUME, "a.bin", megabytes, offset_mb=2)
    result = cluster.run(JOB)
    assert result["ok"], result["error"]
    snap = cluster.assert_replica("node2", VOLUME)
    assert snap == "__replicate_%s_%d__" % (JOB, result["start"])
    return result


def test_runs_borrow_the_kept_session(kept):
    cluster, _keeper = kept
    changed_run(cluster)  # the first sync (full), on a session the keeper opened for it
    log = cs.run_log(cluster.lab, "node1", JOB)
    assert "full sync" in log and "over the connection keeper's SSH connection" not in log, \
        "the first stream too big for the session connects on its own (and asks the keeper for a master to it)"
    idle = settled_sessions(cluster.lab, 1)
    assert len(idle) == 1, "the keeper keeps exactly the one session it lent: %s" % idle
    for _run in range(2):
        changed_run(cluster)
        assert sessions(cluster.lab) == idle, "a later run borrowed the same session process"
    # the CLI's `run --id` (peer check first, then the job) borrows it as well
    cs.write_random(cluster.lab, "node1", VOLUME, "a.bin", 1, offset_mb=3)
    cs.sr(cluster.lab, "node1", "run", "--id", JOB)
    cluster.assert_replica("node2", VOLUME)
    assert sessions(cluster.lab) == idle


def accepted(lab, node="node2"):
    """How many SSH connections ``node``'s sshd has accepted so far (its log)."""
    return (lab.node_dir(node) / "sshd.log").read_text(encoding="utf-8").count("Accepted publickey")


def master_of(cluster, node="node2", wait=10.0):
    """The name of the keeper's OpenSSH control master in node1 for ``node`` once its socket is up (within ``wait``
    seconds), else None."""
    peer = cluster.cfg.nodes[node]
    name = os.path.basename(master_path(SOCKET, (node, peer.address, peer.port, peer.host_key, NODE_KEY)))
    deadline = time.monotonic() + wait
    while name not in cluster.lab.exec("node1", ["ls", os.path.dirname(SOCKET)]).stdout.split():
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)
    return name


def test_a_stream_bigger_than_a_session_takes_goes_over_the_kept_master(kept):
    cluster, _keeper = kept
    changed_run(cluster)
    assert master_of(cluster, "node3", wait=0) is None, "no master to a peer that only answers peer checks"
    assert master_of(cluster), "the first sync's stream had the keeper start one to node2 (its own connected)"
    before = accepted(cluster.lab)
    result = changed_run(cluster, megabytes=BIG_MB)
    assert result["volumes"][0]["bytes"] > SESSION_STREAM_MAX, result["volumes"]
    assert accepted(cluster.lab) == before, "neither the control requests nor the stream opened a connection"
    assert "over the connection keeper's SSH connection" in cs.run_log(cluster.lab, "node1", JOB)


def test_a_mid_sized_stream_goes_in_chunks_in_the_kept_session(kept):
    """4 MiB: more than a session once took whole, less than SESSION_STREAM_MAX: in chunks on the kept session, piped
    into `zfs recv` by the session's own process; no connection, no other `serve` process on the target."""
    cluster, _keeper = kept
    changed_run(cluster)
    idle = settled_sessions(cluster.lab, 1)
    before = accepted(cluster.lab)
    result = changed_run(cluster, megabytes=4)
    assert 4 * (1 << 20) < result["volumes"][0]["bytes"] < SESSION_STREAM_MAX, result["volumes"]
    assert accepted(cluster.lab) == before and settled_sessions(cluster.lab, 1) == idle
    assert "inline on the control connection" in cs.run_log(cluster.lab, "node1", JOB)


def test_a_run_killed_mid_job_leaves_no_session_to_borrow(kept):
    cluster, _keeper = kept
    changed_run(cluster)
    before = settled_sessions(cluster.lab, 1)
    cs.write_random(cluster.lab, "node1", VOLUME, "a.bin", 1, offset_mb=4)
    argv = cluster.lab.exec_argv("node1", ["env", "PYTHONPATH=" + cs.PYTHONPATH, "SR_FAILPOINT=before-finalize",
                                           str(cs.PYTHON), "-m",
                                           "ansible_collections.storage.replication.plugins.module_utils.replicate", JOB])
    killed = subprocess.run(argv, capture_output=True, check=False, timeout=300)
    assert killed.returncode == -9, killed.stderr
    # it had borrowed the kept session and never released it: the keeper closes it, whatever state it is in
    assert not settled_sessions(cluster.lab, 0) & before, "the killed run's session was closed"
    result = changed_run(cluster)
    after = settled_sessions(cluster.lab, 1)
    assert len(after) == 1 and not after & before, (before, after)
    assert len([s for s in cs.snapshots(cluster.lab, "node2", VOLUME) if s.startswith("__replicate_%s_" % JOB)]) == 1, \
        "the next run finished what the killed one left (one replication snapshot) at %d" % result["start"]


GARBAGE = r"""
import json, socket, struct, sys
path, node, address, host_key = sys.argv[1:5]
def talk(first, then=b"", wait_for_end=False):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    s.sendall(first)
    answer = s.makefile("rb").readline()
    if then:
        s.sendall(then)
        if wait_for_end:
            answer = answer + b"|" + s.recv(100)  # the keeper ends the session: b"" here
    s.close()  # without a release
    return answer.decode()
def hello(key=host_key):
    return (json.dumps({"node": node, "address": address, "port": 22, "host_key": key,
                        "key": "/root/.ssh/id_ed25519", "want": "session"}) + "\n").encode()
print(json.dumps({
    "garbage": talk(b"\x00\xffnot json at all\n"),
    "extra_field": talk(json.dumps({"node": node, "address": address, "port": 22, "host_key": host_key,
                                    "key": "/root/.ssh/id_ed25519", "want": "session",
                                    "command": "rm -rf /"}).encode() + b"\n"),
    "wrong_host_key": talk(hello("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJiK4nz/cnY3cyAUYjpq4W13HzgqcR6J+KIvhTohaTcD")),
    "oversized_frame": talk(hello(), struct.pack(">I", 0xFFFFFFF0) + b"x" * 64, wait_for_end=True),
    "request_then_gone": talk(hello(), struct.pack(">I", 3) + b"{}\n"),
}))
"""


def test_garbage_on_the_socket_changes_nothing(kept):
    cluster, _keeper = kept
    changed_run(cluster)
    before = settled_sessions(cluster.lab, 1)
    node2 = cluster.cfg.nodes["node2"]
    out = cluster.lab.exec("node1", [str(cs.PYTHON), "-c", GARBAGE, SOCKET, "node2", node2.address, node2.host_key],
                           timeout=120).stdout
    answers = {name: text.split("|") for name, text in json.loads(out.strip().splitlines()[-1]).items()}
    for name in ("garbage", "extra_field"):
        reply = json.loads(answers[name][0])
        assert not reply["ok"] and reply["kind"] == "keeper" and "not a hello" in reply["error"], (name, reply)
    refused = json.loads(answers["wrong_host_key"][0])
    assert not refused["ok"] and refused["kind"] == "connect" and "host key" in refused["error"], refused
    assert json.loads(answers["oversized_frame"][0])["ok"] and answers["oversized_frame"][1] == "", answers
    assert json.loads(answers["request_then_gone"][0])["ok"], answers
    # the sessions those two borrowed (the kept one, then a new one) were closed, never lent again
    assert not settled_sessions(cluster.lab, 0) & before
    changed_run(cluster)
    assert len(settled_sessions(cluster.lab, 1)) == 1


def test_only_root_may_borrow(kept):
    cluster, _keeper = kept
    denied = cluster.lab.exec("node1", ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(cs.PYTHON),
                                        "-c", "import socket; socket.socket(socket.AF_UNIX).connect(%r)" % SOCKET],
                              check=False)
    assert denied.returncode != 0 and "PermissionError" in denied.stderr, denied.stderr
    mode = cluster.lab.exec("node1", ["stat", "-c", "%a", os.path.dirname(SOCKET), SOCKET]).stdout.split()
    assert mode == ["700", "600"], mode


def test_runs_go_on_their_own_when_the_keeper_is_killed(kept):
    cluster, keeper = kept
    changed_run(cluster)
    keeper.kill()  # kill -9: its socket file stays behind, nobody answers on it
    assert not settled_sessions(cluster.lab, 0), "the keeper's connection went with it"
    result = changed_run(cluster)
    assert not settled_sessions(cluster.lab, 0), "a run on its own ends its session when it ends (%s)" % result["start"]
    keeper.start()  # replaces the stale socket
    changed_run(cluster)
    kept_one = settled_sessions(cluster.lab, 1)
    changed_run(cluster)
    assert sessions(cluster.lab) == kept_one and len(kept_one) == 1


def test_a_cut_link_under_a_kept_session_fails_the_run_fast_and_heals(kept):
    cluster, _keeper = kept
    changed_run(cluster)
    assert len(settled_sessions(cluster.lab, 1)) == 1
    cs.write_random(cluster.lab, "node1", VOLUME, "a.bin", 1, offset_mb=5)
    cluster.lab.partition("node2")
    try:
        began = time.monotonic()
        cut = cluster.run(JOB)
        took = time.monotonic() - began
    finally:
        cluster.lab.heal("node2")
    assert not cut["ok"] and "unreachable" in cut["error"], cut["error"]
    assert took < 60, "the keeper's liveness probe ends the call in about 20 s, not the operation's 600 s (%.0f s)" % took
    changed_run(cluster)  # on a new connection: the keeper dropped the one whose link went down


def test_a_link_cut_under_a_stream_in_the_kept_session_fails_the_run_fast_and_heals(kept):
    """The keeper's write of a stream's chunks to a link gone down would wait for ever: its watch finds the link down
    and closes the connection, the run ends as unreachable within a minute, the target's receive ends itself at
    its stall deadline, and once the link is back the next run works on a new connection."""
    cluster, _keeper = kept
    changed_run(cluster)
    job = cluster.cfg.jobs[JOB]
    cluster.cfg.jobs[JOB] = dataclasses.replace(job, rate=1)  # 6 MiB: 6 s in the session's chunks
    cluster.push()
    settings = cluster.lab.private_path("node2", "/etc/storage-replication") / "runner.json"
    settings.write_text(json.dumps({"receive_stall_seconds": STALL_SECONDS}) + "\n")
    cs.write_random(cluster.lab, "node1", VOLUME, "a.bin", 6, offset_mb=2)
    runner = subprocess.Popen(cluster.lab.exec_argv("node1", [
        "env", "PYTHONPATH=" + cs.PYTHONPATH, str(cs.PYTHON), "-m",
        "ansible_collections.storage.replication.plugins.module_utils.replicate", JOB]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_mid_stream(cluster.lab, "node2", cs.dataset(VOLUME))
        cluster.lab.partition("node2")
        began = time.monotonic()
        out, err = runner.communicate(timeout=120)
        took = time.monotonic() - began
        wait_until(lambda: not receives_into(cluster.lab, "node2", cs.dataset(VOLUME)), STALL_SECONDS + 30,
                   "node2's receive to end itself", 0.2, error=AssertionError)
    finally:
        cluster.lab.heal("node2")
        cluster.cfg.jobs[JOB] = job
        cluster.push()
        settings.unlink(missing_ok=True)  # (the push above may have replaced the directory's files)
    result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err}
    assert result.get("ok") is False and "is unreachable" in result["error"], result
    assert took < 60, "the keeper's watch ends the stream in about 20 s (%.0f s)" % took
    changed_run(cluster)  # on a new connection: the keeper dropped the one whose link went down
