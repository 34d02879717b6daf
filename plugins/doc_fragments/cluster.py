# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """What every module that changes the cluster configuration shares: its option, attributes and notes. Such a
    module computes the whole new configuration, validates it, and pushes it to every node at once."""

    DOCUMENTATION = r"""
options:
  allow_unreachable:
    description:
      - Commit the change although some nodes cannot be reached. The reachable nodes get it now; the others adopt
        it from a peer before their runner acts again (a node never acts on an older configuration).
      - By default a change is refused, and nothing is written anywhere, when a node cannot be reached.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Computes the new cluster configuration and the diff, and writes nothing on any node.
  diff_mode:
    support: full
    description: Shows the managed fields before and after the change.
notes:
  - The cluster configuration is the same on every node. Run the task once for the cluster (C(run_once=true) on the
    group of replication nodes), on a node that has the runner.
  - The module loads the node's configuration, applies the change to a copy, validates the whole result (duplicate
    targets, a target that owns the guest, unknown storages or nodes) and only then pushes it with the next
    generation to every node over the nodes' SSH trust. If a node cannot be reached or holds a newer
    configuration, nothing is written anywhere.
  - The result reports C(changed) only when the cluster configuration changed.
"""
