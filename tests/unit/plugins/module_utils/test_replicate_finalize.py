# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The target's finalize runs while this node cleans up after a sync (replicate.finalize_remote): both at once, the
run log as if one had waited for the other, and a failure of either handled as before.  The lab's runs and crash
tests (test_interrupted_runs: killed while both run) prove the outcome on ZFS; these pin the concurrency itself."""

from __future__ import annotations

import threading

import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import replicate
from ansible_collections.storage.replication.plugins.module_utils.transport import RemoteError, TransportError

WAIT = 10


class Ctx:
    def __init__(self):
        self.lines = []
        self.guest = configmod.Guest(id=310, type="vm", node="node1", volumes=["local-zfs:vm-310-disk-0"])
        self.job = configmod.Job(id="310-0", target="node2")
        self.space_pruned = []

    def log(self, line):
        self.lines.append(line)

    def request(self, **fields):
        return dict(fields, job=self.job.id, guest=self.guest.id)


class Channel:
    """The target: its finalize waits until this node's clean-up has begun (and says when it is done)."""

    def __init__(self, fail=None):
        self.cleaning, self.finalized = threading.Event(), threading.Event()
        self.fail = fail
        self.requests = []

    def call(self, operation, request):
        self.requests.append((operation, request))
        began = self.cleaning.wait(WAIT)
        self.finalized.set()
        if self.fail:
            raise self.fail
        assert began, "finalize was asked only after this node's clean-up"
        return {"ok": True, "log": ["delete stale replication snapshot '__replicate_310-0_1__'"],
                "points": {"count": 1}}


class State:
    def __init__(self):
        self.fields = {}

    def set_fields(self, job, **fields):
        self.fields.update(fields)


def test_the_target_finalizes_while_this_node_cleans_up_and_the_log_keeps_their_order():
    ctx, channel, state = Ctx(), Channel(), State()
    overlapped = []

    def clean_up():
        ctx.log("delete previous replication snapshot '__replicate_310-0_1__' on local-zfs:vm-310-disk-0")
        channel.cleaning.set()
        overlapped.append(channel.finalized.wait(WAIT))  # the target finished while this still ran
        ctx.log("clean-up done")

    replicate.finalize_remote(ctx, channel, ["local-zfs:vm-310-disk-0"], 2, state, meanwhile=clean_up)
    assert overlapped == [True]
    assert [operation for operation, _request in channel.requests] == ["finalize"]
    assert channel.requests[0][1]["last_sync"] == 2 and channel.requests[0][1]["guest_definition"]["id"] == 310
    assert ctx.lines == ["delete previous replication snapshot '__replicate_310-0_1__' on local-zfs:vm-310-disk-0",
                         "clean-up done",
                         "(remote_finalize_local_job) delete stale replication snapshot '__replicate_310-0_1__'"]
    assert state.fields == {"points": {"count": 1}}


@pytest.mark.parametrize("failure", [
    TransportError("node 'node2' is unreachable", True),
    RemoteError("node2", "finalize", {"error": "dataset is busy", "reason": "zfs", "log": ["(its last word)"]}),
])
def test_a_failed_finalize_is_logged_after_the_clean_up_and_the_run_goes_on(failure):
    ctx, channel, state = Ctx(), Channel(fail=failure), State()
    replicate.finalize_remote(ctx, channel, ["local-zfs:vm-310-disk-0"], 2, state,
                              meanwhile=lambda: (ctx.log("cleaned up here"), channel.cleaning.set()))
    assert ctx.lines[0] == "cleaned up here"
    assert ctx.lines[-1] == "delete stale replication snapshot error: %s" % failure
    assert state.fields == {}


def test_a_failing_clean_up_waits_for_the_finalize_and_is_the_runs_error():
    ctx, channel = Ctx(), Channel()

    def clean_up():
        channel.cleaning.set()
        raise OSError("state directory read-only")

    with pytest.raises(OSError, match="read-only"):
        replicate.finalize_remote(ctx, channel, ["local-zfs:vm-310-disk-0"], 2, State(), meanwhile=clean_up)
    assert channel.finalized.is_set()  # not left running on the connection the run is about to give back


def test_an_unexpected_error_of_the_call_is_raised_in_the_run():
    ctx, channel = Ctx(), Channel(fail=ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        replicate.finalize_remote(ctx, channel, ["local-zfs:vm-310-disk-0"], 2, State(),
                                  meanwhile=channel.cleaning.set)
