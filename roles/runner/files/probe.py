# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The runner role's preflight probe: run on the node by Ansible's Python, with the runner's Python as argument.

Prints one JSON object with what the role needs to know before it changes anything: whether zfs, the runner's
Python (version, venv) and systemd-analyze work, and whether Ansible's Python has what the pip module needs.
One probe instead of one task per check: every task costs a round trip to every node. It only reads.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

PROBE_TIMEOUT = 60  # seconds; a hung zfs (a stuck zfs-fuse daemon) must not hang the play


def run(argv: list) -> dict:
    """rc, stdout and stderr of argv; found is false when the command does not exist."""
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=PROBE_TIMEOUT, check=False)
    except FileNotFoundError as error:
        return {"found": False, "rc": None, "stdout": "", "stderr": str(error)}
    except subprocess.TimeoutExpired:
        return {"found": True, "rc": None, "stdout": "", "stderr": "no answer within %d s" % PROBE_TIMEOUT}
    return {"found": True, "rc": proc.returncode, "stdout": proc.stdout.strip(), "stderr": proc.stderr.strip()}


def importable(*names: str) -> bool:
    """Whether this Python can import any of names."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        return True
    return False


def main(runner_python: str) -> dict:
    return {
        "zfs": run(["zfs", "list", "-H", "-o", "name"]),
        "python_version": run([runner_python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]),
        "venv": run([runner_python, "-c", "import ensurepip, venv"]),
        "systemd_analyze": run(["systemd-analyze", "--version"]),
        "pip_module_requirements": importable("packaging.requirements", "pkg_resources"),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
