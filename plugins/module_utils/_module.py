# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Plumbing shared by the modules: the common options, one cluster-wide change per task, errors, diffs.

A module describes its change as a function ``change(cfg)`` that edits a ClusterConfig (and raises ConfigError
for bad input); ``converge`` hands it to the engine's ``change_cluster`` (validate everything, then push to every
node, or in check mode only look), and turns the outcome into the module's result: ``changed`` only when the
configuration changed, a diff of the managed fields, warnings, and one failure message for every refusal.
"""

from __future__ import annotations

import json
import sys

from ansible_collections.storage.replication.plugins.module_utils import cluster, config as configmod
from ansible_collections.storage.replication.plugins.module_utils.failover import FailoverError
from ansible_collections.storage.replication.plugins.module_utils.fence import FenceStateError
from ansible_collections.storage.replication.plugins.module_utils.migrate import MigrationError
from ansible_collections.storage.replication.plugins.module_utils.replicate import ReplicationError
from ansible_collections.storage.replication.plugins.module_utils.rollback import RollbackError
from ansible_collections.storage.replication.plugins.module_utils.files import LockError
from ansible_collections.storage.replication.plugins.module_utils.state import StateError, read_local_node
from ansible_collections.storage.replication.plugins.module_utils.transport import RemoteError, TransportError
from ansible_collections.storage.replication.plugins.module_utils.zfs import ZfsError

RUNNER_PYTHON = "/opt/storage-replication/venv/bin/python"

# Options every configuration-changing module has (documented by the storage.replication.cluster fragment).
CLUSTER_OPTIONS = {
    "allow_unreachable": {"type": "bool", "default": False},
}


def cluster_argument_spec(options):
    """The module's own ``options`` plus the common ones."""
    spec = dict(options)
    spec.update(CLUSTER_OPTIONS)
    return spec


def list_spec(item_options, required=()):
    """The spec of a list-of-items option whose elements take ``item_options`` (``required`` ones made required)."""
    suboptions = {name: dict(spec, required=True) if name in required else dict(spec) for name, spec in item_options.items()}
    return {"type": "list", "elements": "dict", "options": suboptions}


def local_node():
    return read_local_node()


def failure_message(exc, what):
    """One line for a refused change: the problems, where, and that nothing was written."""
    problems = getattr(exc, "problems", None) or [str(exc)]
    return "%s refused on node '%s': %s. Nothing was changed on any node." % (what, local_node(), "; ".join(problems))


def converge(module, change, what, diff_of, result_of):
    """Apply ``change`` to the whole cluster (check mode: only look) and exit the module with the outcome.

    ``what`` names the object for messages ("job 100-0"); ``diff_of(before, after)`` returns the before/after of
    the managed fields; ``result_of(after, change_result)`` the module's own return values.
    """
    try:
        outcome = cluster.change_cluster(change, force=module.params["allow_unreachable"], check_mode=module.check_mode)
    except configmod.ConfigError as exc:
        module.fail_json(msg=failure_message(exc, "The change of %s was" % what), problems=list(exc.problems))
    except (cluster.ClusterError, LockError, StateError, OSError) as exc:
        module.fail_json(msg=failure_message(exc, "The change of %s was" % what))
    except ImportError as exc:
        module.fail_json(msg=missing_module_message(exc, "%s: the change on the other nodes" % what))
    for warning in outcome.warnings:
        module.warn(warning)
    summary = outcome.as_dict()
    result = {"changed": summary["changed"], "generation": summary["generation"], "push": summary["nodes"]}
    result.update(result_of(outcome.after, outcome.result))
    if module._diff:  # pylint: disable=protected-access
        result["diff"] = diff_of(outcome.before, outcome.after)
    module.exit_json(**result)


def missing_module_message(exc, what):
    return ("%s needs %s, which this Python (%s) lacks. Run the task with ansible_python_interpreter=%s (installed by "
            "the storage.replication.runner role)." % (what, exc.name, sys.executable, RUNNER_PYTHON))


# The exceptions by which the engine refuses or reports a failure, each with a message for the operator.
ENGINE_ERRORS = (FailoverError, FenceStateError, MigrationError, RollbackError, cluster.ClusterError, configmod.ConfigError,
                 ReplicationError, LockError, StateError, RemoteError, TransportError, ZfsError, OSError)


def run_module_step(module, step):
    """Run ``step()`` and exit the module with its result dict, or fail with the engine's one-line message."""
    try:
        result = step()
    except ImportError as exc:
        module.fail_json(msg=missing_module_message(exc, "This step"))
    except ENGINE_ERRORS as exc:
        module.fail_json(msg=str(exc), node=read_local_node())
    for warning in result.pop("warnings", None) or ():
        module.warn(warning)
    module.exit_json(**result)


def json_diff(before, after, header):
    """A diff of two JSON-able values as text, so that Ansible shows it line by line."""
    return {
        "before": json.dumps(before, indent=2, sort_keys=True) + "\n",
        "after": json.dumps(after, indent=2, sort_keys=True) + "\n",
        "before_header": "%s (before)" % header,
        "after_header": "%s (after)" % header,
    }


def requested_items(params, item_options, plural):
    """The items of the task: the list option ``plural``, or one item made of the top-level options."""
    if params[plural] is not None:
        return params[plural]
    return [{name: params[name] for name in item_options}]


class ItemsTask:
    """A task over one table of the configuration (nodes, storages, guests or jobs), in its single or list form.

    ``apply(cfg, items, **options) -> (keys, warnings)`` edits the configuration; ``view(obj, cfg)`` shapes one
    object for the result; ``diff_text(cfg, keys)`` (optional) renders the managed objects for the diff, else
    they are shown as JSON of their views.
    """

    def __init__(self, module, table, singular, plural, item_options, apply, view, diff_text=None):
        self.module = module
        self.table = table
        self.singular = singular
        self.plural = plural
        self.items = requested_items(module.params, item_options, plural)
        self.apply = apply
        self.view = view
        self.diff_text = diff_text
        self.managed = []

    def change(self, cfg, **options):
        keys, warnings = self.apply(cfg, self.items, **options)
        self.managed.extend(keys)
        for warning in warnings:
            self.module.warn(warning)

    def views(self, cfg):
        table = getattr(cfg, self.table)
        return [self.view(table[key], cfg) for key in table if key in self.managed]

    def diff_of(self, before, after):
        if self.diff_text is not None:
            return {"before": self.diff_text(before, self.managed), "after": self.diff_text(after, self.managed),
                    "before_header": "%s (before)" % self.plural, "after_header": "%s (after)" % self.plural}
        return json_diff(self.views(before), self.views(after), self.plural)

    def result_of(self, after, _result):
        views = self.views(after)
        result = {self.plural: views}
        if self.module.params[self.plural] is None:
            result[self.singular] = views[0] if views else None
        return result

    def run(self, what, **options):
        converge(self.module, lambda cfg: self.change(cfg, **options), what, self.diff_of, self.result_of)
