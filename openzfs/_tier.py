# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A tier of OpenZFS nodes: one QEMU guest per node, each with its own kernel ZFS, on a private link.

Each guest boots the cached image (its root disk copy-on-write, so every boot starts pristine) with:
- a blank virtio disk (/dev/vdb) for its pool;
- a control NIC: QEMU user-mode networking with restrict=on (the guest reaches nothing outside), its sshd
  forwarded to 127.0.0.1:<port> for the controller;
- a link NIC on a QEMU multicast socket netdev shared by the tier's guests: the network the nodes replicate
  over (10.99.0.<n>/24), visible only to these guests.  `partition(node)` / `heal(node)` switch a guest's link
  off and on through its QEMU monitor, as a cable pulled out and plugged back in;
- its own identity (name, ed25519 host key, authorized controller key, link address) through fw_cfg, so
  the controller pins every node's host key (no host key checking is ever switched off).

All of a tier's state lives in /var/tmp/storage-replication-openzfs/<name>/: tier.json (what is running,
so that `down` works from any process), the controller key, known_hosts, ssh_config and per-node run
directories (console log, QEMU pid file and monitor socket, the pool disk).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from lab._system import wait_until
from openzfs._image import REPO, ensure_image

TIER_ROOT = Path(os.environ.get("SR_OPENZFS_ROOT", "/var/tmp/storage-replication-openzfs"))
LINK_PREFIX = "10.99.0."
BOOT_TIMEOUT = float(os.environ.get("SR_OPENZFS_BOOT_TIMEOUT", "600"))
STOP_TIMEOUT = 30.0
POLL = 0.5


class TierError(Exception):
    """The tier could not be brought up or used; the message says what to look at."""


def kvm_usable() -> bool:
    """KVM only with hardware virtualisation: on kvm_pvm hosts (no vmx/svm) a stock kernel does not boot."""
    if not os.access("/dev/kvm", os.W_OK):
        return False
    flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    return "vmx" in flags or "svm" in flags


def accelerator_args() -> list[str]:
    if kvm_usable():
        return ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
    return ["-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int | None) -> bool:
    """The process runs (a zombie waiting for its parent to reap it does not)."""
    if not pid:
        return False
    try:
        stat = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def installation_fingerprint(group_vars: dict) -> str:
    """sha256 of what site.yml installs and converges: the collection's content and the inventory variables."""
    digest = hashlib.sha256(json.dumps(group_vars, sort_keys=True).encode())
    for top in ("plugins", "roles", "playbooks", "requirements"):
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class Tier:
    """Python API of the tier, for the tests, the benchmark and `python -m openzfs`."""

    def __init__(self, name: str = "ozfs"):
        self.name = name
        self.dir = TIER_ROOT / name
        self.key_path = self.dir / "id_ed25519"
        self.known_hosts_path = self.dir / "known_hosts"
        self.ssh_config_path = self.dir / "ssh_config"
        self.image = None

    # ------------------------------------------------------------ description

    def _load(self) -> dict:
        path = self.dir / "tier.json"
        return json.loads(path.read_text()) if path.exists() else {"nodes": {}}

    def _save(self, data: dict) -> None:
        tmp = self.dir / "tier.json.tmp"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.dir / "tier.json")

    @property
    def nodes(self) -> list[str]:
        return sorted(self._load()["nodes"])

    def node_info(self, node: str) -> dict:
        info = self._load()["nodes"].get(node)
        if info is None:
            raise TierError("node '%s' is not part of tier '%s' (nodes: %s)" % (node, self.name, ", ".join(self.nodes)))
        return info

    def address(self, node: str) -> str:
        """The node's address on the replication link."""
        return self.node_info(node)["address"]

    def host_key(self, node: str) -> str:
        return self.node_info(node)["host_key"]

    def _link_group(self) -> tuple[str, int]:
        """A multicast group and port of this tier's own (tiers of other names do not hear it)."""
        digest = hashlib.sha256(self.name.encode()).digest()
        return "239.255.%d.%d" % (digest[0], digest[1] or 1), 20000 + int.from_bytes(digest[2:4], "big") % 20000

    # ------------------------------------------------------------ up / down

    def up(self, nodes: int = 2, memory: str = "1536M", pool_disk: str = "4G", log=print) -> "Tier":
        """Boot the nodes (node1..nodeN) in parallel; returns once every one answers over ssh.  A tier kept up from
        an earlier run with at least that many nodes of the same image is used as it is."""
        self.image = ensure_image(log)
        current = self._load()
        running = [n for n, info in current["nodes"].items() if alive(info.get("pid"))]
        if len(running) == len(current["nodes"]) >= nodes and current.get("image") == str(self.image):
            return self  # kept up from an earlier run, same image, enough nodes
        if running:
            self.down()
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "openzfs-tier-controller",
                        "-f", str(self.key_path)], check=True)
        data = {"name": self.name, "image": str(self.image), "nodes": {}}
        started = time.monotonic()
        for index in range(1, nodes + 1):
            node = "node%d" % index
            data["nodes"][node] = self._start_node(node, index, memory, pool_disk)
            self._save(data)
        self._write_ssh_files(data["nodes"])
        try:
            for node in data["nodes"]:
                wait_until(lambda n=node: self._answers(n), BOOT_TIMEOUT, "node '%s' to answer over ssh" % node,
                           POLL, lambda n=node: self._console_tail(n), TierError)
            for node in data["nodes"]:  # the boot does not load it (see image/build.sh); under TCG it takes a while
                self.exec(node, ["modprobe", "zfs"], timeout=BOOT_TIMEOUT)
        except TierError:
            self.down()
            raise
        log("openzfs: %d nodes up in %.0f s (%s)" % (nodes, time.monotonic() - started, accelerator_args()[1]))
        return self

    def _start_node(self, node: str, index: int, memory: str, pool_disk: str) -> dict:
        run = self.dir / node
        run.mkdir()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", node, "-f", str(run / "host_key")],
                       check=True)
        shutil.copy(str(self.key_path) + ".pub", run / "authorized_keys")
        subprocess.run(["truncate", "-s", pool_disk, str(run / "pool.img")], check=True)
        group, group_port = self._link_group()
        port = free_port()
        mac = "52:54:00:99:00:%02x" % index
        address = LINK_PREFIX + str(index)
        fw_cfg = {"hostname": "string=" + node, "host_key": "file=%s" % (run / "host_key"),
                  "authorized_keys": "file=%s" % (run / "authorized_keys"), "link_mac": "string=" + mac,
                  "link_address": "string=%s/24" % address}
        argv = ["nice", "-n", "10", "qemu-system-x86_64"] + accelerator_args() + [
            "-m", memory, "-smp", "2", "-name", "%s-%s" % (self.name, node), "-no-reboot",
            "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet systemd.show_status=0 panic=-1",
            "-drive", "file=%s,format=raw,if=virtio,cache=unsafe,snapshot=on" % (self.image / "disk.img"),
            "-drive", "file=%s,format=raw,if=virtio,cache=unsafe" % (run / "pool.img"),
            "-nic", "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22" % port,
            "-netdev", "socket,id=link,mcast=%s:%d,localaddr=127.0.0.1" % (group, group_port),
            "-device", "virtio-net-pci,netdev=link,mac=%s" % mac,
            "-serial", "file:%s" % (run / "console.log"),
            "-monitor", "unix:%s,server=on,wait=off" % (run / "monitor.sock"),
            "-display", "none", "-daemonize", "-pidfile", str(run / "qemu.pid"),
        ]
        for item, value in fw_cfg.items():
            argv += ["-fw_cfg", "name=opt/ozfs/%s,%s" % (item, value)]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            raise TierError("QEMU did not start node '%s': %s" % (node, proc.stdout.decode(errors="replace").strip()))
        host_key = " ".join((run / "host_key.pub").read_text().split()[:2])
        return {"index": index, "port": port, "address": address, "mac": mac, "host_key": host_key,
                "pid": int((run / "qemu.pid").read_text().strip()), "run": str(run)}

    def _write_ssh_files(self, nodes: dict) -> None:
        self.known_hosts_path.write_text("".join("%s %s\n" % (n, i["host_key"]) for n, i in sorted(nodes.items())))
        blocks = ["Host %s\n  HostName 127.0.0.1\n  Port %d\n  HostKeyAlias %s\n" % (n, i["port"], n)
                  for n, i in sorted(nodes.items())]
        common = ("Host *\n  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n"
                  "  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
                  "  ConnectTimeout 10\n  ServerAliveInterval 15\n  LogLevel ERROR\n"
                  # One connection per node, reused by every command: a key exchange under software emulation
                  # costs seconds. The masters end with the guests (their sockets live in the tier's directory).
                  "  ControlMaster auto\n  ControlPath %s/cm-%%C\n  ControlPersist 15m\n"
                  % (self.key_path, self.known_hosts_path, self.dir))
        self.ssh_config_path.write_text("".join(blocks) + common)

    def _answers(self, node: str) -> bool:
        if not alive(self.node_info(node)["pid"]):
            raise TierError("QEMU of node '%s' exited during boot%s" % (node, self._console_tail(node)))
        proc = subprocess.run(self.ssh_argv(node, ["true"]), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=60, check=False)
        return proc.returncode == 0

    def _console_tail(self, node: str, lines: int = 30) -> str:
        path = Path(self.node_info(node)["run"]) / "console.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "; console of %s (%s), last lines:\n%s" % (node, path, "\n".join(text.splitlines()[-lines:]))

    def down(self) -> None:
        """Stop every node's QEMU and remove the tier's files (nothing in a guest outlives it: its disks are
        throw-away, so there is no clean shutdown to wait for)."""
        for node, info in self._load()["nodes"].items():
            self._stop(node, info)
        if self.dir.exists():
            shutil.rmtree(self.dir)

    def _stop(self, node: str, info: dict) -> None:
        pid = info.get("pid")
        if not alive(pid) or not self._is_our_qemu(pid, info):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            wait_until(lambda: not alive(pid), STOP_TIMEOUT, "QEMU of node '%s' to stop" % node, POLL, error=TierError)
        except TierError:
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not alive(pid), 10, "QEMU of node '%s' (pid %d) to exit" % (node, pid), POLL,
                       error=TierError)

    @staticmethod
    def _is_our_qemu(pid: int, info: dict) -> bool:
        """The pid still belongs to the QEMU we started (its command line names our run directory)."""
        try:
            return info["run"] in Path("/proc/%d/cmdline" % pid).read_bytes().decode(errors="replace")
        except OSError:
            return False

    # ------------------------------------------------------------ commands

    def ssh_argv(self, node: str, argv: list[str]) -> list[str]:
        """OpenSSH client argv running argv as root on node (arguments quoted for the remote shell)."""
        return ["ssh", "-F", str(self.ssh_config_path), "-T", node, "--", shlex.join([str(a) for a in argv])]

    def exec(self, node: str, argv: list[str], input: str | bytes | None = None, check: bool = True,
             timeout: float = 600) -> subprocess.CompletedProcess:
        """Run argv on node; text output (bytes if input is bytes); TierError with stderr if check and it fails."""
        text = not isinstance(input, bytes)
        proc = subprocess.run(self.ssh_argv(node, argv), input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=text, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise TierError("on %s: %s failed (exit code %d): %s" % (
                node, shlex.join([str(a) for a in argv]), proc.returncode, proc.stderr.strip()))
        return proc

    def sh(self, node: str, script: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run a fixed shell script (a test's own text, never built from outside values) on node."""
        return self.exec(node, ["sh", "-euc", script], check=check, timeout=timeout)

    def put(self, node: str, path: str, data: bytes, mode: str = "0644") -> None:
        self.exec(node, ["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"', "sh", path, mode],
                  input=data)

    # ------------------------------------------------------------ failures

    def _monitor(self, node: str, command: str) -> str:
        path = Path(self.node_info(node)["run"]) / "monitor.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(command.encode() + b"\n")
            reply = b""
            while not reply.rstrip().endswith(b"(qemu)") or reply.count(b"(qemu)") < 2:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.decode(errors="replace")

    def partition(self, node: str) -> None:
        """Pull the node's link cable: its replication network goes down (the control NIC stays up)."""
        self._monitor(node, "set_link link off")

    def heal(self, node: str) -> None:
        self._monitor(node, "set_link link on")

    def status(self) -> dict:
        return {node: {"running": alive(info.get("pid")), "address": info["address"], "ssh_port": info["port"]}
                for node, info in self._load()["nodes"].items()}

    # ------------------------------------------------------------ Ansible

    def converged_with(self, group_vars: dict) -> bool:
        """site.yml already converged this tier from the current collection with these inventory variables (a tier
        kept up between runs is then not converged again: under software emulation that takes minutes)."""
        marker = self.dir / "site-converged"
        return marker.exists() and marker.read_text() == installation_fingerprint(group_vars)

    def mark_converged(self, group_vars: dict | None) -> None:
        """Record that site.yml converged the tier with group_vars (None: it was changed otherwise, forget it)."""
        marker = self.dir / "site-converged"
        if group_vars is None:
            marker.unlink(missing_ok=True)
        else:
            marker.write_text(installation_fingerprint(group_vars))

    def write_inventory(self, group_vars: dict | None = None) -> Path:
        """inventory.yml (JSON is YAML) with the group replication_nodes: Ansible reaches each node through the
        tier's ssh_config (pinned host keys); peers reach each other on the link address."""
        hosts = {}
        for node in self.nodes:
            hosts[node] = {"ansible_host": node, "ansible_user": "root",
                           "ansible_ssh_common_args": "-F %s" % self.ssh_config_path,
                           "ansible_python_interpreter": "/usr/bin/python3",
                           "runner_node_address": self.address(node), "runner_node_port": 22}
        inventory = {"all": {"children": {"replication_nodes": {"hosts": hosts, "vars": group_vars or {}}}}}
        path = self.dir / "inventory.yml"
        path.write_text(json.dumps(inventory, indent=1, sort_keys=True))
        return path
