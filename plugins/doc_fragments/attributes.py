# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """Attributes that several storage.replication modules share (the platform, which every module has, is in the
    runner fragment; the attributes of the modules that change the cluster configuration are in the cluster one).

    Ansible merges an attribute of a fragment with the module's own attribute of the same name, the module's keys
    winning: a module gives only what differs, such as the description of its check mode."""

    # The modules of the action group cluster (meta/runtime.yml).
    DOCUMENTATION = r"""
options: {}
attributes:
  action_group:
    support: full
    membership:
      - storage.replication.cluster
    description: Use C(group/storage.replication.cluster) in C(module_defaults) to set defaults for all of them.
"""

    # The _info modules: they only read, and their query is evaluated on the controller (an action plugin).
    INFO_MODULE = r"""
options: {}
requirements:
  - jmespath on the controller, for O(query).
attributes:
  check_mode:
    support: full
    description: This module only reads; it runs the same way in check mode.
  diff_mode:
    support: N/A
    description: This module only reads.
"""

    # The steps of the migration, failover and rollback playbooks, on one node: each module describes what its check
    # mode reports.
    NODE_STEP = r"""
options: {}
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
    description: Nothing to show as a diff.
"""
