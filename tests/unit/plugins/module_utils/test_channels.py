# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of a runner pass's shared control connections (channels.py): one connection serves jobs one after
another, a busy one makes the pool open another, one in an unknown state is never lent again, an idle one whose
session ended is replaced, and every connection is closed when the pass ends, however it ends.  The connections are
fakes with ControlChannel's interface (the lab test tests/integration/test_pass_connections.py uses real ones)."""

from __future__ import annotations

import random
import threading
import time

import pytest

from ansible_collections.storage.replication.plugins.module_utils.channels import ChannelPool
from ansible_collections.storage.replication.plugins.module_utils.transport import NODE_KEY, RemoteError, TransportError

NODE2 = ("node2", "10.0.0.2", "ssh-ed25519 AAAA")


class FakeChannel:
    """ControlChannel's interface: ``session_gone`` is a session the peer ended that this node has not noticed yet,
    ``noticed`` one it has (reusable() says False)."""

    def __init__(self, node_name, address, host_key, key=None, port=22):
        self.node_name, self.address, self.host_key, self.key, self.port = node_name, address, host_key, key, port
        self.connected = self.closed = self.broken = self.ended = False
        self.session_gone = self.noticed = False
        self.calls = []
        self.lent = 0

    def connect(self):
        if self.address == "unreachable":
            raise TransportError("target node '%s' is unreachable" % self.node_name, True)
        self.connected = True
        return self

    def call(self, operation, request, timeout=600):
        assert self.connected and not self.closed
        if self.session_gone:
            self.broken = self.ended = True
            raise RemoteError(self.node_name, operation, {"ok": False, "error": "gave no valid reply"})
        self.calls.append((operation, request))
        return {"ok": True, "operation": operation}

    def receive_inline(self, arguments, data, timeout=600):
        return self.call("receive", {"arguments": arguments, "bytes": len(data)}, timeout)

    def reusable(self):
        return self.connected and not self.closed and not self.broken and not self.noticed

    def close(self):
        self.closed = True


class Made(list):
    """The pool's ``connect``: makes FakeChannels (or ``kind``) and keeps them."""

    kind = FakeChannel

    def __call__(self, *args, **kwargs):
        channel = self.kind(*args, **kwargs)
        self.append(channel)
        return channel


def pool_of_fakes():
    made = Made()
    return ChannelPool(connect=made), made


def test_jobs_one_after_another_share_one_connection():
    pool, made = pool_of_fakes()
    for job in ("100-0", "200-0", "300-0"):
        with pool.borrow(*NODE2, key="/k", port=2222) as channel:
            assert channel.call("prepare", {"job": job})["ok"]
    assert len(made) == 1 and [r["job"] for _op, r in made[0].calls] == ["100-0", "200-0", "300-0"]
    assert (made[0].key, made[0].port) == ("/k", 2222) and not made[0].closed
    assert pool.opened == {"node2": 1}
    pool.close()
    assert made[0].closed


def test_a_borrow_while_all_are_lent_opens_another():
    pool, made = pool_of_fakes()
    with pool.borrow(*NODE2) as first, pool.borrow(*NODE2) as second:
        assert first.channel is not second.channel
    with pool.borrow(*NODE2) as third, pool.borrow(*NODE2) as fourth:  # both idle ones again, no third connection
        assert {third.channel, fourth.channel} == set(made)
    with pool.borrow("node3", "10.0.0.3", "ssh-ed25519 BBBB") as other:  # another target: a connection of its own
        assert other.channel not in made[:2]
    assert pool.opened == {"node2": 2, "node3": 1}


def test_a_connection_a_call_failed_on_is_closed_not_lent_again():
    """finalize swallows a TransportError (the sync is done): the job ends well, but its connection is out of step."""
    pool, made = pool_of_fakes()
    with pool.borrow(*NODE2) as channel:
        channel.call("prepare", {})
        made[0].broken = True  # what ControlChannel says after a timeout, a cut link or half an answer
    assert made[0].closed
    with pool.borrow(*NODE2) as channel:
        assert channel.channel is made[1]


def test_a_job_that_ends_with_an_exception_closes_its_connection():
    pool, made = pool_of_fakes()
    with pytest.raises(ValueError):
        with pool.borrow(*NODE2) as channel:
            channel.call("prepare", {})
            raise ValueError("the job failed somewhere")
    assert made[0].closed
    with pool.borrow(*NODE2):
        pass
    assert pool.opened == {"node2": 2}


def test_an_idle_connection_whose_session_ended_is_replaced_when_lent():
    pool, made = pool_of_fakes()
    with pool.borrow(*NODE2):
        pass
    made[0].noticed = True  # the target's session process was killed; paramiko has seen its channel close
    with pool.borrow(*NODE2) as channel:
        assert channel.call("prepare", {})["ok"] and channel.channel is made[1]
    assert made[0].closed and made[0].calls == []


def test_a_first_request_that_finds_the_idle_session_gone_goes_again_on_a_new_connection():
    """The session ended a moment before the job borrowed it (not noticed yet): its prepare must not fail for it."""
    pool, made = pool_of_fakes()
    with pool.borrow(*NODE2):
        pass
    made[0].session_gone = True
    with pool.borrow(*NODE2) as channel:
        assert channel.call("prepare", {"job": "200-0"})["ok"]
        assert channel.call("finalize", {"job": "200-0"})["ok"]
    assert made[0].closed and [op for op, _r in made[1].calls] == ["prepare", "finalize"]
    assert pool.opened == {"node2": 2}


def timed_out(*_args, **_kwargs):
    """A call that broke the connection without the session ending (a timeout, a cut link)."""
    raise RemoteError("node2", "prepare", {"error": "no answer within 600 s"})


@pytest.mark.parametrize("case", ["new connection", "later request", "not ended"])
def test_no_request_goes_twice_otherwise(case):
    """Only a reused connection's first request is sent again, and only when the session ended without answering:
    a new connection that fails is the target's failure, a later request may have done its work, and a timeout
    or a cut link says nothing of whether the request was carried out."""
    pool, made = pool_of_fakes()
    if case != "new connection":
        with pool.borrow(*NODE2):
            pass
    with pytest.raises(RemoteError):
        with pool.borrow(*NODE2) as channel:
            if case == "later request":
                channel.call("prepare", {})
            made[-1].session_gone = True
            if case == "not ended":
                made[-1].call = timed_out
                made[-1].broken = True
            channel.call("finalize", {})
    assert len(made) == 1 and made[0].closed


def test_an_unreachable_target_fails_the_borrow_and_leaves_nothing_open():
    pool, _made = pool_of_fakes()
    with pytest.raises(TransportError, match="unreachable"):
        with pool.borrow("node2", "unreachable", "ssh-ed25519 AAAA"):
            pass
    assert pool.opened == {}


def test_a_target_found_unreachable_is_not_tried_again_in_the_same_pass():
    """The first job waits out its connect; the later ones fail at once, as unreachable (so waiting for their
    target), saying why.  Another target, and the next pass, try again."""
    now = [100.0]
    made = Made()
    pool = ChannelPool(connect=made, clock=lambda: now[0])
    for tries in (1, 2, 3):
        now[0] += 7
        with pytest.raises(TransportError) as failed:
            with pool.borrow("node2", "unreachable", "ssh-ed25519 AAAA"):
                pass
        assert failed.value.unreachable and len(made) == 1
        if tries > 1:
            assert "an earlier job of this pass could not reach it %d s ago, so this one did not try" \
                % (7 * (tries - 1)) in str(failed.value)
    with pool.borrow(*NODE2) as channel:
        channel.call("prepare", {})
    assert len(made) == 2 and pool.opened == {"node2": 1}
    with pytest.raises(TransportError):
        with ChannelPool(connect=made).borrow("node2", "unreachable", "ssh-ed25519 AAAA"):
            pass
    assert len(made) == 3  # a new pass tries again


def test_a_call_that_lost_the_link_fails_the_pass_s_later_borrows_to_that_target():
    pool, made = pool_of_fakes()
    with pytest.raises(TransportError):
        with pool.borrow(*NODE2) as channel:
            channel.call("prepare", {})
            raise TransportError("target node 'node2' is unreachable: the link went down during 'receive'", True)
    with pytest.raises(TransportError, match="could not reach it"):
        with pool.borrow(*NODE2):
            pass
    assert len(made) == 1 and made[0].closed


def test_an_adopted_connection_is_lent_to_the_next_job_and_closed_with_the_pool():
    """The peer check's connections (cluster.catch_up hands them over): one in step is lent without a new connect
    and counted; a broken one, or one handed over after the pool closed, is closed."""
    pool, made = pool_of_fakes()
    peer_check = FakeChannel(*NODE2, key=NODE_KEY).connect()
    broken = FakeChannel("node3", "10.0.0.3", "ssh-ed25519 AAAA", key=NODE_KEY).connect()
    broken.broken = True
    pool.adopt(peer_check)
    pool.adopt(broken)
    assert broken.closed and pool.opened == {"node2": 1}
    with pool.borrow(*NODE2) as channel:
        channel.call("prepare", {})
    assert made == [] and peer_check.calls == [("prepare", {})]
    pool.close()
    assert peer_check.closed
    late = FakeChannel(*NODE2, key=NODE_KEY).connect()
    pool.adopt(late)
    assert late.closed


def test_a_refused_key_is_tried_again_by_the_next_job():
    """Only an unreachable node is remembered: a refused key or host key is a quick answer, asked again."""
    class RefusedKey(FakeChannel):
        def connect(self):
            raise TransportError("target node '%s' refused this node's SSH key" % self.node_name)
    made = Made()
    made.kind = RefusedKey
    pool = ChannelPool(connect=made)
    for _try in range(2):
        with pytest.raises(TransportError, match="refused"):
            with pool.borrow(*NODE2):
                pass
    assert len(made) == 2


def test_the_end_of_the_pass_closes_every_connection_even_on_an_interrupt():
    made = Made()
    with pytest.raises(KeyboardInterrupt):
        with ChannelPool(connect=made) as pool:
            with pool.borrow(*NODE2):
                pass
            with pool.borrow(*NODE2), pool.borrow(*NODE2):
                raise KeyboardInterrupt
    assert len(made) == 2 and all(channel.closed for channel in made)
    late = ChannelPool(connect=made)
    with late.borrow(*NODE2) as channel:
        late.close()  # a job still holding one when the pass closes: it closes at the give-back
        assert made[2].closed
    assert channel.channel.closed


def test_jobs_in_threads_never_share_a_connection_at_once():
    """Four workers, as max_parallel 4, borrowing 200 times: never two at once on one connection, at most four."""
    pool, made = pool_of_fakes()
    guard = threading.Lock()

    def job(number):
        with pool.borrow(*NODE2) as channel:
            with guard:
                channel.channel.lent += 1
                assert channel.channel.lent == 1, "a connection lent twice at once"
            time.sleep(random.random() / 1000)
            channel.call("prepare", {"job": number})
            with guard:
                channel.channel.lent -= 1

    slots = threading.BoundedSemaphore(4)
    errors = []

    def worker(numbers):
        for number in numbers:
            with slots:
                try:
                    job(number)
                except AssertionError as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=worker, args=(range(i, 200, 4),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and 1 <= len(made) <= 4 and sum(len(c.calls) for c in made) == 200
