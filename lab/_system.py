# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Host-side helpers of the lab: running commands, waiting, finding and ending processes by namespace."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


class LabError(Exception):
    """A problem the user can act on; the CLI prints it as one line and exits 1."""


class LabCommandError(LabError):
    """A command failed; keeps the CompletedProcess so that callers can look at its output."""

    def __init__(self, message: str, result: subprocess.CompletedProcess):
        super().__init__(message)
        self.result = result
        self.returncode = result.returncode
        self.stdout = result.stdout
        self.stderr = result.stderr


def describe_failure(where: str, argv: list, result: subprocess.CompletedProcess) -> str:
    """One readable message: where, what, the exit code and the tail of stderr."""
    err = result.stderr
    if isinstance(err, bytes):
        err = err.decode(errors="replace")
    tail = (err or "").strip().splitlines()[-5:]
    detail = ("; stderr: " + " | ".join(tail)) if tail else ""
    return f"{where}: {' '.join(str(a) for a in argv)} exited {result.returncode}{detail}"


def run(argv: list, check: bool = True, input=None, timeout: float = 60, text: bool = True,
        where: str = "host", cwd: str = "/") -> subprocess.CompletedProcess:
    """Run argv (never through a shell), capture its output, raise LabCommandError on failure when check."""
    try:
        result = subprocess.run([str(a) for a in argv], input=input, capture_output=True, text=text,
                                timeout=timeout, check=False, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{where}: {' '.join(str(a) for a in argv)} did not finish within {timeout} s") from exc
    except FileNotFoundError as exc:
        raise LabError(f"{where}: command not found: {argv[0]}") from exc
    if check and result.returncode != 0:
        raise LabCommandError(describe_failure(where, argv, result), result)
    return result


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05, on_timeout=None, error=None):
    """Poll predicate until it returns a true value (returned), with a deadline, never a fixed sleep.  At the deadline
    raise ``error`` (default LabError) naming what was awaited, with ``on_timeout()``'s text appended (what to look
    at).  The lab, the OpenZFS tier and their tests share it: it imports nothing of the engine."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = on_timeout() if on_timeout else ""
            raise (error or LabError)(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)


def tcp_open(address: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections at address:port."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def spawn_detached(argv: list, log_path) -> None:
    """Start a long-running daemon whose parent is init, not us: `setsid --fork` forks once more and exits,
    so a killed daemon never lingers as our zombie. Its output goes to log_path."""
    with open(log_path, "ab") as log:
        subprocess.run(["setsid", "--fork"] + [str(a) for a in argv], stdin=subprocess.DEVNULL,
                       stdout=log, stderr=log, check=True, cwd="/", timeout=10)


def ns_inode(path) -> int:
    """Inode of a namespace file (a bind-mounted nsfs file or /proc/PID/ns/X); 0 when it is not there."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return 0


def _proc_state(pid: str) -> str:
    with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def _proc_comm(pid: str) -> str:
    with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
        return comm.read().strip()


def process_argv(pid: int) -> list:
    """The command line of a process ([] once it has ended)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return [part.decode(errors="replace") for part in cmdline.read().split(b"\0")[:-1]]
    except OSError:
        return []


def processes_in(namespaces: dict) -> dict:
    """Live processes that are in any of the given namespaces, as {pid: comm}.

    namespaces maps a kind ("net", "mnt", "uts") to the inode of the namespace."""
    wanted = {kind: inode for kind, inode in namespaces.items() if inode}
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            member = any(ns_inode(f"/proc/{pid}/ns/{kind}") == inode for kind, inode in wanted.items())
            if member and _proc_state(pid) != "Z":
                found[int(pid)] = _proc_comm(pid)
        except OSError:
            continue  # the process ended while we looked at it
    return found


def end_processes(namespaces: dict, timeout: float = 10) -> int:
    """SIGKILL every process of the namespaces until none is left; returns how many were killed."""
    killed = set()

    def all_gone():
        alive = processes_in(namespaces)
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        return not alive

    wait_until(all_gone, timeout, "the processes of the node to end", interval=0.05)
    return len(killed)


def mount_targets(mountinfo_path: str = "/proc/self/mountinfo") -> list:
    """Mount points listed in a mountinfo file, in mount order."""
    targets = []
    with open(mountinfo_path, encoding="utf-8") as mountinfo:
        for line in mountinfo:
            targets.append(line.split()[4].encode().decode("unicode_escape"))
    return targets


def is_mount_point(path) -> bool:
    return str(path) in mount_targets()
