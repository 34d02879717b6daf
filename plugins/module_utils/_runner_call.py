# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""How an Ansible module hands its work to the runner installed on its node, and which engine each end has.

The modules run under the node's default Python and import nothing else of the engine than this file (and the
argument specs of ``_specs``): like community.general's ``zpool`` wraps the node's ``zpool``, each one runs the
runner's command, ``storage-replication module-call <module>`` (the role's launcher, in the runner's own Python
with paramiko), with a JSON request on stdin, and turns the JSON reply into its result. The work itself is done
by the engine the role installed (``_module.py``), so a module and the runner's timer can never run two engines.

Both ends know an engine by its identity: the collection's version and a digest of the engine's files, the
``plugins/module_utils/*.py`` that the role bundles (``roles/runner/files/make_bundle.py``) and installs. The
controller computes the identity of its collection (the modules' action, ``plugins/plugin_utils/runner_action.py``)
and passes it in the environment; the runner computes its own from the files it runs, and refuses a request that
expects another engine before it does anything. A runner installed from another version of the collection
(after an upgrade without re-running the role) is so reported with the fix, never half-used.

Imports nothing of ours (the bottom layer) and only the standard library: it runs inside AnsiballZ on any Python.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import socket

# The collection's version (galaxy.yml's; a unit test keeps them equal).
VERSION = "0.1.0"
# Where the role puts the runner's command (roles/runner/vars/main.yml: _runner_cli_link), whatever its install dir.
RUNNER = "/usr/local/bin/storage-replication"
# How the controller tells the module which engine it expects: "<version> <digest>".
EXPECT_ENV = "STORAGE_REPLICATION_ENGINE"
PROTOCOL = 1
LOCAL_NODE_FILE = "/var/lib/storage-replication/local-node"
FIX = "re-run the storage.replication.runner role on it (playbooks/site.yml does)"


class RunnerCallError(Exception):
    """The runner could not do the module's work: ``str()`` is the message for the task."""


# ---------------------------------------------------------------------------------------------------------------
# The identity of an engine

def engine_digest(directory=None):
    """sha256 over the engine's files (``*.py`` of ``directory``, default this file's): each file's name, size and
    content in the order of their names, so that it changes exactly when the role's engine bundle does."""
    directory = directory or os.path.dirname(os.path.abspath(__file__))
    total = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(directory, "*.py")), key=os.path.basename):
        with open(path, "rb") as handle:
            content = handle.read()
        total.update(("%s\0%d\0" % (os.path.basename(path), len(content))).encode("utf-8"))
        total.update(content)
    return total.hexdigest()


def identity(directory=None):
    return {"version": VERSION, "digest": engine_digest(directory)}


def expect_text(engine):
    """The value of EXPECT_ENV for an identity."""
    return "%s %s" % (engine["version"], engine["digest"])


def expected_identity(environ=None):
    """The engine the controller expects (EXPECT_ENV), or this collection's version alone when no controller said
    (the module run without its action plugin): then only the version is compared."""
    words = (os.environ if environ is None else environ).get(EXPECT_ENV, "").split()
    if len(words) == 2:
        return {"version": words[0], "digest": words[1]}
    return {"version": VERSION, "digest": None}


def mismatch(expect, actual):
    """Whether engine ``actual`` is not the one ``expect`` names (a digest of None matches any)."""
    if not isinstance(actual, dict) or actual.get("version") != expect.get("version"):
        return True
    return bool(expect.get("digest")) and actual.get("digest") != expect["digest"]


def describe(engine):
    if not isinstance(engine, dict):
        return "an unknown version"
    digest = engine.get("digest")
    return "%s (engine %s)" % (engine.get("version"), digest[:12] if digest else "not checked")


def mismatch_message(node, expect, actual):
    return ("the storage.replication runner on node '%s' is version %s, but this collection is %s: the runner was "
            "installed from another version of the collection. To use this collection's modules on that node, %s; "
            "nothing was changed" % (node, describe(actual), describe(expect), FIX))


def older_runner_message(node, expect):
    """A runner from before module calls existed (its command has no module-call)."""
    return ("the storage.replication runner on node '%s' is older than this collection (%s) and cannot do a module's "
            "work: %s; nothing was changed" % (node, describe(expect), FIX))


def not_installed_message(node, runner=RUNNER):
    return ("the storage.replication runner is not installed on node '%s' (%s does not exist): the modules hand their "
            "work to it. Apply the storage.replication.runner role to the node first (playbooks/site.yml does); "
            "nothing was changed" % (node, runner))


def local_node():
    """The node's name in the cluster (the role's local-node file), else its short host name."""
    try:
        with open(LOCAL_NODE_FILE, encoding="utf-8") as handle:
            name = handle.read().strip()
    except OSError:
        name = ""
    return name or socket.gethostname().split(".")[0]


# ---------------------------------------------------------------------------------------------------------------
# The request and the reply

def request_text(params, check_mode, diff, expect):
    return json.dumps({"protocol": PROTOCOL, "params": params, "check_mode": bool(check_mode), "diff": bool(diff),
                       "expect": expect}, sort_keys=True)


def parse_request(text):
    """The request a module sent; ValueError if it is not one."""
    try:
        request = json.loads(text)
    except ValueError as exc:
        raise ValueError("the request is not JSON (%s)" % exc) from None
    if not isinstance(request, dict) or request.get("protocol") != PROTOCOL or not isinstance(request.get("params"), dict) \
            or not isinstance(request.get("expect"), dict):
        raise ValueError("not a module call of protocol %d: %s" % (PROTOCOL, text[:200]))
    return request


def reply_of(engine, node, result=None):
    """The runner's answer: its engine and node, and the module's result (none when it refused the engine)."""
    reply = {"protocol": PROTOCOL, "engine": engine, "node": node}
    if result is None:
        reply["mismatch"] = True
    else:
        reply["result"] = result
    return reply


def read_reply(rc, stdout, stderr, node, expect):
    """The module's result from the runner's exit code and output; RunnerCallError when there is none to use."""
    try:
        reply = json.loads(stdout)
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or "engine" not in reply:
        if "module-call" in stderr and "invalid choice" in stderr:
            raise RunnerCallError(older_runner_message(node, expect))
        raise RunnerCallError("the storage.replication runner on node '%s' gave no answer (exit code %d): %s"
                              % (node, rc, (stderr.strip() or stdout.strip() or "no output")[-2000:]))
    node = reply.get("node") or node
    if reply.get("mismatch") or mismatch(expect, reply["engine"]) or not isinstance(reply.get("result"), dict):
        raise RunnerCallError(mismatch_message(node, expect, reply["engine"]))
    return reply["result"]


# ---------------------------------------------------------------------------------------------------------------
# The module's side

def invoke(module, runner, name, text):
    """Run the runner's module call; (exit code, stdout, stderr)."""
    return module.run_command([runner, "module-call", name], data=text, check_rc=False)


def run_module(module, name, runner=None):
    """Do module ``name``'s work through the node's runner (default RUNNER) and exit the module with its result."""
    runner = runner or RUNNER
    node = local_node()
    if not os.path.exists(runner):
        module.fail_json(msg=not_installed_message(node, runner), node=node)
    expect = expected_identity()
    rc, stdout, stderr = invoke(module, runner, name, request_text(module.params, module.check_mode,
                                                                   module._diff, expect))  # pylint: disable=protected-access
    try:
        result = read_reply(rc, stdout, stderr, node, expect)
    except RunnerCallError as exc:
        module.fail_json(msg=str(exc), node=node)
    for warning in result.pop("warnings", None) or ():
        module.warn(warning)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)
