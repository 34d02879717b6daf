# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The site tour of `make demo`: site.yml with the example inventory, replication driven where the timer would
fire, `storage-replication status` on each node, then a change and its incremental sync.

``example_vars`` and ``ensure_wheelhouse`` are shared with tests/integration/test_site.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_INVENTORY = REPO / "docs" / "examples" / "inventory.yml"
WHEELHOUSE = REPO / "build" / "wheelhouse"
VOLUMES = {"vm-100-disk-0": 6, "subvol-200-disk-0": 3}  # the example guests' volumes -> MiB of random data
EXAMPLE_JOBS = ("100-0", "100-1", "200-0")  # the IDs site.yml gives the example's jobs
SYNCED_JOBS = {"node2": "100-0", "node3": "100-1"}  # its enabled ones (200-0 is disabled), by target


def example_vars():
    """The replication_* variables of the example inventory (guests 100 vm and 200 ct, both starting on node1)."""
    data = yaml.safe_load(EXAMPLE_INVENTORY.read_text(encoding="utf-8"))["all"]["children"]["replication_nodes"]["vars"]
    return {key: value for key, value in data.items() if key.startswith("replication_")}


def ensure_wheelhouse():
    """The lab's nodes have no package index: the role installs the runner's pins from wheels downloaded once."""
    if not list(WHEELHOUSE.glob("paramiko-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(WHEELHOUSE), "-r",
                        str(REPO / "requirements" / "node.txt")], check=True, timeout=600)
    return str(WHEELHOUSE)


def _cluster_setup():
    """The integration tests' helpers (snapshots, checksums through a clone), shared by the tour."""
    if str(REPO / "tests" / "integration") not in sys.path:
        sys.path.insert(0, str(REPO / "tests" / "integration"))
    import cluster_setup  # pylint: disable=import-outside-toplevel,import-error
    return cluster_setup


def replica_digests(lab, target, name, job_id):
    """sha256 of the volume's tree at the job's newest replication snapshot on node1 and on ``target``.

    Compared at the snapshot (through a clone), not through the mounted file system: zfs-fuse may go on showing
    the replica's previous contents for a while after an incremental receive.
    """
    cs = _cluster_setup()
    snaps = sorted(s for s in cs.snapshots(lab, target, name) if s.startswith("__replicate_%s_" % job_id))
    if not snaps:
        return "no replication snapshot of %s on node1" % job_id, "no replication snapshot of %s on %s" % (job_id, target)
    return cs.tree_checksum(lab, "node1", name, snaps[-1]), cs.tree_checksum(lab, target, name, snaps[-1])


def site_vars():
    return dict(example_vars(), runner_pip_wheelhouse=ensure_wheelhouse())


def write_data(lab, name, mib, seek=0):
    """``mib`` MiB of random data into data.bin of the volume on node1, at ``seek`` MiB."""
    lab.exec("node1", ["dd", "if=/dev/urandom", "of=/rpool/data/%s/data.bin" % name, "bs=1M", "count=%d" % mib,
                       "seek=%d" % seek, "conv=notrunc", "status=none"], timeout=300)


def unlink_test_venv(lab, show):
    """A lab that the integration tests' cluster set-up (or an older demo) used has the runner's venv linked to this
    checkout's .venv (tests/integration/workload/guest.py, setup_cluster): the role would install into the
    checkout's venv through the link. Drop such links; the role then makes the runner's own venv."""
    from workload.guest import RUNNER_VENV  # pylint: disable=import-outside-toplevel,import-error
    for node in lab.nodes:
        if lab.exec(node, ["test", "-L", RUNNER_VENV], check=False).returncode == 0:
            lab.exec(node, ["rm", RUNNER_VENV])
            show("%s: %s was a link to a test virtualenv: removed, the role installs the runner's own" % (node, RUNNER_VENV))


def cli_json(lab, node, *argv):
    """``storage-replication ARGV --output-format json`` on node, parsed (the role's command, on the node's PATH)."""
    return json.loads(lab.exec(node, ["storage-replication"] + list(argv) + ["--output-format", "json"], timeout=600).stdout)


def site_tour(lab, step, show, check, first_step):
    """Returns the number of the next step."""
    _cluster_setup()
    from ansible_runner import run_playbook  # pylint: disable=import-outside-toplevel,import-error

    step(first_step, "ansible-playbook playbooks/site.yml: the runner role, then nodes, storages, guests and jobs "
                     "from docs/examples/inventory.yml")
    unlink_test_venv(lab, show)
    run = run_playbook(lab.inventory_path, "playbooks/site.yml", extra_vars=site_vars(), timeout=1800)
    show("changed tasks on node1: %s" % ", ".join(run.changed_tasks("node1")[-4:]))
    check(run.rc == 0 and not run.failures(), "site.yml converged (%d changes)" % run.changed_count())
    show(lab.exec("node2", ["cat", "/etc/storage-replication/replication.cfg"]).stdout)

    step(first_step + 1, "Guests 100 and 200 get data on node1; 'storage-replication run' there, as the timer would")
    for name, mib in VOLUMES.items():
        lab.exec("node1", ["zfs", "create", "-p", "rpool/data/" + name])
        write_data(lab, name, mib)
    started = int(time.time())
    for job_id in SYNCED_JOBS.values():
        # Due anyway on a new cluster; after an earlier demo run they synced minutes ago and would wait for their schedule.
        show("node1$ storage-replication schedule-now %s" % job_id)
        lab.exec("node1", ["storage-replication", "schedule-now", job_id])
    show("node1$ storage-replication run")
    show(lab.exec("node1", ["storage-replication", "run"], timeout=600).stdout)
    jobs = {job["id"]: job for job in cli_json(lab, "node1", "status")}
    for target, job_id in SYNCED_JOBS.items():
        job = jobs.get(job_id, {})
        check(job.get("fail_count") == 0 and (job.get("last_sync") or 0) >= started,
              "%s synced just now (%s)" % (job_id, job.get("state")))
        source, replica = replica_digests(lab, target, "vm-100-disk-0", job_id)
        check(source == replica, "%s holds guest 100's data (sha256 %s...)" % (target, replica[:16]))

    step(first_step + 2, "storage-replication status on each node (state is per node: node1 runs the jobs)")
    for node in lab.nodes:
        show("%s:\n%s" % (node, lab.exec(node, ["storage-replication", "status"]).stdout))

    step(first_step + 3, "A change on node1 (1 MiB rewritten) and its incremental sync")
    write_data(lab, "vm-100-disk-0", 1, seek=2)
    show(lab.exec("node1", ["storage-replication", "run", "--id", "100-0"], timeout=600).stdout)
    log = lab.exec("node1", ["cat", "/var/log/storage-replication/100-0.log"]).stdout
    show("\n".join(line for line in log.splitlines() if "sync" in line))
    sent = re.search(r"volume 'local-zfs:vm-100-disk-0': sent (\d+) bytes", log)
    check("incremental sync 'local-zfs:vm-100-disk-0'" in log and sent and int(sent.group(1)) < (3 << 19),
          "only the delta was sent (%s bytes for 1 MiB rewritten)" % (sent.group(1) if sent else "no"))
    source, replica = replica_digests(lab, "node2", "vm-100-disk-0", "100-0")
    check(source == replica, "node2 matches node1 again (sha256 %s...)" % replica[:16])
    return first_step + 4
