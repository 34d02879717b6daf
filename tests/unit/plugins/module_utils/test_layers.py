# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The engine's imports point one way (issue 20): each module imports only modules below it in LAYERS, so there is
no cycle, and none of them defers an import of another engine module (which would hide a cycle) except the CLI,
which keeps `serve` and `schedule-analyze` from importing what they do not use.  A new module must take its place
here (docs/architecture.md shows the same order).

The Ansible modules (plugins/modules/) import none of it but the thin side of the module call (`_runner_call`, and
`_specs` for their argument specs): AnsiballZ ships only those, and the work is done by the runner's engine."""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

ENGINE = pathlib.Path(__file__).resolve().parents[4] / "plugins" / "module_utils"
MODULES = ENGINE.parent / "modules"
THIN = {"_runner_call", "_specs"}

LAYERS = [
    # names, file helpers, job logs, fault points, the wire between nodes, the restore-point grid, the modules' side
    # of a module call: import nothing of ours but names
    "names", "files", "joblog", "failpoints", "protocol", "retention", "_specs", "_runner_call",
    # the root-only sockets of the node's services, and the caller's end of the preloaded engine (stdlib only)
    "localsocket", "preload_client",
    # schedules and bandwidth windows, state, the configuration model; the node's settings and what it reports
    # (status, metrics, notifications)
    "schedule", "bandwidth", "state", "config", "settings", "report", "metrics", "notify",
    # ZFS, processes, the quorum protocol, a session borrowed from the connection keeper, and the transport
    "zfs", "points", "pruning", "receive_stream", "quorum", "kept", "transport",
    # the control connections a runner pass shares among its jobs, and those the keeper keeps between runs
    "channels", "keeper",
    # the cluster configuration layer, and the node's own view of its quorum (self-fencing)
    "cluster", "fence",
    # one replication: the receiving side (who may ask what, the operations, the forced command), the sending side
    "authority", "receiver", "serve", "replicate", "plan",
    # what runs replications: the runner, what a node tells of them (read-only), rollback, failover, migration
    "runner", "nodeview", "rollback", "failover", "migrate",
    # what the Ansible modules do (run by the runner's module-call), then the entry points: the web views, the CLI
    "_converge", "_module", "web",
    # the preloaded engine (it loads the modules above it by name; the CLI that starts it hands it its main)
    "preload", "cli",
]
LAZY_ALLOWED = {"cli"}


def engine_imports(module):
    """[(imported engine module, at top level?)] of one engine module."""
    tree = ast.parse((ENGINE / (module + ".py")).read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and "plugins.module_utils" in node.module:
            tail = node.module.split("plugins.module_utils", 1)[1].strip(".")
            names = [tail.split(".")[0]] if tail else [alias.name for alias in node.names]
            found += [(name, id(node) in top) for name in names if name != module]
    return found


def test_every_engine_module_has_its_layer():
    modules = sorted(p.stem for p in ENGINE.glob("*.py") if p.stem != "__init__")
    assert sorted(LAYERS) == modules


@pytest.mark.parametrize("module", LAYERS)
def test_imports_point_down(module):
    below = set(LAYERS[:LAYERS.index(module)])
    upward = sorted({name for name, _top in engine_imports(module) if name not in below})
    assert upward == [], "%s imports %s, which is not below it" % (module, ", ".join(upward))


@pytest.mark.parametrize("module", sorted(set(LAYERS) - LAZY_ALLOWED))
def test_no_deferred_imports_between_engine_modules(module):
    deferred = sorted({name for name, top in engine_imports(module) if not top})
    assert deferred == [], "%s imports %s inside a function" % (module, ", ".join(deferred))


@pytest.mark.parametrize("path", sorted(MODULES.glob("*.py")), ids=lambda path: path.stem)
def test_ansible_modules_import_only_the_thin_side(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    ours = {name.split("plugins.module_utils", 1)[1].strip(".") for name in imported if "plugins.module_utils" in name}
    assert ours <= THIN, "%s imports %s of the engine" % (path.name, ", ".join(sorted(ours - THIN)))
    others = {name for name in imported if "plugins.module_utils" not in name}
    assert others <= {"__future__", "ansible.module_utils.basic"}, others


@pytest.mark.parametrize("module", sorted(THIN))
def test_the_thin_side_needs_only_the_standard_library(module):
    tree = ast.parse((ENGINE / (module + ".py")).read_text(encoding="utf-8"))
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert names <= set(sys.stdlib_module_names), names
