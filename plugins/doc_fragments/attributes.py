# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """Attributes and notes shared by the storage.replication modules."""

    # Modules that change the cluster configuration: they compute the whole new configuration, validate it, and
    # push it to every node at once.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    support: full
    description: Computes the new cluster configuration and the diff, and writes nothing on any node.
  diff_mode:
    support: full
    description: Shows the managed fields before and after the change.
  platform:
    support: full
    platforms: posix
    description: Runs on a replication node prepared by the C(storage.replication.runner) role.
  action_group:
    support: full
    membership:
      - storage.replication.cluster
    description: Use C(group/storage.replication.cluster) in C(module_defaults) to set defaults for all of them.
requirements:
  - The runner installed on the node by the C(storage.replication.runner) role (its Python environment has paramiko,
    which the push to the other nodes needs).
notes:
  - The cluster configuration is the same on every node. Run the task once for the cluster (C(run_once=true) on the
    group of replication nodes), on a node that has the runner, with the runner's interpreter
    (C(ansible_python_interpreter=/opt/storage-replication/venv/bin/python)).
  - The module loads the node's configuration, applies the change to a copy, validates the whole result (duplicate
    targets, a target that owns the guest, unknown storages or nodes) and only then pushes it with the next
    generation to every node over the nodes' SSH trust. If a node cannot be reached or holds a newer
    configuration, nothing is written anywhere.
  - The result reports C(changed) only when the cluster configuration changed.
"""

    # Read-only modules.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    description: This module only reads; it runs the same way in check mode.
  diff_mode:
    support: N/A
    description: This module only reads.
  platform:
    support: full
    platforms: posix
    description: Runs on a replication node prepared by the C(storage.replication.runner) role.
  action_group:
    support: full
    membership:
      - storage.replication.cluster
    description: Use C(group/storage.replication.cluster) in C(module_defaults) to set defaults for all of them.
"""

    # Modules that act on one node for a playbook step (the platform and what they need there).
    NODE_STEP = r"""
options: {}
attributes:
  platform:
    support: full
    platforms: posix
    description: Runs on a replication node prepared by the C(storage.replication.runner) role.
requirements:
  - The runner installed by the C(storage.replication.runner) role; use its interpreter.
"""
