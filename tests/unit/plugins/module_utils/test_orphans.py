# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A receive left running by a dead run is found by its target dataset and ended before the next run reads anything.

The leftovers here are real processes whose command line is that of `zfs recv` (a shell named zfs running the
script "recv"), children of a process whose command line ends with `serve` as the receiver's does, so that finding,
signalling and waiting are exercised on this machine's /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.storage.replication.plugins.module_utils import orphans

from test_receiver import ListingZfs, prepare_request, receiver, serve  # noqa: F401  pylint: disable=unused-import

DATASET = "rpool/data/vm-100-disk-0"


SESSION = """
import subprocess, sys, time
child = subprocess.Popen(["zfs", "recv", "-s", sys.argv[1]], executable="/bin/sh")
print(child.pid, flush=True)
child.wait()
if sys.argv[2:3] == ["stuck"]:  # as a session blocked reading its dead connection
    time.sleep(60)
"""


@pytest.fixture
def leftover(tmp_path):
    """start(dataset, script, session) -> pid of a process whose argv is `zfs recv -s <dataset>` running script, the
    child of a process whose argv ends with `serve --peer node1` (a receiver session) unless session is False."""
    started = []

    def start(dataset, script="sleep 30", session=True, stuck=False):
        workdir = tmp_path / str(len(started))  # the shell reads its script "recv" from its working directory
        workdir.mkdir()
        (workdir / "recv").write_text(script + "\n")
        argv = [sys.executable, "-c", SESSION, dataset] + (["stuck"] if stuck else []) + (["serve", "--peer", "node1"] if session else [])
        parent = subprocess.Popen(argv, cwd=str(workdir), stdout=subprocess.PIPE, text=True)
        child = int(parent.stdout.readline())
        started.append((parent, child))
        return child, parent

    yield start
    for parent, child in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait()


def wait_found(pid, dataset):
    deadline = time.monotonic() + 10
    while pid not in orphans.leftover_receives([dataset]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return orphans.leftover_receives([dataset])


def test_only_receiver_sessions_receives_into_the_given_datasets_are_found(leftover):
    ours, session = leftover(DATASET)
    other, _other_session = leftover("rpool/data/vm-101-disk-0")
    leftover(DATASET, session=False)  # somebody else's receive: never touched
    assert wait_found(ours, DATASET) == {ours: (DATASET, session.pid)}
    assert orphans.leftover_receives([DATASET, "rpool/data/vm-102-disk-0"]) == {ours: (DATASET, session.pid)}
    assert list(wait_found(other, "rpool/data/vm-101-disk-0")) == [other]


def test_a_receive_that_ignores_sigterm_is_killed(leftover):
    stubborn, session = leftover(DATASET, "trap '' TERM; while :; do sleep 0.1; done")
    assert stubborn in wait_found(stubborn, DATASET)
    orphans.end(stubborn, grace=1.0)
    assert session.wait(timeout=5) == 0  # its session saw the receive end and finished
    assert orphans.leftover_receives([DATASET]) == {}


def test_prepare_ends_a_leftover_receive_and_waits_for_its_session(receiver, leftover):  # noqa: F811
    pid, session = leftover(DATASET)
    assert pid in wait_found(pid, DATASET)
    receiver.zfs = ListingZfs()
    reply = serve(receiver, "prepare", prepare_request())
    assert reply["ok"] and reply["volumes"] == {}
    assert session.poll() == 0, "prepare answered before the old session had finished"
    assert "end the receive into 'local-zfs:vm-100-disk-0' (pid %d) left running by an interrupted run" % pid \
        in reply["log"]


def test_prepare_ends_a_session_that_does_not_finish_by_itself(receiver, leftover):  # noqa: F811
    pid, session = leftover(DATASET, stuck=True)
    assert pid in wait_found(pid, DATASET)
    receiver.zfs = ListingZfs()
    started = time.monotonic()
    assert serve(receiver, "prepare", prepare_request())["ok"]
    assert session.poll() == -15 and time.monotonic() - started < orphans.SESSION_GRACE_SECONDS + 5


def test_a_leftover_receive_into_another_volume_is_left_alone(receiver, leftover):  # noqa: F811
    pid, session = leftover("rpool/data/vm-200-disk-0")
    assert pid in wait_found(pid, "rpool/data/vm-200-disk-0")
    receiver.zfs = ListingZfs()
    reply = serve(receiver, "prepare", prepare_request())
    assert reply["ok"] and not [line for line in reply["log"] if "end the receive" in line]
    assert session.poll() is None and pid in orphans.leftover_receives(["rpool/data/vm-200-disk-0"])
