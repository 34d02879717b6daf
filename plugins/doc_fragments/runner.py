# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """How every storage.replication module runs: through the runner the role installed on the node."""

    DOCUMENTATION = r"""
options: {}
attributes:
  platform:
    support: full
    platforms: posix
    description: Runs on a replication node prepared by the C(storage.replication.runner) role.
requirements:
  - The runner installed on the node by the C(storage.replication.runner) role (C(playbooks/site.yml) applies it), from
    the same version of the collection as the module.
notes:
  - The module runs under the node's default Python and needs no interpreter setting. It hands its arguments to the
    runner the role installed (C(storage-replication module-call), in the runner's own Python environment), which does
    the work with the node's engine, the same one its timer runs.
  - When the runner is missing, or was installed from another version of the collection (its version or its engine
    files differ from the collection's that runs the task, as after an upgrade of the collection without re-running
    the role), the module fails, changing nothing, and names the node and the fix, re-running the
    C(storage.replication.runner) role.
"""
