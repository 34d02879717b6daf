# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""`make demo`: a lab of real nodes, and proof that they are real. Each step prints what it does and what it saw.

The lab comes up, Ansible reaches it, a raw `zfs send | ssh | zfs recv` crosses it; then site.yml converges the
example inventory (lab/site_tour.py) and a failover tour adds a service guest with a second site.yml run, kills the
node that runs it and brings it back (lab/failover_tour.py). Each OK line is the result of the check it names.

The demo ends on the cluster that site.yml made, with the runner the role installed: the README's Quick tour works
on it as written. The lab stays up afterwards (`make lab-down` removes it). Running the demo again is harmless: the
lab is reused, site.yml converges it back to the example inventory, and the demo's data is made anew.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from lab import Lab, LabError

DEMO_DATASET = "rpool/data/demo"
# node1's temporary key for node2 (only this demo's send); the runner role sets up the real node-to-node trust.
DEMO_KEY = "/root/.ssh/lab-demo_ed25519"
DEMO_KNOWN_HOSTS = "/root/.ssh/lab-demo_known_hosts"
DEMO_MARKER = "storage-replication-lab-demo"
DEFAULT_LAB = "srlab"  # python3 -m lab's default too: the README's commands name no lab


class DemoFailed(Exception):
    pass


STARTED = [time.monotonic()]  # when main() began: each step says how far into the demo it starts


def step(number: int, title: str) -> None:
    print(f"\n==> {number}. {title}   [{time.monotonic() - STARTED[0]:.0f} s]", flush=True)


def show(text: str) -> None:
    for line in text.rstrip("\n").splitlines():
        print(f"    {line}")


def check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(what)
    print(f"    OK: {what}")


def bring_up(lab: Lab) -> None:
    step(1, f"Bring up the lab {lab.name!r}: 3 nodes, each with its own network namespace, zfs-fuse and sshd")
    lab.up(nodes=3, out=show)
    for node in lab.nodes:
        show(f"{node}: {lab.address(node)}")


def ansible_ping(lab: Lab) -> None:
    step(2, "Ansible reaches every node over SSH (controller key, host keys pinned in the lab's known_hosts)")
    ansible = Path(sys.executable).parent / "ansible"
    argv = [str(ansible), "-i", str(lab.inventory_path), "replication_nodes", "-m", "ansible.builtin.ping"]
    show("$ " + " ".join(argv))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    show(result.stdout + result.stderr)
    check(result.returncode == 0 and all(f"{node} | SUCCESS" in result.stdout for node in lab.nodes),
          f"ansible ping answered by {', '.join(lab.nodes)}")


def own_pools(lab: Lab) -> None:
    step(3, "Each node lists only its own pool (same names as in a real cluster, different pools)")
    guids = {}
    for node in lab.nodes:
        pools = lab.ssh(node, ["zpool", "list", "-H", "-o", "name"]).stdout.split()
        guids[node] = lab.ssh(node, ["zpool", "get", "guid", "rpool"]).stdout.split()[-2]  # zfs-fuse: no -H
        show(f"{node} (ssh, hostname {lab.ssh(node, ['hostname']).stdout.strip()}): pools {pools}, rpool guid {guids[node]}")
        check(pools == ["rpool"], f"{node} sees exactly one pool")
    check(len(set(guids.values())) == len(lab.nodes), "the pools are different pools")


def make_demo_data(lab: Lab) -> str:
    for node in lab.nodes[:2]:
        lab.destroy_dataset(node, DEMO_DATASET)  # from an earlier run
    lab.exec("node1", ["zfs", "create", DEMO_DATASET])
    for index, mib in enumerate((5, 2, 1)):
        lab.exec("node1", ["dd", "if=/dev/urandom", f"of=/{DEMO_DATASET}/file{index}", "bs=1M", f"count={mib}",
                           "status=none"])
    snapshot = f"{DEMO_DATASET}@demo-{time.strftime('%Y%m%d-%H%M%S')}"
    lab.exec("node1", ["zfs", "snapshot", snapshot])
    return snapshot


def trust_node1_on_node2(lab: Lab) -> None:
    """node1 gets a key that node2 accepts from node1's address only; node1 pins node2's host key."""
    lab.exec("node1", ["rm", "-f", DEMO_KEY, DEMO_KEY + ".pub"])
    lab.exec("node1", ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", DEMO_MARKER, "-f", DEMO_KEY])
    public_key = lab.exec("node1", ["cat", DEMO_KEY + ".pub"]).stdout.strip()
    host_key = lab.exec("node2", ["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout.split()[:2]
    lab.exec("node1", ["tee", DEMO_KNOWN_HOSTS], input=f"{lab.address('node2')} {' '.join(host_key)}\n")
    untrust_node1_on_node2(lab)
    authorized = lab.private_path("node2", "/root/.ssh") / "authorized_keys"
    with open(authorized, "a", encoding="utf-8") as keys:
        keys.write(f'from="{lab.address("node1")}" {public_key}\n')


def untrust_node1_on_node2(lab: Lab) -> None:
    authorized = lab.private_path("node2", "/root/.ssh") / "authorized_keys"
    kept = [line for line in authorized.read_text(encoding="utf-8").splitlines(keepends=True) if DEMO_MARKER not in line]
    authorized.write_text("".join(kept), encoding="utf-8")


def send_node1_to_node2(lab: Lab) -> None:
    step(4, "A snapshot sent from node1 into node2: zfs send | ssh node2 zfs recv, run inside node1")
    snapshot = make_demo_data(lab)
    source = lab.tree_digest("node1", f"/{DEMO_DATASET}")
    show(f"node1: {snapshot} holds 8 MiB of random data, tree sha256 {source}")
    trust_node1_on_node2(lab)
    try:
        ssh = ["ssh", "-i", DEMO_KEY, "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={DEMO_KNOWN_HOSTS}",
               "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"root@{lab.address('node2')}"]
        send = ["zfs", "send", snapshot]
        recv = ssh + ["--", "zfs", "recv", DEMO_DATASET]
        show(f"node1$ {' '.join(send)} | {' '.join(recv)}")
        started = time.monotonic()
        pipe(lab.exec_argv("node1", send), lab.exec_argv("node1", recv))
        seconds = time.monotonic() - started
    finally:
        untrust_node1_on_node2(lab)
        lab.exec("node1", ["rm", "-f", DEMO_KEY, DEMO_KEY + ".pub", DEMO_KNOWN_HOSTS])
    show(f"sent in {seconds:.1f} s")
    received = lab.tree_digest("node2", f"/{DEMO_DATASET}")
    show(f"node2: {snapshot} received, tree sha256 {received}")
    check(snapshot in lab.exec("node2", ["zfs", "list", "-H", "-o", "name", "-t", "snapshot"]).stdout.split(),
          f"node2 has {snapshot}")
    check(received == source, "the data on node2 is identical to node1's (sha256 compared)")


def pipe(producer: list, consumer: list) -> None:
    """producer | consumer, without a shell; DemoFailed with both stderrs if either fails."""
    with subprocess.Popen(producer, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as send, \
            subprocess.Popen(consumer, stdin=send.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as recv:
        send.stdout.close()  # recv owns the read end now; send gets SIGPIPE if recv dies
        recv_out, recv_err = recv.communicate(timeout=300)
        send_err = send.stderr.read()
        send.wait(timeout=60)
    if send.returncode or recv.returncode:
        raise DemoFailed(f"zfs send exited {send.returncode} ({send_err.decode(errors='replace').strip()}), "
                         f"ssh/zfs recv exited {recv.returncode} ({(recv_out + recv_err).decode(errors='replace').strip()})")


def explore_hint(lab: Lab) -> None:
    lab_command = "python3 -m lab" + ("" if lab.name == DEFAULT_LAB else f" --name {lab.name}")
    print(f"\nThe lab {lab.name!r} is still up, as site.yml made it. The Quick tour of README.md starts here:")
    show(f"{lab_command} exec node1 -- storage-replication status")
    print("Look around:")
    show(f"{lab_command} status")
    show(f"ssh -F {lab.ssh_config_path} node1")
    show(f"{lab_command} exec node2 -- zfs list -t all")
    show(f"ansible -i {lab.inventory_path} replication_nodes -m ansible.builtin.setup -a filter=ansible_hostname")
    show("make lab-down   # removes it" if lab.name == DEFAULT_LAB else f"make lab-down LAB_ARGS='--name {lab.name}'")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=DEFAULT_LAB, help=f"lab name (default: {DEFAULT_LAB})")
    args = parser.parse_args(argv)
    STARTED[0] = time.monotonic()
    try:
        lab = Lab(args.name)
        bring_up(lab)
        ansible_ping(lab)
        own_pools(lab)
        send_node1_to_node2(lab)
        from lab.site_tour import site_tour  # site.yml, replication, status per node, an incremental sync (issue 6)
        next_step = site_tour(lab, step, show, check, first_step=5)
        from lab.failover_tour import failover_tour  # the failover tour (issue 7)
        failover_tour(lab, step, show, check, first_step=next_step)
    except (LabError, DemoFailed) as exc:
        print(f"\ndemo: FAILED: {exc}", file=sys.stderr)
        return 1
    explore_hint(lab)
    print(f"\ndemo: all steps passed in {time.monotonic() - STARTED[0]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
