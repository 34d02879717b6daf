# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The session lab: one lab of real nodes for all integration tests.

`lab` yields a lab.Lab that is up (3 nodes, 1G pools). Its name is $SR_LAB_NAME (default srtest). Under
pytest-xdist every worker uses the same lab: the workers register in a small file, and the last one to finish
takes the lab down. SR_LAB_KEEP=1 leaves the lab up after the tests (to look around: python -m lab status
--name srtest). Tests that break a node (kill, partition, fill) must repair it before they return.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os

import pytest

from lab import LAB_ROOT, Lab


@contextlib.contextmanager
def _registered_users(name: str):
    """The pids of the pytest processes using the lab, under an exclusive lock; stale pids are dropped."""
    LAB_ROOT.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = LAB_ROOT / f".{name}.users"
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        users = {pid for pid in json.loads(handle.read() or "[]") if os.path.exists(f"/proc/{pid}")}
        yield users
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(sorted(users)))
        if not users:
            path.unlink()


@pytest.fixture(scope="session")
def lab():
    """A lab of 3 real nodes, up for the whole session."""
    name = os.environ.get("SR_LAB_NAME", "srtest")
    session_lab = Lab(name)
    with _registered_users(name) as users:
        users.add(os.getpid())
        session_lab.up(nodes=3, pool_size="1G")
    yield session_lab
    with _registered_users(name) as users:
        users.discard(os.getpid())
        if not users and os.environ.get("SR_LAB_KEEP") != "1":
            session_lab.down()
