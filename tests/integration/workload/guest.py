# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A `service` guest running the recorder (recorder.py) on the lab cluster, and the probes the tests use."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import cluster_setup as cs
from ansible_collections.storage.replication.plugins.module_utils import config as configmod

RECORDER = str(Path(__file__).resolve().with_name("recorder.py"))
NODE_PYTHON = "/usr/bin/python3"
BALLAST_MB = 16


class ServiceGuest:
    """Guest ``guest_id`` with one volume ``subvol-<id>-disk-0`` whose hooks run the recorder."""

    def __init__(self, lab, guest_id):
        self.lab = lab
        self.id = guest_id
        self.name = "subvol-%d-disk-0" % guest_id
        self.volume = "%s:%s" % (cs.STORAGE, self.name)
        self.mountpoint = "/" + cs.dataset(self.name)
        self.pidfile = "/var/lib/storage-replication/workload-%d.pid" % guest_id

    def hook(self, command, directory=None):
        return [NODE_PYTHON, RECORDER, command, "--dir", directory or self.mountpoint, "--pidfile", self.pidfile]

    def definition(self, owner):
        return configmod.Guest(id=self.id, type="service", node=owner, volumes=[self.volume],
                               hooks={name: self.hook(name) for name in ("start", "stop", "status")})

    def create(self, owner):
        """A fresh dataset on the owner with some ballast (so that a full send is much bigger than a delta)."""
        for node in self.lab.nodes:
            self.stop(node)
            for dataset in self.datasets(node):
                cs.destroy(self.lab, node, dataset)
        cs.create_volume(self.lab, owner, self.name)
        cs.write_random(self.lab, owner, self.name, "ballast.bin", BALLAST_MB)

    def datasets(self, node):
        """This guest's volume and every copy kept aside of it on node."""
        proc = cs.zfs(self.lab, node, "list", "-H", "-o", "name", check=False)
        return [name for name in proc.stdout.split() if name.startswith(cs.dataset(self.name))]

    def start(self, node):
        self.lab.exec(node, self.hook("start"))

    def stop(self, node):
        self.lab.exec(node, self.hook("stop"), check=False)

    def running(self, node):
        return self.lab.exec(node, self.hook("status"), check=False).returncode == 0

    def records(self, node, directory=None):
        out = self.lab.exec(node, self.hook("read", directory)).stdout
        return [json.loads(line) for line in out.splitlines()]

    def records_at(self, node, snapshot):
        """The records in the volume at a snapshot (through a temporary clone)."""
        clone = "rpool/verify-%s" % self.name
        cs.destroy(self.lab, node, clone)
        cs.zfs(self.lab, node, "clone", "%s@%s" % (cs.dataset(self.name), snapshot), clone)
        try:
            return self.records(node, "/" + clone)
        finally:
            cs.destroy(self.lab, node, clone)

    def wait_records(self, node, count, timeout=30.0):
        """Poll until the guest on node has written at least ``count`` more records than now."""
        start = len(self.records(node))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.records(node)) >= start + count:
                return
            time.sleep(0.1)
        raise AssertionError("guest %d on %s wrote fewer than %d records in %.0f s" % (self.id, node, count, timeout))

    def full_send_bytes(self, node, snapshot):
        """Size of a full replication stream of the volume at snapshot (what a full resend would cost)."""
        argv = self.lab.exec_argv(node, ["zfs", "send", "-R", "%s@%s" % (cs.dataset(self.name), snapshot)])
        with subprocess.Popen(argv, stdout=subprocess.PIPE) as proc:
            total = sum(len(chunk) for chunk in iter(lambda: proc.stdout.read(1 << 20), b""))
        assert proc.returncode == 0
        return total


def setup_cluster(lab):
    """The lab as a cluster (cluster_setup.setup: the playbooks' modules hand their work to its runner)."""
    return cs.setup(lab)


def serve_guest(lab, cfg, guest_id, targets, node="node1"):
    """A ServiceGuest on ``node``, replicated by one job per target (schedule */1), added to ``cfg`` (written to
    every node) and started: the guest the failover, migration and fencing tests watch."""
    guest = ServiceGuest(lab, guest_id)
    guest.create(node)
    cfg.guests[guest_id] = guest.definition(node)
    for number, target in enumerate(targets):
        job = "%d-%d" % (guest_id, number)
        cfg.jobs[job] = configmod.Job(id=job, target=target, schedule="*/1")
    cfg.generation += 1
    cs.write_config(lab, cfg)
    guest.start(node)
    return guest


def config_of(lab, node):
    return configmod.load(str(lab.private_path(node, "/etc/storage-replication")))


def runner(lab, node, *args):
    """`storage-replication run` on node (the timer's work); returns (exit code, its JSON result or its output)."""
    proc = lab.exec(node, [cs.LAUNCHER, "run", "--output-format", "json"] + list(args), check=False, timeout=300)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        return proc.returncode, proc.stdout + proc.stderr


def assert_continuous(records):
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(1, len(seqs) + 1)), "sequence has gaps or repeats: %s" % _gaps(seqs)


def _gaps(seqs):
    return [(a, b) for a, b in zip(seqs, seqs[1:]) if b != a + 1][:5]


def runs_of(records):
    """[(node, first seq, last seq)] of consecutive records written on one node."""
    runs = []
    for record in records:
        if runs and runs[-1][0] == record["node"]:
            runs[-1][2] = record["seq"]
        else:
            runs.append([record["node"], record["seq"], record["seq"]])
    return [tuple(run) for run in runs]
