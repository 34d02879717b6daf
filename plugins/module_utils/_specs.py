# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The options of the modules over one table of the configuration (node, storage, guest, job).

Both ends read them: the module, to validate its arguments on the node (Ansible's argument spec), and the engine
(``_module.py``), to read a task's single form (the top-level options) as one item of its list form. Imports
nothing (the bottom layer), so that AnsiballZ ships only this file with such a module.
"""

from __future__ import annotations

# Options every configuration-changing module has (documented by the storage.replication.cluster fragment).
CLUSTER_OPTIONS = {
    "allow_unreachable": {"type": "bool", "default": False},
}

STATE = {"type": "str", "choices": ["present", "absent"], "default": "present"}

NODE_OPTIONS = {
    "name": {"type": "str"},
    "address": {"type": "str"},
    "host_key": {"type": "str", "no_log": False},
    "port": {"type": "int", "default": 22},
    "state": dict(STATE),
}

STORAGE_OPTIONS = {
    "id": {"type": "str"},
    "pool": {"type": "str"},
    "type": {"type": "str", "choices": ["zfspool"], "default": "zfspool"},
    "state": dict(STATE),
}

GUEST_OPTIONS = {
    "id": {"type": "int"},
    "type": {"type": "str", "choices": ["vm", "ct", "service"]},
    "node": {"type": "str"},
    "volumes": {"type": "list", "elements": "str", "default": []},
    "hooks": {"type": "dict", "default": {}},
    "state": dict(STATE),
}

JOB_OPTIONS = {
    "id": {"type": "str"},
    "guest": {"type": "int"},
    "target": {"type": "str"},
    "schedule": {"type": "str"},
    "rate": {"type": "float"},
    "comment": {"type": "str"},
    "enabled": {"type": "bool", "default": True},
    "keep": {"type": "str"},
    "keep_source": {"type": "str"},
    "rate_windows": {"type": "str"},
    "state": dict(STATE),
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


def items_spec(item_options, plural, required, purge=True):
    """The argument spec of a module over one table: the single form, ``plural`` (the list form) and ``purge``."""
    options = dict(item_options)
    options[plural] = list_spec(item_options, required)
    if purge:
        options["purge"] = {"type": "bool", "default": False}
    return cluster_argument_spec(options)
