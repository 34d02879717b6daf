# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One cluster configuration, never two (issue 14), for real on the lab: the CLI on the nodes, their sshd, their
acceptors.  A minority side of a partition changes nothing, even with --allow-unreachable; concurrent changes on
two nodes both commit, one rebuilt on the other; and a bounded randomized run (writers on every node while nodes
are cut off and healed) ends with every node on one version and every acknowledged change in it."""

from __future__ import annotations

import os
import random
import re
import threading
import time

import pytest

import cluster_setup as cs
from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import quorum
from test_cli import assert_same_everywhere, node_config, sr

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module", name="lab3")
def lab3_fixture(module_lab):
    """A lab of this module's own (it cuts nodes off), guests 100..109 owned by node1."""
    cfg = cs.setup(module_lab)
    for guest in range(100, 110):
        cfg.guests[guest] = configmod.Guest(guest, "vm", "node1", ["%s:vm-%d-disk-0" % (cs.STORAGE, guest)])
    cs.write_config(module_lab, cfg)
    yield module_lab
    for node in module_lab.nodes:
        module_lab.heal(node)


def versions(lab):
    """{node: quorum.Version} of every node's committed configuration."""
    return {node: quorum.Version.of(cfg.generation, cfg.content())
            for node, cfg in ((n, node_config(lab, n)) for n in lab.nodes)}


GENERATION_RE = re.compile(r"generation (\d+) is on")


def history(lab, node):
    """{generation: config} of the generations a node keeps (the last five): what it held under each version."""
    root = lab.private_path(node, "/etc/storage-replication") / configmod.GENERATIONS_DIR
    found = {}
    for name in os.listdir(root):
        if name.isdigit():
            cfg = configmod.from_files((root / name / configmod.MODEL_FILE).read_text(encoding="utf-8"),
                                       (root / name / configmod.JOBS_FILE).read_text(encoding="utf-8"))
            found[int(name)] = cfg
    return found


def test_the_minority_side_of_a_partition_changes_nothing(lab3):
    """Issue 14 point 2: node3 cut off; its --allow-unreachable change is refused for want of a majority, node1's
    commits; after healing node3 adopts it, and no generation ever named two contents."""
    lab = lab3
    generation = assert_same_everywhere(lab)[0]
    lab.partition("node3")
    try:
        refused = sr(lab, "node3", "create-local-job", "100-0", "node2", "--comment", "minority", "--disable",
                     "--allow-unreachable", check=False)
        assert refused.returncode != 0 and "no quorum: 1 of 3 nodes answered (need 2)" in refused.stdout + refused.stderr
        assert node_config(lab, "node3").generation == generation
        sr(lab, "node1", "create-local-job", "101-0", "node2", "--comment", "majority", "--disable",
           "--allow-unreachable")
    finally:
        lab.heal("node3")
    assert node_config(lab, "node1").generation == generation + 1
    sr(lab, "node3", "run")  # the runner catches up before it acts
    gen, jobs, _model = assert_same_everywhere(lab)
    assert gen == generation + 1 and "majority" in jobs and "minority" not in jobs


def test_two_changes_at_once_on_two_nodes_both_commit(lab3):
    """Issue 14 point 3: two coordinators at once; one wins the generation, the other is rebuilt on it."""
    lab = lab3
    generation = assert_same_everywhere(lab)[0]
    results = {}

    def create(node, job, target):
        results[node] = sr(lab, node, "create-local-job", job, target, "--disable", check=False)
    threads = [threading.Thread(target=create, args=("node1", "102-0", "node2")),
               threading.Thread(target=create, args=("node2", "103-0", "node3"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.returncode == 0 for r in results.values()), "\n".join(n + ": " + r.stdout + r.stderr for n, r in results.items())
    gen, jobs, _model = assert_same_everywhere(lab)
    assert gen == generation + 2 and "102-0" in jobs and "103-0" in jobs


def test_randomized_writers_partitions_and_heals_converge_on_one_version(lab3):
    """A bounded Jepsen-style run: writers on every node add and remove job comments at random while nodes are cut
    off and healed; then every node converges on one version, every change the CLI acknowledged is in it, and no
    generation any node held names two contents.  Prints the seed, what was tried and what was injected."""
    lab = lab3
    seed = int(os.environ.get("SR_JEPSEN_SEED", time.time_ns() % 100000))
    seconds = float(os.environ.get("SR_JEPSEN_SECONDS", "60"))
    rng = random.Random(seed)
    sr(lab, "node1", "create-local-job", "109-0", "node2", "--disable")
    acknowledged, tried, refused, faults = [], 0, 0, []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def writer(node, index):
        nonlocal tried, refused
        local = random.Random(seed * 10 + index)
        count = 0
        while time.monotonic() < deadline:
            count += 1
            comment = "%s-%d" % (node, count)
            allow = ["--allow-unreachable"] if local.random() < 0.5 else []
            proc = sr(lab, node, "update", "109-0", "--comment", comment, *allow, check=False)
            with lock:
                tried += 1
                committed = GENERATION_RE.search(proc.stdout)
                if proc.returncode == 0 and committed:
                    acknowledged.append((comment, int(committed.group(1))))
                else:
                    refused += 1
            time.sleep(local.uniform(0, 0.5))

    def nemesis():
        while time.monotonic() < deadline - 5:
            victim = rng.choice(lab.nodes)
            lab.partition(victim)
            faults.append("partition %s" % victim)
            # longer than a peer's connect timeout (15 s) at times, so that a side really goes without its peers
            time.sleep(rng.uniform(2, 20))
            lab.heal(victim)
            faults.append("heal %s" % victim)
            time.sleep(rng.uniform(0.5, 2))

    threads = [threading.Thread(target=writer, args=(node, i)) for i, node in enumerate(lab.nodes)]
    threads.append(threading.Thread(target=nemesis))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for node in lab.nodes:
        lab.heal(node)
    for node in lab.nodes:
        sr(lab, node, "run")  # each runner catches up (and finishes a change a cut-off proposer left)
    print("jepsen seed %d: %d changes tried, %d acknowledged, %d refused; faults: %s"
          % (seed, tried, len(acknowledged), refused, ", ".join(faults) or "none"))
    final = versions(lab)
    assert len(set(final.values())) == 1, (seed, final)
    # Every acknowledged change committed a generation: each of those generations names one content on every node
    # that still keeps it, and the newest acknowledged comment is the one in force (later writes replace it).
    held = {}
    for node in lab.nodes:
        for generation, cfg in history(lab, node).items():
            held.setdefault(generation, {})[quorum.digest(cfg.content())] = cfg
    assert all(len(contents) == 1 for contents in held.values()), (seed, sorted(held))
    assert len({g for _c, g in acknowledged}) == len(acknowledged), (seed, acknowledged)  # one change, one generation
    for comment, generation in acknowledged:
        assert generation <= final["node1"].generation
        if generation in held:  # still kept somewhere: it is exactly the acknowledged change
            assert next(iter(held[generation].values())).jobs["109-0"].comment == comment, (seed, generation)
