# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The OpenZFS tier and its smoke: QEMU guests with the OpenZFS kernel module.

The tier: `tier` (session) boots $SR_OPENZFS_NODES guests (default 3) of the tier $SR_OPENZFS_NAME (default oztest),
gives each a pool on its own virtual disk, installs the runner with the real role and converges the cluster
configuration of oz_cluster.py with playbooks/site.yml (prepare.py).  It runs where the machine has hardware
virtualisation: under QEMU's software emulation it takes about 45 minutes on two cores, more than `make test` as a
whole may take.  SR_OPENZFS=1 runs it also under software emulation (`make test-openzfs` sets it).

The smoke (test_smoke.py): where the tier does not run, `smoke` (session) boots two guests of the tier
$SR_OPENZFS_SMOKE_NAME (default ozsmoke) and makes them a cluster of the engine alone, without Ansible; it runs
under software emulation too.  Where the tier runs, the smoke does not: the tier proves all it does.  It uses the
cached guest image only: building the image takes longer than make test's budget (see IMAGE_BUILD_MINUTES), so a
machine without it skips the smoke and says how to get it.  SR_OPENZFS=smoke runs the smoke alone, building the
image if needed (`make test-openzfs-smoke`).

SR_OPENZFS_KEEP=1 leaves the guests up (python -m openzfs status --name oztest|ozsmoke); SR_OPENZFS=0 switches
both off.  Whatever is not run is skipped with the reason, and the session summary says so in one line: never a
silent pass.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from openzfs._image import CACHE, image_dir, is_built, recipe_key
from openzfs._tier import accelerator_args, kvm_usable
from prepare import MEMORY_PER_NODE_MB, NODES, SMOKE_NODES, prepare, prepare_smoke

pytest.register_assert_rewrite("oz_cluster")  # the checks shared by both test files report like the tests' own

IMAGE_SPACE_GB = 8
IMAGE_BUILD_MINUTES = 11  # measured: 674 s on two shared cores (the README's Measured)

_outcome = {}


def machine_reason(nodes: int, may_build: bool) -> str | None:
    """Why this machine cannot boot that many guests (may_build: building a missing image is acceptable)."""
    if os.geteuid() != 0:
        return "needs root (QEMU guests, and debootstrap/chroot for the image)"
    for tool in ("qemu-system-x86_64", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return "%s is not installed (make deps installs it)" % tool
    if not is_built(image_dir()):
        if not may_build:
            return ("the guest image %s is not in %s and building it takes about %d minutes, beyond the budget of "
                    "make test: `make openzfs-image` once, or restore that directory from a cache keyed by "
                    "`python -m openzfs key`" % (recipe_key(), CACHE, IMAGE_BUILD_MINUTES))
        if shutil.which("debootstrap") is None:
            return "the guest image is not built and debootstrap is missing (make deps installs it)"
        parent = CACHE if CACHE.exists() else CACHE.parent if CACHE.parent.exists() else "/var"
        if shutil.disk_usage(parent).free < IMAGE_SPACE_GB << 30:
            return "the guest image needs %d GiB free under %s" % (IMAGE_SPACE_GB, parent)
    available_mb = _available_memory_mb()
    if available_mb < nodes * MEMORY_PER_NODE_MB + 1024:
        return "%d guests need %d MiB of memory, %d MiB available" % (nodes, nodes * MEMORY_PER_NODE_MB, available_mb)
    return None


def unavailable_reason() -> str | None:
    """Why this machine does not run the tier, or None if it does."""
    switch = os.environ.get("SR_OPENZFS")
    if switch == "0":
        return "switched off by SR_OPENZFS=0"
    if switch == "smoke":
        return "SR_OPENZFS=smoke runs the smoke alone"
    reason = machine_reason(NODES, may_build=True)
    if reason:
        return reason
    if not kvm_usable() and switch != "1":
        return ("no hardware virtualisation here (/dev/kvm missing, or no vmx/svm): under QEMU's software emulation "
                "the tier takes about 45 minutes, beyond the budget of make test - make test-openzfs runs it "
                "(or SR_OPENZFS=1 make test)")
    return None


def smoke_unavailable_reason() -> str | None:
    """Why this machine does not run the smoke, or None if it does."""
    switch = os.environ.get("SR_OPENZFS")
    if switch == "0":
        return "switched off by SR_OPENZFS=0"
    if switch != "smoke" and unavailable_reason() is None:
        return "the full tier runs here and proves everything the smoke does"
    return machine_reason(SMOKE_NODES, may_build=switch == "smoke")


def _available_memory_mb() -> int:
    with open("/proc/meminfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def _brought_up(key: str, label: str, reason: str | None, bring_up):
    """Skip with the reason, or bring_up() the guests and yield (tier, cluster) until the session ends; what
    happened (and how long it took) is kept for the summary."""
    if reason:
        _outcome[key] = {"skipped": reason}
        pytest.skip("%s not run: %s" % (label, reason))
    started = time.monotonic()
    the_tier, the_cluster = bring_up()
    outcome = _outcome[key] = {"started": started, "ready": time.monotonic()}
    try:
        outcome["zfs"] = the_tier.exec("node1", ["zfs", "version"]).stdout.split()[0]
        yield the_tier, the_cluster
    finally:
        outcome["ended"] = time.monotonic()
        if os.environ.get("SR_OPENZFS_KEEP") != "1":
            the_tier.down()


@pytest.fixture(scope="session")
def prepared():
    """(tier, cluster): the tier up and converged by site.yml."""
    yield from _brought_up("tier", "OpenZFS tier", unavailable_reason(), prepare)


@pytest.fixture(scope="session")
def tier(prepared):
    return prepared[0]


@pytest.fixture(scope="session")
def cluster(prepared):
    """The tier as a replication cluster (runner installed by site.yml, guests and jobs converged)."""
    return prepared[1]


@pytest.fixture(scope="session")
def smoke_prepared():
    """(tier, cluster): the smoke's two guests up, a cluster of the engine alone."""
    yield from _brought_up("smoke", "OpenZFS smoke", smoke_unavailable_reason(), prepare_smoke)


@pytest.fixture(scope="session")
def smoke(smoke_prepared):
    """The smoke's guests as a cluster of the engine alone (oz_cluster.OzCluster.setup_engine_only)."""
    return smoke_prepared[1]


def summary_lines():
    """What the session summary says of the tier and the smoke (the tiers' one line each: never a silent pass)."""
    lines = []
    tier_ran = "zfs" in _outcome.get("tier", {})
    for key, label, nodes in (("tier", "OpenZFS tier", NODES), ("smoke", "OpenZFS smoke", SMOKE_NODES)):
        outcome = _outcome.get(key)
        if outcome is None or (key == "smoke" and tier_ran):  # not asked for, or it yields to the tier
            continue
        if "skipped" in outcome:
            lines.append("%s: NOT RUN - %s" % (label, outcome["skipped"]))
        elif "zfs" in outcome:
            lines.append("%s: ran on %s, %d QEMU guests (%s): %.0f s to boot and set up, %.0f s of tests"
                         % (label, outcome["zfs"], nodes, accelerator_args()[1].split(",", maxsplit=1)[0],
                            outcome["ready"] - outcome["started"], outcome.get("ended", time.monotonic()) - outcome["ready"]))
    return lines


def pytest_sessionfinish(session):
    # Under pytest-xdist the tests ran in a worker, and the controller writes the summary (tests/conftest.py).
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["summary_lines"] = summary_lines()


def pytest_terminal_summary(terminalreporter):
    for line in summary_lines():
        terminalreporter.write_line(line, yellow="NOT RUN" in line, bold="NOT RUN" in line)
