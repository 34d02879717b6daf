# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The lab's nodes are real and separate, and its failures are real: kill, partition, fill, down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from lab import LAB_ROOT, Lab
from lab._system import mount_targets, processes_in

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# Connects to HOST:PORT given as arguments; exit 0 when something answers. Runs inside a node.
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()"


def lab_cli(*args, env=None):
    return subprocess.run([PYTHON, "-m", "lab", *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=env, check=False)


@pytest.fixture
def dataset(lab):
    """A fresh dataset name under rpool/data; destroyed on every node afterwards."""
    name = f"rpool/data/t{uuid.uuid4().hex[:8]}"
    yield name
    for node in lab.nodes:
        lab.destroy_dataset(node, name)


def write_random(lab, node, dataset, mib=4):
    """A dataset with a file of random data and a snapshot @s1 (a snapshot commits the data to disk)."""
    lab.exec(node, ["zfs", "create", dataset])
    lab.exec(node, ["dd", "if=/dev/urandom", f"of=/{dataset}/blob", "bs=1M", f"count={mib}", "status=none"])
    lab.exec(node, ["zfs", "snapshot", f"{dataset}@s1"])
    return lab.tree_digest(node, f"/{dataset}")


def daemon_pids(lab, node):
    """The node's sshd listener (from its pid file) and zfs-fuse daemon."""
    sshd = (lab.private_path(node, "/run/sshd") / "sshd.pid").read_text(encoding="utf-8").strip()
    return sshd, [pid for pid, comm in processes_in(lab._namespaces(node)).items() if comm == "zfs-fuse"]


def datasets(lab, node):
    return lab.exec(node, ["zfs", "list", "-H", "-o", "name", "-t", "all"]).stdout.split()


# ---- isolation ---------------------------------------------------------------------------------------------------

def test_dataset_and_file_made_on_node1_do_not_appear_on_node2(lab, dataset):
    write_random(lab, "node1", dataset)
    lab.exec("node1", ["touch", "/etc/storage-replication/only-on-node1"])
    try:
        assert dataset in datasets(lab, "node1")
        assert dataset not in datasets(lab, "node2")
        assert lab.exec("node2", ["test", "-e", f"/{dataset}/blob"], check=False).returncode == 1
        assert lab.exec("node2", ["test", "-e", "/etc/storage-replication/only-on-node1"], check=False).returncode == 1
    finally:
        lab.exec("node1", ["rm", "-f", "/etc/storage-replication/only-on-node1"])


def test_each_node_has_its_own_pool_name_and_host_key(lab):
    guids = {lab.exec(n, ["zpool", "get", "guid", "rpool"]).stdout.split()[-2] for n in lab.nodes}  # zfs-fuse: no -H
    keys = {lab.exec(n, ["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout.split()[1] for n in lab.nodes}
    names = [lab.ssh(n, ["hostname"]).stdout.strip() for n in lab.nodes]
    assert len(guids) == len(keys) == len(lab.nodes) == 3
    assert names == lab.nodes
    for node in lab.nodes:
        assert lab.exec(node, ["zpool", "list", "-H", "-o", "name"]).stdout.split() == ["rpool"]
        assert datasets(lab, node)[:2] == ["rpool", "rpool/data"]
    known = lab.known_hosts_path.read_text(encoding="utf-8")
    assert all(key in known for key in keys)


def test_node1_reaches_node2_zfs_only_through_ssh(lab):
    sockets = {lab.exec(n, ["stat", "-c", "%d:%i", "/run/zfs/zfs_socket"]).stdout.strip() for n in lab.nodes}
    assert len(sockets) == 3  # every node talks to its own daemon
    # The lab directory (other nodes' disks, the controller key) is hidden inside a node.
    assert lab.exec("node1", ["ls", "-A", str(lab.dir.parent)]).stdout == ""
    assert lab.exec("node1", ["zpool", "import", "-d", str(lab.dir / "nodes" / "node2")], check=False).returncode != 0
    # node2's sshd is the way in: from node1 it answers on port 22, and nothing else listens there.
    node2 = lab.address("node2")
    assert lab.exec("node1", ["python3", "-c", CONNECT, node2, "22"], check=False).returncode == 0
    assert lab.exec("node1", ["python3", "-c", CONNECT, node2, "2049"], check=False).returncode != 0


def test_ansible_reaches_every_node_over_ssh_with_pinned_host_keys(lab):
    result = subprocess.run([str(Path(PYTHON).parent / "ansible"), "-i", str(lab.inventory_path), "replication_nodes",
                             "-m", "ansible.builtin.command", "-a", "hostname"],
                            capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True"})
    assert result.returncode == 0, result.stdout + result.stderr
    for node in lab.nodes:
        assert f"{node} | CHANGED | rc=0 >>\n{node}\n" in result.stdout


def test_inventory_and_ssh_config_pin_host_keys(lab):
    inventory = lab.inventory_path.read_text(encoding="utf-8")
    ssh_config = lab.ssh_config_path.read_text(encoding="utf-8")
    assert "StrictHostKeyChecking=yes" in inventory and "StrictHostKeyChecking=no" not in inventory
    assert "StrictHostKeyChecking yes" in ssh_config and f"UserKnownHostsFile {lab.known_hosts_path}" in ssh_config
    for node in lab.nodes:
        assert f"ansible_host: {lab.address(node)}" in inventory


def test_up_again_is_harmless(lab, dataset):
    before = write_random(lab, "node1", dataset)
    daemons_before = daemon_pids(lab, "node1")
    elapsed = lab.up(nodes=3, pool_size="1G", out=lambda line: None)
    assert elapsed < 5
    assert daemon_pids(lab, "node1") == daemons_before
    assert lab.tree_digest("node1", f"/{dataset}") == before


# ---- failures ----------------------------------------------------------------------------------------------------

def test_kill_makes_node_unreachable_and_revive_brings_its_data_back(module_lab):
    lab, dataset = module_lab, "rpool/data/killed"
    before = write_random(lab, "node1", dataset)
    try:
        assert lab.kill("node1") >= 2
        assert processes_in(lab._namespaces("node1")) == {}
        assert lab.ssh("node1", ["true"], check=False).returncode == 255
        assert lab.status()["nodes"]["node1"]["zfs"] is False
    finally:
        lab.revive("node1")
    assert lab.ssh("node1", ["hostname"]).stdout.strip() == "node1"
    assert lab.tree_digest("node1", f"/{dataset}") == before
    assert f"{dataset}@s1" in datasets(lab, "node1")
    lab.destroy_dataset("node1", dataset)


def test_partition_blocks_traffic_and_heal_restores_it(module_lab):
    lab = module_lab
    connect = ["python3", "-c", CONNECT, lab.address("node2"), "22"]
    assert lab.exec("node1", connect, check=False).returncode == 0
    lab.partition("node2")
    try:
        assert lab.exec("node1", connect, check=False).returncode != 0
        assert lab.ssh("node2", ["true"], check=False, timeout=30).returncode == 255
        assert lab.status()["nodes"]["node2"]["link"] == "down"
    finally:
        lab.heal("node2")
    assert lab.exec("node1", connect, check=False).returncode == 0
    assert lab.ssh("node2", ["hostname"]).stdout.strip() == "node2"


def test_fill_makes_zfs_recv_fail_with_out_of_space_and_unfill_undoes_it(module_lab):
    lab, dataset = module_lab, "rpool/data/filled"
    before = write_random(lab, "node3", dataset)
    stream = lab.exec("node3", ["zfs", "send", f"{dataset}@s1"], text=False).stdout
    lab.destroy_dataset("node3", dataset)
    lab.fill("node3")
    try:
        failed = lab.exec("node3", ["zfs", "recv", dataset], input=stream, text=False, check=False)
        assert failed.returncode != 0
        assert b"out of space" in failed.stderr
        assert dataset not in datasets(lab, "node3")
    finally:
        lab.unfill("node3")
    lab.exec("node3", ["zfs", "recv", dataset], input=stream, text=False)
    assert lab.tree_digest("node3", f"/{dataset}") == before
    lab.destroy_dataset("node3", dataset)


# ---- down --------------------------------------------------------------------------------------------------------

def leftovers(lab_name, bridge_and_veths, namespaces):
    """Everything of a lab still on the machine: netns, links, mounts, processes, files."""
    found = [n for n in os.listdir("/run/netns") if n.startswith(f"srlab-{lab_name}-")] if os.path.isdir("/run/netns") else []
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    found += [link for link in bridge_and_veths if f" {link}:" in links or f" {link}@" in links]
    found += [m for m in mount_targets() if str(LAB_ROOT / lab_name) in m]
    found += [f"pid {pid} ({comm})" for ns in namespaces for pid, comm in processes_in(ns).items()]
    found += [str(LAB_ROOT / lab_name)] if (LAB_ROOT / lab_name).exists() else []
    return found


def test_a_checkout_under_tmp_is_seen_by_the_nodes_at_its_own_path():
    """Issue 16: people and CI clone into /tmp, which every node keeps private; the nodes still run that checkout's
    engine and venv, at the path the host sees, while their own /tmp stays private."""
    checkout = Path(tempfile.mkdtemp(prefix="sr-checkout-", dir="/tmp"))
    (checkout / "marker").write_text("this checkout\n", encoding="utf-8")
    own = Lab("srcheckout", checkout=checkout)
    try:
        own.up(nodes=1, pool_size="128M")
        assert own.exec("node1", ["cat", str(checkout / "marker")]).stdout == "this checkout\n"
        own.exec("node1", ["sh", "-c", "echo node > /tmp/node-only"])
        assert not Path("/tmp/node-only").exists()
    finally:
        own.down()
        subprocess.run(["rm", "-rf", str(checkout)], check=False)


def test_down_leaves_nothing_also_after_a_crash(lab):
    """A separate lab (the session lab stays up). Up, then lose lab.json as a crash would, then down."""
    doomed = Lab("srtdown")
    elapsed = doomed.up(nodes=3, out=lambda line: None)
    assert elapsed < 30
    links = [doomed._bridge] + [doomed._veth(n) for n in doomed.nodes]
    namespaces = [doomed._namespaces(n) for n in doomed.nodes]
    assert all(processes_in(ns) for ns in namespaces)
    assert leftovers("srtdown", links, []) != []
    doomed.json_path.unlink()
    result = lab_cli("down", "--name", "srtdown")
    assert result.returncode == 0, result.stderr
    assert "removed (3 nodes)" in result.stdout
    assert leftovers("srtdown", links, namespaces) == []
    assert lab.ssh("node1", ["true"]).returncode == 0  # the session lab is untouched


# ---- bad input ---------------------------------------------------------------------------------------------------

def test_unknown_node_is_one_clear_line_and_exit_1(lab):
    result = lab_cli("kill", "--name", lab.name, "node9")
    assert result.returncode == 1
    assert result.stderr == f"lab: lab {lab.name} has no node 'node9' (nodes: node1, node2, node3)\n"
    assert lab.status()["nodes"]["node1"]["sshd"] is True


def test_down_of_an_absent_lab_says_so_and_exits_0():
    result = lab_cli("down", "--name", "srtabsent")
    assert (result.returncode, result.stdout, result.stderr) == (0, "lab srtabsent: nothing to remove\n", "")


def test_up_without_zfs_fuse_or_sshd_says_what_to_install_and_creates_nothing():
    result = lab_cli("up", "--name", "srtnobin", env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert result.stderr == ("lab: zfs-fuse not found in PATH: install the Debian package zfs-fuse "
                             "(`make deps` does)\n")
    assert not (LAB_ROOT / "srtnobin").exists()


@pytest.mark.parametrize("args, message", [
    (["up", "--name", "Bad_Name"], "lab: lab name 'Bad_Name' is not valid"),
    (["up", "--name", "srtbad", "--pool-size", "lots"], "lab: pool size 'lots' is not a size"),
    (["up", "--name", "srtbad", "--nodes", "0"], "lab: --nodes 0: a lab has 1 to 50 nodes"),
    (["exec", "--name", "srtbad", "node1", "--", "true"], "lab: lab srtbad is not up"),
    (["--name", "srtbad", "kill", "node3"], "lab: lab srtbad is not up"),  # --name before the command works too
])
def test_bad_arguments_are_refused_without_a_trace(args, message):
    result = lab_cli(*args)
    assert result.returncode == 1
    assert result.stderr.startswith(message) and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not (LAB_ROOT / "srtbad").exists()


def test_status_json_describes_every_node(lab):
    result = lab_cli("status", "--name", lab.name, "--json")
    status = json.loads(result.stdout)
    assert status["exists"] is True and status["subnet"].startswith("10.")
    assert {n: (s["zfs"], s["sshd"], s["ssh"], s["link"]) for n, s in status["nodes"].items()} == {
        n: (True, True, True, "up") for n in lab.nodes}
