# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The OpenZFS tier made ready for the tests: guests up, runner installed and the cluster converged by site.yml.

    prepare()                               used by the tier fixture (conftest.py)
    python tests/openzfs/prepare.py stop    take the tier down (not with SR_OPENZFS_KEEP=1); `make test-openzfs`
                                            runs it after pytest, also when pytest ended before the fixture's own clean-up

The preparation holds a lock, so two sessions never bring the same tier up at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from openzfs._tier import TIER_ROOT, Tier  # noqa: E402  pylint: disable=wrong-import-position

TIER_NAME = os.environ.get("SR_OPENZFS_NAME", "oztest")
NODES = int(os.environ.get("SR_OPENZFS_NODES", "3"))
MEMORY_PER_NODE_MB = 1536


@contextlib.contextmanager
def preparation_lock():
    """Held while the tier is brought up and converged."""
    TIER_ROOT.mkdir(parents=True, exist_ok=True)
    with open(TIER_ROOT / ("%s.lock" % TIER_NAME), "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def prepare() -> "tuple[Tier, object]":
    """Bring the tier up and converge it as a replication cluster (idempotent: a prepared tier is reused)."""
    # Imported here: the cluster helpers need the controller's Ansible, `stop` does not.
    from oz_cluster import OzCluster  # pylint: disable=import-outside-toplevel
    with preparation_lock():
        tier = Tier(TIER_NAME).up(nodes=NODES, memory="%dM" % MEMORY_PER_NODE_MB)
        return tier, OzCluster(tier).setup()


def stop() -> int:
    """Take the tier down (not with SR_OPENZFS_KEEP=1): after pytest, also when it ended before its fixture could."""
    if os.environ.get("SR_OPENZFS_KEEP") != "1":
        Tier(TIER_NAME).down()
    return 0


if __name__ == "__main__":
    sys.exit({"stop": stop}[sys.argv[1]]())
