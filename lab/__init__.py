# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A lab of real ZFS nodes on one machine.

Each node is a network namespace on a per-lab bridge (its own address), a UTS namespace (its own host name) and a
persistent private mount namespace in which its own zfs-fuse and its own sshd run, with the paths a node keeps to
itself (ZFS daemon state, /etc/ssh, /root/.ssh, the project's directories, /tmp, ...) bind-mounted from a
per-node directory. All state lives in /var/tmp/storage-replication-lab/<name>/, described by lab.json so that
any process can find, inspect and remove the lab, even after a crash.

    lab = Lab("srlab"); lab.up(nodes=3); lab.exec("node1", ["zfs", "list"]); lab.down()
"""

from __future__ import annotations

from lab._lab import LAB_ROOT, Lab
from lab._system import LabCommandError, LabError

__all__ = ["LAB_ROOT", "Lab", "LabCommandError", "LabError"]
