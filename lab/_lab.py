# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The Lab class: build, inspect, break and remove a lab of real nodes (see the package docstring)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lab._system import (LabCommandError, LabError, describe_failure, end_processes, is_mount_point, mount_targets,
                         ns_inode, process_argv, processes_in, run, spawn_detached, tcp_open, wait_until)

LAB_ROOT = Path("/var/tmp/storage-replication-lab")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
SIZE_RE = re.compile(r"^([0-9]+)([KMGT]?)$")
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MIN_POOL_BYTES = 64 << 20  # zpool refuses smaller vdevs
HEAL_SECONDS = 15
# run in a peer's network namespace by heal: connect to argv[1]:22 until the path works or argv[2] seconds pass
REACH_PORT_22 = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        socket.create_connection((sys.argv[1], 22), timeout=1).close()
        break
    except ConnectionRefusedError:
        break
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit("%s is not reachable: %s" % (sys.argv[1], exc))
        time.sleep(0.1)
"""
MAX_NODES = 50  # addresses .11 to .60 of the lab's /24

# What a node keeps to itself: each gets a per-node directory bind-mounted over it in the node's mount namespace.
# realpath() folds /var/run -> /run and /var/lock -> /run/lock where the distribution links them.
PRIVATE_PATHS = tuple(dict.fromkeys(os.path.realpath(p) for p in (
    "/var/run/zfs", "/run/lock/zfs", "/var/lock/zfs", "/var/lib/zfs", "/etc/zfs",
    "/etc/storage-replication", "/var/lib/storage-replication", "/var/log/storage-replication",
    "/opt/storage-replication", "/root/.ssh", "/etc/ssh", "/etc/systemd/system", "/run/sshd", "/tmp",
    # The connection keeper's socket: a node's runs borrow from the node's own keeper.
    "/run/storage-replication",
    # The runner's default metrics file (textfile collector) lives below it: a node's file stays in the node.
    "/var/lib/prometheus",
    # The pool's mount point too: zfs creates dataset mount points below it, sometimes before the pool's own
    # FUSE mount is there, and they must not land in a directory that the other nodes see.
    "/rpool")))
# The checkout this lab serves: the nodes run its engine, its virtualenv and its test workloads at the paths the host
# sees.  People and CI clone anywhere, /tmp included, which every node keeps private.
CHECKOUT = Path(__file__).resolve().parent.parent
# Root's shell start files, replaced per node by the distribution's defaults: the machine's own (pyenv, cargo)
# make every SSH login into a node wait on locks in directories all nodes share.
PRIVATE_FILES = ("/root/.bashrc", "/root/.profile")
POOL = "rpool"
POOL_MOUNTPOINT = "/rpool"
DATASET = "rpool/data"
FILLER = "rpool/lab-fill"
DISK_DIR = "/var/lib/zfs"  # inside the node: the pool's backing file lives with the node's private ZFS state
NODE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "USER=root",
            "LOGNAME=root", "SHELL=/bin/sh", "LANG=C.UTF-8")

# command -> Debian package that provides it
REQUIRED_COMMANDS = {
    "zfs-fuse": "zfs-fuse", "zpool": "zfs-fuse", "zfs": "zfs-fuse", "sshd": "openssh-server",
    "ssh": "openssh-client", "ssh-keygen": "openssh-client", "ip": "iproute2", "unshare": "util-linux",
    "nsenter": "util-linux", "setsid": "util-linux", "findmnt": "util-linux", "mount": "mount",
}


def _is_below(path: Path, directory: str) -> bool:
    return str(path).startswith(directory.rstrip("/") + "/")


def parse_size(text: str) -> int:
    """'1G' -> bytes; LabError for anything else."""
    match = SIZE_RE.match(str(text).strip().upper())
    if not match:
        raise LabError(f"pool size {text!r} is not a size: use a number with an optional K, M, G or T suffix, e.g. 4G")
    size = int(match.group(1)) * SIZE_UNITS[match.group(2)]
    if size < MIN_POOL_BYTES:
        raise LabError(f"pool size {text!r} is too small: ZFS needs at least 64M")
    return size


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, mounts): run it as root")


def require_commands() -> None:
    for command, package in REQUIRED_COMMANDS.items():
        if not shutil.which(command):
            raise LabError(f"{command} not found in PATH: install the Debian package {package} (`make deps` does)")


@contextlib.contextmanager
def flocked(path: Path):
    """Exclusive flock on a directory, created if missing. Retries when the directory was removed (by `down`)
    while we waited, so that the lock we hold is always on the directory that is there now."""
    while True:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if ns_inode(path) == os.fstat(fd).st_ino:
                yield
                return
        finally:
            os.close(fd)


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write in place (same inode: a bind mount of the file keeps showing the new content)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)


def remove_empty_dir(path) -> None:
    """rmdir that leaves a directory alone when something is in it (or mounted on it) now."""
    try:
        os.rmdir(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EBUSY):
            raise


def _in_lab_dir(name: str) -> property:
    """A read-only attribute: the path of the file ``name`` in the lab's directory."""
    return property(lambda lab: lab.dir / name, doc=f"{name} in the lab's directory")


class Lab:
    """One lab of real nodes. Cheap to construct; every method reads the lab's state from lab.json."""

    def __init__(self, name: str = "srlab", root: Path = LAB_ROOT, checkout: Path = CHECKOUT):
        if not NAME_RE.match(str(name)):
            raise LabError(f"lab name {name!r} is not valid: use 1-20 lowercase letters, digits or '-', starting with a letter")
        self.name = name
        self.root = Path(root)
        self.checkout = Path(checkout)
        short = hashlib.sha256(name.encode()).hexdigest()[:7]
        self._bridge = f"srb{short}"
        self._veth_prefix = f"srv{short}n"

    # ---- paths and facts -------------------------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        return self.root / self.name

    # The lab's files, in its directory.
    json_path = _in_lab_dir("lab.json")
    inventory_path = _in_lab_dir("inventory.yml")
    ssh_config_path = _in_lab_dir("ssh_config")
    known_hosts_path = _in_lab_dir("known_hosts")
    controller_key_path = _in_lab_dir("id_ed25519")
    hosts_path = _in_lab_dir("hosts")

    def _load(self):
        try:
            return json.loads(self.json_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise LabError(f"{self.json_path} is damaged ({exc}): run `python -m lab down --name {self.name}`") from exc

    def _save(self, meta: dict) -> None:
        tmp = self.json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.json_path)

    def _meta(self) -> dict:
        meta = self._load()
        if meta is None:
            raise LabError(f"lab {self.name} is not up: run `python -m lab up --name {self.name}`")
        return meta

    @property
    def nodes(self) -> list:
        meta = self._load()
        return sorted(meta["nodes"], key=lambda n: int(n[4:])) if meta else []

    def _node(self, node: str) -> dict:
        meta = self._meta()
        if node not in meta["nodes"]:
            raise LabError(f"lab {self.name} has no node {node!r} (nodes: {', '.join(self.nodes)})")
        return meta["nodes"][node]

    def address(self, node: str) -> str:
        return self._node(node)["address"]

    def node_dir(self, node: str) -> Path:
        return self.dir / "nodes" / node

    def private_path(self, node: str, path: str) -> Path:
        """The host-side directory that the node sees at `path` (one of PRIVATE_PATHS or below)."""
        return self.node_dir(node) / "root" / path.lstrip("/")

    def _netns(self, node: str) -> str:
        return f"srlab-{self.name}-{node}"

    def _veth(self, node: str) -> str:
        return f"{self._veth_prefix}{node[4:]}"

    def _ns_file(self, node: str, kind: str) -> Path:
        return self.dir / "ns" / f"{node}.{kind}"

    def _namespaces(self, node: str) -> dict:
        return {"net": ns_inode(f"/run/netns/{self._netns(node)}"), "mnt": ns_inode(self._ns_file(node, "mnt")),
                "uts": ns_inode(self._ns_file(node, "uts"))}

    def _enter(self, node: str) -> list:
        return ["nsenter", f"--net=/run/netns/{self._netns(node)}", f"--mount={self._ns_file(node, 'mnt')}",
                f"--uts={self._ns_file(node, 'uts')}", "--"]

    # ---- running things on nodes -----------------------------------------------------------------------------

    def exec_argv(self, node: str, argv: list) -> list:
        """The argv that runs argv inside the node's namespaces (for pipelines: Popen it yourself)."""
        self._node(node)
        # A clean root environment, as a login on the node would have: nothing of the controller's (PYTHONPATH,
        # ANSIBLE_*) leaks into the node.
        return self._enter(node) + ["env", "-i", *NODE_ENV] + [str(a) for a in argv]

    def net_argv(self, node: str, argv: list) -> list:
        """The argv that runs argv in the node's network namespace only (the controller's files and environment):
        a program that must reach the node's loopback, or no network but the lab's (a browser in the tests)."""
        self._node(node)
        return ["nsenter", f"--net=/run/netns/{self._netns(node)}", "--"] + [str(a) for a in argv]

    def ssh_argv(self, node: str, argv: list) -> list:
        """The argv that runs argv on the node through its real sshd, as the controller. ssh hands the remote
        shell one string, so each argument is quoted for it (shlex.join): no value is interpreted by a shell."""
        self._node(node)
        return ["ssh", "-F", str(self.ssh_config_path), node, "--", shlex.join(str(a) for a in argv)]

    def exec(self, node: str, argv: list, check: bool = True, input=None, timeout: float = 60, text: bool = True):
        """Run argv inside the node's namespaces (as root, with the node's own files and ZFS) and capture its
        output. Returns the CompletedProcess; raises LabCommandError when check and the command fails."""
        return run(self.exec_argv(node, argv), check=check, input=input, timeout=timeout, text=text, where=node)

    def ssh(self, node: str, argv: list, check: bool = True, input=None, timeout: float = 60, text: bool = True):
        """Like exec, but through the node's sshd (what Ansible and peers see)."""
        return run(self.ssh_argv(node, argv), check=check, input=input, timeout=timeout, text=text, where=f"ssh {node}")

    def tree_digest(self, node: str, path: str) -> str:
        """sha256 over the sorted list of (sha256, relative name) of every file below path on the node: equal
        digests mean equal file trees."""
        listing = self.exec(node, ["find", path, "-type", "f", "-exec", "sha256sum", "{}", "+"], timeout=600).stdout
        entries = sorted(f"{digest}  {os.path.relpath(name, path)}\n"
                         for digest, name in (line.split(None, 1) for line in listing.splitlines()))
        return hashlib.sha256("".join(entries).encode()).hexdigest()

    # ---- up ----------------------------------------------------------------------------------------------------

    def up(self, nodes=None, pool_size=None, out=print) -> float:
        """Bring the lab up (or repair it); returns the seconds it took. nodes and pool_size default to what an
        existing lab has, else 3 and 1G."""
        started = time.monotonic()
        existing = self._load() or {"nodes": {}, "pool_size": "1G"}
        nodes = nodes if nodes is not None else (len(existing["nodes"]) or 3)
        pool_size = pool_size if pool_size is not None else existing["pool_size"]
        if not 1 <= int(nodes) <= MAX_NODES:
            raise LabError(f"--nodes {nodes}: a lab has 1 to {MAX_NODES} nodes")
        parse_size(pool_size)
        require_root()
        require_commands()
        with flocked(self.dir):
            meta = self._plan(int(nodes), pool_size.strip().upper())
            self._prepare_host(meta)
            with ThreadPoolExecutor(max_workers=min(8, len(meta["nodes"]))) as pool:
                list(pool.map(self._ensure_node, self.nodes))
            self._write_access_files(meta)
            meta["state"] = "up"
            self._save(meta)
        elapsed = time.monotonic() - started
        out(f"lab {self.name}: {len(meta['nodes'])} nodes up in {elapsed:.1f} s "
            f"(subnet {meta['subnet']}, inventory {self.inventory_path})")
        return elapsed

    def _plan(self, nodes: int, pool_size: str) -> dict:
        """Load or create lab.json (written before anything else, so that `down` finds a half-built lab)."""
        meta = self._load()
        if meta is None:
            with flocked(self.root):  # two new labs must not pick the same subnet
                subnet = self._choose_subnet()
                meta = {"name": self.name, "state": "creating", "subnet": str(subnet), "bridge": self._bridge,
                        "host_address": str(subnet[1]), "pool_size": pool_size, "nodes": {}}
                self._save(meta)
        elif meta["pool_size"] != pool_size:
            raise LabError(f"lab {self.name} exists with pool size {meta['pool_size']}, not {pool_size}: "
                           f"run `python -m lab down --name {self.name}` first")
        elif nodes < len(meta["nodes"]):
            raise LabError(f"lab {self.name} has {len(meta['nodes'])} nodes, more than {nodes}: "
                           f"run `python -m lab down --name {self.name}` first to make it smaller")
        subnet = ipaddress.ip_network(meta["subnet"])
        for index in range(1, nodes + 1):
            meta["nodes"].setdefault(f"node{index}", {"address": str(subnet[10 + index]), "netns": "", "veth": ""})
            meta["nodes"][f"node{index}"].update(netns=self._netns(f"node{index}"), veth=self._veth(f"node{index}"))
        self._save(meta)
        return meta

    def _choose_subnet(self):
        """10.x.y.0/24 from a hash of the name, moved on past subnets other labs or the host already use."""
        used = set()
        for other in self.root.glob("*/lab.json"):
            # another lab being created or removed right now may have no readable lab.json: its subnet is
            # then still on the host's bridge, which the `ip addr` below sees
            with contextlib.suppress(OSError, ValueError, KeyError):
                used.add(ipaddress.ip_network(json.loads(other.read_text(encoding="utf-8"))["subnet"]))
        for line in run(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines():
            used.add(ipaddress.ip_interface(line.split()[3]).network)
        slots = 50 * 256
        start = int(hashlib.sha256(self.name.encode()).hexdigest(), 16) % slots
        for step in range(slots):
            slot = (start + step) % slots
            candidate = ipaddress.ip_network(f"10.{200 + slot // 256}.{slot % 256}.0/24")
            if not any(candidate.overlaps(u) for u in used):
                return candidate
        raise LabError("no free 10.200-249.x.0/24 subnet for the lab: remove some labs first")

    def _prepare_host(self, meta: dict) -> None:
        self._record_host_mountpoints()
        ns_dir = self.dir / "ns"
        ns_dir.mkdir(exist_ok=True)
        # A namespace file can only be bind-mounted on a private mount: make the ns directory one.
        if not is_mount_point(ns_dir):
            run(["mount", "--bind", ns_dir, ns_dir])
            run(["mount", "--make-private", ns_dir])
        self._ensure_controller_key()
        self._ensure_bridge(meta)
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        lines += [f"{meta['nodes'][n]['address']} {n}" for n in self.nodes]
        write_file(self.hosts_path, "\n".join(lines) + "\n")

    def _record_host_mountpoints(self) -> None:
        """Mount points the lab has to create on the host (a bind mount needs one) are listed in a file shared by
        all labs, so that the last `down` removes them again."""
        with flocked(self.root):
            record = self.root / "host-mountpoints.json"
            created = json.loads(record.read_text(encoding="utf-8")) if record.exists() else []
            for path in PRIVATE_PATHS:
                if not os.path.lexists(path):
                    created.append(path)
                    os.makedirs(path)
            record.write_text(json.dumps(sorted(set(created))), encoding="utf-8")

    def _ensure_controller_key(self) -> None:
        if not self.controller_key_path.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"storage-replication-lab-{self.name}-controller",
                 "-f", self.controller_key_path])

    def _ensure_bridge(self, meta: dict) -> None:
        if run(["ip", "link", "show", "dev", self._bridge], check=False).returncode != 0:
            run(["ip", "link", "add", self._bridge, "type", "bridge"])
        prefix = ipaddress.ip_network(meta["subnet"]).prefixlen
        run(["ip", "addr", "replace", f"{meta['host_address']}/{prefix}", "dev", self._bridge])
        run(["ip", "link", "set", self._bridge, "up"])

    def _ensure_node(self, node: str) -> None:
        self._ensure_netns(node)
        if not (is_mount_point(self._ns_file(node, "mnt")) and is_mount_point(self._ns_file(node, "uts"))):
            self._make_node_namespaces(node)
        self._ensure_zfs(node)
        self._ensure_sshd(node)

    def _ensure_netns(self, node: str) -> None:
        netns, veth = self._netns(node), self._veth(node)
        if not os.path.exists(f"/run/netns/{netns}"):
            run(["ip", "netns", "add", netns])
        if run(["ip", "link", "show", "dev", veth], check=False).returncode == 0:
            return
        subnet = ipaddress.ip_network(self._meta()["subnet"])
        run(["ip", "-n", netns, "link", "del", "eth0"], check=False)  # a half-made pair from a crashed `up`
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        run(["ip", "link", "set", veth, "master", self._bridge, "up"])
        run(["ip", "-n", netns, "addr", "add", f"{self.address(node)}/{subnet.prefixlen}", "dev", "eth0"])
        run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", netns, "link", "set", "lo", "up"])

    def _prepare_private_dirs(self, node: str) -> None:
        for path in PRIVATE_PATHS:
            self.private_path(node, path).mkdir(parents=True, exist_ok=True)
        os.chmod(self.private_path(node, "/tmp"), 0o1777)
        os.chmod(self.private_path(node, "/root/.ssh"), 0o700)
        os.chmod(self.private_path(node, "/run/sshd"), 0o755)
        etc_zfs = self.private_path(node, "/etc/zfs")
        if not (etc_zfs / "zfsrc").exists() and os.path.isdir("/etc/zfs"):
            shutil.copytree("/etc/zfs", etc_zfs, dirs_exist_ok=True)
        for path in PRIVATE_FILES:
            skeleton = Path("/etc/skel") / Path(path).name
            write_file(self.private_path(node, path), skeleton.read_text(encoding="utf-8") if skeleton.exists() else "")
        self._prepare_etc_ssh(node)
        authorized = self.private_path(node, "/root/.ssh") / "authorized_keys"
        if not authorized.exists():
            write_file(authorized, self.controller_key_path.with_suffix(".pub").read_text(encoding="utf-8"), 0o600)

    def _prepare_etc_ssh(self, node: str) -> None:
        """The distribution's ssh configuration without its host keys, the node's own host key, and a drop-in
        that makes sshd listen on the node's address only and let root in by key only."""
        etc_ssh = self.private_path(node, "/etc/ssh")
        if (etc_ssh / "ssh_host_ed25519_key").exists():
            return
        shutil.copytree("/etc/ssh", etc_ssh, dirs_exist_ok=True, ignore=shutil.ignore_patterns("ssh_host_*"))
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{node}", "-f", etc_ssh / "ssh_host_ed25519_key"])
        (etc_ssh / "sshd_config.d").mkdir(exist_ok=True)
        write_file(etc_ssh / "sshd_config.d" / "00-storage-replication-lab.conf", "\n".join([
            "# storage.replication lab node: written by `python -m lab up`",
            f"ListenAddress {self.address(node)}",
            "HostKey /etc/ssh/ssh_host_ed25519_key",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PidFile /run/sshd/sshd.pid",
            "UseDNS no",
            "MaxStartups 100:30:200",
            "MaxSessions 50",
        ]) + "\n")

    def _make_node_namespaces(self, node: str) -> None:
        """Persistent UTS and mount namespaces (bind-mounted on files in the lab's ns directory), then the node's
        private directories mounted over the shared ones inside them."""
        self._prepare_private_dirs(node)
        for kind in ("mnt", "uts"):
            ns_file = self._ns_file(node, kind)
            if is_mount_point(ns_file):
                run(["umount", ns_file])
            ns_file.touch()
        run(["unshare", f"--mount={self._ns_file(node, 'mnt')}", f"--uts={self._ns_file(node, 'uts')}",
             "--propagation", "private", "hostname", node])
        self._detach_foreign_mounts(node)
        enter_mnt = ["nsenter", f"--mount={self._ns_file(node, 'mnt')}", "--"]
        for path in PRIVATE_PATHS:
            if _is_below(self.checkout, path):
                # The checkout lies in a directory the node keeps to itself: bind it into the node's own copy first
                # (the host's one is still visible here), then bring that copy in with its submount.
                stage = self.private_path(node, str(self.checkout))
                stage.mkdir(parents=True, exist_ok=True)
                run(enter_mnt + ["mount", "--bind", self.checkout, stage], where=node)
                run(enter_mnt + ["mount", "--rbind", self.private_path(node, path), path], where=node)
            else:
                run(enter_mnt + ["mount", "--bind", self.private_path(node, path), path], where=node)
        run(enter_mnt + ["mount", "--bind", self.hosts_path, "/etc/hosts"], where=node)
        for path in PRIVATE_FILES:
            if os.path.exists(path):
                run(enter_mnt + ["mount", "--bind", self.private_path(node, path), path], where=node)
        # Hide all labs' directories (controller key, other nodes' disks) from the node.
        run(enter_mnt + ["mount", "-t", "tmpfs", "-o", "ro,mode=0755,size=64k", "storage-replication-lab-hidden",
                         self.root], where=node)

    def _detach_foreign_mounts(self, node: str) -> None:
        """The new mount namespace starts as a copy of the host's, including the namespace files of every lab
        (/run/netns/*, the labs' ns directories). Copies would keep those namespaces alive after their own lab's
        `down`, so they are detached inside the node."""
        listing = run(["nsenter", f"--mount={self._ns_file(node, 'mnt')}", "--", "findmnt", "-rn", "-o", "TARGET"],
                      where=node).stdout.split()
        prefixes = (str(self.root) + "/", "/run/netns")
        for target in reversed(listing):
            if target.startswith(prefixes):
                run(["nsenter", f"--mount={self._ns_file(node, 'mnt')}", "--", "umount", "-l", target],
                    check=False, where=node)

    # ---- daemons -----------------------------------------------------------------------------------------------

    def _running(self, node: str, command: str) -> bool:
        return command in processes_in(self._namespaces(node)).values()

    def _ensure_zfs(self, node: str) -> None:
        if not self._running(node, "zfs-fuse"):
            self._start_zfs_fuse(node)
        pools = self.exec(node, ["zpool", "list", "-H", "-o", "name"]).stdout.split()
        if POOL not in pools:
            self._import_or_create_pool(node)
        self.exec(node, ["zfs", "mount", "-a"])

    def _start_zfs_fuse(self, node: str) -> None:
        self._unmount_dead_fuse(node)
        socket_path = self.private_path(node, "/run/zfs") / "zfs_socket"
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        spawn_detached(self.exec_argv(node, ["zfs-fuse", "--no-daemon", "--no-kstat-mount"]),
                       self.node_dir(node) / "zfs-fuse.log")
        wait_until(socket_path.exists, 15, f"zfs-fuse of {node} to open {socket_path}")
        wait_until(lambda: self.exec(node, ["zpool", "list"], check=False).returncode == 0, 15,
                   f"zfs-fuse of {node} to answer")

    def _unmount_dead_fuse(self, node: str) -> None:
        """A killed zfs-fuse leaves its FUSE mounts behind ('transport endpoint is not connected')."""
        listing = self.exec(node, ["findmnt", "-rn", "-o", "TARGET,FSTYPE"]).stdout.splitlines()
        for target, fstype in (line.split() for line in reversed(listing)):
            if fstype.startswith("fuse"):
                self.exec(node, ["umount", "-l", target], check=False)

    def _import_or_create_pool(self, node: str) -> None:
        disk = f"{DISK_DIR}/{POOL}.img"
        if self.private_path(node, disk).exists():
            self.exec(node, ["zpool", "import", "-f", "-d", DISK_DIR, POOL])
            return
        size = parse_size(self._meta()["pool_size"])
        with open(self.private_path(node, disk), "wb") as image:
            image.truncate(size)  # sparse
        self.exec(node, ["zpool", "create", "-m", POOL_MOUNTPOINT, "-O", "atime=off", POOL, disk])
        self.exec(node, ["zfs", "create", DATASET])

    def _ensure_sshd(self, node: str) -> None:
        address = self.address(node)
        if self._running(node, "sshd") and tcp_open(address, 22):
            return
        with contextlib.suppress(FileNotFoundError):
            (self.private_path(node, "/run/sshd") / "sshd.pid").unlink()
        spawn_detached(self.exec_argv(node, ["/usr/sbin/sshd", "-D", "-e"]), self.node_dir(node) / "sshd.log")
        wait_until(lambda: tcp_open(address, 22), 15, f"sshd of {node} to listen on {address}:22")

    # ---- controller access -------------------------------------------------------------------------------------

    def _write_access_files(self, meta: dict) -> None:
        host_keys, ssh_config, inventory = [], [], [
            f"# storage.replication lab {self.name}: written by `python -m lab up`, removed by `down`.",
            "all:", "  children:", "    replication_nodes:", "      hosts:"]
        common_args = (f"-o UserKnownHostsFile={self.known_hosts_path} -o StrictHostKeyChecking=yes "
                       f"-o IdentitiesOnly=yes")
        for node in self.nodes:
            address = meta["nodes"][node]["address"]
            key = (self.private_path(node, "/etc/ssh") / "ssh_host_ed25519_key.pub").read_text(encoding="utf-8")
            host_keys.append(f"{node},{address} {' '.join(key.split()[:2])}")
            ssh_config += [f"Host {node}", f"    HostName {address}", "    User root",
                           f"    IdentityFile {self.controller_key_path}", "    IdentitiesOnly yes",
                           f"    UserKnownHostsFile {self.known_hosts_path}", "    StrictHostKeyChecking yes",
                           "    BatchMode yes", "    ConnectTimeout 5",
                           # the default post-quantum hybrid costs 0.6 s of CPU per connection here; tests connect often
                           "    KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org", ""]
            inventory += [f"        {node}:", f"          ansible_host: {address}", "          ansible_user: root",
                          f"          ansible_ssh_private_key_file: {self.controller_key_path}",
                          f"          ansible_ssh_common_args: {json.dumps(common_args)}",
                          "          ansible_python_interpreter: /usr/bin/python3"]
        write_file(self.known_hosts_path, "\n".join(host_keys) + "\n")
        write_file(self.ssh_config_path, "\n".join(ssh_config))
        write_file(self.inventory_path, "\n".join(inventory) + "\n")

    # ---- failures ----------------------------------------------------------------------------------------------

    def kill(self, node: str) -> int:
        """The node dies: every process in its namespaces ends (SIGKILL). Its disk stays. Returns how many."""
        self._node(node)
        return end_processes(self._namespaces(node))

    def revive(self, node: str) -> None:
        """Start the node's zfs-fuse (importing its pool again) and sshd; the data is what the disk held."""
        self._node(node)
        with flocked(self.dir):
            self._ensure_node(node)

    def processes(self, node: str) -> dict:
        """{pid: argv} of the processes that run in the node's namespaces (what `ps` would list inside it)."""
        self._node(node)
        return {pid: process_argv(pid) for pid in processes_in(self._namespaces(node))}

    def partition(self, node: str) -> None:
        """Cut the node off the network: its link to the bridge goes down."""
        self._node(node)
        run(["ip", "link", "set", self._veth(node), "down"])

    def heal(self, node: str) -> None:
        """Bring the node's link up again, and return once every other connected node reaches it.

        `ip link set up` returns before packets flow (the kernel activates the link a moment later), and a peer
        whose address resolution for the node ran out during that moment answers the next connect with "No route
        to host": the link is healed when each peer has opened a TCP connection to the node (a refusal counts:
        sshd may be down, the path is what matters)."""
        self._node(node)
        run(["ip", "link", "set", self._veth(node), "up"])
        reach = [sys.executable, "-c", REACH_PORT_22, self.address(node), str(HEAL_SECONDS)]

        def reached_from(peer):
            run(self.net_argv(peer, reach), timeout=HEAL_SECONDS + 10, where=f"{peer} reaching {node}")

        peers = [peer for peer in self.nodes if peer != node and self._link_up(peer)]
        with ThreadPoolExecutor(max(1, len(peers))) as pool:
            list(pool.map(reached_from, peers))

    def _link_up(self, node: str) -> bool:
        flags = run(["ip", "-o", "link", "show", "dev", self._veth(node)]).stdout
        return "<" in flags and "UP" in flags.split("<", 1)[1].split(">", 1)[0].split(",")

    def fill(self, node: str) -> None:
        """Make the pool run out of space: a dataset that reserves all the space that is left."""
        self._node(node)
        if self.exec(node, ["zfs", "list", "-H", "-o", "name", FILLER], check=False).returncode == 0:
            return
        available = int(self.exec(node, ["zfs", "get", "-Hp", "-o", "value", "available", POOL]).stdout.split()[0])
        # The filler's own metadata needs a little of the space it would reserve: try slightly smaller amounts.
        for reserve in (available, available - (1 << 20), available - (8 << 20), available * 15 // 16):
            result = self.exec(node, ["zfs", "create", "-o", f"reservation={reserve}", "-o", "mountpoint=none", FILLER],
                               check=False)
            if result.returncode == 0:
                return
        raise LabCommandError(f"{node}: could not reserve the free space of {POOL}", result)

    def unfill(self, node: str) -> None:
        self.destroy_dataset(node, FILLER)

    def destroy_dataset(self, node: str, dataset: str) -> bool:
        """zfs destroy -r, retried while zfs-fuse calls the dataset busy (it does for a moment after a receive).
        Returns False when there was no such dataset."""
        self._node(node)

        def destroyed():
            result = self.exec(node, ["zfs", "destroy", "-r", dataset], check=False)
            if result.returncode == 0 or "dataset does not exist" in result.stderr:
                return result
            if "busy" not in result.stderr:
                raise LabCommandError(describe_failure(node, ["zfs", "destroy", "-r", dataset], result), result)
            return None

        return wait_until(destroyed, 30, f"zfs destroy -r {dataset} on {node}", interval=0.2).returncode == 0

    # ---- status and down ---------------------------------------------------------------------------------------

    def status(self) -> dict:
        """What is running: {"name", "exists", "subnet", "pool_size", "nodes": {node: {...}}}."""
        meta = self._load()
        if meta is None:
            return {"name": self.name, "exists": False, "nodes": {}}
        nodes = {}
        for node in self.nodes:
            commands = set(processes_in(self._namespaces(node)).values())
            link = run(["ip", "-o", "link", "show", "dev", self._veth(node)], check=False).stdout
            nodes[node] = {"address": meta["nodes"][node]["address"],
                           "zfs": "zfs-fuse" in commands, "sshd": "sshd" in commands,
                           "link": "up" if ",UP" in link or "<UP" in link else "down",
                           "ssh": tcp_open(meta["nodes"][node]["address"], 22, timeout=0.3)}
        return {"name": self.name, "exists": True, "state": meta["state"], "subnet": meta["subnet"],
                "pool_size": meta["pool_size"], "dir": str(self.dir), "inventory": str(self.inventory_path),
                "nodes": nodes}

    def _leftover_nodes(self) -> set:
        """Nodes of this lab found on the machine, whatever lab.json says (it may be missing after a crash)."""
        try:
            found = set((self._load() or {"nodes": {}})["nodes"])
        except LabError:  # a damaged lab.json: `down` still finds the nodes on the machine
            found = set()
        # Exactly srlab-<name>-node<N>: a plain prefix match would take lab "x-y"'s nodes for lab "x"'s.
        own = re.compile(re.escape(f"srlab-{self.name}-") + r"(node[0-9]+)")
        if os.path.isdir("/run/netns"):
            found.update(m.group(1) for m in map(own.fullmatch, os.listdir("/run/netns")) if m)
        if (self.dir / "ns").is_dir():
            found.update(f.split(".")[0] for f in os.listdir(self.dir / "ns"))
        return found

    def down(self, out=print) -> bool:
        """Remove everything of the lab; True if there was something to remove."""
        require_root()
        exists = self.dir.exists() or run(["ip", "link", "show", "dev", self._bridge], check=False).returncode == 0
        nodes = self._leftover_nodes()
        if not exists and not nodes:
            out(f"lab {self.name}: nothing to remove")
            return False
        with flocked(self.dir):
            for node in sorted(nodes):
                self._remove_node(node)
            if run(["ip", "link", "show", "dev", self._bridge], check=False).returncode == 0:
                run(["ip", "link", "del", self._bridge])
            for target in reversed(mount_targets()):
                if target == str(self.dir) or target.startswith(str(self.dir) + "/"):
                    run(["umount", "-l", target])
            shutil.rmtree(self.dir)
        self._remove_host_mountpoints()
        out(f"lab {self.name}: removed ({len(nodes)} nodes)")
        return True

    def _remove_node(self, node: str) -> None:
        end_processes(self._namespaces(node))
        for kind in ("mnt", "uts"):
            if is_mount_point(self._ns_file(node, kind)):
                run(["umount", self._ns_file(node, kind)])
        if os.path.exists(f"/run/netns/{self._netns(node)}"):
            run(["ip", "netns", "del", self._netns(node)])
        # The host end of the pair disappears with the namespace; after a crash it may be alone.
        if run(["ip", "link", "show", "dev", self._veth(node)], check=False).returncode == 0:
            run(["ip", "link", "del", self._veth(node)], check=False)

    def _remove_host_mountpoints(self) -> None:
        """When no lab is left, remove the empty mount points labs created on the host."""
        with flocked(self.root):
            if any(p.is_dir() for p in self.root.iterdir()):
                return
            record = self.root / "host-mountpoints.json"
            created = json.loads(record.read_text(encoding="utf-8")) if record.exists() else []
            for path in sorted(created, key=len, reverse=True):
                remove_empty_dir(path)
            with contextlib.suppress(FileNotFoundError):
                record.unlink()
        remove_empty_dir(self.root)
