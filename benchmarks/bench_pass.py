# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A runner pass of many small guests against the raw `zfs send -i | ssh | zfs recv` loop (issue 19).

Brings up its own lab `srpass` ($SR_LAB_NAME if set; 2 nodes).  Node1 owns GUESTS guests (BENCH_GUESTS, default 200)
with one small filesystem each, replicated once to node2 by a runner pass beforehand; the raw loop's own copies on
node2 (rpool/raw/...) are made beforehand too, from snapshot `raw0`.  Then one small file is written into each
filesystem and the three contenders carry that change to node2:
  raw       `zfs send -i @raw0 @raw1 | ssh node2 zfs recv` per filesystem, one after another (OpenSSH defaults, as
            an operator would type it)
  raw 4x    the same loop four at a time (xargs -P 4)
  ours      one `storage-replication run` on node1 with all GUESTS jobs due (max_parallel: its default, 4)
The raw loops' snapshots (`raw1`) are taken before their timing starts, while our pass takes its own snapshots
within its time.  After each method every replica's file tree is checked by checksum against the source and its
newest snapshot's guid against the source's.  Prints a table and writes build/bench/bench_pass.json
(`cycle_200_ratio_vs_raw`: ours / raw, target <= 0.6).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "build" / "collections"), str(ROOT), str(ROOT / "tests" / "integration")]

import cluster_setup as cs  # noqa: E402  pylint: disable=wrong-import-position
from bench_replicate import raw_trust  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.storage.replication.plugins.module_utils import config as configmod  # noqa: E402
from lab import Lab  # noqa: E402

LAB_NAME = os.environ.get("SR_LAB_NAME", "srpass")
GUESTS = int(os.environ.get("BENCH_GUESTS", "200"))
FIRST = 2000  # guest IDs FIRST .. FIRST + GUESTS - 1
RAW = "rpool/raw"
TARGET = 0.6
OUT = ROOT / "build" / "bench" / "bench_pass.json"
SSH = ("ssh -i /root/.ssh/bench_raw -o BatchMode=yes -o StrictHostKeyChecking=yes "
       "-o UserKnownHostsFile=/var/lib/storage-replication/bench_known_hosts -o HostKeyAlias=node2 root@%s")


def names():
    return ["vm-%d-disk-0" % guest for guest in range(FIRST, FIRST + GUESTS)]


def shell(lab, node, script, timeout=1800):
    """One shell script inside the node (one process for hundreds of commands: set-up stays fast)."""
    return lab.exec(node, ["sh", "-ec", script], timeout=timeout)


def write_files(lab, filename, kib):
    """A file of ``kib`` KiB of random data in every guest's filesystem on node1."""
    shell(lab, "node1", "for v in %s; do head -c %dK /dev/urandom > /%s/$v/%s; done"
          % (" ".join(names()), kib, cs.POOL, filename))


def set_up(lab):
    """The guests, their jobs (a daily schedule hours away: due only when made so), the first replication by a pass,
    and the raw loop's own copies on node2 from snapshot raw0."""
    cfg = cs.setup(lab)
    shell(lab, "node1", "for v in %s; do zfs create -p %s/$v; done" % (" ".join(names()), cs.POOL))
    write_files(lab, "base.bin", 64)
    later = time.localtime(time.time() + 4 * 3600)
    for guest, name in zip(range(FIRST, FIRST + GUESTS), names()):
        cfg.guests[guest] = configmod.Guest(id=guest, type="vm", node="node1", volumes=["%s:%s" % (cs.STORAGE, name)])
        cfg.jobs["%d-0" % guest] = configmod.Job(id="%d-0" % guest, target="node2",
                                                 schedule="%d:%02d" % (later.tm_hour, later.tm_min))
    cfg.generation += 1
    cs.write_config(lab, cfg)
    lab.exec("node1", ["sh", "-c", "cat > /etc/storage-replication/runner.json"],
             input=json.dumps({"metrics_file": "/var/lib/storage-replication/metrics.prom"}))
    cs.zfs(lab, "node1", "snapshot", "-r", "%s@raw0" % cs.POOL)
    first = our_pass(lab)
    assert len(first["jobs"]) == GUESTS and all(j["ok"] for j in first["jobs"]), first["warnings"]
    raw_trust(lab, cfg)
    cs.zfs(lab, "node2", "create", RAW)
    shell(lab, "node1", parallel_loop("zfs send %s/$0@raw0 | %s zfs recv %s/$0"
                                      % (cs.POOL, SSH % lab.address("node2"), RAW), 4))


def parallel_loop(command, parallel):
    """A shell script that runs ``command`` (which names the filesystem $0) for every guest, ``parallel`` at once."""
    return "printf '%%s\\n' %s | xargs -P %d -n 1 sh -ec '%s'" % (" ".join(names()), parallel, command)


def our_pass(lab):
    """One `storage-replication run` on node1: its result; ``seconds`` is its wall time."""
    began = time.monotonic()
    proc = cs.sr(lab, "node1", "run", "--output-format", "json", timeout=3600)
    result = json.loads(proc.stdout)
    result["seconds"] = time.monotonic() - began
    return result


def make_all_due(lab):
    """pvesr's schedule-now for every job, in one process (last_try = 0)."""
    script = ("from ansible_collections.storage.replication.plugins.module_utils.state import StateFile\n"
              "state = StateFile()\n"
              "with state.locked() as entries:\n"
              "    for targets in entries.values():\n"
              "        for entry in targets.values():\n"
              "            entry['last_try'] = 0\n")
    lab.exec("node1", ["env", "PYTHONPATH=" + cs.PYTHONPATH, str(cs.PYTHON), "-c", script])


def raw_loop(lab, parallel):
    """`zfs send -i raw0 raw1 | ssh | zfs recv -F` per filesystem, ``parallel`` at a time; its seconds.  -F as our
    receive: reading a copy to check it changes its atime, which a plain `zfs recv` takes for a modification."""
    one = "zfs send -i %s/$0@raw0 %s/$0@raw1 | %s zfs recv -F %s/$0" % (cs.POOL, cs.POOL, SSH % lab.address("node2"), RAW)
    if parallel == 1:
        script = "for v in %s; do set -- $v; %s; done" % (" ".join(names()), one.replace("$0", "$1"))
    else:
        script = parallel_loop(one, parallel)
    began = time.monotonic()
    shell(lab, "node1", script)
    return time.monotonic() - began


def verify(lab, parent, source_sums):
    """Every copy under ``parent`` on node2 holds exactly the source's data, and its newest snapshot is the source's
    (same guid); returns how many were checked."""
    copies = ["%s/%s" % (parent, name) for name in names()]
    sums = cs.tree_checksums(lab, "node2", copies)
    wrong = [name for name, copy in zip(names(), copies) if sums[copy] != source_sums[cs.dataset(name)]]
    assert not wrong, "replicas differ from the source: %s" % wrong[:5]
    target_guids = newest_guids(lab, "node2", parent)
    source_guids = all_guids(lab, "node1")
    for name in names():
        snap, guid = target_guids["%s/%s" % (parent, name)]
        assert source_guids[cs.dataset(name)].get(snap) == guid, (name, snap)
    return len(copies)


def all_guids(lab, node, parent=cs.POOL):
    """{dataset: {snapshot: guid}} below ``parent`` on a node, in creation order."""
    out = cs.zfs(lab, node, "get", "-Hp", "-r", "-o", "name,property,value", "guid,createtxg", parent).stdout
    values = {}
    for line in out.splitlines():
        full, prop, value = line.split("\t")
        if "@" in full:
            values.setdefault(full, {})[prop] = value
    found = {}
    for full, props in sorted(values.items(), key=lambda item: int(item[1]["createtxg"])):
        dataset, _sep, snap = full.partition("@")
        found.setdefault(dataset, {})[snap] = props["guid"]
    return found


def newest_guids(lab, node, parent):
    return {dataset: list(snaps.items())[-1] for dataset, snaps in all_guids(lab, node, parent).items()}


def drop_raw1_on_target(lab):
    """The raw copies back at raw0, for the next raw loop (zfs-fuse may say "dataset is busy" for a moment after a
    receive: once more a second later)."""
    shell(lab, "node2", "for v in %s; do zfs destroy %s/$v@raw1 || { sleep 1; zfs destroy %s/$v@raw1; }; done"
          % (" ".join(names()), RAW, RAW))


def main():
    lab = Lab(LAB_NAME)
    lab.up(nodes=2, pool_size="2G")
    figures = {}
    try:
        set_up(lab)
        write_files(lab, "change.bin", 16)
        cs.zfs(lab, "node1", "snapshot", "-r", "%s@raw1" % cs.POOL)
        source_sums = cs.tree_checksums(lab, "node1", [cs.dataset(name) for name in names()])
        load = {}
        load["raw"] = os.getloadavg()
        figures["raw_s"] = raw_loop(lab, 1)
        checked = verify(lab, RAW, source_sums)
        drop_raw1_on_target(lab)
        load["raw4"] = os.getloadavg()
        figures["raw4_s"] = raw_loop(lab, 4)
        verify(lab, RAW, source_sums)
        make_all_due(lab)
        load["ours"] = os.getloadavg()
        ours = our_pass(lab)
        failed = [j["job"] for j in ours["jobs"] if not j["ok"]]
        assert len(ours["jobs"]) == GUESTS and not failed, "jobs failed: %s" % failed[:5]
        figures["ours_s"] = ours["seconds"]
        verify(lab, cs.POOL, source_sums)
        connections = ours.get("connections")
    finally:
        lab.down()
    results = {
        "cycle_%d_ours_s" % GUESTS: round(figures["ours_s"], 2),
        "cycle_%d_raw_s" % GUESTS: round(figures["raw_s"], 2),
        "cycle_%d_raw4_s" % GUESTS: round(figures["raw4_s"], 2),
        "cycle_%d_ratio_vs_raw" % GUESTS: round(figures["ours_s"] / figures["raw_s"], 3),
        "cycle_%d_ratio_vs_raw4" % GUESTS: round(figures["ours_s"] / figures["raw4_s"], 3),
        "cycle_%d_connections" % GUESTS: connections,
        "cycle_%d_load_average" % GUESTS: round(max(one for one, _five, _fifteen in load.values()), 2),
    }
    print("%d guests, one small filesystem each, one small change each, replicated from node1 to node2" % GUESTS)
    print("(the raw loops' snapshots were taken before their timing started; our pass takes its own within its time)")
    print("| method | seconds | ours / method | load average (1 min) at its start |")
    print("| --- | --- | --- | --- |")
    for label, key, ratio in (("raw `zfs send -i \\| ssh \\| zfs recv`, one after another", "raw", "ratio_vs_raw"),
                              ("raw, 4 at a time", "raw4", "ratio_vs_raw4"),
                              ("ours (`storage-replication run`, max_parallel 4)", "ours", None)):
        print("| %s | %.2f | %s | %.2f |" % (label, figures[key + "_s"],
                                             "%.3f" % results["cycle_%d_%s" % (GUESTS, ratio)] if ratio else "1",
                                             load[key][0]))
    verdict = "met" if results["cycle_%d_ratio_vs_raw" % GUESTS] <= TARGET else "not met"
    print("cycle_%d_ratio_vs_raw %.3f (target <= %.1f: %s); every replica checked by checksum after each method (%d); "
          "control connections our pass opened: %s" % (GUESTS, results["cycle_%d_ratio_vs_raw" % GUESTS], TARGET,
                                                       verdict, checked, connections or "not counted (no pool)"))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
