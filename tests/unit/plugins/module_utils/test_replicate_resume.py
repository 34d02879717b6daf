# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A resumed stream the target refuses for good (OpenZFS: "kernel modules must be upgraded") clears the token; other failures keep it.

The resume itself is proven on OpenZFS in tests/openzfs; the refusal cannot be provoked on purpose, so its handling
is pinned here with a fake control channel.
"""

from __future__ import annotations

from ansible_collections.storage.replication.plugins.module_utils import replicate
from ansible_collections.storage.replication.plugins.module_utils.transport import RemoteError

VOLUME = "local-zfs:vm-310-disk-0"
REFUSED = ("'zfs recv -s rpool/data/vm-310-disk-0' failed on node 'node2' for volume '%s': cannot receive resume "
           "stream: kernel modules must be upgraded to receive this stream." % VOLUME)


class Channel:
    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    def call(self, operation, request):
        self.calls.append((operation, request))
        if self.fail:
            raise self.fail
        return {"log": ["cleared stale resume token on '%s'" % VOLUME]}


class Ctx:
    def __init__(self):
        self.lines = []

    def log(self, line):
        self.lines.append(line)

    @staticmethod
    def request(**fields):
        return dict(fields, job="310-0")


def error(message, reason="receive-failed"):
    return RemoteError("node2", "receive", {"error": message, "reason": reason})


def test_a_refused_resume_clears_the_token_and_says_so():
    ctx, channel = Ctx(), Channel()
    replicate.drop_refused_resume(ctx, channel, VOLUME, error(REFUSED))
    assert [op for op, _request in channel.calls] == ["abort-resume"]
    assert channel.calls[0][1]["volume"] == VOLUME and "refused the resumed stream" in channel.calls[0][1]["reason"]
    assert ctx.lines[0].startswith("clear resume token on '%s': the target refused the resumed stream" % VOLUME)
    assert ctx.lines[1] == "(remote_abort_resume) cleared stale resume token on '%s'" % VOLUME


def test_an_incomplete_or_refused_for_other_reasons_stream_keeps_the_token():
    ctx, channel = Ctx(), Channel()
    replicate.drop_refused_resume(ctx, channel, VOLUME, error("cannot receive resume stream: checksum mismatch or "
                                                              "incomplete stream"))
    replicate.drop_refused_resume(ctx, channel, VOLUME, error(REFUSED, reason="owner"))
    assert channel.calls == [] and ctx.lines == []


def test_a_failed_clearing_is_logged_and_the_original_error_stays_the_runs():
    ctx, channel = Ctx(), Channel(fail=error("dataset busy", reason="zfs"))
    replicate.drop_refused_resume(ctx, channel, VOLUME, error(REFUSED))
    assert ctx.lines[-1] == "clearing the resume token on '%s' failed: dataset busy" % VOLUME
