# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The guest image: built by image/build.sh, cached outside the repository under a hash of its recipe.

A recipe change (build.sh, the guest's boot script, the pinned peers or the runner's requirements) gives
a new key and so a new build; an unchanged recipe reuses the cached image.  Builds are serialised by a
lock, written to a temporary directory and renamed into place only when complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = [REPO / "openzfs" / "image" / name for name in ("build.sh", "guest-identity.sh", "peers.txt")] + [
    REPO / "requirements" / "node.txt"]
CACHE = Path(os.environ.get("SR_OPENZFS_CACHE", "/var/cache/storage-replication/openzfs"))
IMAGE_FILES = ("disk.img", "vmlinuz", "initrd.img", "zfs-version")
KEEP_IMAGES = 2


class ImageError(Exception):
    """The image could not be built; the message says where to look."""


def recipe_key() -> str:
    digest = hashlib.sha256()
    for path in RECIPE:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def image_dir(key: str | None = None) -> Path:
    return CACHE / (key or recipe_key())


def is_built(path: Path) -> bool:
    return all((path / name).is_file() for name in IMAGE_FILES)


def ensure_image(log=print) -> Path:
    """The cached image of the current recipe, built first if it is not there yet."""
    target = image_dir()
    if is_built(target):
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".build.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same image: wait for it
        if is_built(target):
            return target
        build(target, log)
    prune_old_images(keep=target)
    return target


def build(target: Path, log) -> None:
    work = target.with_name(target.name + ".building")
    if work.exists():
        shutil.rmtree(work)  # an earlier build died; its mounts are gone with its process (build.sh unmounts on exit)
    log("openzfs: building the guest image %s (recipe changed or first build; about 10 minutes on two cores)" % target.name)
    started = time.monotonic()
    argv = ["nice", "-n", "10", str(REPO / "openzfs" / "image" / "build.sh"), str(work)]
    proc = subprocess.run(argv, env=dict(os.environ, PYTHON=sys.executable), check=False)
    if proc.returncode != 0 or not is_built(work):
        raise ImageError("building the OpenZFS guest image failed (exit code %d) - see the logs in %s" % (
            proc.returncode, work))
    os.rename(work, target)
    log("openzfs: image %s built in %.0f s (OpenZFS %s)" % (
        target.name, time.monotonic() - started, (target / "zfs-version").read_text().strip()))


def prune_old_images(keep: Path) -> None:
    """Drop all but the newest cached images (they are several GiB apparent, ~1.5 GiB used, each)."""
    built = sorted((p for p in CACHE.iterdir() if p.is_dir() and is_built(p) and p != keep),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for old in built[KEEP_IMAGES - 1:]:
        shutil.rmtree(old)
