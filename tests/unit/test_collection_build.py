# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The collection tarball (`ansible-galaxy collection build`) ships the collection and nothing of the development
around it: not the lab, the OpenZFS tier, the benchmarks, the test runners' files, caches or generated output."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GALAXY = pathlib.Path(sys.executable).with_name("ansible-galaxy")
# Top-level paths (and their contents) that must stay out of the tarball.
NEVER = ("openzfs", "lab", "benchmarks", "tools", "requirements", "build", "pytest.ini", "Makefile", ".pytest_cache",
         ".ansible-lint", ".ci", ".venv", "tests/integration", "tests/openzfs", "tests/fuzz", "tests/sanity",
         "tests/output", "tests/conftest.py")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The file names in the tarball built from this checkout."""
    if not (ROOT / "galaxy.yml").exists():
        pytest.skip("not a source checkout (an installed collection has no galaxy.yml to build from)")
    out = tmp_path_factory.mktemp("build")
    subprocess.run([str(GALAXY), "collection", "build", "--output-path", str(out), str(ROOT)], check=True,
                   capture_output=True, timeout=300)
    [tarball] = out.glob("storage-replication-*.tar.gz")
    with tarfile.open(tarball) as archive:
        return sorted(member.name for member in archive.getmembers() if member.isfile())


def test_the_collection_is_in_it(shipped):
    modules = sorted(p.name for p in (ROOT / "plugins" / "modules").glob("*.py"))
    assert sorted(n.split("/")[-1] for n in shipped if n.startswith("plugins/modules/")) == modules
    for name in ("MANIFEST.json", "FILES.json", "README.md", "meta/runtime.yml", "playbooks/site.yml",
                 "playbooks/migrate.yml", "playbooks/failover.yml", "roles/runner/tasks/main.yml",
                 "roles/runner/meta/argument_specs.yml", "plugins/action/guest_info.py",
                 "plugins/plugin_utils/info_action.py", "docs/examples/inventory.yml", "changelogs/changelog.yaml"):
        assert name in shipped, name
    assert any(n.startswith("tests/unit/") for n in shipped)


def test_nothing_of_the_development_around_it(shipped):
    leaked = [n for n in shipped if n.startswith(".venv") or any(n == path or n.startswith(path + "/") for path in NEVER)]
    assert leaked == []
    assert [n for n in shipped if "__pycache__" in n or n.endswith((".pyc", ".tar.gz", ".retry"))] == []


def test_no_file_git_ignores(shipped, tmp_path):
    """Nothing generated: no file of the tarball is one that .gitignore keeps out of the repository (asked of a
    repository of its own holding only the .gitignore, so that a checkout without .git, an export, checks it too)."""
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, timeout=60)
    proc = subprocess.run(["git", "-C", str(tmp_path), "check-ignore", "--no-index", "--stdin"], input="\n".join(shipped),
                          capture_output=True, text=True, check=False, timeout=60)
    ignored = [n for n in proc.stdout.splitlines() if n not in ("MANIFEST.json", "FILES.json")]
    assert ignored == []
