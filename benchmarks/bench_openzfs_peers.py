# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Our engine and its peers side by side on OpenZFS: two QEMU guests of the OpenZFS tier, one link.

Every tool replicates its own copy of the same data from node1 to node2 over the tier's link (10.99.0.0/24):
- full:  a 1 GiB filesystem (random data, incompressible) sent in full;
- incr:  10 MiB of it overwritten, then sent incrementally;
- cycle: 20 small filesystems, one change each, all replicated once (each tool's one command or run).
Tools: the raw pipeline `zfs send | ssh | zfs recv` (the reference), ours (`storage-replication run`, installed
by playbooks/site.yml, its services running as on a node), ours_cold (the same with the preload service stopped:
every command imports the engine itself; only when named in SR_BENCH_TOOLS), syncoid (Debian's sanoid package, its defaults), zfs_autobackup and bzfs (PyPI).
Wall time is measured on node1 around each tool's command; bytes are what node2 received on the link.

Then, with ours among the tools, raw's and our incremental again, taking turns SR_BENCH_PAIRS times (default 3): the
guests' speed drifts within the hour, and turns compare the two on the same minutes.

Prints one table and writes build/bench/bench_openzfs_peers.json with openzfs_full_ratio_vs_raw,
openzfs_incr_ratio_vs_raw, openzfs_cycle_ratio_vs_raw, openzfs_incr_ratio_alternating (the turns' total time, ours
over raw's) and, per tool, <tool>_full_s, <tool>_incr_s, <tool>_cycle_s.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from openzfs._tier import Tier  # noqa: E402  pylint: disable=wrong-import-position

OUT = ROOT / "build" / "bench"
TIER_NAME = os.environ.get("SR_OPENZFS_BENCH_NAME", "ozbench")
TARGET = "10.99.0.2"
FULL_MIB = int(os.environ.get("SR_BENCH_FULL_MIB", "1024"))
INCR_MIB = 10
CYCLE = 20
# The incremental of raw and ours measured again, taking turns, this many times (SR_BENCH_PAIRS; 0: not at all).
PAIRS = int(os.environ.get("SR_BENCH_PAIRS", "3"))
# SR_BENCH_TOOLS (comma-separated) measures some of them; raw always, as the reference.
TOOLS = ("raw",) + tuple(t for t in os.environ.get("SR_BENCH_TOOLS", "ours,syncoid,zfs_autobackup,bzfs").split(",")
                         if t in ("ours", "ours_cold", "syncoid", "zfs_autobackup", "bzfs"))
OURS = ("ours", "ours_cold")
OUR_FULL_GUEST, OUR_CYCLE_GUEST = 900, 910
RUNNER = "storage-replication"


def src(tool, name):
    """The tool's own source dataset on node1 (ours: the storage's volume naming)."""
    if tool in OURS:
        guest = OUR_FULL_GUEST if name == "full" else OUR_CYCLE_GUEST + int(name.rpartition("-")[2])
        return "rpool/data/subvol-%d-disk-0" % guest
    return "rpool/%s/%s" % (tool, name)


class Bench:
    def __init__(self, tier):
        self.tier = tier

    def sh(self, node, script, timeout=3600):
        return self.tier.sh(node, script, timeout=timeout).stdout

    def rx(self):
        return int(self.sh("node2", "cat /sys/class/net/eth1/statistics/rx_bytes"))

    def measure(self, script):
        """(seconds on node1, bytes node2 received) of one shell script run on node1."""
        before = self.rx()
        seconds = float(self.sh("node1", "s=$(date +%%s.%%N); %s; e=$(date +%%s.%%N); awk \"BEGIN {print $e - $s}\"" % script))
        return seconds, self.rx() - before

    # ------------------------------------------------------------ set-up

    def prepare(self):
        for node in ("node1", "node2"):  # a tier kept up from the tests starts over too
            self.sh(node, "! zpool list rpool >/dev/null 2>&1 || zpool destroy -f rpool; rm -rf /var/lib/storage-replication/guests "
                          "/var/lib/storage-replication/replication-state.json")
            self.sh(node, "zpool create -f -O compression=lz4 -O atime=off rpool /dev/vdb && zfs create rpool/data")
        self.trust_node2_for_peers()
        self.install_our_runner()
        self.sh("node1", "head -c %dM /dev/urandom > /var/tmp/master.bin" % FULL_MIB)

    def create_sources(self, tool):
        """The tool's own copy of the data (one tool's data at a time: the pools stay small)."""
        if tool not in OURS:
            self.sh("node1", "zfs create rpool/%s && zfs create rpool/%s/cycle" % (tool, tool))
            self.sh("node2", "zfs create rpool/%s-dst" % tool)
        self.sh("node1", "zfs create %s && cp /var/tmp/master.bin /%s/data.bin" % (src(tool, "full"), src(tool, "full")))
        for index in range(CYCLE):
            dataset = src(tool, "cycle/small-%d" % index) if tool not in OURS else src(tool, "small-%d" % index)
            self.sh("node1", "zfs create %s && head -c 1M /var/tmp/master.bin > /%s/small.bin" % (dataset, dataset))
        if tool == "zfs_autobackup":
            self.sh("node1", "zfs set autobackup:bench=true rpool/zfs_autobackup/full")
        self.sh("node1", "sync")

    def destroy_sources(self, tool):
        """Drop a measured tool's data on both nodes (releasing our engine's holds first)."""
        for node in ("node1", "node2"):
            if tool in OURS:
                self.sh(node, "for h in $(zfs list -H -o name -t snapshot -r rpool/data); do zfs release "
                              "storage-replication $h 2>/dev/null || true; done; for d in $(zfs list -H -o name -d 1 "
                              "rpool/data | tail -n +2); do zfs destroy -r $d; done; rm -f "
                              "/var/lib/storage-replication/replication-state.json")  # the next variant starts afresh
            else:
                self.sh(node, "zfs destroy -r rpool/%s 2>/dev/null || true; zfs destroy -r rpool/%s-dst 2>/dev/null "
                              "|| true" % (tool, tool))

    def trust_node2_for_peers(self):
        """The peers need a root shell on node2: a key of node1's own, node2's host key pinned (never unchecked)."""
        self.sh("node1", "test -f /root/.ssh/peers_key || ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/peers_key")
        public = self.sh("node1", "cat /root/.ssh/peers_key.pub").strip()
        self.tier.exec("node2", ["sh", "-c", "cat >> /root/.ssh/authorized_keys"], input=public + "\n")
        config = ("Host %s\n  IdentityFile /root/.ssh/peers_key\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
                  "  Ciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com\n" % TARGET)
        self.tier.put("node1", "/root/.ssh/config", config.encode(), "0600")
        known = "%s %s\n" % (TARGET, self.tier.host_key("node2"))
        self.tier.put("node1", "/root/.ssh/known_hosts", known.encode(), "0600")

    def install_our_runner(self):
        guests = [{"id": OUR_FULL_GUEST, "type": "ct", "node": "node1", "volumes": ["local-zfs:subvol-%d-disk-0" % OUR_FULL_GUEST]}]
        guests += [{"id": OUR_CYCLE_GUEST + i, "type": "ct", "node": "node1",
                    "volumes": ["local-zfs:subvol-%d-disk-0" % (OUR_CYCLE_GUEST + i)]} for i in range(CYCLE)]
        jobs = [{"id": "%d-0" % g["id"], "guest": g["id"], "target": "node2", "schedule": "*/15"} for g in guests]
        group_vars = {"replication_storages": [{"id": "local-zfs", "pool": "rpool/data"}], "replication_guests": guests,
                      "replication_jobs": jobs, "runner_timer_enabled": False}
        inventory = self.tier.write_inventory(group_vars)
        if self.tier.converged_with(group_vars):  # a tier kept up from an earlier run (SR_OPENZFS_KEEP=1)
            return
        self.tier.mark_converged(None)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / "build" / "collections"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_PIPELINING="1")  # one ssh round trip per task: each costs seconds under emulation
        playbook = [str(pathlib.Path(sys.executable).with_name("ansible-playbook")), "-i", str(inventory),
                    str(ROOT / "playbooks" / "site.yml")]
        proc = subprocess.run(playbook, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=1800, check=False)
        if proc.returncode != 0:
            raise SystemExit("site.yml failed on the benchmark tier:\n" + proc.stdout[-3000:])
        self.tier.mark_converged(group_vars)

    # ------------------------------------------------------------ what each tool runs

    def command(self, tool, phase, step):
        """The shell text (fixed names only) one tool runs on node1 for phase full|incr|cycle; step 1 or 2."""
        if tool == "raw":
            return self.raw_command(phase, step)
        if tool in OURS:
            if phase == "cycle":
                return "%s run >/dev/null" % RUNNER
            return "%s run --id %d-0 >/dev/null" % (RUNNER, OUR_FULL_GUEST)
        dataset = src(tool, "cycle" if phase == "cycle" else "full")
        remote = "root@%s:rpool/%s-dst/%s" % (TARGET, tool, "cycle" if phase == "cycle" else "full")
        if tool == "syncoid":
            return "syncoid -q %s %s %s" % ("-r" if phase == "cycle" else "", dataset, remote)
        if tool == "zfs_autobackup":
            return ("zfs-autobackup --ssh-target root@%s --no-progress --strip-path 2 %s rpool/zfs_autobackup-dst >/dev/null"
                    % (TARGET, "benchcycle" if phase == "cycle" else "bench"))
        return ("zfs snapshot %s %s@bzfs_%s_%d && bzfs %s %s %s >/dev/null"
                % ("-r" if phase == "cycle" else "", dataset, phase, step, "--recursive" if phase == "cycle" else "",
                   dataset, remote))

    @staticmethod
    def raw_command(phase, step):
        if phase == "cycle":
            return ("zfs snapshot -r rpool/raw/cycle@raw_%d && for i in $(seq 0 %d); do zfs send -i @raw_%d "
                    "rpool/raw/cycle/small-$i@raw_%d | ssh %s zfs recv -F rpool/raw-dst/cycle/small-$i; done"
                    % (step, CYCLE - 1, step - 1, step, TARGET))
        base = "" if step == 1 else "-i @raw_%d " % (step - 1)
        return ("zfs snapshot rpool/raw/full@raw_%d && zfs send %srpool/raw/full@raw_%d | ssh %s zfs recv -F "
                "rpool/raw-dst/full" % (step, base, step, TARGET))

    def seed_cycle_target(self, tool):
        """The cycle measures incrementals: the tool first replicates its 20 small datasets once (not timed)."""
        if tool == "raw":
            self.sh("node1", "zfs snapshot -r rpool/raw/cycle@raw_1 && zfs send -R rpool/raw/cycle@raw_1 | ssh %s "
                    "zfs recv -F rpool/raw-dst/cycle" % TARGET)
            return
        if tool == "zfs_autobackup":
            self.sh("node1", "zfs set autobackup:benchcycle=true rpool/zfs_autobackup/cycle")
        self.sh("node1", self.command(tool, "cycle", 1))

    def change(self, tool, phase):
        if phase == "incr":
            path = "/%s/data.bin" % src(tool, "full")
            self.sh("node1", "dd if=/dev/urandom of=%s bs=1M count=%d seek=100 conv=notrunc,fsync status=none"
                    % (path, INCR_MIB))
            return
        for index in range(CYCLE):
            dataset = src(tool, "small-%d" % index) if tool in OURS else src(tool, "cycle/small-%d" % index)
            self.sh("node1", "head -c 65536 /dev/urandom >> /%s/small.bin" % dataset)
        if tool in OURS:
            for index in range(CYCLE):
                self.sh("node1", "%s schedule-now %d-0 >/dev/null" % (RUNNER, OUR_CYCLE_GUEST + index))
        self.sh("node1", "sync")

    # ------------------------------------------------------------ the run

    def run(self):
        figures = {}
        for tool in TOOLS:
            if tool == "ours_cold":
                self.preload("stop")
            try:
                figures[tool] = self.run_tool(tool)
            finally:
                if tool == "ours_cold":
                    self.preload("start")
        return figures

    def preload(self, action):
        for node in ("node1", "node2"):
            self.sh(node, "systemctl %s storage-replication-preload.service" % action)

    def run_tool(self, tool):
        """{phase: (seconds, bytes)} of one tool, on its own copy of the data (dropped after)."""
        self.create_sources(tool)
        figures = {"full": self.measure(self.command(tool, "full", 1))}
        self.change(tool, "incr")
        figures["incr"] = self.measure(self.command(tool, "incr", 2))
        self.verify(tool)
        self.seed_cycle_target(tool)
        self.change(tool, "cycle")
        figures["cycle"] = self.measure(self.command(tool, "cycle", 2))
        print("  %-15s full %6.1f s, incr %5.1f s, cycle %5.1f s" % (
            tool, figures["full"][0], figures["incr"][0], figures["cycle"][0]), flush=True)
        self.destroy_sources(tool)
        return figures

    def alternating_incrementals(self, pairs):
        """The incremental of raw and ours measured again ``pairs`` times, taking turns on the same minutes: the
        emulated guests' speed drifts by a third or more within the hour, so one incremental each, minutes apart,
        compares them only roughly.  Returns {"raw": [s, ...], "ours": [s, ...]}; both replicas checked after."""
        turns = {"raw": [], "ours": []}
        for tool in turns:
            self.create_sources(tool)
            self.sh("node1", self.command(tool, "full", 1))
        for step in range(2, pairs + 2):
            for tool, seconds in turns.items():
                self.change(tool, "incr")
                seconds.append(self.measure(self.command(tool, "incr", step))[0])
        for tool in turns:
            self.verify(tool)
            self.destroy_sources(tool)
        return turns

    def verify(self, tool):
        """The tool's replica of the full dataset holds the source's data (sha256 of the file)."""
        targets = {"raw": "rpool/raw-dst/full", "ours": src("ours", "full"), "ours_cold": src("ours", "full"), "syncoid": "rpool/syncoid-dst/full",
                   "zfs_autobackup": "rpool/zfs_autobackup-dst/full", "bzfs": "rpool/bzfs-dst/full"}
        want = self.sh("node1", "sha256sum < /%s/data.bin" % src(tool, "full")).split()[0]
        # Some tools receive with -u (bzfs, ours): mount the replica to read it; atime is off, so reading changes nothing.
        self.sh("node2", "zfs mount %s 2>/dev/null || true" % shlex.quote(targets[tool]))
        mountpoint = self.sh("node2", "zfs get -H -o value mountpoint %s" % shlex.quote(targets[tool])).strip()
        got = self.sh("node2", "sha256sum < %s/data.bin" % shlex.quote(mountpoint)).split()[0]
        if got != want:
            raise SystemExit("%s's replica differs from its source" % tool)


def table(figures):
    raw = figures["raw"]
    lines = ["%-15s %10s %10s %7s   %10s %10s %7s   %10s %10s %7s" % (
        "tool", "full s", "full MiB", "x raw", "incr s", "incr MiB", "x raw", "cycle s", "cycle MiB", "x raw")]
    for tool, phases in figures.items():
        cells = []
        for phase in ("full", "incr", "cycle"):
            seconds, sent = phases[phase]
            cells += ["%10.1f" % seconds, "%10.1f" % (sent / 1048576.0), "%7.2f" % (seconds / raw[phase][0])]
        lines.append("%-15s %s %s %s   %s %s %s   %s %s %s" % ((tool,) + tuple(cells)))
    return "\n".join(lines)


def main():
    tier = Tier(TIER_NAME)
    started = time.monotonic()
    tier.up(nodes=2, memory="1536M")
    try:
        bench = Bench(tier)
        bench.prepare()
        version = tier.exec("node1", ["zfs", "version"]).stdout.split()[0]
        figures = bench.run()
        turns = bench.alternating_incrementals(PAIRS) if "ours" in TOOLS and PAIRS else None
    finally:
        if os.environ.get("SR_OPENZFS_KEEP") != "1":
            tier.down()
    print("OpenZFS peers benchmark (%s, 2 QEMU guests, link 10.99.0.0/24; %d MiB full, %d MiB incremental, "
          "%d small datasets; ratios are wall time / raw zfs send | ssh | zfs recv):" % (version, FULL_MIB, INCR_MIB, CYCLE))
    print(table(figures))
    if turns:
        print("incremental, raw and ours taking turns %d times: raw %s s, ours %s s: %.2fx raw" % (
            PAIRS, " ".join("%.1f" % t for t in turns["raw"]), " ".join("%.1f" % t for t in turns["ours"]),
            sum(turns["ours"]) / sum(turns["raw"])))
    result = {"openzfs_%s_ratio_vs_raw" % phase: round(figures["ours"][phase][0] / figures["raw"][phase][0], 3)
              for phase in ("full", "incr", "cycle")}
    for tool, phases in figures.items():
        for phase, (seconds, sent) in phases.items():
            result["%s_%s_s" % (tool, phase)] = round(seconds, 2)
            result["%s_%s_bytes" % (tool, phase)] = sent
    if turns:
        result["openzfs_incr_ratio_alternating"] = round(sum(turns["ours"]) / sum(turns["raw"]), 3)
        result.update({"%s_incr_turns_s" % tool: [round(t, 2) for t in seconds] for tool, seconds in turns.items()})
    result["openzfs_bench_wall_s"] = round(time.monotonic() - started, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_openzfs_peers.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
