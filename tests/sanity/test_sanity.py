# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The collection-level checks: ansible-test sanity on both supported cores, ansible-lint, the changelog,
and a galaxy build that installs and documents every module."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV_BIN = pathlib.Path(sys.executable).parent


def run(argv, **kwargs):
    """Run a command, returning the completed process with stdout and stderr merged."""
    return subprocess.run(argv, cwd=kwargs.pop("cwd", ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False, **kwargs)


def assert_ok(result, what):
    tail = "\n".join(result.stdout.splitlines()[-60:])
    assert result.returncode == 0, f"{what} failed (rc={result.returncode}):\n{tail}"


CORES = {"2.19": ".venv", "2.21": ".venv-2.21"}


@pytest.fixture(scope="module")
def sanity_runs(request, tmp_path_factory):
    """Both ansible-test sanity runs, started together: each keeps a core busy for minutes, and they share nothing
    (each stages its own copy of the collection and uses the virtual environments of its own Python), so side by
    side they take as long as the longer one.  {core: (process, output file), or None where that core is not
    installed or its test not selected}; the output goes to a file, as a pipe nobody reads yet would stall the run."""
    directory = tmp_path_factory.mktemp("sanity")
    selected = {item.name for item in request.session.items}
    runs = {}
    for core, venv in CORES.items():
        if "test_sanity_core_" + core.replace(".", "_") not in selected or not (ROOT / venv / "bin" / "ansible-test").exists():
            runs[core] = None
            continue
        output = directory / ("%s.log" % core)
        with open(output, "w", encoding="utf-8") as handle:
            runs[core] = (subprocess.Popen(["tools/sanity.sh", venv], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                           start_new_session=True), output)
    yield runs
    for process, _output in filter(None, runs.values()):
        if process.poll() is None:  # a test that failed before its run ended: end ansible-test too
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def finished(run_):
    """The completed run of a process started by sanity_runs, its output as stdout."""
    process, output = run_
    process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, output.read_text(encoding="utf-8"))


def test_sanity_core_2_19(sanity_runs):
    assert_ok(finished(sanity_runs["2.19"]), "ansible-test sanity (ansible-core 2.19)")


def test_sanity_core_2_21(sanity_runs):
    if sanity_runs["2.21"] is None:
        pytest.skip("no Python >= 3.12 on this machine, so ansible-core 2.21 cannot be installed (see tools/find-python312.sh)")
    assert_ok(finished(sanity_runs["2.21"]), "ansible-test sanity (ansible-core 2.21)")


def test_ansible_lint():
    # The playbooks use the collection by its FQCN: point ansible-lint at it (tools/bootstrap.sh makes the link).
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / "build" / "collections"))
    assert_ok(run([str(VENV_BIN / "ansible-lint"), "--offline", "roles", "playbooks"], env=env), "ansible-lint")


def test_changelog_lint():
    assert_ok(run([str(VENV_BIN / "antsibull-changelog"), "lint"]), "antsibull-changelog lint")


def test_galaxy_build_install_and_doc(tmp_path):
    assert_ok(run([str(VENV_BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path)]), "galaxy build")
    tarballs = list(tmp_path.glob("storage-replication-*.tar.gz"))
    assert len(tarballs) == 1, tarballs
    installed = tmp_path / "collections"
    assert_ok(run([str(VENV_BIN / "ansible-galaxy"), "collection", "install", "--force", "-p", str(installed), str(tarballs[0])]),
              "galaxy install")
    root = installed / "ansible_collections" / "storage" / "replication"
    assert (root / "MANIFEST.json").exists()
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(installed))
    modules = sorted(p.stem for p in (root / "plugins" / "modules").glob("*.py"))
    for module in modules:
        result = run([str(VENV_BIN / "ansible-doc"), f"storage.replication.{module}"], env=env)
        assert_ok(result, f"ansible-doc storage.replication.{module}")
        assert "RETURN VALUES" in result.stdout, f"{module} documents no return values"
    roles = sorted(p.name for p in (root / "roles").iterdir() if p.is_dir())
    for role in roles:
        assert_ok(run([str(VENV_BIN / "ansible-doc"), "-t", "role", f"storage.replication.{role}"], env=env),
                  f"ansible-doc -t role storage.replication.{role}")
