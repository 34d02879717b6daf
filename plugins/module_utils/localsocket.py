# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A node's own services on Unix sockets for root alone: the connection keeper (keeper.py) and the preloaded engine
(preload.py) both listen in /run/storage-replication (0700), on a socket made 0600, and turn away a client whose
peer credentials are not their own user's."""

from __future__ import annotations

import os
import socket
import struct

SO_PEERCRED_FORMAT = struct.Struct("3i")


def bind_private(path, already):
    """A listening socket at ``path`` that only root can reach, and its inode (to remove only our own file later).
    A live one there already raises RuntimeError(``already``); one left by a process that died is replaced."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    if answers(path):
        raise RuntimeError(already)
    if os.path.lexists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(64)
    return listener, os.stat(path).st_ino


def unbind(listener, path, bound_inode):
    """Close ``listener`` and remove its socket file, unless a newer process bound one of its own there since."""
    listener.close()
    if inode(path) == bound_inode:
        os.unlink(path)


def peer_credentials(conn):
    """(pid, uid) of the process at the other end of ``conn``, as the kernel recorded them when it connected."""
    pid, uid, _gid = SO_PEERCRED_FORMAT.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                               SO_PEERCRED_FORMAT.size))
    return pid, uid


def peer_uid(conn):
    return peer_credentials(conn)[1]


def answers(path):
    """Whether a process listens at ``path`` (connect within a second)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def inode(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
