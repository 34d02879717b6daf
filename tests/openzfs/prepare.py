# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Prepare the OpenZFS tier in the background while the other suites run (`make test` starts it first).

    python tests/openzfs/prepare.py start   detach: build the image if needed, boot the tier, converge it (site.yml)
    python tests/openzfs/prepare.py stop    end a preparation still running; take the tier down (not with
                                            SR_OPENZFS_KEEP=1)

Under software emulation the preparation takes about as long as the other suites together; it runs at the lowest
CPU priority, so it uses what they leave idle.  The tier fixture (conftest.py) takes the same lock: it waits for a
preparation under way, then finds the tier up and converged.  If the preparation failed, the fixture prepares the
tier again in the foreground, where a failure fails the tests with its message.  Nothing starts where the tier
cannot run (conftest.unavailable_reason).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from openzfs._tier import TIER_ROOT, Tier  # noqa: E402  pylint: disable=wrong-import-position

TIER_NAME = os.environ.get("SR_OPENZFS_NAME", "oztest")
NODES = int(os.environ.get("SR_OPENZFS_NODES", "3"))
MEMORY_PER_NODE_MB = 1536


def _path(suffix: str) -> Path:
    return TIER_ROOT / ("%s.%s" % (TIER_NAME, suffix))


@contextlib.contextmanager
def preparation_lock():
    """Held while the tier is brought up and converged, by the background preparation or by the fixture."""
    TIER_ROOT.mkdir(parents=True, exist_ok=True)
    with open(_path("lock"), "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def prepare() -> "tuple[Tier, object]":
    """Bring the tier up and converge it as a replication cluster (idempotent: a prepared tier is reused)."""
    # Imported here: the cluster helpers need the controller's Ansible, `start` and `stop` do not.
    from oz_cluster import OzCluster  # pylint: disable=import-outside-toplevel
    with preparation_lock():
        tier = Tier(TIER_NAME).up(nodes=NODES, memory="%dM" % MEMORY_PER_NODE_MB)
        return tier, OzCluster(tier).setup()


def start() -> int:
    from conftest import unavailable_reason  # pylint: disable=import-outside-toplevel
    reason = unavailable_reason()
    if reason:
        print("OpenZFS tier: not prepared - %s" % reason)
        return 0
    TIER_ROOT.mkdir(parents=True, exist_ok=True)
    with open(_path("prepare.log"), "w", encoding="utf-8") as log:
        child = subprocess.Popen(["nice", "-n", "19", sys.executable, __file__, "run"], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log, start_new_session=True)
    _path("prepare.pid").write_text(str(child.pid))
    print("OpenZFS tier: preparing in the background (log: %s)" % _path("prepare.log"))
    return 0


def run() -> int:
    started = time.monotonic()
    prepare()
    print("OpenZFS tier: prepared in %.0f s" % (time.monotonic() - started), flush=True)
    return 0


def stop() -> int:
    pid_file = _path("prepare.pid")
    if pid_file.exists():
        pid = int(pid_file.read_text())
        with contextlib.suppress(OSError):  # gone already
            if __file__ in Path("/proc/%d/cmdline" % pid).read_bytes().decode(errors="replace"):
                os.killpg(pid, signal.SIGTERM)  # the preparation and its ansible-playbook
        pid_file.unlink()
    if os.environ.get("SR_OPENZFS_KEEP") != "1":
        Tier(TIER_NAME).down()
    return 0


if __name__ == "__main__":
    sys.exit({"start": start, "run": run, "stop": stop}[sys.argv[1]]())
