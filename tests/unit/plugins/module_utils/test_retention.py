# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of restore-point retention: the keep grammar, and the grid replayed over a simulated year of
15-minute runs against an injected clock, compared at every step with an independent count of the calendar
periods (exactly the expected set, bases never pruned)."""

from __future__ import annotations

import calendar
import datetime
import random
import time
import zoneinfo

import pytest

from ansible_collections.storage.replication.plugins.module_utils import retention
from ansible_collections.storage.replication.plugins.module_utils.names import replication_snapshot
from ansible_collections.storage.replication.plugins.module_utils.retention import RetentionError, parse, select

STEP = 15 * 60
T0 = calendar.timegm((2026, 1, 1, 0, 0, 0))
YEAR_STEPS = 365 * 24 * 4
GRID = "last=4,hourly=24,daily=7,weekly=4,monthly=6"


def utc(text):
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M"))


def name(epoch):
    return replication_snapshot("100-0", epoch)


# ---------------------------------------------------------------------------------------------------------------
# The grammar

@pytest.mark.parametrize("text, normalized", [
    ("last=4,hourly=24,daily=7,weekly=4,monthly=6", "last=4,hourly=24,daily=7,weekly=4,monthly=6"),
    (" monthly=6 , last=4,daily=0", "last=4,monthly=6"),
    ("yearly=3", "yearly=3"),
    ("hourly=1", "hourly=1"),
])
def test_keep_texts_parse_and_normalize(text, normalized):
    assert parse(text).text == normalized
    assert retention.normalized(text) == normalized


@pytest.mark.parametrize("text", [None, "", "  ", "last=1"])
def test_pvesr_default_keeps_only_the_newest(text):
    keep = parse(text)
    assert keep == retention.PVESR and not keep.history
    assert retention.normalized(text) is None


@pytest.mark.parametrize("text, message", [
    ("last", "'last' is not <rule>=<count>"),
    ("last=4;hourly=2", "'last=4;hourly=2' is not <rule>=<count>"),
    ("minutely=4", "unknown rule 'minutely'; the rules are last, hourly, daily, weekly, monthly, yearly"),
    ("last=2,last=3", "rule 'last' is given twice"),
    ("last=-1", "'last=-1' is not <rule>=<count>"),
    ("hourly=100001", "hourly=100001 is more than 100000"),
    ("last=0,daily=0", "keeps nothing"),
    ("last=4,", "'' is not <rule>=<count>"),
    ("x" * 201, "longer than 200 characters"),
    (7, "keep must be a text"),
])
def test_bad_keep_texts_are_refused_with_the_part_named(text, message):
    with pytest.raises(RetentionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(text)
    assert message in retention.error(text)


def test_describe_says_what_is_kept():
    assert parse("last=2,daily=7").describe() == "the 2 newest points, the newest point of each of the last 7 days"


# ---------------------------------------------------------------------------------------------------------------
# Selection on small cases

def test_newest_and_protected_are_kept_whatever_the_grid_says():
    points = {name(T0 + i * STEP): T0 + i * STEP for i in range(10)}
    chosen = select(points, parse("last=2"), protected=[name(T0)], localtime=time.gmtime)
    assert chosen.kept == {name(T0 + 9 * STEP): "last", name(T0 + 8 * STEP): "last", name(T0): "protected"}
    assert chosen.pruned == [name(T0 + i * STEP) for i in range(1, 8)]  # oldest first


def test_a_protected_point_does_not_change_what_the_grid_keeps():
    points = {name(T0 + i * STEP): T0 + i * STEP for i in range(12)}  # three hours of 15-minute runs
    plain = select(points, parse("hourly=3"), localtime=time.gmtime)
    guarded = select(points, parse("hourly=3"), protected=[name(T0 + 5 * STEP)], localtime=time.gmtime)
    assert set(guarded.kept) == set(plain.kept) | {name(T0 + 5 * STEP)}
    assert plain.kept == {name(T0 + 11 * STEP): "hourly", name(T0 + 7 * STEP): "hourly", name(T0 + 3 * STEP): "hourly"}


def test_empty_and_single_point():
    assert select({}, parse(GRID)).kept == {}
    assert select({"a": 5}, parse(GRID)).kept == {"a": "last"}


def test_room_candidates_are_oldest_first_without_newest_and_bases():
    points = {"a": 1, "b": 2, "c": 3, "d": 4}
    assert retention.room_candidates(points, protected=["b"]) == ["a", "c"]
    assert retention.room_candidates({}) == []


# ---------------------------------------------------------------------------------------------------------------
# A year of 15-minute runs against an injected clock

def period_start(epoch, rule):
    """Start of the calendar period (UTC) of ``epoch`` for ``rule``: calendar arithmetic, not the engine's keys."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    if rule == "hourly":
        moment = moment.replace(minute=0, second=0)
    elif rule == "daily":
        moment = moment.replace(hour=0, minute=0, second=0)
    elif rule == "weekly":
        moment = moment.replace(hour=0, minute=0, second=0) - datetime.timedelta(days=moment.weekday())
    elif rule == "monthly":
        moment = moment.replace(day=1, hour=0, minute=0, second=0)
    else:
        moment = moment.replace(month=1, day=1, hour=0, minute=0, second=0)
    return int(moment.timestamp())


def previous_period(start, rule):
    moment = datetime.datetime.fromtimestamp(start, datetime.timezone.utc)
    if rule in ("hourly", "daily", "weekly"):
        return start - {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400}[rule]
    if rule == "monthly":
        year, month = (moment.year, moment.month - 1) if moment.month > 1 else (moment.year - 1, 12)
        return calendar.timegm((year, month, 1, 0, 0, 0))
    return calendar.timegm((moment.year - 1, 1, 1, 0, 0, 0))


def expected_points(now, counts):
    """The grid's points at ``now`` when a run happened every STEP since T0, found by walking back the calendar
    periods one by one (the newest run of a period is computed, not searched for among points)."""
    kept = [now - i * STEP for i in range(counts.get("last", 0)) if now - i * STEP >= T0]
    for rule in retention.RULES[1:]:
        count = counts.get(rule, 0)
        start = period_start(now, rule)
        while count:
            end = min(now + 1, _next_start(start, rule))  # the runs of this period so far: [start, end)
            newest = T0 + (end - 1 - T0) // STEP * STEP
            if newest < start or newest < T0:
                break  # no run in this period: the history begins after it
            kept.append(newest)
            count -= 1
            start = previous_period(start, rule)
    return {name(p) for p in kept} | {name(now)}


def _next_start(start, rule):
    """The start of the period after the one starting at ``start``."""
    probe = start + {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400, "monthly": 32 * 86400,
                     "yearly": 367 * 86400}[rule]
    return period_start(probe, rule)


def test_the_expected_set_at_a_hand_checked_moment():
    """2026-03-15 12:00 UTC (a Sunday, ISO week 11), after runs every 15 minutes since 2026-01-01 00:00."""
    now = utc("2026-03-15 12:00")
    hand = ["2026-03-15 12:00", "2026-03-15 11:45", "2026-03-15 11:30", "2026-03-15 11:15"]  # last=4
    # hourly=24: hours 12 and 11 of the 15th (12:00 and 11:45, kept already), 10 .. 0, then 23 .. 13 of the 14th
    hand += ["2026-03-15 %02d:45" % h for h in range(10, -1, -1)] + ["2026-03-14 %02d:45" % h for h in range(23, 12, -1)]
    hand += ["2026-03-%02d 23:45" % d for d in range(13, 8, -1)]  # daily=7: the 15th and 14th kept already, 13 .. 9
    hand += ["2026-03-08 23:45", "2026-03-01 23:45", "2026-02-22 23:45"]  # weekly=4: weeks 11 (kept), 10, 9, 8
    hand += ["2026-02-28 23:45", "2026-01-31 23:45"]  # monthly=6: March (kept), February, January; none before
    assert len(hand) == 4 + 22 + 5 + 3 + 2
    assert expected_points(now, parse(GRID).counts) == {name(utc(text)) for text in hand}
    points = {name(T0 + i * STEP): T0 + i * STEP for i in range((now - T0) // STEP + 1)}
    assert set(select(points, parse(GRID), localtime=time.gmtime).kept) == {name(utc(text)) for text in hand}


@pytest.mark.parametrize("grid", [GRID, "last=2,daily=30,yearly=2", "hourly=48,weekly=10"])
def test_a_year_of_15_minute_runs_keeps_exactly_the_grid_and_never_a_base(grid):
    """Every 15 minutes a run adds a point and the grid prunes what is there (as the target does after each
    run); at every step the points left are exactly the periods' newest runs plus the bases in use. Now and then
    another job holds one of the points as its base (for up to five days): it is never pruned while it is one."""
    keep = parse(grid)
    rng = random.Random(17)
    points, bases, checked, protected_steps = {}, {}, 0, 0
    for step in range(YEAR_STEPS):
        now = T0 + step * STEP
        points[name(now)] = now
        bases = {base: until for base, until in bases.items() if until > step}
        if rng.random() < 0.002:
            base = rng.choice(sorted(points))
            bases[base] = step + rng.randint(1, 480)
        chosen = select(points, keep, protected=list(bases), localtime=time.gmtime)
        assert not set(chosen.pruned) & set(bases), "a base was pruned at %s" % time.asctime(time.gmtime(now))
        for pruned in chosen.pruned:
            del points[pruned]
        assert set(points) == expected_points(now, keep.counts) | set(bases), \
            "step %d (%s)" % (step, time.asctime(time.gmtime(now)))
        checked += 1
        protected_steps += bool(bases)
    assert checked == YEAR_STEPS and protected_steps > 1000
    assert len(points) < 100  # the year's 35,040 points came down to the grid


def test_iterative_pruning_equals_one_prune_of_everything_across_dst():
    """In a zone with daylight saving time (the node's local time), pruning after each run keeps exactly what one
    prune of every point ever made keeps, across both changes of 2026."""
    zone = zoneinfo.ZoneInfo("Europe/Vienna")

    def vienna(epoch):
        return datetime.datetime.fromtimestamp(epoch, zone).timetuple()

    keep = parse("last=3,hourly=30,daily=3,weekly=2")
    for first in (calendar.timegm((2026, 3, 27, 12, 0, 0)), calendar.timegm((2026, 10, 23, 12, 0, 0))):
        points, history = {}, {}
        for step in range(4 * 24 * 5):
            now = first + step * STEP
            points[name(now)] = history[name(now)] = now
            for pruned in select(points, keep, localtime=vienna).pruned:
                del points[pruned]
            assert set(points) == set(select(history, keep, localtime=vienna).kept)
