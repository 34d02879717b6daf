# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The preloaded engine (preload.py) and its caller (preload_client.py), as real processes on a real Unix socket: the
preload is forked from the test with a scripted ``main`` in place of the command line's, and each caller is a
`python -I -S` process as the launcher starts it.  The preload with the real engine on the lab's nodes (a replication
over OpenSSH whose `run` and `serve` both start preloaded, kill -9, an upgraded engine) is
tests/integration/test_preload_lab.py."""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback

import pytest

from ansible_collections.storage.replication.plugins.module_utils import preload as preloadmod
from ansible_collections.storage.replication.plugins.module_utils import preload_client

CLIENT_DIR = os.path.dirname(os.path.abspath(preload_client.__file__))
# The caller as the launcher starts it, but with its socket and with "run it itself" replaced by a marker exit.
CALLER = """
import sys
sys.path.insert(0, sys.argv[1])
import preload_client
import os
def itself(argv, why):
    sys.stdout.write("itself %s\\n" % " ".join(argv))
    sys.stdout.flush()
    sys.stderr.write("why: %s\\n" % why)
    os._exit(99)
preload_client.run_itself = itself
sys.exit(preload_client.main(sys.argv[3:], sys.argv[2]))
"""
ITSELF = 99


def scripted_main(argv):
    """What the tests' commands do, by argv[1] (argv[0] is run or serve)."""
    what, rest = argv[1], argv[2:]
    if what == "echo":
        sys.stdout.write("out %s\n" % rest[0])
        sys.stderr.write("err %s\n" % sys.stdin.read().strip())
        return 0
    if what == "exit":
        return int(rest[0])
    if what == "raise":
        raise RuntimeError("scripted failure")
    if what == "system-exit":
        raise SystemExit(int(rest[0]))
    if what == "where":
        umask = os.umask(0)
        print(json.dumps({"env": os.environ.get("SR_TEST_VALUE"), "cwd": os.getcwd(), "umask": umask,
                          "tz": time.strftime("%Z", time.localtime(0)), "argv": sys.argv[1:]}))
        return 0
    if what == "append":
        with open(rest[0], "a", encoding="utf-8") as handle:
            handle.write("ran\n")
        return 0
    if what == "priority":
        print(json.dumps([os.getpriority(os.PRIO_PROCESS, 0), preloadmod.io_priority(0)]))
        return 0
    if what == "sleep":
        with open(rest[0], "w", encoding="utf-8") as handle:
            handle.write(str(os.getpid()))
        print("started", flush=True)
        time.sleep(float(rest[1]))
        print("done")
        return 7
    raise AssertionError(argv)


class PreloadProcess:
    """A preload forked from the test (signal handlers need a main thread of their own)."""

    def __init__(self, path, identity=None, uid=None):
        self.path = path
        read, write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(read)
            code = 0
            try:
                server = preloadmod.Preload(path, main=scripted_main, uid=uid,
                                            identity=identity or (lambda: ["engine"])).listen()
                os.write(write, b"up\n")
                server.serve()
            except BaseException:  # pylint: disable=broad-exception-caught
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)  # pylint: disable=protected-access
        os.close(write)
        with os.fdopen(read, "rb") as ready:
            assert ready.readline() == b"up\n"

    def alive(self):
        return os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def stop(self, timeout=10):
        """SIGTERM; the preload's exit status."""
        if self.pid is None:
            return None
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        return self.wait(timeout)

    def wait(self, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = None
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.02)
        raise AssertionError("the preload did not end within %s s" % timeout)


@pytest.fixture(name="preload")
def preload_fixture(tmp_path):
    process = PreloadProcess(str(tmp_path / "run" / "preload.sock"))
    yield process
    process.stop()


def caller(path, argv, **popen):
    """The caller as the launcher starts it (python -I -S), as a running process."""
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", CALLER, CLIENT_DIR, path] + argv,  # pylint: disable=consider-using-with
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def call(path, argv, stdin="", **popen):
    proc = caller(path, argv, stdin=subprocess.PIPE, **popen)
    out, err = proc.communicate(stdin, timeout=30)
    return proc.returncode, out, err


def gone(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            with open("/proc/%d/stat" % pid, encoding="utf-8") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True  # a zombie of the preload's, about to be reaped
        except FileNotFoundError:
            return True  # reaped between the two looks
        time.sleep(0.02)
    return False


def test_the_command_reads_and_writes_the_callers_descriptors(preload):
    code, out, err = call(preload.path, ["run", "echo", "hello"], stdin="from the caller\n")
    assert (code, out, err) == (0, "out hello\n", "err from the caller\n")


@pytest.mark.parametrize(("argv", "code"), [(["run", "exit", "0"], 0), (["serve", "exit", "3"], 3),
                                            (["run", "exit", "255"], 255), (["run", "system-exit", "2"], 2)])
def test_the_caller_exits_as_the_command_did(preload, argv, code):
    assert call(preload.path, argv)[0] == code


def test_a_command_that_raises_exits_1_with_its_traceback(preload):
    code, out, err = call(preload.path, ["run", "raise"])
    assert code == 1 and out == "" and "RuntimeError: scripted failure" in err
    assert call(preload.path, ["run", "exit", "0"])[0] == 0, "the preload itself goes on"


def test_the_command_has_the_callers_environment_directory_umask_and_time_zone(preload, tmp_path):
    env = dict(os.environ, SR_TEST_VALUE="caller's", TZ="America/New_York")
    code, out, _err = call(preload.path, ["run", "where", "x"], cwd=str(tmp_path), env=env,
                           preexec_fn=lambda: os.umask(0o027))
    assert code == 0
    assert json.loads(out) == {"env": "caller's", "cwd": str(tmp_path), "umask": 0o027, "tz": "EST",
                               "argv": ["run", "where", "x"]}
    code, out, _err = call(preload.path, ["run", "where", "y"], cwd="/", env=dict(os.environ, TZ="UTC"))
    assert json.loads(out)["env"] is None and json.loads(out)["tz"] == "UTC", "nothing stays from the caller before"


def test_the_command_runs_at_the_callers_cpu_and_io_priority(preload):
    """The timer's run is started at the unit's Nice= and IOSchedulingClass= (idle): its command must keep them."""
    idle = 3 << 13  # IOPRIO_CLASS_IDLE
    code, out, _err = call(preload.path, ["run", "priority"],
                           preexec_fn=lambda: (os.setpriority(os.PRIO_PROCESS, 0, 13), preloadmod.io_priority(0, idle)))
    assert code == 0 and json.loads(out) == [13, idle]
    _code, out, _err = call(preload.path, ["run", "priority"])
    assert json.loads(out) == [os.getpriority(os.PRIO_PROCESS, 0), preloadmod.io_priority(0)], \
        "the next command has its own caller's, not the last one's"


def test_commands_run_side_by_side(preload, tmp_path):
    first = caller(preload.path, ["run", "sleep", str(tmp_path / "a"), "1.5"])
    second = caller(preload.path, ["run", "sleep", str(tmp_path / "b"), "1.5"])
    began = time.monotonic()
    assert first.wait(30) == 7 and second.wait(30) == 7
    assert time.monotonic() - began < 2.8, "the second did not wait for the first"
    assert first.stdout.read() == "started\ndone\n"


def test_a_caller_killed_takes_its_command_with_it(preload, tmp_path):
    pid_file = tmp_path / "pid"
    proc = caller(preload.path, ["run", "sleep", str(pid_file), "60"])
    assert proc.stdout.readline() == "started\n"
    command = int(pid_file.read_text())
    assert command != proc.pid, "the command runs in the preload's child, not in the caller"
    proc.kill()  # kill -9: no signal passed on, only the connection gone
    proc.wait()
    assert gone(command), "the command outlived its caller"
    assert call(preload.path, ["run", "exit", "0"])[0] == 0


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_to_the_caller_goes_to_the_command_and_the_caller_dies_of_it_too(preload, tmp_path, number):
    pid_file = tmp_path / "pid"
    proc = caller(preload.path, ["run", "sleep", str(pid_file), "60"])
    assert proc.stdout.readline() == "started\n"
    command = int(pid_file.read_text())
    proc.send_signal(number)
    if number == signal.SIGINT:
        # Python's own handler: KeyboardInterrupt in the command, which exits 1 with its traceback (as on its own)
        assert proc.wait(30) == 1 and "KeyboardInterrupt" in proc.stderr.read()
    else:
        assert proc.wait(30) == -number, "the caller ends as the command did: by the same signal"
    assert gone(command)


def test_commands_go_on_when_the_preload_stops(preload, tmp_path):
    proc = caller(preload.path, ["run", "sleep", str(tmp_path / "pid"), "1"])
    assert proc.stdout.readline() == "started\n"
    assert preload.stop() == 0
    assert not os.path.exists(preload.path), "its socket went with it"
    assert proc.wait(30) == 7 and proc.stdout.read() == "done\n", "the command ended as it would, and said its code"
    assert call(preload.path, ["run", "exit", "3"])[1] == "itself run exit 3\n", "no preload: the caller runs it itself"


def test_a_preload_killed_9_leaves_its_commands_running_and_their_callers_get_their_codes(tmp_path):
    process = PreloadProcess(str(tmp_path / "p.sock"))
    proc = caller(process.path, ["run", "sleep", str(tmp_path / "pid"), "1"])
    assert proc.stdout.readline() == "started\n"
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert proc.wait(30) == 7, "the command said its exit code itself"
    assert call(process.path, ["run", "exit", "3"])[1] == "itself run exit 3\n", "a stale socket: it runs it itself"


def test_a_command_runs_exactly_once_however_fast_it_ends(preload, tmp_path):
    """A command that ends (and whose connection the preload closes) before its caller has finished handing it over
    must not make the caller think nobody took it and run it a second time itself."""
    ledger = tmp_path / "ledger"
    for _call in range(40):
        code, out, err = call(preload.path, ["run", "append", str(ledger)])
        assert (code, out) == (0, ""), err
    assert ledger.read_text().count("ran") == 40


def test_many_callers_at_once_each_get_their_own_outcome(preload):
    procs = {code: caller(preload.path, ["run", "exit", str(code)]) for code in range(10)}
    assert {code: proc.wait(60) for code, proc in procs.items()} == {code: code for code in range(10)}


def test_an_environment_over_the_request_limit_is_refused_and_run_by_the_caller_itself(preload):
    env = dict(os.environ, **{"SR_BIG_%d" % i: "x" * 110000 for i in range(10)})  # 1.1 MB, each under exec's limit
    assert call(preload.path, ["run", "exit", "0"], env=env)[1] == "itself run exit 0\n"
    assert call(preload.path, ["run", "exit", "2"])[0] == 2


@pytest.mark.parametrize("argv", [["status"], ["keep"], ["fence"], ["web"], ["module-call", "x"]])
def test_other_commands_are_refused_and_run_by_the_caller_itself(preload, argv):
    code, out, _err = call(preload.path, argv)
    assert (code, out) == (ITSELF, "itself %s\n" % " ".join(argv))
    assert call(preload.path, ["run", "exit", "4"])[0] == 4


def test_an_engine_changed_on_disk_is_never_run_the_preload_exits(tmp_path):
    marker = tmp_path / "engine"
    marker.write_text("1")
    process = PreloadProcess(str(tmp_path / "p.sock"), identity=marker.read_text)
    try:
        assert call(process.path, ["run", "exit", "5"])[0] == 5
        marker.write_text("2")  # an upgrade unpacked the new engine
        assert call(process.path, ["run", "exit", "5"]) == (
            ITSELF, "itself run exit 5\n", "why: the engine on disk changed since this preload loaded it (it restarts)\n")
        assert process.wait() == 0, "it exits, for its service to start it again with the new engine"
    finally:
        process.stop()


def test_a_caller_that_is_not_the_preloads_user_is_refused(tmp_path):
    process = PreloadProcess(str(tmp_path / "p.sock"), uid=os.getuid() + 4242)
    try:
        assert call(process.path, ["run", "exit", "5"])[0] == ITSELF
        assert process.alive()
    finally:
        process.stop()


def test_no_preload_or_a_stale_socket_means_running_it_itself(tmp_path):
    assert call(str(tmp_path / "none.sock"), ["run", "exit", "0"])[1] == "itself run exit 0\n"
    stale = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(stale)  # a preload killed -9 leaves its socket file; nobody listens
    dead.close()
    assert call(stale, ["serve", "--peer", "node1"])[1] == "itself serve --peer node1\n"


def raw_request(path, data, fds=None):
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    if fds is None:
        conn.sendall(data)
    else:
        conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    conn.shutdown(socket.SHUT_WR)
    reply = conn.makefile("rb").read()
    conn.close()
    return reply


@pytest.mark.parametrize(("data", "with_fds", "why"), [
    (b"garbage\n", True, "unreadable request"),
    (b"{\"argv\": [\"run\"]}\n", True, "exactly argv, env, cwd and umask"),
    (json.dumps({"argv": ["run"], "env": {}, "cwd": "/", "umask": 18}).encode() + b"\n", False, "3 standard descriptors"),
    (json.dumps({"argv": ["run"], "env": {}, "cwd": "/", "umask": 18}).encode(), True, "one JSON line"),
    (json.dumps({"argv": ["run"], "env": {"A": 1}, "cwd": "/", "umask": 18}).encode() + b"\n", True, "env maps"),
    (json.dumps({"argv": ["run"], "env": {}, "cwd": "relative", "umask": 18}).encode() + b"\n", True, "cwd"),
    (json.dumps({"argv": ["run"], "env": {}, "cwd": "/", "umask": 4096}).encode() + b"\n", True, "umask"),
    (json.dumps({"argv": [], "env": {}, "cwd": "/", "umask": 18}).encode() + b"\n", True, "argv is a list"),
])
def test_garbage_on_the_socket_is_refused_and_the_preload_goes_on(preload, data, with_fds, why):
    with open(os.devnull, "rb") as null:
        reply = raw_request(preload.path, data, [null.fileno()] * 3 if with_fds else None)
    assert why in json.loads(reply)["refused"], reply
    code, _out, err = call(preload.path, ["run", "exit", "6"])
    assert code == 6, err


def test_a_caller_that_never_finishes_its_request_does_not_hold_the_preload_for_long(preload):
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(preload.path)  # says nothing; the preload gives up on it after REQUEST_SECONDS
    began = time.monotonic()
    assert call(preload.path, ["run", "exit", "0"])[0] == 0
    assert time.monotonic() - began < preloadmod.REQUEST_SECONDS + 3
    silent.close()


def test_a_second_preload_refuses_to_start_over_a_live_one(preload):
    with pytest.raises(preloadmod.PreloadError, match="already listens"):
        preloadmod.Preload(preload.path, main=scripted_main).listen()


def test_the_engine_identity_changes_with_any_engine_file(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    before = preloadmod.engine_identity(str(tmp_path))
    assert preloadmod.engine_identity(str(tmp_path)) == before
    (tmp_path / "a.py").write_text("x = 22\n")
    assert preloadmod.engine_identity(str(tmp_path)) != before
    changed = preloadmod.engine_identity(str(tmp_path))
    (tmp_path / "b.py").write_text("")
    assert preloadmod.engine_identity(str(tmp_path)) != changed


def test_the_preload_has_the_engine_loaded():
    preloadmod.load_engine()
    for name in preloadmod.ENGINE_MODULES:
        assert preloadmod.ENGINE_PACKAGE + "." + name in sys.modules
    assert "paramiko" in sys.modules


def test_the_callers_request_is_the_json_the_preload_reads(monkeypatch, tmp_path):
    """The client builds its JSON line without the json module: whatever the environment holds (quotes, backslashes,
    control characters, other scripts, bytes that are no UTF-8), the preload reads back what os.environ says."""
    tricky = {b"QUOTE": b'say "hi" \\ there', b"CONTROL": b"a\tb\x01\x1f", b"UNICODE": "h\u00e9llo \u4e16\U0001f600".encode(),
              b"UNDECODABLE": b"\xff\xfe raw", b"EMPTY": b""}
    monkeypatch.setattr(preload_client.posix, "environ", tricky)
    monkeypatch.chdir(tmp_path)
    line = preload_client.request_line(["run", "--id", 'odd "one"\n'])
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    request = json.loads(line)
    assert request["argv"] == ["run", "--id", 'odd "one"\n'] and request["cwd"] == str(tmp_path)
    assert request["env"] == {key.decode(): value.decode("utf-8", "surrogateescape") for key, value in tricky.items()}
    assert preloadmod.validate(request) is None
    assert os.fsencode(request["env"]["UNDECODABLE"]) == b"\xff\xfe raw", "the child's os.environ gets the bytes back"


@pytest.mark.parametrize(("line", "answer"), [
    (b'{"exit": 0}', ("exit", 0)), (b'{"exit": 255}', ("exit", 255)), (b'{"signal": 15}', ("signal", 15)),
    (b'{"refused": "only root may use the preloaded engine"}', ("refused", "only root may use the preloaded engine")),
    (b"garbage", None), (b'{"exit": "x"}', None), (b'{"other": 1}', None)])
def test_the_callers_reading_of_the_preloads_answers(line, answer):
    assert preload_client.answer_of(line) == answer


def test_the_caller_and_the_preload_agree_on_the_socket():
    assert preload_client.PRELOAD_SOCKET == preloadmod.PRELOAD_SOCKET


def test_exit_codes():
    assert [preloadmod.exit_code(c) for c in (None, 0, 3, 256 + 4, True, "text")] == [0, 0, 3, 4, 1, 1]
