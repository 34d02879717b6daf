# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Moving bytes between file descriptors: the bottom layer, used by the sending and the receiving side alike."""

from __future__ import annotations

import os

SPLICE_CHUNK = 1 << 20


def copy_stream(source_fd, sink_fd):
    """Copy until EOF, in the kernel (splice) where Python and the descriptors allow it; returns bytes."""
    total = 0
    splice = getattr(os, "splice", None)
    while splice is not None:
        try:
            moved = splice(source_fd, sink_fd, SPLICE_CHUNK)
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            break  # EINVAL: neither end is a pipe; fall back to read/write
        if moved == 0:
            return total
        total += moved
    while True:
        data = os.read(source_fd, SPLICE_CHUNK)
        if not data:
            return total
        total += write_all(sink_fd, data)


def write_all(fd, data):
    """Write all of data (os.write may write less); returns its length."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return len(data)
