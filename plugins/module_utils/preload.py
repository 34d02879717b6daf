# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The preloaded engine (`storage-replication preload`, the storage-replication-preload service).

Every command of the engine is a Python process that starts by importing the engine and paramiko: 0.1 s on the lab,
2-4 s in the emulated OpenZFS guests, paid by each `run` of the timer and the CLI and, on the target, by each peer's
SSH login (`serve`: a peer check, a data stream over OpenSSH).  The preload imports them once and waits on a socket
beside the keeper's; the launcher hands it `run` and `serve` (preload_client.py, which imports nothing of the
engine): their argument list, environment, working directory, umask and standard descriptors (SCM_RIGHTS).  For each
it forks; the child takes all of that as its own and runs the command line as the engine's `main`, reading and
writing the caller's descriptors; the exit code goes back on the socket.  What the child does is what the command
would have done in a process of its own: the preload holds no state between commands, only imported code.

- only root may use it (localsocket.py): a command runs as root, with the caller's environment;
- the caller stays until the command ends: a signal it gets (SIGINT, SIGTERM, SIGHUP) is passed on to the command,
  and a caller that goes away without one (kill -9) takes the command with it (SIGKILL), as its own process would;
- code is never older than the engine on disk: each request compares the engine's files with those loaded; on a
  change the preload refuses (the caller runs the command itself) and exits, and its service starts it anew;
- commands keep running when the preload stops or restarts (the unit's KillMode=process) and report their exit
  code themselves;
- whatever goes wrong between the caller and the preload before the fork (no preload, a stale socket, a refusal),
  the caller runs the command itself, as without a preload.
"""

from __future__ import annotations

import array
import ctypes
import json
import os
import platform
import selectors
import signal
import socket
import sys
import time
import traceback

from ansible_collections.storage.replication.plugins.module_utils import localsocket

PRELOAD_SOCKET = "/run/storage-replication/preload.sock"
# The commands worth a preloaded start: the timer's and the CLI's runs, and the peers' logins.  Others (status, the
# long-running keep, fence, web) start on their own.
COMMANDS = ("run", "serve")
STANDARD_FDS = 3
REQUEST_MAX = 1024 * 1024
REQUEST_SECONDS = 2
# What the preloaded commands import on their way (their imports inside functions included).
ENGINE_MODULES = ("runner", "replicate", "transport", "channels", "kept", "cluster", "config", "state",
                  "serve", "receiver", "receive_stream", "zfs", "nodeview", "metrics", "notify", "report", "points",
                  "pruning", "bandwidth", "quorum", "retention", "settings", "plan")
# ioprio_get and ioprio_set, which Python does not wrap, by machine: (get, set) system call numbers.  Elsewhere the
# preload cannot give a command its caller's IO priority and refuses (the caller runs the command itself).
IOPRIO_SYSCALLS = {"x86_64": (252, 251), "aarch64": (31, 30), "riscv64": (31, 30)}
IOPRIO_WHO_PROCESS = 1
ENGINE_DIR = os.path.dirname(os.path.abspath(__file__))
ENGINE_PACKAGE = __name__.rpartition(".")[0]


class PreloadError(Exception):
    """The preload cannot start (another one listens)."""


def load_engine():
    """Import what the commands need (the command line, which starts the preload, is loaded already)."""
    # pylint: disable-next=import-outside-toplevel
    import importlib
    for name in ENGINE_MODULES:
        importlib.import_module("%s.%s" % (ENGINE_PACKAGE, name))
    sys.modules[ENGINE_PACKAGE + ".transport"].preload_paramiko()
    # `zfs version` once here, not in every command and on each end of a stream (a process start is tenths of a
    # second on a slow CPU); a command probes again if the `zfs` binary or the kernel module changed since.
    zfs = sys.modules[ENGINE_PACKAGE + ".zfs"]
    try:
        if zfs.zfs_fingerprint() is not None:
            zfs.probe_features(zfs.run_command)
    except OSError:
        pass  # no `zfs` to run: each command finds out itself, as without a preload


def engine_identity(directory=ENGINE_DIR):
    """The engine's files as loaded: (name, size, mtime) of each Python file; a new version changes it."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(".py"):
                stat = entry.stat()
                found.append((entry.name, stat.st_size, stat.st_mtime_ns))
    return sorted(found)


def io_priority(pid, value=None):
    """The IO priority (ioprio_get) of process ``pid``, or set it to ``value`` (ioprio_set); OSError where the machine
    has no known system call for it or the call fails."""
    numbers = IOPRIO_SYSCALLS.get(platform.machine())
    if numbers is None:
        raise OSError("no ioprio system call known on %s" % platform.machine())
    libc = ctypes.CDLL(None, use_errno=True)
    if value is None:
        result = libc.syscall(numbers[0], IOPRIO_WHO_PROCESS, pid)
    else:
        result = libc.syscall(numbers[1], IOPRIO_WHO_PROCESS, pid, value)
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))
    return result


def caller_priorities(pid):
    """(nice, IO priority) of the caller: a run started by the timer runs at the unit's Nice= and
    IOSchedulingClass=, and its command must too."""
    return os.getpriority(os.PRIO_PROCESS, pid), io_priority(pid)


def validate(request):
    """The request's problem, or None: {"argv": [str], "env": {str: str}, "cwd": str, "umask": int}."""
    if not isinstance(request, dict) or set(request) != {"argv", "env", "cwd", "umask"}:
        return "a request has exactly argv, env, cwd and umask"
    argv, env = request["argv"], request["env"]
    if not isinstance(argv, list) or not argv or not all(isinstance(word, str) for word in argv):
        return "argv is a list of strings, the command first"
    if argv[0] not in COMMANDS:
        return "only %s start preloaded, not '%s'" % (" and ".join(COMMANDS), argv[0])
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        return "env maps strings to strings"
    if not isinstance(request["cwd"], str) or not request["cwd"].startswith("/"):
        return "cwd is an absolute path"
    umask = request["umask"]
    if not isinstance(umask, int) or isinstance(umask, bool) or not 0 <= umask <= 0o777:
        return "umask is a number from 0 to 0o777"
    return None


def exit_code(code):
    """What a process exits with for ``main``'s return or SystemExit code."""
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code & 0xFF
    return 1


def _line(reply):
    return (json.dumps(reply, sort_keys=True) + "\n").encode("utf-8")


def _refuse(conn, why):
    try:
        conn.sendall(_line({"refused": why}))
    except OSError:
        pass  # gone already


class Preload:
    """``Preload(path, main).serve()``: run the commands handed to it, each in a child of its own, as ``main(argv)``
    (the command line's), until stopped."""

    def __init__(self, path, main, uid=None, identity=engine_identity):
        self.path = path
        self.main = main
        self.uid = os.getuid() if uid is None else uid
        self.identity = identity
        self.loaded = identity()
        self.listener = None
        self.inode = None
        self.children = {}  # pid -> the caller's connection
        self.selector = None
        self.wakeup = None  # (read, write) ends of the pipe signals wake the loop with
        self.stopped = False
        self.started_total = 0

    def listen(self):
        try:
            self.listener, self.inode = localsocket.bind_private(
                self.path, "a preloaded engine already listens at %s - stop it first (systemctl stop "
                           "storage-replication-preload)" % self.path)
        except RuntimeError as exc:
            raise PreloadError(str(exc)) from None
        return self

    def stop(self, *_signal):
        self.stopped = True

    def serve(self):
        """Accept commands until stopped (SIGTERM, SIGINT or ``stop``) or the engine on disk changed."""
        if self.listener is None:
            self.listen()
        self.wakeup = os.pipe()
        for end in self.wakeup:
            os.set_blocking(end, False)
        previous = signal.set_wakeup_fd(self.wakeup[1])
        handlers = {sig: signal.signal(sig, handler) for sig, handler in (
            (signal.SIGCHLD, lambda *_: None), (signal.SIGTERM, self.stop), (signal.SIGINT, self.stop))}
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        self.selector.register(self.wakeup[0], selectors.EVENT_READ, "wakeup")
        try:
            while not self.stopped:
                for key, _events in self.selector.select():
                    if key.data == "listener":
                        self._accept()
                    elif key.data == "wakeup":
                        self._drain_wakeup()
                    else:
                        self._from_caller(key.fileobj, key.data)
                self.reap()
        finally:
            signal.set_wakeup_fd(previous)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            self.selector.close()
            os.close(self.wakeup[0])
            os.close(self.wakeup[1])
            localsocket.unbind(self.listener, self.path, self.inode)
            for conn in self.children.values():
                conn.close()  # the commands go on and report their exit codes themselves

    def status(self):
        return {"started": self.started_total, "running": len(self.children)}

    # ------------------------------------------------------------ one command

    def _accept(self):
        try:
            conn, _address = self.listener.accept()
        except OSError:
            return  # the caller went away already, or no descriptor is left for now: it runs the command itself
        fds = []
        try:
            try:
                request, fds, priorities = self._admit(conn)
                pid = os.fork()
            except (OSError, ValueError) as exc:
                # refused before anything ran: the caller runs the command itself (if it is still there)
                _refuse(conn, str(exc))
                conn.close()
                return
            if pid == 0:
                self._child(conn, request, fds, priorities)  # never returns
        finally:
            for fd in fds:
                os.close(fd)
        # The command runs from here on: whatever happens, this caller is never refused any more (it would run the
        # command a second time).
        self.started_total += 1
        self.children[pid] = conn
        self.selector.register(conn, selectors.EVENT_READ, pid)

    def _admit(self, conn):
        """(request, the caller's descriptors, its priorities), or ValueError saying why the command is refused."""
        caller, uid = localsocket.peer_credentials(conn)
        if uid != self.uid:
            raise ValueError("only root may use the preloaded engine")
        try:
            request, fds = _read_request(conn)
        except (OSError, ValueError) as exc:
            raise ValueError("unreadable request: %s" % exc) from None
        try:
            problem = validate(request)
            if problem is None and self.identity() != self.loaded:
                self.stopped = True
                problem = "the engine on disk changed since this preload loaded it (it restarts)"
            if problem is None:
                try:
                    return request, fds, caller_priorities(caller)
                except OSError as exc:
                    problem = "the caller's priorities cannot be read: %s" % exc
            raise ValueError(problem)
        except ValueError:
            for fd in fds:
                os.close(fd)
            raise

    def _from_caller(self, conn, pid):
        """A signal the caller passes on, or its end (then the command ends with it)."""
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if not data:
            self._kill(pid, signal.SIGKILL)
            self._forget(pid)
            return
        for line in data.splitlines():
            try:
                number = json.loads(line)["signal"]
            except (ValueError, KeyError, TypeError):
                continue
            if number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._kill(pid, number)

    def _kill(self, pid, number):
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass  # it ended; reap() tells the caller

    def _forget(self, pid):
        conn = self.children.pop(pid, None)
        if conn is not None:
            self.selector.unregister(conn)
            conn.close()

    def reap(self):
        """Tell the callers of the commands killed by a signal; a command that exited said its code itself."""
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.get(pid)
            if conn is not None and os.WIFSIGNALED(status):
                try:
                    conn.sendall(_line({"signal": os.WTERMSIG(status)}))
                except OSError:
                    pass
            self._forget(pid)

    def _drain_wakeup(self):
        try:
            while os.read(self.wakeup[0], 512):
                pass
        except BlockingIOError:
            pass

    def _child(self, conn, request, fds, priorities):
        """The command, in the forked child: the caller's descriptors, environment, directory, umask and priorities;
        its exit code to the caller; never returns."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.selector.close()
            self.listener.close()
            os.close(self.wakeup[0])
            os.close(self.wakeup[1])
            for other in self.children.values():
                other.close()
            os.setpgid(0, 0)  # signals to the preload's group are not the command's
            os.setpriority(os.PRIO_PROCESS, 0, priorities[0])
            io_priority(0, priorities[1])
            for number, fd in enumerate(fds):
                os.dup2(fd, number)
            for fd in fds:
                os.close(fd)
            _standard_streams()
            try:
                os.chdir(request["cwd"])
            except OSError:
                os.chdir("/")
            os.umask(request["umask"])
            os.environ.clear()
            os.environ.update(request["env"])
            time.tzset()  # the caller's TZ
            sys.argv[1:] = request["argv"]
            code = exit_code(self.main(request["argv"]))
        except SystemExit as exc:
            code = exit_code(exc.code)
        except BaseException:  # pylint: disable=broad-exception-caught
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            try:
                conn.sendall(_line({"exit": code}))
            except OSError:
                pass
            os._exit(code)  # pylint: disable=protected-access


def _standard_streams():
    """sys.stdin, stdout and stderr anew on descriptors 0-2 (the caller's), buffered as in a process of its own."""
    like = sys.__stdout__ or sys.__stderr__
    encoding = getattr(like, "encoding", None) or "utf-8"
    errors = getattr(like, "errors", None) or "strict"
    sys.stdin = open(0, "r", encoding=encoding, errors=errors, newline="\n", closefd=False)  # pylint: disable=consider-using-with
    sys.stdout = open(1, "w", encoding=encoding, errors=errors, newline="\n", closefd=False,  # pylint: disable=consider-using-with
                      buffering=-1 if not os.isatty(1) else 1)
    sys.stderr = open(2, "w", encoding=encoding, errors="backslashreplace", newline="\n", closefd=False,  # pylint: disable=consider-using-with
                      buffering=1)


def _read_request(conn):
    """(request, [the caller's standard descriptors]) of one JSON line with the descriptors attached."""
    conn.settimeout(REQUEST_SECONDS)
    data, fds = b"", []
    try:
        while not data.endswith(b"\n") and len(data) <= REQUEST_MAX:
            chunk, ancillary, _flags, _address = conn.recvmsg(
                65536, socket.CMSG_SPACE(STANDARD_FDS * array.array("i").itemsize), socket.MSG_CMSG_CLOEXEC)
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    received = array.array("i")
                    received.frombytes(payload[:len(payload) - len(payload) % received.itemsize])
                    fds.extend(received)
            if not chunk:
                break
            data += chunk
        conn.settimeout(None)
        if len(fds) != STANDARD_FDS:
            raise ValueError("a request carries the caller's %d standard descriptors, not %d" % (STANDARD_FDS, len(fds)))
        if not data.endswith(b"\n"):
            raise ValueError("a request is one JSON line of at most %d bytes" % REQUEST_MAX)
        return json.loads(data), fds
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        raise
