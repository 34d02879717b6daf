# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A module call: the module's side (_runner_call: request, reply, identities, the messages for a runner that is
missing or from another version), the runner's side (_module: the dispatch table, refusals as results), the
`module-call` command as a real process, and the action that tells the module which engine to expect."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.common import warnings
from ansible.module_utils.testing import patch_module_args

from ansible_collections.storage.replication.plugins.module_utils import _module, _runner_call, config as configmod
from ansible_collections.storage.replication.plugins.modules import job_info

ROOT = Path(__file__).resolve().parents[4]
ENGINE = ROOT / "plugins" / "module_utils"
PYTHONPATH = os.pathsep.join([str(ROOT / "build" / "collections"), str(ROOT)])
THIS = _runner_call.identity()


@pytest.fixture
def recorded(monkeypatch):
    """A module 'probe' on the runner's side that records its calls and returns what it was given."""
    calls = []

    def probe(params, check_mode, diff):
        calls.append((params, check_mode, diff))
        return {"changed": True, "given": params, "check_mode": check_mode, "diff": diff, "warnings": ["careful"]}
    monkeypatch.setitem(_module.MODULES, "probe", probe)
    monkeypatch.setattr(_module, "local_node", lambda: "node1")
    return calls


def round_trip(name, params, expect, check_mode=False, diff=False, engine=None):
    """The module's request, the runner's reply, as JSON text both ways; the result the module gets."""
    text = _runner_call.request_text(params, check_mode, diff, expect)
    reply = json.dumps(_module.serve_call(name, text, engine=engine))
    return _runner_call.read_reply(0, reply, "", "node1", expect)


# ---------------------------------------------------------------------------------------------------------------
# The request and the reply

def test_params_check_mode_and_diff_travel_as_json_and_the_result_comes_back(recorded):
    params = {"id": "100-0", "rate": 2.5, "hooks": {"stop": ["/bin/true"]}, "comment": None}
    result = round_trip("probe", params, THIS, check_mode=True, diff=True)
    assert recorded == [(params, True, True)]
    assert result == {"changed": True, "given": params, "check_mode": True, "diff": True, "warnings": ["careful"]}


def test_a_request_that_is_not_one_fails_with_what_it_was(recorded):
    reply = _module.serve_call("probe", "{not json", engine=THIS)
    assert reply["result"]["failed"] and "the request is not JSON" in reply["result"]["msg"]
    reply = _module.serve_call("probe", json.dumps({"protocol": 99, "params": {}, "expect": THIS}), engine=THIS)
    assert reply["result"]["failed"] and "not a module call of protocol 1" in reply["result"]["msg"]
    assert recorded == []


def test_the_identity_is_the_collection_version_and_a_digest_of_the_engine_files(tmp_path):
    assert _runner_call.VERSION == yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    copy = tmp_path / "engine"
    shutil.copytree(ENGINE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "notes.txt").write_text("not part of the engine")
    os.utime(copy / "names.py", (0, 0))
    assert _runner_call.identity(str(copy)) == THIS, "the digest depends on the engine's .py contents only"
    with open(copy / "names.py", "a", encoding="utf-8") as handle:
        handle.write("# a local edit\n")
    assert _runner_call.engine_digest(str(copy)) != THIS["digest"]


def test_the_modules_look_for_the_runner_where_the_role_links_it():
    role_vars = yaml.safe_load((ROOT / "roles" / "runner" / "vars" / "main.yml").read_text())
    assert _runner_call.RUNNER == role_vars["_runner_cli_link"]


def test_the_expected_identity_comes_from_the_controller_else_the_version_alone():
    assert _runner_call.expected_identity({_runner_call.EXPECT_ENV: _runner_call.expect_text(THIS)}) == THIS
    assert _runner_call.expected_identity({}) == {"version": _runner_call.VERSION, "digest": None}


# ---------------------------------------------------------------------------------------------------------------
# A runner from another version of the collection

OLDER = {"version": "0.0.9", "digest": "0123456789ab" + "0" * 52}


@pytest.mark.parametrize("runner, expect", [
    (OLDER, THIS),  # the collection was upgraded, the role not re-run
    (dict(THIS, digest=OLDER["digest"]), THIS),  # same version, other engine files (a development build)
    (OLDER, {"version": THIS["version"], "digest": None}),  # no controller identity: the version still counts
])
def test_another_engine_is_refused_before_anything_is_done(recorded, runner, expect):
    with pytest.raises(_runner_call.RunnerCallError) as failure:
        round_trip("probe", {"id": 1}, expect, engine=runner)
    assert recorded == []
    message = str(failure.value)
    assert "node 'node1'" in message and runner["version"] in message and THIS["version"] in message
    assert "re-run the storage.replication.runner role" in message and "nothing was changed" in message


def test_an_unknown_digest_matches_the_same_version(recorded):
    assert round_trip("probe", {"id": 1}, {"version": THIS["version"], "digest": None})["changed"] is True


def test_a_reply_from_another_engine_is_not_used_even_if_the_runner_acted():
    reply = json.dumps(_runner_call.reply_of(OLDER, "node2", {"changed": True}))
    with pytest.raises(_runner_call.RunnerCallError, match="node 'node2' is version 0.0.9 .engine 0123456789ab."):
        _runner_call.read_reply(0, reply, "", "node1", THIS)


def test_a_runner_from_before_module_calls_and_a_broken_runner():
    stderr = "storage-replication: error: argument COMMAND: invalid choice: 'module-call' (see 'storage-replication --help')\n"
    with pytest.raises(_runner_call.RunnerCallError, match="node 'node1' is older than this collection .*re-run the "
                                                           "storage.replication.runner role"):
        _runner_call.read_reply(2, "", stderr, "node1", THIS)
    with pytest.raises(_runner_call.RunnerCallError, match=r"(?s)gave no answer \(exit code 1\): .*ZeroDivisionError: boom"):
        _runner_call.read_reply(1, "", "Traceback (most recent call last):\nZeroDivisionError: boom\n", "node1", THIS)


# ---------------------------------------------------------------------------------------------------------------
# The module's side, through a module's main()

def run_main(main, args, capsys):
    warnings._global_warnings.clear()  # pylint: disable=protected-access
    with patch_module_args(dict(args, _ansible_check_mode=False, _ansible_diff=False)):
        with pytest.raises(SystemExit):
            main()
    return json.loads(capsys.readouterr().out)


def test_a_node_without_the_runner_says_so_and_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_runner_call, "RUNNER", str(tmp_path / "storage-replication"))
    monkeypatch.setattr(_runner_call, "local_node", lambda: "node3")
    monkeypatch.setattr(_runner_call, "invoke", lambda *args: pytest.fail("ran a runner that is not there"))
    result = run_main(job_info.main, {}, capsys)
    assert result["failed"] is True and result["node"] == "node3"
    assert result["msg"].startswith("the storage.replication runner is not installed on node 'node3' (%s does not exist)"
                                    % (tmp_path / "storage-replication"))
    assert "Apply the storage.replication.runner role" in result["msg"] and "nothing was changed" in result["msg"]


def test_the_module_runs_the_runner_with_its_request_and_exits_with_its_result(tmp_path, monkeypatch, capsys, recorded):
    runner = tmp_path / "storage-replication"
    runner.write_text("")
    monkeypatch.setattr(_runner_call, "RUNNER", str(runner))
    monkeypatch.setenv(_runner_call.EXPECT_ENV, _runner_call.expect_text(THIS))
    argv = []

    def run_command(self, args, data=None, check_rc=True):
        del self, check_rc
        argv.append(args)
        return 0, json.dumps(_module.serve_call("probe", data)), ""
    monkeypatch.setattr("ansible.module_utils.basic.AnsibleModule.run_command", run_command)
    result = run_main(job_info.main, {"guest": 100}, capsys)
    assert argv == [[str(runner), "module-call", "job_info"]]
    assert recorded == [({"guest": 100, "job": None, "query": None}, False, False)]
    assert result["changed"] is True and result["given"]["guest"] == 100
    assert [w if isinstance(w, str) else w["event"]["msg"] for w in result["warnings"]] == ["careful"], result


# ---------------------------------------------------------------------------------------------------------------
# The runner's side: the dispatch table

CHECK_ACTIONS = r"""
import importlib, json, sys
from ansible_collections.storage.replication.plugins.plugin_utils.runner_action import RunnerAction

print(json.dumps({name: issubclass(importlib.import_module("ansible_collections.storage.replication.plugins.action."
                                                           + name).ActionModule, RunnerAction) for name in sys.argv[1:]}))
"""


def test_every_module_has_its_work_on_the_runner_and_runs_through_the_action():
    modules = sorted(path.stem for path in (ROOT / "plugins" / "modules").glob("*.py"))
    assert sorted(_module.MODULES) == modules
    assert sorted(path.stem for path in (ROOT / "plugins" / "action").glob("*.py")) == modules
    # In a process of its own: importing the controller's side of Ansible makes module warnings go to its display.
    proc = subprocess.run([sys.executable, "-c", CHECK_ACTIONS] + modules, capture_output=True, text=True, timeout=60,
                          check=True, env=dict(os.environ, PYTHONPATH=PYTHONPATH))
    assert json.loads(proc.stdout) == dict.fromkeys(modules, True)


def test_refusals_become_failed_results(recorded, monkeypatch):
    del recorded
    unknown = _module.call("nosuch", {})
    assert unknown["failed"] and "has no module 'nosuch' (it has: " in unknown["msg"] and "job_info" in unknown["msg"]

    def refuse(params, check_mode, diff):
        raise _module.ModuleFailure("no, because", problems=["one"])

    def engine_error(params, check_mode, diff):
        raise configmod.ConfigError(["a problem"])

    def missing(params, check_mode, diff):
        raise ModuleNotFoundError("No module named 'paramiko'", name="paramiko")

    def bug(params, check_mode, diff):
        return 1 / 0
    for name, task in (("refuse", refuse), ("engine_error", engine_error), ("missing", missing), ("bug", bug)):
        monkeypatch.setitem(_module.MODULES, name, task)
    assert _module.call("refuse", {}) == {"failed": True, "changed": False, "msg": "no, because", "problems": ["one"]}
    assert _module.call("engine_error", {}) == {"failed": True, "changed": False, "msg": "a problem", "node": "node1"}
    assert "needs the Python package paramiko" in _module.call("missing", {})["msg"]
    crashed = _module.call("bug", {})
    assert crashed["msg"] == "module bug failed on node 'node1': ZeroDivisionError: division by zero"
    assert "Traceback" in crashed["exception"]


# ---------------------------------------------------------------------------------------------------------------
# The runner's command, as a process

NOISY = r"""
import subprocess, sys
from ansible_collections.storage.replication.plugins.module_utils import _module, cli

def noisy(params, check_mode, diff):
    print("the engine talks")
    subprocess.run(["echo", "so does a hook"], check=True)
    return {"changed": False, "heard": params["say"]}

_module.MODULES["noisy"] = noisy
sys.exit(cli.main(["module-call", sys.argv[1]]))
"""


def module_call(name, request, tmp_path):
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, STORAGE_REPLICATION_CONFDIR=str(tmp_path / "etc"),
               STORAGE_REPLICATION_STATEDIR=str(tmp_path / "state"))
    return subprocess.run([sys.executable, "-c", NOISY, name], input=request, capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_the_command_answers_one_json_reply_on_stdout_whatever_the_engine_prints(tmp_path):
    proc = module_call("noisy", _runner_call.request_text({"say": "hello"}, False, False, THIS), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"protocol": 1, "engine": THIS, "node": json.loads(proc.stdout)["node"],
                                       "result": {"changed": False, "heard": "hello"}}
    assert "the engine talks" in proc.stderr and "so does a hook" in proc.stderr


def test_the_command_refuses_another_engine(tmp_path):
    proc = module_call("noisy", _runner_call.request_text({"say": "hello"}, False, False, OLDER), tmp_path)
    reply = json.loads(proc.stdout)
    assert proc.returncode == 0 and reply["mismatch"] is True and reply["engine"] == THIS and "result" not in reply
    assert "the engine talks" not in proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# The action on the controller

ACTION = r"""
import json, types
from ansible_collections.storage.replication.plugins.plugin_utils.runner_action import RunnerAction

action = object.__new__(RunnerAction)
action._task = types.SimpleNamespace(environment=[{"LANG": "C.UTF-8"}])
action._templar = types.SimpleNamespace(template=lambda value: value)
shell = types.SimpleNamespace(env_prefix=lambda **env: " ".join("%s=%s" % item for item in sorted(env.items())))
action._connection = types.SimpleNamespace(_shell=shell)
raw = {}
print(json.dumps([action._compute_environment_string(raw), raw]))
"""


def test_the_action_adds_the_expected_engine_to_the_task_environment():
    proc = subprocess.run([sys.executable, "-c", ACTION], capture_output=True, text=True, timeout=60, check=True,
                          env=dict(os.environ, PYTHONPATH=PYTHONPATH))
    prefix, raw = json.loads(proc.stdout)
    expected = _runner_call.expect_text(THIS)
    assert raw == {"LANG": "C.UTF-8", _runner_call.EXPECT_ENV: expected}
    assert prefix == "LANG=C.UTF-8 %s=%s" % (_runner_call.EXPECT_ENV, expected)
