# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The caller's end of the preloaded engine (preload.py): `storage-replication run|serve` when a preload listens.

The launcher runs this file by its path with `python -I -S`.  It imports only what the interpreter has loaded before
any script runs, or builds in (`posix`, `_socket`, `_signal`): `os`, `socket`, `signal` and `json` would cost 0.2 s on
a slow CPU (the emulated OpenZFS guests), as much as the interpreter's own start, on every run and every peer login.
So it speaks the preload's JSON lines itself: the request built with json.dumps' escapes, the answers read in the
one form json.dumps gives them there.

It hands the command line, the environment, the working directory, the umask and its standard descriptors to the
preload, passes on the signals it gets, and exits as the command did (a command killed by a signal kills this
process with the same signal).  Whatever keeps the preload from starting the command (no socket, nobody on it, a
refusal) makes this process run the command itself: exec of the engine, as the launcher does without a preload.
"""

from __future__ import annotations

import _signal
import _socket
import posix
import sys

PRELOAD_SOCKET = "/run/storage-replication/preload.sock"
ENGINE_CLI = "ansible_collections.storage.replication.plugins.module_utils.cli"
FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)
EXIT_UNKNOWN = 1
# What json.dumps escapes in a string (ensure_ascii aside): the quote, the backslash, control characters, and the
# lone surrogates that undecodable bytes of the environment become (they have no UTF-8 form).
JSON_ESCAPES = {code: "\\u%04x" % code for code in list(range(0x20)) + [0x22, 0x5C] + list(range(0xD800, 0xE000))}
FD_BYTES = 4  # a C int, as SCM_RIGHTS carries descriptors on Linux


def run_itself(argv, why):
    """The command in this process, from the engine itself (the launcher's PYTHONPATH is in the environment).  ``why``
    the preload did not take it is not said: the command's own output is what the caller expects."""
    del why
    posix.execv(sys.executable, [sys.executable, "-m", ENGINE_CLI] + argv)


def json_string(text):
    return '"%s"' % text.translate(JSON_ESCAPES)


def request_line(argv):
    """The request, one JSON line: argv, the environment (decoded as os.environ decodes it), cwd and umask."""
    umask = posix.umask(0)
    posix.umask(umask)
    try:
        cwd = posix.getcwd()
    except OSError:  # a directory removed under the caller
        cwd = "/"
    encoding = sys.getfilesystemencoding()
    env = ", ".join("%s: %s" % (json_string(key.decode(encoding, "surrogateescape")),
                                json_string(value.decode(encoding, "surrogateescape")))
                    for key, value in posix.environ.items())
    line = '{"argv": [%s], "env": {%s}, "cwd": %s, "umask": %d}\n' % (
        ", ".join(json_string(word) for word in argv), env, json_string(cwd), umask)
    return line.encode("utf-8")


def hand_over(argv, path=PRELOAD_SOCKET):
    """(a connection to the preload that has the request and this process's descriptors, None), or (None, why not)."""
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.connect(path)
        data = request_line(argv)
        fds = b"".join(fd.to_bytes(FD_BYTES, sys.byteorder) for fd in (0, 1, 2))
        sent = conn.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        if sent < len(data):
            conn.sendall(data[sent:])  # not an empty one: the preload may have answered and closed already
        return conn, None
    except OSError as exc:
        conn.close()
        return None, "no preload answers at %s: %s" % (path, exc)


def answer_of(line):
    """("exit"|"signal", number) or ("refused", why) of one answer line (json.dumps of a one-key object), or None."""
    key, _sep, value = line.strip().strip(b"{}").partition(b": ")
    try:
        if key in (b'"exit"', b'"signal"'):
            return key.strip(b'"').decode("ascii"), int(value)
        if key == b'"refused"':
            return "refused", value.strip(b'"').decode("utf-8", "replace")  # for a person: escapes left as they are
    except ValueError:
        pass
    return None


def outcome(conn):
    """The preload's first answer (answer_of), or None when the connection ends without one."""
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, _sep, buffer = buffer.partition(b"\n")
            answer = answer_of(line)
            if answer is not None:
                return answer
        chunk = conn.recv(4096)
        if not chunk:
            return None
        buffer += chunk


def main(argv, path=PRELOAD_SOCKET):
    conn, why = hand_over(argv, path)
    if conn is None:
        run_itself(argv, why)

    def forward(number, _frame):
        try:
            conn.sendall(b'{"signal": %d}\n' % number)
        except OSError:
            pass

    for number in FORWARDED:
        _signal.signal(number, forward)
    answer = outcome(conn)
    if answer is None:
        sys.stderr.write("storage-replication: error: the preloaded engine ended while the command ran; its outcome "
                         "is unknown (see the job's state: storage-replication status)\n")
        return EXIT_UNKNOWN
    kind, value = answer
    if kind == "refused":
        conn.close()
        run_itself(argv, value)
    if kind == "signal":
        _signal.signal(value, _signal.SIG_DFL)
        posix.kill(posix.getpid(), value)
        return 128 + value
    return value


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
