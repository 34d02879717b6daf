# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The OpenZFS tier made ready for the tests: guests up, runner installed and the cluster converged by site.yml;
and the smoke's two guests made a cluster without Ansible.

    prepare()                               used by the tier fixture (conftest.py)
    prepare_smoke()                         used by the smoke fixture (conftest.py)
    python tests/openzfs/prepare.py stop    take both down (not with SR_OPENZFS_KEEP=1); `make test` and
                                            `make test-openzfs` run it after pytest, also when pytest ended before
                                            the fixtures' own clean-up

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
SMOKE_NAME = os.environ.get("SR_OPENZFS_SMOKE_NAME", "ozsmoke")
SMOKE_NODES = 2
MEMORY_PER_NODE_MB = 1536


@contextlib.contextmanager
def preparation_lock(name):
    """Held while the tier of that name is brought up and made a cluster."""
    TIER_ROOT.mkdir(parents=True, exist_ok=True)
    with open(TIER_ROOT / ("%s.lock" % name), "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def prepare() -> "tuple[Tier, object]":
    """Bring the tier up and converge it as a replication cluster (idempotent: a prepared tier is reused)."""
    # Imported here: the cluster helpers need the controller's Ansible, `stop` does not.
    from oz_cluster import OzCluster  # pylint: disable=import-outside-toplevel
    with preparation_lock(TIER_NAME):
        tier = Tier(TIER_NAME).up(nodes=NODES, memory="%dM" % MEMORY_PER_NODE_MB)
        return tier, OzCluster(tier).setup()


def prepare_smoke() -> "tuple[Tier, object]":
    """Bring the smoke's two guests up and make them a cluster of the engine alone (no site.yml)."""
    from oz_cluster import SMOKE_GUESTS, SMOKE_JOBS, OzCluster  # pylint: disable=import-outside-toplevel
    with preparation_lock(SMOKE_NAME):
        tier = Tier(SMOKE_NAME).up(nodes=SMOKE_NODES, memory="%dM" % MEMORY_PER_NODE_MB)
        return tier, OzCluster(tier, SMOKE_GUESTS, SMOKE_JOBS).setup_engine_only()


def stop() -> int:
    """Take the tier and the smoke's guests down (not with SR_OPENZFS_KEEP=1): after pytest, also when it ended
    before its fixtures could."""
    if os.environ.get("SR_OPENZFS_KEEP") != "1":
        Tier(TIER_NAME).down()
        Tier(SMOKE_NAME).down()
    return 0


if __name__ == "__main__":
    sys.exit({"stop": stop}[sys.argv[1]]())
