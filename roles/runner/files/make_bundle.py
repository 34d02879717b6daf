# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""make_bundle.py OUTPUT.tar FILE...: a reproducible tar of FILEs (flat, by base name), run on the controller.

The same files always give the same bytes (sorted names, no timestamps, root-owned, mode 0644), so the role's
copy of the bundle changes exactly when a file did, and one transfer replaces one per file.
"""

from __future__ import annotations

import os
import sys
import tarfile


def add_file(bundle: tarfile.TarFile, path: str) -> None:
    info = tarfile.TarInfo(os.path.basename(path))
    info.size = os.path.getsize(path)
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    with open(path, "rb") as handle:
        bundle.addfile(info, handle)


def main(argv: list) -> int:
    if not argv:
        sys.stderr.write("usage: make_bundle.py OUTPUT.tar FILE...\n")
        return 2
    output, files = argv[0], sorted(argv[1:], key=os.path.basename)
    with tarfile.open(output, "w", format=tarfile.GNU_FORMAT) as bundle:
        for path in files:
            add_file(bundle, path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
