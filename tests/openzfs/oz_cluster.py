# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The OpenZFS tier as a replication cluster, and the helpers the tests drive it with.

The full tier's set-up is the production path: a pool per node on its own virtual disk, then playbooks/site.yml
(the runner role installs the engine, the node keys and the forced-command trust; the modules converge storages,
guests and jobs).  The smoke's set-up (setup_engine_only) skips Ansible, which under software emulation costs
minutes: the engine's files copied in, the keys and trust the lab's nodes get (tests/integration/cluster_setup.py)
and the configuration saved by the engine itself.
Every guest of the tests is declared here once; each test owns its guest IDs and creates its volumes itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

import ansible_runner  # noqa: E402  pylint: disable=wrong-import-position
from lab._system import wait_until  # noqa: E402  pylint: disable=wrong-import-position
import cluster_setup  # noqa: E402  pylint: disable=wrong-import-position
from cluster_setup import CHECKSUM_SCRIPT  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.storage.replication.plugins.module_utils import config as configmod  # noqa: E402  pylint: disable=wrong-import-position

POOL = "rpool/data"
ENC_POOL = "rpool/encdata"
RUNNER_PYTHON = "/opt/storage-replication/venv/bin/python"
RUNNER_LIB = "/opt/storage-replication/lib"
ENGINE = "ansible_collections.storage.replication.plugins.module_utils"
ENGINE_DIR = RUNNER_LIB + "/" + ENGINE.replace(".", "/")
PRELOAD_UNIT = "storage-replication-preload-smoke"
MAKE_BUNDLE = REPO / "roles" / "runner" / "files" / "make_bundle.py"
MiB = 1 << 20
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
# The smoke (test_smoke.py): one zvol per test on two nodes.  The resumed transfer is rate-limited (2 MB/s: its
# 24 MiB take 12 s), so that the kill lands mid-stream however fast the emulated link is.
SMOKE_GUESTS = [
    _guest(900, "vm", ["local-zfs:vm-900-disk-0"]),    # full, incremental, bookmark as base
    _guest(910, "vm", ["local-zfs:vm-910-disk-0"]),    # resume after a kill
]
SMOKE_JOBS = [_job("900-0", "node2"), _job("910-0", "node2", rate=2)]


class OzCluster:
    """Drives the tier's nodes: ZFS, the engine's runs, state, logs, checksums, holds."""

    def __init__(self, tier, guests=None, jobs=None):
        self.tier = tier
        self.nodes = tier.nodes
        self.guests = GUESTS if guests is None else guests
        self.jobs = JOBS if jobs is None else jobs

    # ------------------------------------------------------------ set-up

    def fresh_pool(self, node, data_options=""):
        """A new pool on the node's disk and the storage's dataset: a tier kept up from an earlier session
        (SR_OPENZFS_KEEP=1) starts over, with no job state either."""
        self.tier.sh(node, "! zpool list rpool >/dev/null 2>&1 || zpool destroy -f rpool; rm -rf /var/lib/storage-replication/guests "
                           "/var/lib/storage-replication/replication-state.json /var/log/storage-replication/*.log; "
                           "zpool create -f -O compression=lz4 -O atime=on rpool /dev/vdb && zfs create %s %s"
                     % (data_options, POOL))

    def setup(self):
        for node in self.nodes:
            self.fresh_pool(node)
            # enc-zfs: plain on node1, an encrypted dataset on the other nodes (their own key).
            self.tier.sh(node, "echo 'passphrase-of-%s' > %s" % (node, KEY_FILE))
            encryption = "" if node == "node1" else "-o encryption=on -o keyformat=passphrase -o keylocation=file://%s" % KEY_FILE
            self.tier.sh(node, "zfs create %s %s" % (encryption, ENC_POOL))
        jobs = [j for j in self.jobs if j["target"] in self.nodes]
        group_vars = {
            "replication_storages": [{"id": "local-zfs", "pool": POOL}, {"id": "enc-zfs", "pool": ENC_POOL}],
            "replication_guests": self.guests, "replication_jobs": jobs, "runner_timer_enabled": False}
        inventory = self.tier.write_inventory(group_vars)
        if self.tier.converged_with(group_vars):  # kept up (SR_OPENZFS_KEEP=1) and converged the same way
            return self
        self.tier.mark_converged(None)  # a run that fails half-way leaves a tier converged by neither
        run = ansible_runner.run_playbook(inventory, "playbooks/site.yml", timeout=1500)
        run.assert_ok()
        self.tier.mark_converged(group_vars)
        return self

    def setup_engine_only(self):
        """The smoke's cluster without Ansible: on every node a fresh pool (snapshots of zvols visible as devices,
        for the checksums at a snapshot), the engine's files in the image's runner venv, the storage-replication
        command, the node's key and the peers' keys pinned to the forced command, the configuration (storage
        local-zfs, the guests and jobs) saved by the engine on each node, and the preloaded engine running under
        systemd as the role's unit runs it (the peers' logins, and the CLI's runs, start from it)."""
        bundle_path = self.tier.dir / "engine.tar"  # the runner role's bundle of the engine's files
        subprocess.run([sys.executable, str(MAKE_BUNDLE), str(bundle_path)] + [
            str(p) for p in (REPO / "plugins" / "module_utils").glob("*.py")], check=True)
        bundle = bundle_path.read_bytes()
        launcher = cluster_setup.launcher_text(RUNNER_PYTHON, RUNNER_LIB)
        keys = {}
        for node in self.nodes:
            self.fresh_pool(node, "-o snapdev=visible")
            self.tier.exec(node, ["sh", "-euc", 'rm -rf "$1" && mkdir -p "$1" && tar -x -C "$1" && ln -sfn "$2" "$3"',
                                  "sh", ENGINE_DIR, cluster_setup.LAUNCHER, "/usr/local/bin/storage-replication"],
                           input=bundle)
            keys[node] = cluster_setup.install_node(self.tier, node, launcher)
        for node in self.nodes:
            cluster_setup.trust_peers(self.tier, node, keys)
        cfg = cluster_setup.base_config(self.tier)
        for guest in self.guests:
            cfg.guests[guest["id"]] = configmod.Guest(id=guest["id"], type=guest["type"], node=guest["node"],
                                                      volumes=list(guest["volumes"]))
        for job in self.jobs:
            cfg.jobs[job["id"]] = configmod.Job(id=job["id"], target=job["target"], schedule=job["schedule"],
                                                rate=job.get("rate"))
        cfg.validate()
        content = json.dumps(cfg.content())
        code = ("import json, sys; from %s import config; files = json.load(sys.stdin); "
                "config.save(config.from_files(files[config.MODEL_FILE], files[config.JOBS_FILE]))" % ENGINE)
        for node in self.nodes:
            self.engine_python(node, code, input=content)
            self.start_preload(node)
        return self

    def start_preload(self, node):
        """`storage-replication preload` as a transient systemd unit with the role's unit's KillMode (a kept tier's
        earlier one replaced: it has the engine it loaded then)."""
        self.tier.sh(node, "systemctl stop %s 2>/dev/null || true; systemctl reset-failed %s 2>/dev/null || true; "
                           "systemd-run --quiet --unit=%s --property=KillMode=process %s preload; i=0; "
                           "until [ -S %s ] || [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done; test -S %s"
                     % (PRELOAD_UNIT, PRELOAD_UNIT, PRELOAD_UNIT, cluster_setup.LAUNCHER, cluster_setup.PRELOAD_SOCKET,
                        cluster_setup.PRELOAD_SOCKET))

    def preloaded_commands(self, node):
        """How many commands run now as children of the node's preload."""
        return int(self.tier.sh(node, "pid=$(systemctl show -p MainPID --value %s); ps -o pid= --ppid $pid | wc -l"
                                % PRELOAD_UNIT).stdout)

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

    def engine_python(self, node, code, input=None):  # pylint: disable=redefined-builtin
        return self.tier.exec(node, ["env", "PYTHONPATH=" + RUNNER_LIB, RUNNER_PYTHON, "-c", code], input=input).stdout

    # ------------------------------------------------------------ data

    def create_zvol(self, node, name, size="64M", megabytes=16):
        self.zfs(node, "create", "-V", size, "-o", "volblocksize=16k", "%s/%s" % (POOL, name))
        self.write_zvol(node, name, megabytes)

    def write_zvol(self, node, name, megabytes, offset_mb=0):
        self.tier.exec(node, ["sh", "-euc", 'udevadm settle; dd if=/dev/urandom of="$1" bs=1M count="$2" seek="$3" '
                              'conv=notrunc,fsync status=none', "sh", "/dev/zvol/%s/%s" % (POOL, name),
                              str(megabytes), str(offset_mb)])

    def zvol_checksum(self, node, name, snapshot=None):
        """sha256 of the zvol's data, or of its data at snapshot (the pool's snapdev=visible: setup_engine_only).
        The device appears asynchronously after a create or a receive: waited for, then udev let settle."""
        device = "/dev/zvol/%s/%s" % (POOL, name) + ("@" + snapshot if snapshot else "")
        out = self.tier.exec(node, ["sh", "-euc", 'i=0; until [ -e "$1" ] || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done; '
                                    'udevadm settle; sha256sum < "$1"', "sh", device]).stdout
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
        target = next(j["target"] for j in self.jobs if j["id"] == job_id)
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
        for job in self.jobs:
            last_sync = state.get(str(job["guest"]), {}).get("local/" + job["target"], {}).get("last_sync", 0)
            if not last_sync:
                continue
            guest = next(g for g in self.guests if g["id"] == job["guest"])
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


# ---------------------------------------------------------------- checks shared by the tier's and the smoke's tests

def assert_ok(result):
    assert result["ok"], "job %s failed: %s\n%s" % (result["job"], result["error"], "\n".join(result.get("log", [])))
    return result


def modes(result):
    return [v["mode"] for v in result["volumes"]]


def stream_size(cluster, node, snapshot, base=None):
    """Bytes of a full replication stream of snapshot (`zfs send -nvP -R`), or of one from base (`-I base`)."""
    out = cluster.zfs(node, "send", "-nvP", "-R", *(["-I", "@" + base] if base else []), snapshot).stdout
    return int([line for line in out.splitlines() if line.startswith("size")][-1].split()[-1])


def interrupt_mid_stream(cluster, job, volume_dataset, after_bytes, interrupt):
    """Start the job with the CLI, call interrupt() once the target received after_bytes; returns rx before."""
    rx_before = cluster.link_rx_bytes("node2")
    with subprocess.Popen(cluster.run_job_argv(job), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        wait_until(lambda: cluster.link_rx_bytes("node2") - rx_before > after_bytes, 300, "the transfer to get going",
                   0.5, error=AssertionError)
        interrupt()
        _out, err = run.communicate(timeout=300)
    assert run.returncode != 0, "the interrupted run succeeded"
    assert job in err
    wait_until(lambda: cluster.resume_token("node2", volume_dataset), 120, "the target to save a resume token", 0.5,
               error=AssertionError)
    return rx_before


def kill_zfs_send(cluster, dataset):
    pids = cluster.sh("node1", "pgrep -f '^zfs send .*%s@' || true" % dataset).stdout.split()
    assert pids, "no zfs send of %s running" % dataset
    cluster.tier.exec("node1", ["kill", "-9"] + pids)


def check_resumed(cluster, job, dataset, rx_before, kept_snapshot, checksum, base=None):
    """The job's next run resumes the interrupted stream (a full one, or one from ``base``) and sends about its
    size in total, both sides then equal."""
    full = stream_size(cluster, "node1", "%s@%s" % (dataset, kept_snapshot), base)
    result = assert_ok(cluster.run_job(job))
    assert modes(result) == ["resumed", "incremental"]
    assert "resume the interrupted transfer of" in cluster.log(job)
    total = cluster.link_rx_bytes("node2") - rx_before
    assert 0.9 * full < total < 1.1 * full, "sent %d bytes in total for a %d-byte stream" % (total, full)
    assert cluster.resume_token("node2", dataset) is None
    assert checksum("node2") == checksum("node1")
    cluster.assert_no_orphaned_holds()
    return result
