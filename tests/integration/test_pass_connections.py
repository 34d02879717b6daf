# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A runner pass shares its control connections among its jobs (issue 19, channels.py), on real nodes.

Node2's launcher notes every start of `serve` with the SSH command that started it: each control connection starts
one `session` process there, so the notes count the connections for real.  A pass of many guests to node2 opens at
most max_parallel of them, the peer check's among them (for a pass and for `run <id>`), says so in its result, and
every replica holds its source's data.  When the target's session process is killed between two jobs of a pass,
the next job does not fail for it: the pool finds the connection dead and opens a new one.  When the link to the target is cut between two
jobs, the jobs after it fail in seconds as waiting for their target, and the next pass catches up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import cluster_setup as cs
import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils.transport import LIVENESS_SECONDS

pytestmark = pytest.mark.lab

MANY = tuple(range(760, 772))  # twelve guests: three times max_parallel
PAUSED = (780, 781, 782)  # run one after another (max_parallel 1); 781's status hook waits for the test
STARTS = "/var/log/storage-replication/serve-starts.log"
RUNNER_SETTINGS = "/etc/storage-replication/runner.json"
READY, GO = "/tmp/pass-paused", "/tmp/pass-go"
# A status hook (it says "running") that tells the test the job began, then waits until the test lets it go on.
PAUSE_HOOK = ["/bin/sh", "-c", "touch %s; i=0; while [ ! -e %s ] && [ $i -lt 500 ]; do sleep 0.1; i=$((i + 1)); done"
              % (READY, GO)]


def counting_launcher():
    """The launcher, noting each start (its pid and SSH command) before it runs the engine."""
    first, rest = cs.launcher_text().split("\n", 1)
    return "%s\necho \"$$ ${SSH_ORIGINAL_COMMAND:-}\" >> %s\n%s" % (first, STARTS, rest)


def write_on(lab, node, path, text):
    lab.exec(node, ["sh", "-c", 'cat > "$1"', "sh", path], input=text)


@pytest.fixture(scope="module", name="cluster")
def cluster_fixture(lab):
    """Guests MANY and PAUSED on node1, each with one small filesystem and a job to node2 whose schedule is hours
    away (a job runs when the test makes it due)."""
    cfg = cs.setup(lab)
    cs.install_node(lab, "node2", launcher=counting_launcher())
    later = time.localtime(time.time() + 4 * 3600)
    for guest in MANY + PAUSED:
        name = "vm-%d-disk-0" % guest
        for node in lab.nodes:
            cs.destroy(lab, node, cs.dataset(name))
        cs.create_volume(lab, "node1", name)
        cs.write_random(lab, "node1", name, "base.bin", 1)
        hooks = {"status": PAUSE_HOOK} if guest == PAUSED[1] else {}
        cfg.guests[guest] = configmod.Guest(id=guest, type="vm", node="node1", hooks=hooks,
                                            volumes=["%s:%s" % (cs.STORAGE, name)])
        cfg.jobs["%d-0" % guest] = configmod.Job(id="%d-0" % guest, target="node2",
                                                 schedule="%d:%02d" % (later.tm_hour, later.tm_min))
    cfg.generation += 1
    cs.write_config(lab, cfg)
    yield lab
    cs.install_node(lab, "node2")  # the plain launcher again
    for guest in MANY + PAUSED:
        for node in lab.nodes:
            cs.destroy(lab, node, cs.dataset("vm-%d-disk-0" % guest))


def settings(lab, **values):
    write_on(lab, "node1", RUNNER_SETTINGS, json.dumps(dict(values, metrics_file="/var/lib/storage-replication/metrics.prom")))


def make_due(lab, guests):
    for guest in guests:
        cs.sr(lab, "node1", "schedule-now", "%d-0" % guest)


def session_starts(lab):
    """The pids of the `session` processes started on node2 since the notes were last cleared."""
    path = lab.private_path("node2", "/var/log/storage-replication") / os.path.basename(STARTS)
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split()[0] for line in lines if line.split()[1:] == ["session"]]


def clear_starts(lab):
    lab.exec("node2", ["rm", "-f", STARTS])


def run_pass(lab):
    proc = cs.sr(lab, "node1", "run", "--output-format", "json", timeout=600)
    return json.loads(proc.stdout)


def assert_replicas(lab, guests):
    """Each replica on node2 holds exactly its source's data, and its newest snapshot is the source's newest
    replication snapshot (same name, same guid)."""
    names = ["vm-%d-disk-0" % guest for guest in guests]
    datasets = [cs.dataset(name) for name in names]
    assert cs.tree_checksums(lab, "node2", datasets) == cs.tree_checksums(lab, "node1", datasets)
    for name in names:
        source, target = cs.snapshots(lab, "node1", name), cs.snapshots(lab, "node2", name)
        newest = [snap for snap in target if snap.startswith("__replicate_")][-1]
        assert source[newest] == target[newest], name


def test_a_pass_of_many_guests_opens_at_most_max_parallel_connections_to_its_target(cluster):
    """The first pass makes every guest's full copy (new jobs are due at once), the second an incremental of a small
    change in each of MANY."""
    lab = cluster
    settings(lab)  # max_parallel: its default, 4
    (lab.private_path("node1", "/tmp") / os.path.basename(GO)).touch()  # 781-0's hook does not wait in this test
    for guests, mode in ((MANY + PAUSED, "full"), (MANY, "incremental")):
        if mode == "incremental":
            for guest in guests:
                cs.write_random(lab, "node1", "vm-%d-disk-0" % guest, "change.bin", 1)
            make_due(lab, guests)
        clear_starts(lab)
        result = run_pass(lab)
        assert sorted(j["job"] for j in result["jobs"]) == ["%d-0" % g for g in guests]
        assert all(j["ok"] for j in result["jobs"]), result["warnings"]
        assert {v["mode"] for j in result["jobs"] for v in j["volumes"]} == {mode}
        opened = result["connections"]["node2"]
        # one session per connection: at most four (as many as jobs ran at once), the peer check's the first of them
        assert 1 <= opened <= 4 and len(session_starts(lab)) == opened, (result["connections"], session_starts(lab))
        assert_replicas(lab, guests)


def test_a_single_run_uses_the_connection_of_its_peer_check(cluster):
    """`run <id>` asks the peers for their generation first; its job goes over that same connection."""
    lab = cluster
    settings(lab)
    cs.write_random(lab, "node1", "vm-%d-disk-0" % MANY[0], "single.bin", 1)
    clear_starts(lab)
    proc = cs.sr(lab, "node1", "run", "--id", "%d-0" % MANY[0], "--output-format", "json", timeout=300)
    result = json.loads(proc.stdout)
    assert [(j["job"], j["ok"]) for j in result["jobs"]] == [("%d-0" % MANY[0], True)], result["warnings"]
    # one connection to node2 for the peer check and the job (and one to node3, the other peer asked)
    assert result["connections"] == {"node2": 1, "node3": 1} and len(session_starts(lab)) == 1, session_starts(lab)
    assert_replicas(lab, MANY[:1])


def pass_with_781_paused(lab, at_pause):
    """A pass of the PAUSED guests' jobs, made due (settings: one job at a time): once 781-0 has begun, with 780-0's
    connection idle in the pool, ``at_pause()`` runs, then 781-0 goes on.  Returns (exit code, result, stderr,
    seconds from the end of ``at_pause`` to the end of the pass)."""
    tmp = lab.private_path("node1", "/tmp")
    for marker in (READY, GO):
        (tmp / os.path.basename(marker)).unlink(missing_ok=True)
    make_due(lab, PAUSED)
    runner = subprocess.Popen(lab.exec_argv("node1", [cs.LAUNCHER, "run", "--output-format", "json"]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp / os.path.basename(READY)).exists():
            assert time.monotonic() < deadline and runner.poll() is None, "781-0 never began"
            time.sleep(0.1)
        at_pause()
        paused = time.monotonic()
        (tmp / os.path.basename(GO)).touch()
        out, err = runner.communicate(timeout=300)
    finally:
        if runner.poll() is None:
            runner.kill()
    return runner.returncode, json.loads(out), err, time.monotonic() - paused


def test_a_session_killed_between_two_jobs_of_a_pass_is_replaced(cluster):
    """The kill -9 comes after job 780-0 gave its connection back, before 781-0 borrows it: 781-0 and 782-0 must
    succeed, over one new connection."""
    lab = cluster
    settings(lab, max_parallel=1)
    clear_starts(lab)

    def kill_the_idle_session():
        sessions = [pid for pid, argv in lab.processes("node2").items()
                    if "serve" in argv and argv[argv.index("serve") + 1:][:2] == ["--peer", "node1"]]
        assert len(sessions) == 1, lab.processes("node2")  # 780-0's, idle in the pool
        os.kill(sessions[0], signal.SIGKILL)
    code, result, err, _seconds = pass_with_781_paused(lab, kill_the_idle_session)
    assert code == 0, err
    assert [(j["job"], j["ok"]) for j in result["jobs"]] == [("%d-0" % g, True) for g in PAUSED], result["warnings"]
    # the peer check's connection (780-0 used it), then one new one for 781-0 and 782-0
    assert result["connections"]["node2"] == 2 and len(session_starts(lab)) == 2
    assert_replicas(lab, PAUSED)


def test_a_link_cut_in_the_middle_of_a_pass_fails_the_jobs_after_it_as_waiting_for_their_target(cluster):
    """Node2's link goes down after 780-0 gave its connection back to the pool, before 781-0 borrows it: the pass
    ends in seconds, not at a call's timeout; 780-0 succeeded, 781-0 and 782-0 failed as waiting for their target
    (782-0 without trying: the pass had found node2 unreachable), their replicas untouched; once the link is back
    the next pass brings every replica up to date."""
    lab = cluster
    settings(lab, max_parallel=1)
    (lab.private_path("node1", "/tmp") / os.path.basename(GO)).touch()
    make_due(lab, PAUSED)
    assert all(j["ok"] for j in run_pass(lab)["jobs"])  # every replica up to date before the cut
    for guest in PAUSED:
        cs.write_random(lab, "node1", "vm-%d-disk-0" % guest, "cut.bin", 1)
    kept = cs.tree_checksums(lab, "node2", [cs.dataset("vm-%d-disk-0" % g) for g in PAUSED[1:]])
    try:
        _code, result, err, ended = pass_with_781_paused(lab, lambda: lab.partition("node2"))
    finally:
        lab.heal("node2")
    assert [(j["job"], j["ok"]) for j in result["jobs"]] == [("780-0", True), ("781-0", False), ("782-0", False)], err
    # 781-0's call ends within two liveness periods (no answer, then no answer to a keep-alive); 782-0 does not try
    # a target this pass found unreachable (a call may last 600 s, a connect 10)
    assert ended < 2 * LIVENESS_SECONDS + 15, ended
    assert "an earlier job of this pass could not reach it" in result["jobs"][2]["error"]
    states = cs.local_state(lab, "node1")
    for guest in PAUSED[1:]:
        failed = [j for j in result["jobs"] if j["job"] == "%d-0" % guest][0]
        assert "unreachable" in failed["error"], failed["error"]
        assert states[str(guest)]["local/node2"]["waiting_for_target"] is True
    assert cs.tree_checksums(lab, "node2", list(kept)) == kept  # what node2 held of 781 and 782: as it was
    assert_replicas(lab, PAUSED[:1])

    make_due(lab, PAUSED)
    again = run_pass(lab)
    assert all(j["ok"] for j in again["jobs"]) and len(again["jobs"]) == len(PAUSED), again["warnings"]
    assert_replicas(lab, PAUSED)
