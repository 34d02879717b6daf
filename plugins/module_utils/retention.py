# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Restore points: which of a job's replication snapshots to keep (pure, no I/O; the bottom layer).

A job's ``keep`` is a comma-separated list of ``<rule>=<count>``, each rule at most once, in any order::

    last=4,hourly=24,daily=7,weekly=4,monthly=6,yearly=1

- ``last=N``    the N newest points
- ``hourly=N``  the newest point of each of the last N hours that have points (then ``daily`` of days, ``weekly``
  of ISO weeks, ``monthly`` of calendar months, ``yearly`` of years), in the node's local time

Each rule counts on its own and the points any rule keeps are kept: ``last=4,hourly=24,daily=7`` keeps the
four newest points, the newest point of each of the last 24 hours that have points (the current hour included)
and the newest point of each of the last 7 days that have points; a point chosen by several rules counts for
each. Periods are counted back over the periods that have points, not over the clock, so a pause of the
replication does not make the grid give up history it cannot replace. This is sanoid's way of counting (its
templates say ``hourly = 24``, ``daily = 7``, ...) written with the rule names of Proxmox Backup Server's prune
options (``keep-last``, ``keep-hourly``, ...), which a Proxmox user knows. Two others were considered: PBS counts
only the periods an earlier rule has not covered yet, which is not stable when the grid runs after every run
(ISO weeks do not nest in months: a point dropped while a week covered its month is missing when the month's
turn comes); zrepl's grid (``1x1h(keep=all) | 24x1h | 14x1d``) measures its intervals back from "now", so a
point's fate depends on when the prune runs, and it is harder to read in an inventory.

Omitted (or ``last=1``) is pvesr's behaviour: only the newest replica. Two things are kept whatever the grid
says: the newest point (the next incremental's base) and every ``protected`` point (another job's base, a
transfer to resume). A protected point still takes part in the grid like any other, so protecting one never
changes which other points the grid keeps.

Why pruning after every run keeps exactly what one prune of every point ever made would keep: a rule keeps the
newest point of each of its periods in range, the newest point of a period only changes when a newer point
arrives in it, and a period that leaves the range never comes back; so nothing a later prune wants was dropped
by an earlier one (tests/unit/plugins/module_utils/test_retention.py replays a year of 15-minute runs against
an independent count of the calendar periods).
"""

from __future__ import annotations

import datetime
import re
import time

RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
MAX_COUNT = 100000
KEEP_MAX = 200  # characters of a keep text
_ITEM_RE = re.compile(r"\A([a-z]+)=([0-9]+)\Z", re.ASCII)
_PERIODS = {"hourly": "hour", "daily": "day", "weekly": "ISO week", "monthly": "month", "yearly": "year"}


class RetentionError(ValueError):
    """A keep text that does not parse; the message names the part and shows the form."""


class Keep:
    """A parsed keep rule set: ``counts`` {rule: count > 0} in RULES order; ``text`` the normalized form."""

    __slots__ = ("counts",)

    def __init__(self, counts):
        self.counts = {rule: counts[rule] for rule in RULES if counts.get(rule)}

    @property
    def text(self):
        return ",".join("%s=%d" % item for item in self.counts.items())

    @property
    def history(self):
        """True if it can keep more than the newest point (pvesr keeps exactly that one)."""
        return self.counts != {"last": 1}

    def __eq__(self, other):
        return isinstance(other, Keep) and self.counts == other.counts

    def __hash__(self):
        return hash(self.text)

    def __repr__(self):
        return "Keep(%r)" % self.text

    def describe(self):
        """The rules in words, for logs and docs."""
        parts = []
        for rule, count in self.counts.items():
            if rule == "last":
                parts.append("the newest point" if count == 1 else "the %d newest points" % count)
            else:
                parts.append("the newest point of each of the last %d %ss" % (count, _PERIODS[rule]))
        return ", ".join(parts)


PVESR = Keep({"last": 1})


def parse(text):
    """The Keep of ``text`` (None or '' is pvesr's: the newest point only); RetentionError naming the bad part."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return PVESR
    if not isinstance(text, str):
        raise RetentionError("keep must be a text such as 'last=4,hourly=24,daily=7', not %r" % (text,))
    if len(text) > KEEP_MAX:
        raise RetentionError("keep '%s...' is longer than %d characters" % (text[:20], KEEP_MAX))
    counts = {}
    for item in text.split(","):
        match = _ITEM_RE.match(item.strip())
        if not match:
            raise RetentionError("keep '%s': '%s' is not <rule>=<count>; write e.g. 'last=4,hourly=24,daily=7' with the "
                                 "rules %s" % (text, item.strip(), ", ".join(RULES)))
        rule, count = match.group(1), int(match.group(2))
        if rule not in RULES:
            raise RetentionError("keep '%s': unknown rule '%s'; the rules are %s" % (text, rule, ", ".join(RULES)))
        if rule in counts:
            raise RetentionError("keep '%s': rule '%s' is given twice" % (text, rule))
        if count > MAX_COUNT:
            raise RetentionError("keep '%s': %s=%d is more than %d" % (text, rule, count, MAX_COUNT))
        counts[rule] = count
    if not any(counts.values()):
        raise RetentionError("keep '%s' keeps nothing; the newest point is always kept, write 'last=1' for pvesr's "
                             "behaviour" % text)
    return Keep(counts)


def error(text):
    """The message for an invalid keep text, or None."""
    try:
        parse(text)
    except RetentionError as exc:
        return str(exc)
    return None


def normalized(text):
    """The canonical text of a valid keep (rules in order, zero counts dropped); None for pvesr's default."""
    keep = parse(text)
    return keep.text if keep.history else None


# ---------------------------------------------------------------------------------------------------------------
# Selection

def _period_keys(when):
    """{rule: the period ``when`` (a struct_time) falls in} for the calendar rules."""
    day = datetime.date(when.tm_year, when.tm_mon, when.tm_mday)
    return {"hourly": (when.tm_year, when.tm_yday, when.tm_hour), "daily": (when.tm_year, when.tm_yday),
            "weekly": tuple(day.isocalendar())[:2], "monthly": (when.tm_year, when.tm_mon), "yearly": when.tm_year}


class Selection:
    """What ``select`` decided: ``kept`` {name: why} ("last", "hourly", ..., "newest", "protected"), ``pruned``
    [names], oldest first."""

    __slots__ = ("kept", "pruned")

    def __init__(self, kept, pruned):
        self.kept = kept
        self.pruned = pruned


def newest_first(points):
    """The names of ``points`` ({name: epoch}) from the newest to the oldest (ties: by name, descending)."""
    return sorted(points, key=lambda name: (points[name], name), reverse=True)


def select(points, keep, protected=(), localtime=time.localtime):
    """Apply ``keep`` (a Keep) to ``points`` ({name: epoch}); ``protected`` names are kept whatever the grid says.

    ``localtime`` maps an epoch to a struct_time (the node's local time by default; tests pass time.gmtime)."""
    order = newest_first(points)
    kept = {}
    if not order:
        return Selection(kept, [])
    keys = {}
    for rule, count in keep.counts.items():
        if rule == "last":
            for name in order[:count]:
                kept.setdefault(name, "last")
            continue
        if not keys:
            keys = {name: _period_keys(localtime(points[name])) for name in order}
        seen = set()
        for name in order:
            period = keys[name][rule]
            if period in seen:
                continue  # not the newest point of its period
            if len(seen) >= count:
                break
            seen.add(period)
            kept.setdefault(name, rule)
    kept.setdefault(order[0], "newest")
    for name in protected:
        if name in points:
            kept.setdefault(name, "protected")
    return Selection(kept, [name for name in reversed(order) if name not in kept])


def room_candidates(points, protected=()):
    """The points that may go when the target runs out of space, oldest first: all but the newest and the
    protected ones."""
    order = newest_first(points)
    spare = set(protected) | set(order[:1])
    return [name for name in reversed(order) if name not in spare]
