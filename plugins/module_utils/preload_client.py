# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The caller's end of the preloaded engine (preload.py): `storage-replication run|serve` when a preload listens.

The launcher runs this file by its path with `python -I -S`: it imports nothing but the standard library, so its own
start costs what Python's does.  It hands the command line, the environment, the working directory, the umask and
its standard descriptors to the preload, passes on the signals it gets, and exits as the command did (a command
killed by a signal kills this process with the same signal).  Whatever keeps the preload from starting the command
(no socket, nobody on it, a refusal) makes this process run the command itself: exec of the engine, as the
launcher does without a preload.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import sys

PRELOAD_SOCKET = "/run/storage-replication/preload.sock"
ENGINE_CLI = "ansible_collections.storage.replication.plugins.module_utils.cli"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_UNKNOWN = 1


def run_itself(argv, why):
    """The command in this process, from the engine itself (the launcher's PYTHONPATH is in the environment).  ``why``
    the preload did not take it is not said: the command's own output is what the caller expects."""
    del why
    os.execv(sys.executable, [sys.executable, "-m", ENGINE_CLI] + argv)


def request_line(argv):
    umask = os.umask(0)
    os.umask(umask)
    try:
        cwd = os.getcwd()
    except OSError:  # a directory removed under the caller
        cwd = "/"
    return (json.dumps({"argv": argv, "env": dict(os.environ), "cwd": cwd, "umask": umask}) + "\n").encode("utf-8")


def hand_over(argv, path=PRELOAD_SOCKET):
    """(a connection to the preload that has the request and this process's descriptors, None), or (None, why not)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        data = request_line(argv)
        sent = conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
        if sent < len(data):
            conn.sendall(data[sent:])  # not an empty one: the preload may have answered and closed already
        return conn, None
    except OSError as exc:
        conn.close()
        return None, "no preload answers at %s: %s" % (path, exc)


def outcome(conn):
    """The preload's first answer: {"exit": code}, {"signal": n}, {"refused": why}, or None (it ended first)."""
    reader = conn.makefile("rb")
    for line in reader:
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict) and answer.keys() & {"exit", "signal", "refused"}:
            return answer
    return None


def main(argv, path=PRELOAD_SOCKET):
    conn, why = hand_over(argv, path)
    if conn is None:
        run_itself(argv, why)

    def forward(number, _frame):
        try:
            conn.sendall((json.dumps({"signal": number}) + "\n").encode("utf-8"))
        except OSError:
            pass

    for number in FORWARDED:
        signal.signal(number, forward)
    answer = outcome(conn)
    if answer is None:
        sys.stderr.write("storage-replication: error: the preloaded engine ended while the command ran; its outcome "
                         "is unknown (see the job's state: storage-replication status)\n")
        return EXIT_UNKNOWN
    if "refused" in answer:
        conn.close()
        run_itself(argv, answer["refused"])
    if "signal" in answer:
        number = answer["signal"]
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        return 128 + number
    return answer["exit"]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
