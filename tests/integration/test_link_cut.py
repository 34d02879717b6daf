# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A link cut during a control call ends the call in seconds, as an unreachable target, not at its 600 s timeout
(issue 13), for real on the lab: node1's engine holds a control connection to node2, node2's link goes down, and
the next operation on that connection must fail within LIVENESS_SECONDS * 2 plus a margin."""

from __future__ import annotations

import fcntl
import json
import subprocess
import time

import pytest

import cluster_setup as cs
from lab._system import wait_until
from ansible_collections.storage.replication.plugins.module_utils.protocol import SESSION_STREAM_MAX
from ansible_collections.storage.replication.plugins.module_utils.transport import LIVENESS_SECONDS

pytestmark = pytest.mark.lab

# Inside node1: open one control connection to node2, answer "ready", wait for a line on stdin (the test cuts the
# link meanwhile), then time the next call on the same connection.
CALL_ACROSS_THE_CUT = """
import json, sys, time
from ansible_collections.storage.replication.plugins.module_utils import config
from ansible_collections.storage.replication.plugins.module_utils.transport import ControlChannel, TransportError
node = config.load().nodes["node2"]
channel = ControlChannel(node.name, node.address, node.host_key).connect()
print(json.dumps(channel.call("get-config", {"source": "node1", "generation": 0})["generation"]), flush=True)
sys.stdin.readline()
start = time.monotonic()
try:
    channel.call("get-config", {"source": "node1", "generation": 0}, timeout=600)
    outcome = {"ok": True}
except TransportError as exc:
    outcome = {"ok": False, "unreachable": exc.unreachable, "error": str(exc)}
outcome["seconds"] = time.monotonic() - start
print(json.dumps(outcome), flush=True)
"""


def test_a_control_call_across_a_cut_link_ends_in_seconds(module_lab):
    cs.setup(module_lab)
    argv = module_lab.exec_argv("node1", ["env", "PYTHONPATH=" + cs.PYTHONPATH, str(cs.PYTHON), "-c",
                                          CALL_ACROSS_THE_CUT])
    caller = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(caller.stdout.readline()) >= 1  # the connection works before the cut
        module_lab.partition("node2")
        caller.stdin.write("go\n")
        caller.stdin.flush()
        started = time.monotonic()
        out, err = caller.communicate(timeout=120)
    finally:
        module_lab.heal("node2")
        if caller.poll() is None:
            caller.kill()
    outcome = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err}
    assert outcome.get("ok") is False and outcome["unreachable"] is True, outcome
    assert "target node 'node2'" in outcome["error"] and "the link went down during 'get-config'" in outcome["error"]
    assert outcome["seconds"] <= 2 * LIVENESS_SECONDS + 5, outcome
    print("control call across a cut link ended after %.1f s (%.1f s wall)" % (outcome["seconds"],
                                                                               time.monotonic() - started))


STALL_SECONDS = 15


def receives_into(lab, node, dataset):
    """pids of the `zfs recv` processes of ``node`` that write into ``dataset``."""
    return [pid for pid, argv in lab.processes(node).items()
            if argv[:1] == ["zfs"] and argv[1:2] in (["recv"], ["receive"]) and argv[-1:] == [dataset]]


def received_bytes(lab, node):
    """The bytes ``node`` has received on its network interfaces so far (its /proc/net/dev, loopback left out)."""
    total = 0
    for line in lab.exec(node, ["cat", "/proc/net/dev"]).stdout.splitlines()[2:]:
        name, _sep, fields = line.partition(":")
        if name.strip() != "lo":
            total += int(fields.split()[0])
    return total


def wait_mid_stream(lab, node, dataset, timeout=60):
    """Return once a receive into ``dataset`` runs on ``node`` and a MiB more has reached the node since (the
    transfer is under way)."""
    wait_until(lambda: receives_into(lab, node, dataset), timeout, "a receive on %s" % node, 0.05,
               error=AssertionError)
    began = received_bytes(lab, node)
    wait_until(lambda: received_bytes(lab, node) - began >= 1 << 20, timeout,
               "a MiB of the stream to reach %s" % node, 0.05, error=AssertionError)


def receive_lock_free(lab, node, volume):
    """Whether no receiver process of ``node`` holds the receive lock of ``volume`` (receive_stream.receive_lock)."""
    path = lab.private_path(node, "/var/lib/storage-replication") / "lock" / ("receive-%s.lock" % volume)
    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


@pytest.mark.parametrize("guest, megabytes, rate", [(180, 40, 4), (181, 6, 1)], ids=["openssh", "session-chunks"])
def test_a_link_cut_mid_stream_makes_the_job_wait_for_its_target(module_lab, guest, megabytes, rate):
    """ssh's keep-alives notice the cut ("Timeout, server ... not responding"), or for a stream in the session's
    chunks the control connection's probes do: the job waits for its target (no back-off) instead of failing as an
    ordinary error.  On the target nothing notices: its connection never closes.  Its receive ends itself once no
    byte has come for receive_stall_seconds, with the link still down: no `zfs recv` is left behind and the partial
    first copy is gone.  Once the link is back the next run completes the replica."""
    from test_replicate import Cluster  # pylint: disable=import-outside-toplevel
    cluster = Cluster(module_lab)
    job = "%d-0" % guest
    name = cluster.one_volume_guest(guest, megabytes, rate=rate)
    # after the configuration is written (that replaces the directory's files)
    settings = module_lab.private_path("node2", "/etc/storage-replication") / "runner.json"
    settings.write_text(json.dumps({"receive_stall_seconds": STALL_SECONDS}) + "\n")
    argv = module_lab.exec_argv("node1", ["env", "PYTHONPATH=" + cs.PYTHONPATH, str(cs.PYTHON), "-m",
                                          "ansible_collections.storage.replication.plugins.module_utils.replicate",
                                          job])
    runner = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_mid_stream(module_lab, "node2", cs.dataset(name))
        assert receives_into(module_lab, "node2", cs.dataset(name)), "no receive running on node2 before the cut"
        module_lab.partition("node2")
        cut = time.monotonic()
        # nothing reaches node2 any more, nothing tells it so: its receive ends itself at its stall deadline
        volume = "%s:%s" % (cs.STORAGE, name)
        wait_until(lambda: not receives_into(module_lab, "node2", cs.dataset(name))
                   and receive_lock_free(module_lab, "node2", volume), STALL_SECONDS + 30,
                   "node2's receive to end itself", 0.2, error=AssertionError)
        ended = time.monotonic() - cut
        out, _err = runner.communicate(timeout=180)
        assert not cs.exists(module_lab, "node2", cs.dataset(name)), "the partial first copy is still on node2"
    finally:
        module_lab.heal("node2")
        settings.unlink()
    print("node2's receive ended itself %.1f s after the link went down (receive_stall_seconds %d)"
          % (ended, STALL_SECONDS))
    assert STALL_SECONDS - 1 <= ended <= STALL_SECONDS + 20
    result = json.loads(out.strip().splitlines()[-1])
    assert not result["ok"] and "target node 'node2'" in result["error"] and "is unreachable" in result["error"], result
    # which path carried it: the control connection's probes, or ssh's keep-alives
    assert ("the link went down during 'receive'" in result["error"]) == (megabytes * (1 << 20) < SESSION_STREAM_MAX)
    state = cs.local_state(module_lab, "node1")[str(guest)]["local/node2"]
    assert state["waiting_for_target"] is True and state["fail_count"] >= 1
    again = cluster.run(job)
    assert again["ok"], "\n".join(again["log"])
    cluster.assert_replica("node2", name)
