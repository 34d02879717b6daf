# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The OpenZFS tier: QEMU guests with the OpenZFS kernel module, made a replication cluster by site.yml.

`tier` (session) boots $SR_OPENZFS_NODES guests (default 3) of the tier $SR_OPENZFS_NAME (default oztest),
gives each a pool on its own virtual disk, installs the runner with the real role and converges the cluster
configuration of oz_cluster.py with playbooks/site.yml (prepare.py).  SR_OPENZFS_KEEP=1 leaves the tier up
(python -m openzfs status --name oztest); SR_OPENZFS=0 switches the tier off, SR_OPENZFS=1 runs it also under
software emulation (`make test-openzfs` sets it).

Where the machine cannot run the tier (not root, no QEMU, too little memory or disk), or could only run it under
QEMU's software emulation (no hardware virtualisation: about 45 minutes on two cores, more than `make test` as a
whole may take), every test of this directory is skipped with the reason, and the session summary says so in one
line: never a silent pass.
"""

from __future__ import annotations

import os
import shutil

import pytest

from openzfs._image import CACHE, image_dir, is_built
from openzfs._tier import kvm_usable
from prepare import MEMORY_PER_NODE_MB, NODES, prepare

IMAGE_SPACE_GB = 8

_outcome = {}


def unavailable_reason() -> str | None:
    """Why this machine cannot run the tier, or None if it can."""
    if os.environ.get("SR_OPENZFS") == "0":
        return "switched off by SR_OPENZFS=0"
    if os.geteuid() != 0:
        return "needs root (QEMU guests, and debootstrap/chroot for the image)"
    for tool in ("qemu-system-x86_64", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return "%s is not installed (make deps installs it)" % tool
    if not is_built(image_dir()):
        if shutil.which("debootstrap") is None:
            return "the guest image is not built and debootstrap is missing (make deps installs it)"
        parent = CACHE if CACHE.exists() else CACHE.parent if CACHE.parent.exists() else "/var"
        if shutil.disk_usage(parent).free < IMAGE_SPACE_GB << 30:
            return "the guest image needs %d GiB free under %s" % (IMAGE_SPACE_GB, parent)
    available_mb = _available_memory_mb()
    if available_mb < NODES * MEMORY_PER_NODE_MB + 1024:
        return "%d guests need %d MiB of memory, %d MiB available" % (NODES, NODES * MEMORY_PER_NODE_MB, available_mb)
    if not kvm_usable() and os.environ.get("SR_OPENZFS") != "1":
        return ("no hardware virtualisation here (/dev/kvm missing, or no vmx/svm): under QEMU's software emulation "
                "the tier takes about 45 minutes, beyond the budget of make test - make test-openzfs runs it "
                "(or SR_OPENZFS=1 make test)")
    return None


def _available_memory_mb() -> int:
    with open("/proc/meminfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


@pytest.fixture(scope="session")
def prepared():
    """(tier, cluster): the tier up and converged by site.yml."""
    reason = unavailable_reason()
    if reason:
        _outcome["skipped"] = reason
        pytest.skip("OpenZFS tier not run: %s" % reason)
    the_tier, the_cluster = prepare()
    try:
        _outcome["ran"] = the_tier.exec("node1", ["zfs", "version"]).stdout.split()[0]
        yield the_tier, the_cluster
    finally:
        if os.environ.get("SR_OPENZFS_KEEP") != "1":
            the_tier.down()


@pytest.fixture(scope="session")
def tier(prepared):
    return prepared[0]


@pytest.fixture(scope="session")
def cluster(prepared):
    """The tier as a replication cluster (runner installed by site.yml, guests and jobs converged)."""
    return prepared[1]


def pytest_terminal_summary(terminalreporter):
    if "ran" in _outcome:
        terminalreporter.write_line("OpenZFS tier: ran on %s, %d QEMU guests" % (_outcome["ran"], NODES))
    elif "skipped" in _outcome:
        terminalreporter.write_line("OpenZFS tier: NOT RUN - %s" % _outcome["skipped"], yellow=True, bold=True)
