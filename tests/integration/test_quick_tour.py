# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The README's Quick tour, as written: `make demo`, then every command line of its code block, read from README.md
itself (so that the README cannot drift from what works), each checked for its effect on the cluster.

The lines run as a new user runs them from a fresh shell in the checkout: the system's python3, no virtualenv, no
PYTHONPATH. Then the demo runs again on the lab the tour changed (it must pass a second time: site.yml converges
the lab back to the example inventory) and the tour again.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.site_tour import cli_json

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
# What a login shell of root has: no virtualenv, no PYTHONPATH, no ANSIBLE_* settings.
FRESH_SHELL = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
LAB_COMMAND = ["python3", "-m", "lab"]


def section(text, title):
    return text.split("\n## %s\n" % title, 1)[1].split("\n## ", 1)[0]


def quick_tour():
    """The command lines of the Quick tour's code block, as argv lists (comments dropped)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```sh\n(.*?)^```", section(readme, "Quick tour"), re.M | re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def demo_argv(lab_name):
    """`make demo` is `make deps` (done: the tests run in its virtualenv) and then its recipe, run here for our lab."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo: deps\n\t(.*)$", makefile, re.M).group(1) == "$(PY) -m lab.demo $(LAB_ARGS)"
    return [sys.executable, "-m", "lab.demo", "--name", lab_name]


def test_the_quick_tour_is_a_demo_and_lab_commands():
    lines = quick_tour()
    assert lines[0] == ["make", "demo"]
    assert all(argv[:3] == LAB_COMMAND and argv[3] == "exec" and argv[5:7] == ["--", "storage-replication"]
               for argv in lines[1:]), lines


# ------------------------------------------------------------------------------------------- what each line did

def job_options(argv):
    parser = argparse.ArgumentParser(add_help=False)
    for option in ("--schedule", "--rate", "--comment"):
        parser.add_argument(option)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--id")
    for flag in ("--verbose", "--check"):
        parser.add_argument(flag, action="store_true")
    known, _rest = parser.parse_known_args(argv)
    return known


class Tour:
    """What the lines of one pass did so far: the jobs they created, when the pass began."""

    def __init__(self, lab):
        self.lab = lab
        self.created = []
        self.began = int(time.time())
        self.tries = {}  # job -> last_try after the previous line, by node

    def check(self, node, cli_argv, out):
        command, args = cli_argv[0], cli_argv[1:]
        checks = {"status": self.status, "create-local-job": self.created_job, "update": self.updated_job,
                  "run": self.checked_run if job_options(args).check else self.ran, "log": self.logged}
        assert command in checks, "the Quick tour runs 'storage-replication %s': teach this test its effect" % command
        checks[command](node, args, out)
        self.tries[node] = self.last_tries(node)

    def last_tries(self, node):
        return {job["id"]: job["last_try"] for job in cli_json(self.lab, node, "status")}

    def status(self, node, _args, out):
        jobs = cli_json(self.lab, node, "status")
        rows = out.splitlines()
        assert jobs and rows[0].split() == ["JobID", "Enabled", "Target", "LastSync", "NextSync", "Duration",
                                            "FailCount", "State"], out
        assert [row.split()[0] for row in rows[1:]] == [job["id"] for job in jobs], out

    def created_job(self, node, args, _out):
        job_id, target, options = args[0], args[1], job_options(args[2:])
        job = cli_json(self.lab, node, "read", job_id)
        assert (job["target"], job.get("schedule"), job.get("rate")) == (
            target, options.schedule, float(options.rate) if options.rate else None), job
        self.created.append(job_id)

    def updated_job(self, node, args, _out):
        options = job_options(args[1:])
        assert options.schedule, "the tour's update changes a schedule: %s" % args
        assert cli_json(self.lab, node, "read", args[0])["schedule"] == options.schedule

    def checked_run(self, node, args, out):
        """run --check: says what a run would do, and runs nothing."""
        job_id = job_options(args).id
        assert self.last_tries(node) == self.tries[node], out
        assert "would" in out and (job_id is None or out.startswith("%s: would run" % job_id)), out

    def ran(self, node, args, out):
        status = {job["id"]: job for job in cli_json(self.lab, node, "status")}
        assert self.created, "run after create-local-job: the new job is due at once"
        for job_id in self.created:
            job = status[job_id]
            assert job["last_sync"] >= self.began and job["fail_count"] == 0, job
            assert "%s: OK (" % job_id in out, out
            if job_options(args).verbose:
                assert "%s: end replication job" % job_id in out, out
        assert ": failed - " not in out, out

    def logged(self, _node, args, out):
        runs = job_options(args[1:]).runs
        assert out.count("end replication job") == runs, out
        if runs > 1:
            assert out.count("\n--- run ") + out.startswith("--- run ") == runs and "--- run 0 (latest)" in out, out
        assert "%s: start replication job" % args[0] in out, out


def take_the_tour(lab):
    """Every line of the Quick tour, in order, as README.md has it, on ``lab``."""
    lines = quick_tour()
    demo = subprocess.run(demo_argv(lab.name), capture_output=True, text=True, timeout=1800, cwd=REPO, check=False)
    assert demo.returncode == 0 and "demo: all steps passed" in demo.stdout, demo.stdout[-6000:] + demo.stderr[-3000:]
    assert "OK:" in demo.stdout and "FAILED" not in demo.stdout + demo.stderr
    print(demo.stdout.rstrip().splitlines()[-1])  # "demo: all steps passed in N s" (pytest -s shows it)
    tour = Tour(lab)
    for argv in lines[1:]:
        named = argv[:3] + ["--name", lab.name] + argv[3:]  # the README's lines use the default lab; ours has its own
        proc = subprocess.run(named, capture_output=True, text=True, timeout=600, cwd=REPO, env=FRESH_SHELL, check=False)
        assert proc.returncode == 0, "%s\nexit %d\n%s%s" % (shlex.join(argv), proc.returncode, proc.stdout, proc.stderr)
        tour.check(argv[4], argv[7:], proc.stdout)
    return demo.stdout


def test_make_demo_then_the_quick_tour_as_written(module_lab):
    output = take_the_tour(module_lab)
    assert re.search(r"^==> \d+\. node3 dies", output, re.M), output  # the tour guest starts on node3


def test_make_demo_again_then_the_quick_tour_again(module_lab):
    """The second demo finds the job and the schedule the tour changed (site.yml takes them back) and the tour guest
    on node2, where its failover left it: node2 dies this time, and node1 keeps the example's guests."""
    output = take_the_tour(module_lab)
    assert re.search(r"^==> \d+\. node2 dies", output, re.M), output
