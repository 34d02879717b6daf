# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The session lab: one lab of real nodes for all integration tests.

`lab` yields a lab.Lab that is up (3 nodes, 1G pools). Its name is $SR_LAB_NAME (default srtest). Under
pytest-xdist each worker has a session lab of its own, $SR_LAB_NAME-<worker> (srtest-gw0, srtest-gw1): the
modules that use it each write the whole cluster configuration, so two modules must never share one at the same
time (`make test` runs the lab's tests on two workers, a whole module on one: --dist loadfile). A lab is taken down
by the last process that uses it (they register in a small file). SR_LAB_KEEP=1 leaves the labs up after the tests
(to look around: python -m lab status --name srtest). `module_lab` is a lab of the test module's own, for tests
that break nodes (kill, partition, fill): they repair the node before they return, and other modules never see
the broken node.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
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


@contextlib.contextmanager
def shared_lab(name: str, nodes: int = 3, pool_size: str = "1G"):
    """A lab that is up while any pytest process (xdist worker) is inside this block; the last one out takes it
    down, unless SR_LAB_KEEP=1."""
    the_lab = Lab(name)
    with _registered_users(name) as users:
        users.add(os.getpid())
        the_lab.up(nodes=nodes, pool_size=pool_size)
    try:
        yield the_lab
    finally:
        with _registered_users(name) as users:
            users.discard(os.getpid())
            if not users and os.environ.get("SR_LAB_KEEP") != "1":
                the_lab.down()


def session_lab_name() -> str:
    name = os.environ.get("SR_LAB_NAME", "srtest")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return "%s-%s" % (name[:12], worker) if worker else name


@pytest.fixture(scope="session")
def lab():
    """A lab of 3 real nodes, up for the whole session, shared by the tests of this process."""
    with shared_lab(session_lab_name()) as session_lab:
        yield session_lab


@pytest.fixture(scope="module")
def module_lab(request):
    """A lab of 3 real nodes for one test module alone: for tests that break nodes (kill, partition, fill) and
    must not disturb the others. Under xdist, tests of one module may still run side by side: let each break a
    different node."""
    module = hashlib.sha256(request.module.__name__.encode()).hexdigest()[:6]
    with shared_lab(f"{session_lab_name()[:12]}-m{module}") as own_lab:
        yield own_lab
