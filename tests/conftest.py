# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which tests need real nodes, and how the others share two workers.

Every test that needs real nodes (the lab of tests/integration, the OpenZFS tier of tests/openzfs) carries the
``lab`` marker, and no other test does: ``-m lab`` selects exactly the tests on nodes, ``-m "not lab"`` exactly the
ones without (the unit tests and the collection checks of tests/sanity).  The marker is written in the test files
(``pytestmark = pytest.mark.lab``), not added here: a collection that finds a test using a lab fixture or living in
a lab directory without it, or another test with it, stops before any test runs and names them (under xdist each
such test fails instead).

Under pytest-xdist (--dist loadgroup) the two ansible-test sanity runs start together in one worker
(tests/sanity/test_sanity.py), so that they never run beside a third one."""

from __future__ import annotations

import collections
import pathlib

import pytest

LAB_DIRS = ("integration", "openzfs")
LAB_FIXTURES = ("lab", "module_lab", "prepared", "smoke_prepared")  # session lab, a module's own, the OpenZFS tier, its smoke


def lab_marker_problem(item):
    """Why ``item`` breaks the marker rule, or None."""
    parts = pathlib.Path(str(item.fspath)).parts
    marked = item.get_closest_marker("lab") is not None
    if marked:
        return None if any(part in LAB_DIRS for part in parts) else "carries the lab marker but needs no node"
    uses = [name for name in LAB_FIXTURES if name in item.fixturenames]
    if uses:
        return "uses the lab fixture '%s' but lacks the lab marker (pytestmark = pytest.mark.lab)" % uses[0]
    if any(part in LAB_DIRS for part in parts):
        return "runs on real nodes but lacks the lab marker (pytestmark = pytest.mark.lab)"
    return None


MARKER_PROBLEM = pytest.StashKey[str]()
# The longest modules on real nodes, longest first (seconds of one worker in `make test`, measured on the two shared
# cores).  make test hands whole modules to its workers in collection order (--dist loadfile --no-loadscope-reorder):
# these go first, so that none of them starts when the others are nearly done.  A module not named keeps its place
# after them.
LONGEST_FIRST = (
    "test_site.py",  # 510: site.yml's ladder, the modules' ladders, the role alone
    "test_bad_day.py",  # four nodes, site.yml and the other playbooks with nodes down
    "test_smoke.py",  # 340: two QEMU guests under software emulation
    "test_quick_tour.py",  # 230: make demo twice
    "test_monitoring_lab.py",  # 200: waits 180 s for the stale-runner alert
    "test_interrupted_runs.py",  # 190
    "test_replicate_failures.py",  # 165
    "test_fencing.py",  # 140: fence_after 50 s, SSH timeouts
    "test_restore_points_lab.py",  # 130
    "test_one_configuration.py",  # 90: the randomized run, 60 s
)


def _longest_first(item):
    name = pathlib.Path(str(item.fspath)).name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


@pytest.hookimpl(tryfirst=True)  # before -m deselects: an unmarked lab test must not slip out of `-m lab` unseen
def pytest_collection_modifyitems(config, items):
    problems = []
    for item in items:
        problem = lab_marker_problem(item)
        if problem:
            item.stash[MARKER_PROBLEM] = problem
            problems.append("%s %s" % (item.nodeid, problem))
        if "sanity_runs" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("sanity"))
    items.sort(key=_longest_first)  # stable: the tests of a module keep their order
    # An xdist worker cannot end the session with a usage error (the controller would report a crash): there each
    # such test fails instead (pytest_runtest_setup), in the run whose -m selects it.
    if problems and not hasattr(config, "workerinput"):
        raise pytest.UsageError("the lab marker must separate the tests on real nodes from the others:\n  "
                                + "\n  ".join(problems))


@pytest.hookimpl(tryfirst=True)  # before any fixture: a lab test that lacks its marker touches no lab
def pytest_runtest_setup(item):
    problem = item.stash.get(MARKER_PROBLEM, None)
    if problem:
        pytest.fail(problem, pytrace=False)


# The summary lines a worker's tests leave for the session's end (the OpenZFS tiers' one line each: tests/openzfs
# conftest.py's summary_lines): under pytest-xdist only the controller writes the summary.
_worker_summary_lines = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    del error
    _worker_summary_lines.extend(getattr(node, "workeroutput", {}).get("summary_lines", []))


# Seconds per test module (set-up, call and tear-down of its tests, the module's lab included), summed where the
# reports arrive (under xdist the controller): what a worker spent on each module, for balancing the gate.
_module_seconds = collections.defaultdict(float)
SHOW_MODULE_SECONDS = 30.0


def pytest_runtest_logreport(report):
    _module_seconds[report.nodeid.split("::")[0]] += report.duration


def pytest_terminal_summary(terminalreporter):
    for line in _worker_summary_lines:
        terminalreporter.write_line(line, yellow="NOT RUN" in line, bold="NOT RUN" in line)
    slow = sorted(((seconds, module) for module, seconds in _module_seconds.items() if seconds >= SHOW_MODULE_SECONDS),
                  reverse=True)
    if slow:
        terminalreporter.write_line("seconds per test module (%.0f s or more): %s" % (
            SHOW_MODULE_SECONDS, ", ".join("%s %.0f" % (pathlib.Path(module).name, seconds) for seconds, module in slow)))
