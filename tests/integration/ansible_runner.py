# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run ansible-playbook from the project's venv against a lab inventory and read back what happened.

    run = run_playbook(lab.inventory_path, "playbooks/site.yml", check=True)
    run.assert_ok()
    assert run.changed_count() > 0
    run.changed_tasks("node1")   # ["Install the storage-replication launcher", ...]

Results come from the record_results callback (tests/integration/callback_plugins): every task result with its
status, and the recap per host, as the `changed=` counts of the PLAY RECAP.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lab import Lab

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
CALLBACK_DIR = Path(__file__).resolve().parent / "callback_plugins"


@dataclass
class PlaybookRun:
    """One ansible-playbook run: exit code, output, every task result, and the recap per host."""

    argv: list
    rc: int
    stdout: str
    stderr: str
    results: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def changed_count(self, host: str | None = None) -> int:
        hosts = [host] if host else list(self.stats)
        return sum(self.stats[h]["changed"] for h in hosts)

    def changed_tasks(self, host: str | None = None) -> list:
        return [r["task"] for r in self.results if r["status"] == "changed" and host in (None, r["host"])]

    def failures(self) -> list:
        return [r for r in self.results if r["status"] in ("failed", "unreachable")]

    def task_results(self, task: str, host: str | None = None) -> list:
        return [r["result"] for r in self.results if r["task"] == task and host in (None, r["host"])]

    def facts(self, host: str) -> dict:
        """The facts the play set on host (set_fact results merged in task order)."""
        merged = {}
        for record in self.results:
            if record["host"] == host and record["status"] in ("ok", "changed"):
                merged.update(record["result"].get("ansible_facts", {}))
        return merged

    def slowest(self, count: int = 10) -> list:
        """[(seconds, task)] of the slowest tasks (the longest host of each), slowest first."""
        longest = {}
        for record in self.results:
            longest[record["task"]] = max(longest.get(record["task"], 0.0), record.get("seconds", 0.0))
        return sorted(((seconds, task) for task, seconds in longest.items()), reverse=True)[:count]

    def describe(self) -> str:
        """What a failed assertion should show: the command, the failures and the tail of the output."""
        failed = "\n".join(f"  {r['host']}: {r['task']}: {r['result'].get('msg', r['result'])}" for r in self.failures())
        return (f"$ {' '.join(map(str, self.argv))}\nrc={self.rc}\nfailures:\n{failed or '  none'}\n"
                f"--- stdout (tail) ---\n{self.stdout[-4000:]}\n--- stderr (tail) ---\n{self.stderr[-2000:]}")

    def assert_ok(self) -> None:
        if self.rc != 0 or self.failures():
            raise AssertionError("ansible-playbook failed\n" + self.describe())


def ansible_environment(results_file: str, collections_path=None) -> dict:
    """ansible-playbook's environment: the collection (the repository's, or a copy under collections_path), the
    results callback writing to results_file, pipelining (one SSH round trip per task)."""
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path or REPO / "build" / "collections"),
        "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACK_DIR),
        "ANSIBLE_CALLBACKS_ENABLED": "record_results",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_PIPELINING": "1",
        "STORAGE_REPLICATION_RESULTS": results_file,
    })
    return env


def run_playbook(inventory, playbook, *, check: bool = False, diff: bool = False, extra_vars: dict | None = None,
                 limit: str | None = None, tags: str | None = None, timeout: float = 900,
                 collections_path=None) -> PlaybookRun:
    """ansible-playbook PLAYBOOK (a path, relative to the repository root or absolute) against INVENTORY.

    collections_path: a directory holding ansible_collections/storage/replication (see snapshot_collection)
    instead of the repository itself."""
    argv = [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(REPO / playbook)]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    if extra_vars:
        argv += ["--extra-vars", json.dumps(extra_vars)]
    if limit:
        argv += ["--limit", limit]
    if tags:
        argv += ["--tags", tags]
    with tempfile.TemporaryDirectory(prefix="sr-ansible-") as tmp:
        results_file = os.path.join(tmp, "results.json")
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env=ansible_environment(results_file, collections_path), check=False)
        recorded = json.loads(Path(results_file).read_text(encoding="utf-8")) if os.path.exists(results_file) else {}
    return PlaybookRun(argv=argv, rc=proc.returncode, stdout=proc.stdout, stderr=proc.stderr,
                       results=recorded.get("results", []), stats=recorded.get("stats", {}))


def snapshot_collection(directory) -> Path:
    """A copy of the collection's Ansible content under directory/ansible_collections/storage/replication; returns
    the collections path to pass to run_playbook. Runs compared for idempotence then see the same engine even while
    the working tree changes under them."""
    target = Path(directory) / "ansible_collections" / "storage" / "replication"
    target.mkdir(parents=True)
    for name in ("galaxy.yml", "meta", "plugins", "roles", "playbooks"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target / name)
    return Path(directory)


@contextlib.contextmanager
def playbook_lab(name, pool_size):
    """A lab of 3 nodes of its own for a module of playbook tests, from nothing (an earlier lab of the name goes
    first: the role and the site playbook must meet fresh nodes), taken down afterwards unless SR_LAB_KEEP=1."""
    lab = Lab(name)
    lab.down(out=lambda _line: None)
    lab.up(nodes=3, pool_size=pool_size, out=lambda _line: None)
    try:
        yield lab
    finally:
        if os.environ.get("SR_LAB_KEEP") != "1":
            lab.down(out=lambda _line: None)
