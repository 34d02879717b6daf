# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """The options every module that changes the cluster configuration has."""

    DOCUMENTATION = r"""
options:
  allow_unreachable:
    description:
      - Commit the change although some nodes cannot be reached. The reachable nodes get it now; the others adopt
        it from a peer before their runner acts again (a node never acts on an older configuration).
      - By default a change is refused, and nothing is written anywhere, when a node cannot be reached.
    type: bool
    default: false
"""
