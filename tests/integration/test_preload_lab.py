# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The preloaded engine (preload.py, issue 19) on the lab: `storage-replication preload` in node1 and node2, the
lab's launcher handing `run` (node1) and the peers' `serve` logins (node2, sshd's forced command) to it.  Replicas
stay equal to their sources, a caller killed -9 takes its run with it and the next run syncs, and a preload killed
-9 (its socket left behind) changes nothing but the speed.  The preload's own edge cases (signals, refusals, an
engine changed on disk, garbage on its socket) are tests/unit/plugins/module_utils/test_preload.py."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

import cluster_setup as cs
from lab._system import wait_until
from ansible_collections.storage.replication.plugins.module_utils.protocol import SESSION_STREAM_MAX
from test_link_cut import wait_mid_stream
from test_replicate import Cluster

pytestmark = pytest.mark.lab

GUEST = 575
JOB = "575-0"
VOLUME = "vm-575-disk-0"
BIG_MB = SESSION_STREAM_MAX // (1 << 20) + 4  # a stream that goes over OpenSSH: a `serve` login of its own on node2


class Preload:
    """`storage-replication preload` in one node, started and stopped by the tests."""

    def __init__(self, lab, node):
        self.lab = lab
        self.node = node
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.lab.exec_argv(self.node, [cs.LAUNCHER, "preload"]), stdout=subprocess.PIPE,  # pylint: disable=consider-using-with
                                     stderr=subprocess.STDOUT, text=True)
        assert "preloaded at %s" % cs.PRELOAD_SOCKET in self.proc.stdout.readline()

    def stop(self):
        """SIGTERM; how many commands it started."""
        self.proc.terminate()
        out, _err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, out
        return int(out.split("stopped: ")[1].split()[0])

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=30)

    def commands(self):
        """The PIDs of the commands it runs now: its forked children, which carry its command line."""
        found = self.lab.processes(self.node)
        ours = {pid for pid, argv in found.items() if "preload" in argv and "-m" in argv}
        return {pid for pid in ours if _parent(pid) in ours}


def _parent(pid):
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="module")
def preloaded(module_lab):
    cluster = Cluster(module_lab)
    cluster.one_volume_guest(GUEST, BIG_MB)
    preloads = {node: Preload(module_lab, node) for node in ("node1", "node2")}
    for preload in preloads.values():
        preload.start()
    try:
        yield cluster, preloads
    finally:
        for preload in preloads.values():
            if preload.proc.poll() is None:
                preload.proc.terminate()
                preload.proc.wait(timeout=30)


def test_runs_and_peer_logins_start_preloaded_and_replicas_equal_their_sources(preloaded):
    cluster, preloads = preloaded
    cs.sr(cluster.lab, "node1", "run", "--id", JOB)  # the first sync: a full stream over OpenSSH
    cluster.assert_replica("node2", VOLUME)
    cs.write_random(cluster.lab, "node1", VOLUME, "a.bin", 1, offset_mb=2)
    result = cs.sr(cluster.lab, "node1", "run", "--id", JOB)  # an incremental, in the run's session
    assert "%s: OK" % JOB in result.stdout, result.stdout
    cluster.assert_replica("node2", VOLUME)
    status = cs.sr(cluster.lab, "node1", "status", "--output-format", "json")  # not preloaded: started on its own
    assert JOB in status.stdout
    started = {node: preload.stop() for node, preload in preloads.items()}
    for preload in preloads.values():
        preload.start()
    assert started["node1"] == 2, "the two runs started preloaded in node1 (status on its own): %s" % started
    # node2: each run's control session and the full stream's own login (and node1's peer checks)
    assert started["node2"] >= 3, started
    log = cs.run_log(cluster.lab, "node1", JOB)
    assert "incremental sync" in log


def test_a_caller_killed_9_takes_its_run_with_it_and_the_next_run_syncs(preloaded):
    cluster, preloads = preloaded
    cluster.job(JOB, "node2", rate=1)  # 1 MB/s: the stream is still going when the caller is killed
    cluster.push()
    cs.write_random(cluster.lab, "node1", VOLUME, "a.bin", 4, offset_mb=3)
    caller = subprocess.Popen(cluster.lab.exec_argv("node1", [cs.LAUNCHER, "run", "--id", JOB]),  # pylint: disable=consider-using-with
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_mid_stream(cluster.lab, "node2", "%s/%s" % (cs.POOL, VOLUME))
        running = preloads["node1"].commands()
        assert len(running) == 1, "the run is the preload's child: %s" % running
        client = [pid for pid, argv in cluster.lab.processes("node1").items()
                  if any(word.endswith("preload_client.py") for word in argv) and "run" in argv]
        assert len(client) == 1, cluster.lab.processes("node1")
        os.kill(client[0], signal.SIGKILL)
        wait_until(lambda: not preloads["node1"].commands(), 15, "the run to end with its caller", error=AssertionError)
    finally:
        caller.kill()
        caller.wait(timeout=30)
    cluster.job(JOB, "node2")
    cluster.push()
    result = cs.sr(cluster.lab, "node1", "run", "--id", JOB, timeout=300)
    assert "%s: OK" % JOB in result.stdout, result.stdout
    cluster.assert_replica("node2", VOLUME)


def test_a_preload_killed_9_leaves_its_socket_and_commands_start_on_their_own(preloaded):
    cluster, preloads = preloaded
    preloads["node2"].kill()
    preloads["node1"].kill()
    assert cluster.lab.exec("node1", ["test", "-S", cs.PRELOAD_SOCKET], check=False).returncode == 0, \
        "kill -9 leaves the socket file: callers find nobody on it"
    cs.write_random(cluster.lab, "node1", VOLUME, "a.bin", 1, offset_mb=5)
    result = cs.sr(cluster.lab, "node1", "run", "--id", JOB)
    assert "%s: OK" % JOB in result.stdout, result.stdout
    cluster.assert_replica("node2", VOLUME)
    for preload in preloads.values():
        preload.start()  # a stale socket is replaced
    cs.write_random(cluster.lab, "node1", VOLUME, "a.bin", 1, offset_mb=6)
    cs.sr(cluster.lab, "node1", "run", "--id", JOB)
    cluster.assert_replica("node2", VOLUME)
    assert preloads["node1"].stop() == 1
    preloads["node1"].start()
