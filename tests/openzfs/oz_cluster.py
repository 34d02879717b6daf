# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The OpenZFS tier as a replication cluster, and the helpers the tests drive it with.

Set-up is the production path: a pool per node on its own virtual disk, then playbooks/site.yml (the runner role
installs the engine, the node keys and the forced-command trust; the modules converge storages, guests and jobs).
Every guest of the tests is declared here once; each test owns its guest IDs and creates its volumes itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import ansible_runner  # noqa: E402  pylint: disable=wrong-import-position
from cluster_setup import CHECKSUM_SCRIPT  # noqa: E402  pylint: disable=wrong-import-position

POOL = "rpool/data"
ENC_POOL = "rpool/encdata"
RUNNER_PYTHON = "/opt/storage-replication/venv/bin/python"
RUNNER_LIB = "/opt/storage-replication/lib"
ENGINE = "ansible_collections.storage.replication.plugins.module_utils"
HOLD_TAG = "storage-replication"
KEY_FILE = "/root/enc.key"


def _guest(gid, gtype, volumes):
    return {"id": gid, "type": gtype, "node": "node1", "volumes": volumes}


def _job(job_id, target, **extra):
    return dict({"id": job_id, "guest": int(job_id.split("-")[0]), "target": target, "schedule": "*/15"}, **extra)


GUESTS = [
    _guest(100, "vm", ["local-zfs:vm-100-disk-0", "local-zfs:vm-100-disk-1"]),   # zvols, several targets
    _guest(200, "ct", ["local-zfs:subvol-200-disk-0"]),                            # filesystem
    _guest(300, "vm", ["local-zfs:vm-300-disk-0"]),                                # resume after a kill
    _guest(310, "vm", ["local-zfs:vm-310-disk-0"]),                                # resume after link down
    _guest(320, "ct", ["local-zfs:subvol-320-disk-0"]),                            # stale resume token
    _guest(400, "ct", ["local-zfs:subvol-400-disk-0"]),                            # bookmark as base
    _guest(500, "ct", ["enc-zfs:subvol-500-disk-0"]),                              # encrypted: raw send
    _guest(510, "ct", ["enc-zfs:subvol-510-disk-0"]),                              # plain into encrypted parent
    _guest(600, "ct", ["local-zfs:subvol-600-disk-0"]),                            # -c
    _guest(700, "ct", ["local-zfs:subvol-700-disk-0"]),                            # partition, refusals
    _guest(800, "vm", ["local-zfs:vm-800-disk-0"]),                                # restore points on a zvol
]
JOBS = [
    _job("100-0", "node2"), _job("100-1", "node3"), _job("200-0", "node2"),
    _job("300-0", "node2", rate=15), _job("310-0", "node2", rate=15), _job("320-0", "node2", rate=15),
    _job("400-0", "node2"), _job("500-0", "node2"), _job("510-0", "node2"), _job("600-0", "node2"),
    _job("700-0", "node2"), _job("800-0", "node2", keep="last=3", keep_source="last=2"),
]


class OzCluster:
    """Drives the tier's nodes: ZFS, the engine's runs, state, logs, checksums, holds."""

    def __init__(self, tier):
        self.tier = tier
        self.nodes = tier.nodes

    # ------------------------------------------------------------ set-up

    def setup(self):
        for node in self.nodes:
            # A tier kept up from an earlier session (SR_OPENZFS_KEEP=1) starts over: new pool, no job state.
            self.tier.sh(node, "! zpool list rpool >/dev/null 2>&1 || zpool destroy -f rpool; rm -rf /var/lib/storage-replication/guests "
                               "/var/lib/storage-replication/replication-state.json /var/log/storage-replication/*.log")
            self.tier.sh(node, "zpool create -f -O compression=lz4 -O atime=on rpool /dev/vdb && zfs create %s" % POOL)
            # enc-zfs: plain on node1, an encrypted dataset on the other nodes (their own key).
            self.tier.sh(node, "echo 'passphrase-of-%s' > %s" % (node, KEY_FILE))
            encryption = "" if node == "node1" else "-o encryption=on -o keyformat=passphrase -o keylocation=file://%s" % KEY_FILE
            self.tier.sh(node, "zfs create %s %s" % (encryption, ENC_POOL))
        jobs = [j for j in JOBS if j["target"] in self.nodes]
        group_vars = {
            "replication_storages": [{"id": "local-zfs", "pool": POOL}, {"id": "enc-zfs", "pool": ENC_POOL}],
            "replication_guests": GUESTS, "replication_jobs": jobs, "runner_timer_enabled": False}
        inventory = self.tier.write_inventory(group_vars)
        if self.tier.converged_with(group_vars):  # kept up (SR_OPENZFS_KEEP=1) and converged the same way
            return self
        self.tier.mark_converged(None)  # a run that fails half-way leaves a tier converged by neither
        run = ansible_runner.run_playbook(inventory, "playbooks/site.yml", timeout=1500)
        run.assert_ok()
        self.tier.mark_converged(group_vars)
        return self

    # ------------------------------------------------------------ commands

    def sh(self, node, script, check=True, timeout=600):
        return self.tier.sh(node, script, check=check, timeout=timeout)

    def zfs(self, node, *argv, check=True):
        return self.tier.exec(node, ["zfs"] + list(argv), check=check)

    def run_job(self, job_id, node="node1", timeout=900):
        """One run of the job with the installed engine; the engine's result dict (also for failed runs)."""
        proc = self.tier.exec(node, ["env", "PYTHONPATH=" + RUNNER_LIB, RUNNER_PYTHON, "-m", ENGINE + ".replicate", job_id],
                              check=False, timeout=timeout)
        lines = proc.stdout.strip().splitlines()
        if not lines:
            raise AssertionError("no result from job %s on %s: %s" % (job_id, node, proc.stderr))
        return json.loads(lines[-1])

    def run_job_argv(self, job_id, node="node1"):
        """argv (on the controller) that runs the job with the storage-replication CLI: for runs interrupted mid-way."""
        return self.tier.ssh_argv(node, ["storage-replication", "run", "--id", job_id, "--output-format", "json"])

    def engine_python(self, node, code):
        return self.tier.exec(node, ["env", "PYTHONPATH=" + RUNNER_LIB, RUNNER_PYTHON, "-c", code]).stdout

    # ------------------------------------------------------------ data

    def create_zvol(self, node, name, size="64M", megabytes=16):
        self.zfs(node, "create", "-V", size, "-o", "volblocksize=16k", "%s/%s" % (POOL, name))
        self.write_zvol(node, name, megabytes)

    def write_zvol(self, node, name, megabytes, offset_mb=0):
        self.tier.exec(node, ["sh", "-euc", 'udevadm settle; dd if=/dev/urandom of="$1" bs=1M count="$2" seek="$3" '
                              'conv=notrunc,fsync status=none', "sh", "/dev/zvol/%s/%s" % (POOL, name),
                              str(megabytes), str(offset_mb)])

    def zvol_checksum(self, node, name):
        out = self.tier.exec(node, ["sh", "-euc", 'udevadm settle; sha256sum < "$1"', "sh",
                                    "/dev/zvol/%s/%s" % (POOL, name)]).stdout
        return out.split()[0]

    def write_file(self, node, dataset, filename, megabytes, source="/dev/urandom"):
        self.tier.exec(node, ["dd", "if=" + source, "of=/%s/%s" % (dataset, filename), "bs=1M",
                              "count=%d" % megabytes, "conv=fsync", "status=none"])

    def filesystem_with_data(self, dataset, megabytes, filename="a.bin"):
        """A new filesystem on node1 holding one file of random data."""
        self.zfs("node1", "create", dataset)
        self.write_file("node1", dataset, filename, megabytes)

    def tree_checksum(self, node, dataset):
        """sha256 over the file tree of a mounted filesystem dataset."""
        return self.tier.exec(node, ["python3", "-c", CHECKSUM_SCRIPT, "/" + dataset]).stdout.strip()

    def assert_same_files(self, dataset, holds=True):
        """node2's replica holds node1's files; with ``holds``, the engine holds exactly what the next runs need."""
        assert self.tree_checksum("node2", dataset) == self.tree_checksum("node1", dataset)
        if holds:
            self.assert_no_orphaned_holds()

    def snapshots(self, node, dataset):
        proc = self.zfs(node, "list", "-H", "-p", "-t", "snapshot", "-o", "name", "-d", "1", dataset, check=False)
        return [line.split("@", 1)[1] for line in proc.stdout.split()] if proc.returncode == 0 else []

    def bookmarks(self, node, dataset):
        proc = self.zfs(node, "list", "-H", "-t", "bookmark", "-o", "name", "-d", "1", dataset, check=False)
        return [line.split("#", 1)[1] for line in proc.stdout.split()] if proc.returncode == 0 else []

    def resume_token(self, node, dataset):
        value = self.zfs(node, "get", "-H", "-o", "value", "receive_resume_token", dataset, check=False).stdout.strip()
        return None if value in ("-", "") else value

    def receives_running(self, node, dataset):
        """pids of the `zfs recv` processes writing into dataset on node."""
        return self.sh(node, "pgrep -f '^zfs (recv|receive) .* %s$' || true" % dataset).stdout.split()

    def exists(self, node, dataset):
        return self.zfs(node, "list", "-H", "-o", "name", dataset, check=False).returncode == 0

    # ------------------------------------------------------------ state, logs, holds

    def state(self, node="node1"):
        text = self.tier.exec(node, ["cat", "/var/lib/storage-replication/replication-state.json"], check=False).stdout
        return json.loads(text) if text.strip() else {}

    def job_state(self, job_id, node="node1"):
        guest, _sep, _num = job_id.partition("-")
        target = next(j["target"] for j in JOBS if j["id"] == job_id)
        return self.state(node).get(guest, {}).get("local/" + target, {})

    def log(self, job_id, node="node1"):
        return self.tier.exec(node, ["cat", "/var/log/storage-replication/%s.log" % job_id]).stdout

    def holds(self, node):
        """{snapshot: [tags]} of every held snapshot on the node (one round trip: ssh is slow under emulation)."""
        out = self.sh(node, "zfs get -Hp -r -t snapshot -o name,value userrefs rpool | awk '$2 > 0 {print $1}' "
                            "| xargs -r zfs holds -H").stdout
        result = {}
        for line in out.splitlines():
            snapshot, tag = line.split("\t")[:2]
            result.setdefault(snapshot, []).append(tag)
        return {snapshot: sorted(tags) for snapshot, tags in result.items()}

    def assert_no_orphaned_holds(self):
        """The engine holds exactly the last synced snapshot of each job, on the source and on the target."""
        expected = {}
        state = self.state()
        for job in JOBS:
            last_sync = state.get(str(job["guest"]), {}).get("local/" + job["target"], {}).get("last_sync", 0)
            if not last_sync:
                continue
            guest = next(g for g in GUESTS if g["id"] == job["guest"])
            for volume in guest["volumes"]:
                storage, _sep, name = volume.partition(":")
                dataset = "%s/%s" % (POOL if storage == "local-zfs" else ENC_POOL, name)
                snap = "%s@__replicate_%s_%d__" % (dataset, job["id"], last_sync)
                for node in ("node1", job["target"]):
                    expected.setdefault(node, {})[snap] = [HOLD_TAG]
        for node in self.nodes:
            actual = self.holds(node)
            assert actual == expected.get(node, {}), "holds on %s: %s, expected %s" % (node, actual, expected.get(node))

    def link_rx_bytes(self, node):
        """Bytes the node received on its replication link (eth1) since boot."""
        return int(self.tier.exec(node, ["cat", "/sys/class/net/eth1/statistics/rx_bytes"]).stdout)
