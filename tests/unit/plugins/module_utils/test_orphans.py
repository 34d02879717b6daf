# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A receive left running by a dead run is found by its target dataset and ended before the next run reads anything.

The leftovers here are real processes whose command line is that of `zfs recv` (a shell named zfs running the
script "recv"), so that finding, signalling and waiting are exercised on this machine's /proc.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from ansible_collections.storage.replication.plugins.module_utils import orphans

from test_receiver import prepare_request, receiver, serve  # noqa: F401  pylint: disable=unused-import

DATASET = "rpool/data/vm-100-disk-0"


@pytest.fixture
def leftover(tmp_path):
    """start(dataset, script) -> Popen of a process whose argv is `zfs recv -s <dataset>` running script."""
    started = []

    def start(dataset, script="sleep 30"):
        (tmp_path / "recv").write_text(script + "\n")
        proc = subprocess.Popen(["zfs", "recv", "-s", dataset], executable="/bin/sh", cwd=str(tmp_path))
        started.append(proc)
        deadline = time.monotonic() + 10
        while proc.pid not in orphans.receives_into([dataset]) and time.monotonic() < deadline:
            time.sleep(0.05)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_only_receives_into_the_given_datasets_are_found(leftover):
    ours = leftover(DATASET)
    other = leftover("rpool/data/vm-101-disk-0")
    found = orphans.receives_into([DATASET, "rpool/data/vm-102-disk-0"])
    assert found == {ours.pid: DATASET}
    assert orphans.receives_into(["rpool/data/vm-101-disk-0"]) == {other.pid: "rpool/data/vm-101-disk-0"}
    assert orphans.parent_of(ours.pid) > 0 and not orphans.is_receiver_session(orphans.parent_of(ours.pid))


def test_a_receive_that_ignores_sigterm_is_killed(leftover):
    stubborn = leftover(DATASET, "trap '' TERM; while :; do sleep 0.1; done")
    orphans.end(stubborn.pid, grace=1.0)
    assert stubborn.wait(timeout=5) == -9
    assert orphans.receives_into([DATASET]) == {}


class EmptyPool:
    """ZFS of a target that holds nothing yet for the job: prepare only lists."""

    class features:  # pylint: disable=invalid-name
        @staticmethod
        def as_dict():
            return {"implementation": "openzfs"}

    @staticmethod
    def exists(_dataset):
        return True

    @staticmethod
    def child_snapshots(_pool):
        return {}

    @staticmethod
    def resume_tokens(_pool):
        return {}


def test_prepare_ends_a_leftover_receive_before_reading_the_target(receiver, leftover):  # noqa: F811
    proc = leftover(DATASET)
    receiver.zfs = EmptyPool()
    reply = serve(receiver, "prepare", prepare_request())
    assert reply["ok"] and reply["volumes"] == {}
    assert proc.wait(timeout=5) == -15
    assert "end the receive into 'local-zfs:vm-100-disk-0' (pid %d) left running by an interrupted run" % proc.pid \
        in reply["log"]


def test_a_leftover_receive_into_another_volume_is_left_alone(receiver, leftover):  # noqa: F811
    proc = leftover("rpool/data/vm-200-disk-0")
    receiver.zfs = EmptyPool()
    assert serve(receiver, "prepare", prepare_request())["ok"]
    assert proc.poll() is None
