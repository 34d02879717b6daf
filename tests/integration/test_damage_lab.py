# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Issue 13, points 4 and 5, on the lab: unreadable state or configuration is never taken as empty.

4. A garbage state file: `status` says so in one line; the runner keeps the file aside, rebuilds the state from the
   replication snapshots and the next run is incremental.
5. A garbage replication.cfg: list, status and changes refuse in one line and push nothing to the peers; the runner
   restores the configuration from a majority of the peers (and refuses while it cannot).
And a runner killed mid-job shows the job as interrupted, not OK.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import cluster_setup as cs
import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as configmod

pytestmark = pytest.mark.lab

STATE_FILE = "/var/lib/storage-replication/replication-state.json"
JOBS_FILE = "/etc/storage-replication/replication.cfg"
METRICS = "/var/lib/prometheus/node-exporter/storage-replication.prom"  # the runner's default
JOBS = {"100-0": "node2", "100-1": "node3", "300-0": "node2"}
MIB = 1024 * 1024


def sr(lab, node, *argv, check=True, timeout=180):
    proc = lab.exec(node, [cs.LAUNCHER] + list(argv), check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError("%s on %s failed (%d): %s%s" % (argv, node, proc.returncode, proc.stdout, proc.stderr))
    return proc


def one_line_error(proc):
    """The failure is one line on stderr, no traceback, exit code 1; returns the line."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr)
    return lines[0]


def printf_into(lab, node, path, text):
    """`printf <text> > <path>` on the node, as in the issue (through the symlinks, as a shell redirect goes)."""
    lab.exec(node, ["sh", "-c", 'printf "$1" > "$2"', "sh", text, path])


def confdir(lab, node):
    return str(lab.private_path(node, "/etc/storage-replication"))


def peer_configs(lab):
    """{peer: (generation, replication.cfg, cluster.json)} of node2 and node3, read as the nodes read them."""
    found = {}
    for node in ("node2", "node3"):
        cfg = configmod.load(confdir(lab, node))
        found[node] = (cfg.generation, cfg.content()[configmod.JOBS_FILE], cfg.content()[configmod.MODEL_FILE])
    return found


def generations(lab, node):
    return sorted(os.listdir(os.path.join(confdir(lab, node), configmod.GENERATIONS_DIR)))


def state_of(lab, job_id):
    guest = job_id.split("-")[0]
    return cs.local_state(lab, "node1").get(guest, {}).get("local/" + JOBS[job_id], {})


@pytest.fixture(scope="module", name="cluster")
def cluster_fixture(module_lab):
    lab = module_lab
    keys = {node: cs.install_node(lab, node) for node in lab.nodes}
    for node in lab.nodes:
        cs.trust_peers(lab, node, keys)
    cfg = cs.base_config(lab)
    for guest in (100, 300):
        cfg.guests[guest] = configmod.Guest(guest, "vm", "node1", ["%s:vm-%d-disk-0" % (cs.STORAGE, guest)])
        cs.create_volume(lab, "node1", "vm-%d-disk-0" % guest)
        cs.write_random(lab, "node1", "vm-%d-disk-0" % guest, "data", 8)
    for job_id, target in JOBS.items():
        cfg.jobs[job_id] = configmod.Job(job_id, target, source="node1")
    cs.write_config(lab, cfg)
    sr(lab, "node1", "run")  # the initial (full) syncs
    assert all(state_of(lab, j).get("last_sync") and not state_of(lab, j).get("fail_count") for j in JOBS)
    yield lab
    for node in lab.nodes:
        lab.heal(node)


def test_point_4_a_garbage_state_file_is_rebuilt_and_the_next_run_is_incremental(cluster):
    lab = cluster
    before = {j: state_of(lab, j)["last_sync"] for j in JOBS}
    cs.write_random(lab, "node1", "vm-100-disk-0", "more", 1)
    printf_into(lab, "node1", STATE_FILE, "garbage")

    line = one_line_error(sr(lab, "node1", "status", check=False))
    assert line.startswith("storage-replication: error: state file %s is not valid JSON" % STATE_FILE)
    assert "the runner keeps it aside and rebuilds it from the replication snapshots at its next run" in line
    as_json = sr(lab, "node1", "status", "--output-format", "json", check=False)
    assert json.loads(as_json.stdout) == {"node": "node1", "config_readable": True, "state_readable": False,
                                          "error": line.split("error: ", 1)[1]}

    run = sr(lab, "node1", "run", "--id", "100-0")
    assert re.search(r"warning: state file %s is not valid JSON \(.*\); it is kept as %s\.corrupt-\d{8}T\d{6} and the "
                     r"state was rebuilt from the replication snapshots on this node \(100-0: last sync %d "
                     % (STATE_FILE, STATE_FILE, before["100-0"]), run.stderr), run.stderr
    sent = int(re.match(r"100-0: OK \((\d+) bytes", run.stdout).group(1))
    assert sent < 3 * MIB  # the 1 MiB written since, not the 9 MiB of the volume
    log = cs.run_log(lab, "node1", "100-0")
    assert "incremental sync 'local-zfs:vm-100-disk-0' (__replicate_100-0_%d__ =>" % before["100-0"] in log
    assert "full sync" not in log

    statedir = lab.private_path("node1", "/var/lib/storage-replication")
    kept = [p for p in statedir.iterdir() if p.name.startswith("replication-state.json.corrupt-")]
    assert len(kept) == 1 and kept[0].read_text() == "garbage"
    assert {j: state_of(lab, j)["last_sync"] for j in ("100-1", "300-0")} == {j: before[j] for j in ("100-1", "300-0")}
    assert state_of(lab, "100-0")["last_sync"] > before["100-0"]
    status = json.loads(sr(lab, "node1", "status", "--output-format", "json").stdout)
    assert {j["id"]: j["state"] for j in status} == {j: "OK" for j in JOBS}

    # The metrics file stays inside the node (it used to land on the host): what the node sees at the default path
    # is its private file. (The host's own path may hold files of other engineers' older labs: not asserted.)
    metrics = (lab.private_path("node1", "/var/lib/prometheus") / "node-exporter/storage-replication.prom").read_text()
    assert 'storage_replication_state_readable{node="node1"} 1' in metrics.splitlines()
    assert lab.exec("node1", ["findmnt", "-n", "-o", "TARGET", "/var/lib/prometheus"]).stdout.strip() == "/var/lib/prometheus"
    assert lab.exec("node1", ["cat", METRICS]).stdout == metrics


def test_point_5_a_garbage_replication_cfg_is_refused_never_pushed_and_restored_from_the_peers(cluster):
    lab = cluster
    peers_before = peer_configs(lab)
    generation = peers_before["node2"][0]
    state_before = cs.local_state(lab, "node1")
    printf_into(lab, "node1", JOBS_FILE, "garbage\\n")
    local_before = generations(lab, "node1")

    damaged = ("/etc/storage-replication/generations/%d/replication.cfg does not match the sha256 recorded in "
               "SHA256SUMS when it was written" % generation)
    for argv in (["list"], ["status"], ["create-local-job", "100-2", "node2", "--disable"]):
        line = one_line_error(sr(lab, "node1", *argv, check=False))
        assert line == ("storage-replication: error: the cluster configuration of this node cannot be read: %s - "
                        "nothing acts on it; restore it from the peers with 'storage-replication restore-config' (the "
                        "runner tries this itself)" % damaged), (argv, line)
    as_json = json.loads(sr(lab, "node1", "status", "--output-format", "json", check=False).stdout)
    assert as_json["config_readable"] is False and damaged in as_json["error"]
    assert peer_configs(lab) == peers_before and generations(lab, "node1") == local_before  # nothing pushed, nothing written

    # Without a majority of the peers the runner refuses (and drops no state).
    lab.partition("node2")
    try:
        refused = one_line_error(sr(lab, "node1", "run", check=False))
    finally:
        lab.heal("node2")
    assert "restoring it from the peers failed: 1 of 2 peers answered with a readable configuration" in refused
    assert damaged in refused and "node 'node2': unreachable" in refused
    assert cs.local_state(lab, "node1") == state_before
    metrics = (lab.private_path("node1", "/var/lib/prometheus") / "node-exporter/storage-replication.prom").read_text()
    assert 'storage_replication_config_readable{node="node1"} 0' in metrics.splitlines()
    assert peer_configs(lab) == peers_before

    # With them, it restores the configuration and acts on it.
    run = sr(lab, "node1", "run")
    match = re.search(r"warning: restored cluster configuration generation (\d+) from node '(node[23])', the corrupt "
                      r"copy is kept as (\S+)", run.stderr)
    assert match and int(match.group(1)) == generation, run.stderr
    kept = match.group(3)
    assert kept.startswith("/etc/storage-replication/generations/%d.corrupt-" % generation)
    assert kept.endswith("/replication.cfg")
    assert lab.exec("node1", ["cat", kept]).stdout == "garbage\n"
    restored = configmod.load(confdir(lab, "node1"))
    assert (restored.generation, restored.content()[configmod.JOBS_FILE]) == peers_before["node2"][:2]
    assert sorted(restored.jobs) == sorted(JOBS)
    assert set(cs.local_state(lab, "node1")) == {"100", "300"}  # the jobs' state was kept
    assert peer_configs(lab) == peers_before

    # The operator's way, for a damaged cluster.json this time.
    printf_into(lab, "node1", "/etc/storage-replication/cluster.json", '{"generation": ')
    cli = sr(lab, "node1", "restore-config")
    assert cli.stdout.startswith("restored cluster configuration generation %d from node 'node" % generation)
    assert sr(lab, "node1", "list").stdout.count("local/") == len(JOBS)

    # A generation written before the digest existed: the parser's warning is the sign.
    lab.exec("node1", ["rm", "/etc/storage-replication/current/SHA256SUMS"])
    assert sr(lab, "node1", "list").stdout.count("local/") == len(JOBS)
    printf_into(lab, "node1", JOBS_FILE, "garbage\\n")
    line = one_line_error(sr(lab, "node1", "list", check=False))
    assert "/etc/storage-replication/generations/%d/replication.cfg line 1 - ignore config line: garbage - nothing acts " \
           "on it" % generation in line
    sr(lab, "node1", "restore-config")
    assert peer_configs(lab) == peers_before


def test_a_runner_killed_mid_job_shows_the_job_interrupted(cluster):
    lab = cluster
    sr(lab, "node1", "update", "300-0", "--rate", "1")
    cs.write_random(lab, "node1", "vm-300-disk-0", "big", 16)
    runner = subprocess.Popen(lab.exec_argv("node1", [cs.LAUNCHER, "run", "--id", "300-0"]),  # pylint: disable=consider-using-with
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "pid" not in state_of(lab, "300-0") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "pid" in state_of(lab, "300-0")
        time.sleep(2)  # into the transfer
        assert runner.poll() is None
    finally:
        os.killpg(runner.pid, signal.SIGKILL)  # the runner and its transfer, as systemd stops the service
        runner.wait()

    status = json.loads(sr(lab, "node1", "status", "--output-format", "json").stdout)
    job = next(j for j in status if j["id"] == "300-0")
    assert job["status"] == "interrupted" and job["state"].startswith("interrupted: the run started ")
    text = sr(lab, "node1", "status", "--guest", "300").stdout
    assert "interrupted: the run started" in text and " OK" not in text

    # The next run starts over and clears the mark, whatever the leftovers of the killed transfer make of it.
    sr(lab, "node1", "update", "300-0", "--delete", "rate")
    sr(lab, "node1", "run", "--id", "300-0", check=False, timeout=300)
    assert json.loads(sr(lab, "node1", "status", "--guest", "300", "--output-format", "json").stdout)[0]["status"] != "interrupted"
