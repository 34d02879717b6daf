# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Replication schedules: pvesr calendar events and cron expressions, and their next run time.

A calendar event is parsed exactly as Proxmox VE's ``proxmox-time`` crate parses it (the grammar of
``pvesr``, quirks included) and its next event is computed by the same field-by-field search:
check year, month, day, weekday, hour, minute, second in that order; on the first mismatch jump to the
smallest allowed value above the current one (resetting the smaller fields), normalise the result through
the time zone, and look again.  One deliberate difference: a repetition of 0 (``*/0``, ``*/00``, ``N/0``)
means just the start value, so ``*/00`` is hourly at minute 0.

A text of exactly five whitespace-separated fields, or one of the cron ``@`` keywords, is a cron
expression and is evaluated with croniter (imported only when needed).

Everything here uses the standard library only at import time: the engine runs on every node.
"""

from __future__ import annotations

import bisect
import datetime
import functools
import os
import time
import zoneinfo

__all__ = [
    "DEFAULT_SCHEDULE",
    "MAX_LENGTH",
    "Schedule",
    "CalendarEvent",
    "CronExpression",
    "ScheduleError",
    "interval_warnings",
    "parse",
    "time_zone",
]

DEFAULT_SCHEDULE = "*/15"
MAX_LENGTH = 128  # pvesr's schema limit for a schedule
# pvesr gives up after this many passes of the search loop (e.g. '*-02-30' never matches).
MAX_SEARCH_STEPS = 1000
MINUTE = 60
WEEK = 7 * 86400

KEYWORDS_HELP = "minutely, hourly, daily, weekly, monthly, yearly, annually, quarterly, semiannually, semi-annually"
CRON_KEYWORDS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
CRONITER_HINT = (
    "cron expressions need the Python package croniter on this node: install it with 'pip install croniter' "
    "(the runner role installs it in the runner's virtual environment), or write the schedule as a calendar "
    "event such as '*/15' or 'mon..fri 22:00'"
)

_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
_WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAYS = dict(
    [(name, day) for day, name in enumerate(_WEEKDAY_NAMES)] + [(name, day) for day, name in enumerate(_WEEKDAY_FULL_NAMES)]
)
_ALL_WEEKDAYS = frozenset(range(7))
_DIGITS = frozenset("0123456789")
_BLANKS = " \t"


class ScheduleError(ValueError):
    """A schedule that cannot be parsed or evaluated; the message says where and why."""


# ---------------------------------------------------------------------------------------------------------
# Field values: the lists of a calendar event (years, months, days, hours, minutes, seconds)
# ---------------------------------------------------------------------------------------------------------

class Field:
    """One component of a calendar event: its name, the values it accepts and the start of '*/R'."""

    def __init__(self, name, bound, star_start, width):
        self.name = name
        self.bound = bound  # values must be below this (pvesr: "time value too large")
        self.star_start = star_start  # '*/R' counts from here: 0 for year and time, 1 for month and day
        self.width = width  # digits in the normalized form

    def __repr__(self):
        return "Field(%s)" % self.name


YEAR = Field("year", 2200, 0, 4)
MONTH = Field("month", 13, 1, 2)
DAY = Field("day", 32, 1, 2)
HOUR = Field("hour", 24, 0, 2)
MINUTE_FIELD = Field("minute", 60, 0, 2)
SECOND = Field("second", 60, 0, 2)


def _item_following(item, value):
    """The smallest value of one list item above ``value``, as pvesr's ``find_next`` computes it.

    An item is ``(start, end, step)``: a single value is ``(v, v, 0)``, a range ``(a, b, 1)``, a repetition
    ``(a, b or None, r)``.  An open repetition is not clipped to the field: pvesr may return, say, minute 63,
    which the normalisation carries into the next hour (and so can skip that hour's first values).
    """
    start, end, step = item
    if value < start:
        return start
    if step == 0:
        return None
    following = start + ((value - start + step) // step) * step
    if end is not None and following > end:
        return None
    return following


def _item_contains(item, value):
    start, end, step = item
    if value < start or (end is not None and value > end):
        return False
    if step == 0:
        return value == start
    return (value - start) % step == 0


def _values_following(items, value):
    candidates = [n for n in (_item_following(item, value) for item in items) if n is not None]
    return min(candidates) if candidates else None


class FieldValues:
    """The allowed values of one field, with lookup tables built once so that the search is cheap."""

    __slots__ = ("field", "items", "allowed", "next_allowed")

    def __init__(self, field, items):
        self.field = field
        self.items = items
        small = field.bound if field is not YEAR else 0  # years are checked rarely: no 2200-entry tables
        # allowed[v]: whether v matches; next_allowed[v]: the smallest allowed value above v (or None)
        self.allowed = tuple(any(_item_contains(item, v) for item in items) for v in range(small))
        self.next_allowed = tuple(_values_following(items, v) for v in range(small))

    def contains(self, value):
        if value < len(self.allowed):
            return self.allowed[value]
        return any(_item_contains(item, value) for item in self.items)

    def following(self, value):
        """The smallest allowed value above ``value`` (possibly beyond the field, see _item_following)."""
        if value < len(self.next_allowed):
            return self.next_allowed[value]
        return _values_following(self.items, value)

    def format(self):
        return ",".join(_format_item(item, self.field.width) for item in sorted(set(self.items), key=_item_order))


def _item_order(item):
    start, end, step = item
    return (start, -1 if end is None else end, step)


def _format_item(item, width):
    start, end, step = item
    text = "%0*d" % (width, start)
    if step == 0 or (step > 0 and end == start):
        return text
    if end is not None:
        text += "..%0*d" % (width, end)
    if step > 1 or end is None:
        text += "/%d" % step
    return text


@functools.lru_cache(maxsize=4096)
def _field_values(field, items):
    """Shared, cached tables: thousands of schedules use only a handful of distinct minute lists."""
    return FieldValues(field, items)


# ---------------------------------------------------------------------------------------------------------
# Parser: a backtracking recursive descent that accepts exactly what proxmox-time's nom parser accepts
# ---------------------------------------------------------------------------------------------------------

class _Parser:
    """Parses a calendar event; every method returns ``(value, position)`` or None after noting why."""

    def __init__(self, text):
        self.text = text
        # The furthest failure of each class, as (position, message): a wrong value (out of range, unknown
        # weekday, backwards range) explains a failure better than the syntax error where parsing stopped.
        self.value_failure = None
        self.syntax_failure = None

    def fail(self, position, message, value_error=False, plausible=True):
        """Note why an alternative failed.  Of each class the furthest failure is kept: of wrong values the
        first of equals and a plausible reading before an implausible one (see _plausible), of syntax errors
        the last (the outermost rule, which says most)."""
        rank = (plausible, position)
        best = self.value_failure if value_error else self.syntax_failure
        if best is None or rank > best[0] or (rank == best[0] and not value_error):
            if value_error:
                self.value_failure = (rank, message)
            else:
                self.syntax_failure = (rank, message)

    def at(self, position, token):
        return self.text.startswith(token, position)

    def skip_blanks(self, position):
        while position < len(self.text) and self.text[position] in _BLANKS:
            position += 1
        return position

    def number(self, position, field):
        end = position
        while end < len(self.text) and self.text[end] in _DIGITS:
            end += 1
        if end == position:
            self.fail(position, "expected a number (%s)" % field.name)
            return None
        value = int(self.text[position:end])
        if value >= field.bound:
            self.fail(position, "%s %d is out of range (0..%d)" % (field.name, value, field.bound - 1), value_error=True,
                      plausible=_plausible(field, self.text, end))
            return None
        return value, end

    def item(self, position, field):
        """``N``, ``N..M``, ``N/R`` or ``N..M/R``."""
        parsed = self.number(position, field)
        if parsed is None:
            return None
        start, position = parsed
        end = start
        ranged = self.at(position, "..") and self.number(position + 2, field)
        if ranged:
            end, after_range = ranged
            if start > end:
                self.fail(position + 2, "the range %d..%d of %s runs backwards: write the smaller value first" % (start, end, field.name),
                          value_error=True, plausible=_plausible(field, self.text, after_range))
                return None
            position = after_range
        if self.at(position, "/"):
            repeated = self.number(position + 1, field)
            if repeated is None:
                return None
            step, position = repeated
            return (start, end if ranged else None, step), position
        return (start, end, 1 if ranged else 0), position

    def value_list(self, position, field):
        """``*`` (any value: None), ``*/R``, or comma-separated items without spaces."""
        if self.at(position, "*"):
            if self.at(position + 1, "/"):
                repeated = self.number(position + 2, field)
                if repeated is None:
                    return None
                step, position = repeated
                # Deliberate difference from pvesr (which rejects '*/0'): a repetition of 0 is just the start value.
                return _field_values(field, ((field.star_start, None, step),)), position
            return _ANY, position + 1
        parsed = self.item(position, field)
        if parsed is None:
            return None
        first, position = parsed
        items = [first]
        while self.at(position, ","):
            parsed = self.item(position + 1, field)
            if parsed is None:
                break  # like nom's separated list: stop before the ',' and let the caller fail on it
            item, position = parsed
            items.append(item)
        return _field_values(field, tuple(items)), position

    def weekday(self, position):
        end = position
        while end < len(self.text) and self.text[end].isascii() and self.text[end].isalpha():
            end += 1
        word = self.text[position:end]
        if word.lower() in _WEEKDAYS:
            return _WEEKDAYS[word.lower()], end
        if word in _KEYWORDS:
            self.fail(position, "the keyword '%s' cannot be combined with anything but a trailing 'UTC'" % word, value_error=True)
        elif word.lower() in _KEYWORDS:
            self.fail(position, "keywords are lower-case: write '%s'" % word.lower(), value_error=True)
        elif word:
            self.fail(position, "'%s' is neither a keyword (%s) nor a weekday (mon..sun or monday..sunday)" % (word, KEYWORDS_HELP),
                      value_error=True)
        else:
            self.fail(position, "expected a weekday (mon..sun or monday..sunday)")
        return None

    def weekday_range(self, position):
        """``D`` or ``D..D``; a range whose start is after its end wraps around the week (``fri..mon``)."""
        parsed = self.weekday(position)
        if parsed is None:
            return None
        first, position = parsed
        last = first
        ranged = self.at(position, "..") and self.weekday(position + 2)
        if ranged:
            last, position = ranged
        if first <= last:
            return set(range(first, last + 1)), position
        return set(range(first, 7)) | set(range(0, last + 1)), position

    def weekdays(self, position):
        parsed = self.weekday_range(position)
        if parsed is None:
            return None
        days, position = parsed
        while self.at(position, ","):
            parsed = self.weekday_range(position + 1)
            if parsed is None:
                break
            more, position = parsed
            days |= more
        return frozenset(days), position

    def date(self, position):
        """``Y-M-D``, else ``M-D``: returns (years, months, days)."""
        year = self.value_list(position, YEAR)
        if year is not None and self.at(year[1], "-"):
            month_day = self.month_day(year[1] + 1)
            if month_day is not None:
                return (year[0],) + month_day[0], month_day[1]
        month_day = self.month_day(position)
        if month_day is None:
            return None
        return (_ANY,) + month_day[0], month_day[1]

    def month_day(self, position):
        month = self.value_list(position, MONTH)
        if month is None:
            return None
        if not self.at(month[1], "-"):
            self.fail(month[1], "expected '-' between month and day")
            return None
        day = self.value_list(month[1] + 1, DAY)
        if day is None:
            return None
        return (month[0], day[0]), day[1]

    def time_of_day(self, position):
        """``[H:]M[:S]``; a lone number is minutes.  If the hours do not parse (``24:00``, ``25:30``),
        the first two numbers are read again as minutes and seconds, as pvesr does."""
        hours, written = _ANY, {MINUTE_FIELD}
        hour = self.value_list(position, HOUR)
        if hour is not None and self.at(hour[1], ":"):
            hours, position = hour[0], hour[1] + 1
            written.add(HOUR)
        minute = self.value_list(position, MINUTE_FIELD)
        if minute is None:
            return None
        minutes, position = minute
        seconds = _ZERO_SECOND
        if self.at(position, ":"):
            second = self.value_list(position + 1, SECOND)
            if second is not None:
                seconds, position = second
                written.add(SECOND)
        return (hours, minutes, seconds, frozenset(written)), position

    def error(self, original):
        """The ScheduleError for a text that did not parse: the wrong value that stopped it, if it is in the
        same word as the place where parsing stopped, else that place."""
        (_plausible, position), reason = self.syntax_failure or self.value_failure
        hint = self.hint(position)
        if self.value_failure is not None:
            (_plausible, value_position), value_reason = self.value_failure
            start, end = sorted((value_position, position))
            if not any(c in _BLANKS for c in self.text[start:end]):
                position, reason, hint = value_position, value_reason, ""
        rest = self.text[position:]
        return ScheduleError("invalid schedule '%s' at '%s': %s%s" % (original, rest, reason, hint))

    def hint(self, position):
        """Advice for the mistakes people coming from cron or systemd make."""
        rest = self.text[position:]
        words = rest.replace(",", " ").split()
        if rest.startswith("-") and position and self.text[position - 1].isalpha():
            return "; weekday ranges are written with '..', e.g. 'mon..fri'"
        if (rest[:1] in _BLANKS and position and self.text[position - 1] == ",") or rest.startswith(", "):
            return "; lists take no spaces, e.g. 'mon,tue' or '8,20:00'"
        if words and words[0].lower() == "utc":
            return "; the suffix 'UTC' is upper-case"
        if words and words[0] in _KEYWORDS:
            return "; the keyword '%s' cannot be combined with anything but a trailing 'UTC'" % words[0]
        return ""


def _plausible(field, text, end):
    """Whether the value list around a number that ends at ``end`` can be meant as ``field``, judged by the
    character after the list: years and months come before '-', hours before ':'.  It lets '2200-01-01'
    blame the year and '*/60' the minute rather than the hour."""
    while end < len(text) and text[end] in "0123456789,./*":
        end += 1
    follower = text[end:end + 1]
    if field in (YEAR, MONTH):
        return follower == "-"
    if field is HOUR:
        return follower == ":"
    return follower != "-"


_ANY = None  # a wildcard field: every value matches
_ZERO_SECOND = _field_values(SECOND, ((0, 0, 0),))
_ZERO_HOUR = _field_values(HOUR, ((0, 0, 0),))
_ZERO_MINUTE = _field_values(MINUTE_FIELD, ((0, 0, 0),))
_FIRST_DAY = _field_values(DAY, ((1, 1, 0),))


def _months(*months):
    return _field_values(MONTH, tuple((m, m, 0) for m in months))


# keyword -> (weekdays, years, months, days, hours, minutes, seconds)
_KEYWORDS = {
    "minutely": (None, _ANY, _ANY, _ANY, _ANY, _ANY, _ZERO_SECOND),
    "hourly": (None, _ANY, _ANY, _ANY, _ANY, _ZERO_MINUTE, _ZERO_SECOND),
    "daily": (None, _ANY, _ANY, _ANY, _ZERO_HOUR, _ZERO_MINUTE, _ZERO_SECOND),
    "weekly": (frozenset([0]), _ANY, _ANY, _ANY, _ZERO_HOUR, _ZERO_MINUTE, _ZERO_SECOND),
    "monthly": (None, _ANY, _ANY, _FIRST_DAY, _ZERO_HOUR, _ZERO_MINUTE, _ZERO_SECOND),
    "yearly": (None, _ANY, _months(1), _FIRST_DAY, _ZERO_HOUR, _ZERO_MINUTE, _ZERO_SECOND),
    "annually": (None, _ANY, _months(1), _FIRST_DAY, _ZERO_HOUR, _ZERO_MINUTE, _ZERO_SECOND),
    "quarterly": (None, _ANY, _months(1, 4, 7, 10), _FIRST_DAY, _ZERO_HOUR, _ZERO_MINUTE, _ZERO_SECOND),
    "semiannually": (None, _ANY, _months(1, 7), _FIRST_DAY, _ZERO_HOUR, _ZERO_MINUTE, _ZERO_SECOND),
    "semi-annually": (None, _ANY, _months(1, 7), _FIRST_DAY, _ZERO_HOUR, _ZERO_MINUTE, _ZERO_SECOND),
}


# The runner and `status` evaluate thousands of jobs that share a few schedules; calendar events are immutable.
@functools.lru_cache(maxsize=1024)
def _parse_calendar(text):
    """Parse the trimmed text of a calendar event into the CalendarEvent it describes."""
    body, utc = text, False
    if text.endswith("UTC"):
        body, utc = text[:-3].rstrip(" "), True
    if body in _KEYWORDS:
        return CalendarEvent(text, utc, *_KEYWORDS[body], keyword=body)
    parser = _Parser(body)
    position, parts = 0, 0
    weekdays = None
    if body[:1].isascii() and body[:1].isalpha():
        parsed = parser.weekdays(0)
        if parsed is None:
            raise parser.error(text)
        weekdays, position = parsed
        position, parts = parser.skip_blanks(position), 1
    years = months = days = _ANY
    date = parser.date(position)
    if date is not None:
        (years, months, days), position = date
        position, parts = parser.skip_blanks(position), parts + 1
    hours, minutes, seconds, time_written = _ZERO_HOUR, _ZERO_MINUTE, _ZERO_SECOND, frozenset()
    time_of_day = parser.time_of_day(position)
    if time_of_day is not None:
        (hours, minutes, seconds, time_written), position = time_of_day
        parts += 1
    if not parts:
        if not body:
            raise ScheduleError("invalid schedule '%s': 'UTC' needs a weekday, date or time before it, e.g. '22:00 UTC'" % text)
        parser.fail(position, "expected a keyword (%s), a weekday, a date (Y-M-D or M-D) or a time ([H:]M[:S])" % KEYWORDS_HELP)
        raise parser.error(text)
    if position != len(body):
        parser.fail(position, "unexpected text")
        raise parser.error(text)
    return CalendarEvent(text, utc, weekdays, years, months, days, hours, minutes, seconds, time_written=time_written)


def parse(text):
    """Parse a schedule: a pvesr calendar event or a cron expression.  Raises ScheduleError."""
    if not isinstance(text, str):
        raise ScheduleError("a schedule must be a string, not %s" % type(text).__name__)
    if len(text) > MAX_LENGTH:
        raise ScheduleError("invalid schedule '%s...': longer than %d characters" % (text[:20], MAX_LENGTH))
    stripped = text.strip()
    if not stripped:
        raise ScheduleError("invalid schedule '%s': the schedule is empty; use e.g. '%s' (every 15 minutes) or 'mon..fri 22:00'"
                            % (text, DEFAULT_SCHEDULE))
    if stripped.startswith("@") and stripped not in CRON_KEYWORDS:
        raise ScheduleError("invalid schedule '%s': the cron keywords accepted are %s" % (text, ", ".join(CRON_KEYWORDS)))
    if len(stripped.split()) == 5 or stripped in CRON_KEYWORDS:
        return CronExpression(stripped)
    return _parse_calendar(stripped)


# ---------------------------------------------------------------------------------------------------------
# Time zones and the broken-down time of the search
# ---------------------------------------------------------------------------------------------------------

def _zone(tz):
    """The tzinfo for an IANA name, the node's local zone for None; None stands for UTC (the fast path)."""
    if tz is None:
        return _zone_from_setting(os.environ.get("TZ"))
    if tz in ("UTC", "Etc/UTC"):
        return None
    return _named_zone(tz)


@functools.lru_cache(maxsize=64)
def _named_zone(name):
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError("unknown time zone '%s': use an IANA name such as 'Europe/Vienna' or 'UTC'" % name) from None


@functools.lru_cache(maxsize=8)
def _zone_from_setting(setting):
    """The node's local zone as the C library finds it: TZ (a name or ':path'), else /etc/localtime, else UTC."""
    if setting is None:
        try:
            with open("/etc/localtime", "rb") as localtime:
                return zoneinfo.ZoneInfo.from_file(localtime, key="localtime")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ScheduleError("cannot read the node's time zone from /etc/localtime (%s): pass a time zone name" % exc) from None
    name = setting[1:] if setting.startswith(":") else setting
    if name in ("", "UTC", "Etc/UTC"):
        return None
    if name.startswith("/"):
        try:
            with open(name, "rb") as zone_file:
                return zoneinfo.ZoneInfo.from_file(zone_file, key=name)
        except (OSError, ValueError) as exc:
            raise ScheduleError("cannot read the time zone file TZ=%s (%s): set TZ to an IANA name" % (setting, exc)) from None
    try:
        return _named_zone(name)
    except ScheduleError:
        raise ScheduleError("the node's TZ=%s is not a time zone name this node knows: set TZ to an IANA name such as 'Europe/Vienna'"
                            % setting) from None


def _utc_fields(seconds):
    """Seconds since 1970 -> (year, month, day, hour, minute, second, weekday with Monday = 0), no zone."""
    days, seconds = divmod(seconds, 86400)
    date = datetime.date.fromordinal(days + _EPOCH_ORDINAL)
    hour, seconds = divmod(seconds, 3600)
    return (date.year, date.month, date.day, hour, seconds // 60, seconds % 60, date.weekday())


def _wall_seconds(year, month, day, hour, minute, second):
    """Seconds since 1970 of a wall-clock time whose fields may overflow (month 13, day 32, hour 24...)."""
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    days = datetime.date(year, month, 1).toordinal() - _EPOCH_ORDINAL + day - 1
    return days * 86400 + hour * 3600 + minute * 60 + second


class _ZoneClock:
    """Converts between epoch seconds and wall-clock seconds of one zone with integer arithmetic.

    Asking zoneinfo through datetime objects costs microseconds per call, and the search converts several
    times per next_event; so the zone's UTC offsets are probed once per chunk of 2**25 seconds (about 388
    days: one probe a week, then a bisection to the second of each change) and looked up with bisect.
    Assumes at most one offset change per week, true of the zones in use since 1970.
    """

    CHUNK_BITS = 25
    PROBE_STEP = 7 * 86400

    def __init__(self, zone):
        self.zone = zone
        self._chunks = {}  # chunk number -> (change epochs, offsets from each change on)

    def _probe(self, epoch):
        return int(datetime.datetime.fromtimestamp(epoch, self.zone).utcoffset().total_seconds())

    def _chunk(self, number):
        begin, end = number << self.CHUNK_BITS, (number + 1) << self.CHUNK_BITS
        changes, offsets = [begin], [self._probe(begin)]
        for probe in range(begin + self.PROBE_STEP, end + self.PROBE_STEP, self.PROBE_STEP):
            offset = self._probe(probe)
            if offset != offsets[-1]:
                low, high = probe - self.PROBE_STEP, probe  # the offset changes in (low, high]
                while high - low > 1:
                    middle = (low + high) // 2
                    low, high = (middle, high) if self._probe(middle) == offsets[-1] else (low, middle)
                changes.append(high)
                offsets.append(offset)
        return changes, offsets

    def offset(self, epoch):
        number = epoch >> self.CHUNK_BITS
        chunk = self._chunks.get(number)
        if chunk is None:
            chunk = self._chunks[number] = self._chunk(number)
        changes, offsets = chunk
        return offsets[bisect.bisect_right(changes, epoch) - 1]

    def fields(self, epoch):
        return _utc_fields(epoch + self.offset(epoch))

    def epoch(self, wall, floor):
        """The epoch of a wall-clock time, as mktime() with tm_isdst = -1 and Python's fold=0 resolve it
        (as CPython's datetime._mktime does it): in a spring-forward gap the later candidate (the time
        moves forward by the gap); of an ambiguous autumn time the first occurrence, unless that is before
        ``floor`` (the search start): then the second, so that the search never goes back in time."""
        guess = wall - self.offset(wall - self.offset(wall))
        offsets = {self.offset(guess - 86400), self.offset(guess), self.offset(guess + 86400)}
        if len(offsets) == 1:
            return guess  # no change of offset nearby: the common case
        candidates = sorted(wall - offset for offset in offsets)
        solutions = [epoch for epoch in candidates if epoch + self.offset(epoch) == wall]
        if not solutions:
            return candidates[-1]  # in a gap
        later = [epoch for epoch in solutions if epoch >= floor]
        return later[0] if later else solutions[0]


@functools.lru_cache(maxsize=64)
def _clock(zone):
    """None (UTC: plain arithmetic) or the cached _ZoneClock of a zone."""
    return None if zone is None else _ZoneClock(zone)


def _normalized(clock, floor, year, month, day, hour, minute, second):
    """Carry overflowing fields and re-read them through the zone, as pvesr's mktime() round trip does.

    Returns (epoch, fields) or None beyond the year 9999.
    """
    try:
        wall = _wall_seconds(year, month, day, hour, minute, second)
    except (ValueError, OverflowError):
        return None
    if clock is None:
        return wall, _utc_fields(wall)
    epoch = clock.epoch(wall, floor)
    return epoch, clock.fields(epoch)


# ---------------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------------

class Schedule:
    """A parsed schedule.  ``text`` is what the user wrote, ``normalized`` a canonical form, ``kind``
    'calendar' or 'cron'."""

    kind = None

    def __init__(self, text):
        self.text = text
        self._normalized = None

    @property
    def normalized(self):
        if self._normalized is None:  # computed on demand: the runner parses many schedules and prints few
            self._normalized = self._format()
        return self._normalized

    def _format(self):
        raise NotImplementedError

    def next_event(self, after, tz=None):
        """The first event strictly after the epoch second ``after`` in time zone ``tz`` (IANA name; None = the
        node's local zone), or None when there is none."""
        raise NotImplementedError

    def events(self, after, count, tz=None):
        """Up to ``count`` successive events after ``after`` (fewer when the schedule ends)."""
        result = []
        while len(result) < count:
            after = self.next_event(after, tz)
            if after is None:
                break
            result.append(after)
        return result

    def fires_more_often_than_once_a_minute(self):
        return False

    def __repr__(self):
        return "%s(%r)" % (type(self).__name__, self.text)

    def __eq__(self, other):
        return isinstance(other, Schedule) and (self.kind, self.normalized) == (other.kind, other.normalized)

    def __hash__(self):
        return hash((self.kind, self.normalized))


class CalendarEvent(Schedule):
    """A pvesr calendar event.  Each field list is None (any value) or a FieldValues."""

    kind = "calendar"

    # pylint: disable-next=too-many-arguments
    def __init__(self, text, utc, weekdays, years, months, days, hours, minutes, seconds, time_written=None, keyword=None):
        self.utc = utc
        self.keyword = keyword  # 'daily', ... when the event is one
        # The time fields the text wrote (HOUR, MINUTE_FIELD, SECOND); the others are the grammar's defaults: every
        # hour when only minutes are written, second 0 without seconds, 00:00:00 without any time.  A keyword writes
        # all three.
        self.time_written = frozenset((HOUR, MINUTE_FIELD, SECOND)) if time_written is None else time_written
        self.weekdays = None if weekdays is None or weekdays == _ALL_WEEKDAYS else weekdays
        self._weekday_steps = None if self.weekdays is None else _weekday_steps(self.weekdays)
        self.years, self.months, self.days = years, months, days
        self.hours, self.minutes, self.seconds = hours, minutes, seconds
        super().__init__(text)

    def _format(self):
        """The systemd-style canonical form, e.g. 'Mon..Fri *-*-* 08..17:00/15:00'."""
        def field(values):
            return "*" if values is None else values.format()
        text = "%s-%s-%s %s:%s:%s" % tuple(field(v) for v in (self.years, self.months, self.days, self.hours, self.minutes, self.seconds))
        if self.weekdays is not None:
            text = _format_weekdays(self.weekdays) + " " + text
        return text + " UTC" if self.utc else text

    def fires_more_often_than_once_a_minute(self):
        return self.seconds is None or sum(self.seconds.contains(s) for s in range(60)) > 1

    def matches(self, epoch, tz=None, ignore=()):
        """Whether the wall-clock time of the epoch second in time zone ``tz`` (None: the node's) has every field the
        event asks for, leaving out the fields in ``ignore`` (HOUR, MINUTE_FIELD, SECOND): a time of the event, read
        as a set of seconds rather than a search (bandwidth.py's windows).  No search: a handful of lookups."""
        clock = None if self.utc else _clock(_zone(tz))
        epoch = int(epoch)
        year, month, day, hour, minute, second, weekday = _utc_fields(epoch) if clock is None else clock.fields(epoch)
        if self.years is not None and not self.years.contains(year):
            return False
        if self.weekdays is not None and weekday not in self.weekdays:
            return False
        checks = ((self.months, month), (self.days, day), (self.hours if HOUR not in ignore else None, hour),
                  (self.minutes if MINUTE_FIELD not in ignore else None, minute),
                  (self.seconds if SECOND not in ignore else None, second))
        return all(values is None or values.contains(value) for values, value in checks)

    def next_event(self, after, tz=None):
        clock = None if self.utc else _clock(_zone(tz))
        floor = int(after) + 1
        epoch, now = floor, (_utc_fields(floor) if clock is None else clock.fields(floor))
        years, weekday_steps = self.years, self._weekday_steps
        # the lookup tables of the other fields, None for a wildcard (local names: this loop is the hot path)
        months, next_month = _tables(self.months)
        days, next_day = _tables(self.days)
        hours, next_hour = _tables(self.hours)
        minutes, next_minute = _tables(self.minutes)
        seconds, next_second = _tables(self.seconds)
        for _step in range(MAX_SEARCH_STEPS):
            year, month, day, hour, minute, second, weekday = now
            if years is not None and not years.contains(year):
                following = years.following(year)
                if following is None:
                    return None
                moved = (following, 1, 1, 0, 0, 0)
            elif months is not None and not months[month]:
                following = next_month[month]
                moved = (year, following, 1, 0, 0, 0) if following is not None else (year + 1, 1, 1, 0, 0, 0)
            elif days is not None and not days[day]:
                following = next_day[day]
                moved = (year, month, following, 0, 0, 0) if following is not None else (year, month + 1, 1, 0, 0, 0)
            elif weekday_steps is not None and weekday_steps[weekday]:
                moved = (year, month, day + weekday_steps[weekday], 0, 0, 0)
            elif hours is not None and not hours[hour]:
                following = next_hour[hour]
                moved = (year, month, day, following, 0, 0) if following is not None else (year, month, day + 1, 0, 0, 0)
            elif minutes is not None and not minutes[minute]:
                following = next_minute[minute]
                moved = (year, month, day, hour, following, 0) if following is not None else (year, month, day, hour + 1, 0, 0)
            elif seconds is not None and not seconds[second]:
                following = next_second[second]
                moved = (year, month, day, hour, minute, following) if following is not None else (year, month, day, hour, minute + 1, 0)
            else:
                return epoch
            normalized = _normalized(clock, floor, *moved)
            if normalized is None:
                return None
            epoch, now = normalized
        return None


def _tables(values):
    return (None, None) if values is None else (values.allowed, values.next_allowed)


def _weekday_steps(weekdays):
    """Days to move from each weekday (Monday = 0): 0 if allowed, else to the next allowed day of the same
    Monday..Sunday week, else to next Monday (where the search looks again), as pvesr does."""
    steps = []
    for weekday in range(7):
        later = [day for day in weekdays if day >= weekday]
        steps.append(min(later) - weekday if later else 7 - weekday)
    return tuple(steps)


def _format_weekdays(weekdays):
    """Runs of three or more days as 'Mon..Fri', shorter ones listed, as systemd prints them."""
    parts, days = [], sorted(weekdays)
    while days:
        run = 1
        while run < len(days) and days[run] == days[0] + run:
            run += 1
        names = [_WEEKDAY_NAMES[d].capitalize() for d in days[:run]]
        parts.append("%s..%s" % (names[0], names[-1]) if run >= 3 else ",".join(names))
        days = days[run:]
    return ",".join(parts)


def _croniter_module():
    try:
        import croniter  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise ScheduleError(CRONITER_HINT) from None
    return croniter


class CronExpression(Schedule):
    """A five-field cron expression (or an @keyword), evaluated by croniter in the requested time zone."""

    kind = "cron"

    def __init__(self, text):
        expression = CRON_KEYWORDS.get(text, " ".join(text.split()))
        try:
            _croniter_module().croniter(expression)
        except (ValueError, KeyError, TypeError) as exc:
            raise ScheduleError("invalid cron expression '%s': %s (fields: minute hour day-of-month month day-of-week)" % (text, exc)) from None
        super().__init__(text)
        self.expression = expression

    def _format(self):
        return self.expression

    def next_event(self, after, tz=None):
        start = datetime.datetime.fromtimestamp(int(after), time_zone(tz))
        croniter = _croniter_module()
        try:
            return int(croniter.croniter(self.expression, start).get_next(float))
        except croniter.CroniterBadDateError:
            return None  # e.g. '0 0 30 2 *': croniter finds no such date


# ---------------------------------------------------------------------------------------------------------
# Warnings about the documented interval (one minute to one week)
# ---------------------------------------------------------------------------------------------------------

def _rarity_warning(schedule, now, tz):
    """Scan a year (and a week) of the schedule, sampling once a day: a warning if it never fires again, stops
    firing, or leaves more than a week between two runs; None otherwise."""
    sample, horizon = now, now + 366 * 86400 + WEEK
    while sample < horizon:
        event = schedule.next_event(sample, tz)
        if event is None:
            if sample == now:
                return "schedule '%s' never fires again: the job will not run until the schedule is changed" % schedule.text
            return "schedule '%s' stops firing after %s: after that the job never runs" % (schedule.text, _when(sample, tz))
        following = schedule.next_event(event, tz)
        if following is None:
            return "schedule '%s' fires for the last time at %s: after that the job never runs" % (schedule.text, _when(event, tz))
        for start, end in ((sample, event), (event, following)):
            if end - start > WEEK:
                return ("schedule '%s' fires less often than once a week (nothing between %s and %s); "
                        "the documented replication interval is one minute to one week" % (schedule.text, _when(start, tz), _when(end, tz)))
        sample = max(sample + 86400, event)
    return None


def time_zone(tz=None):
    """The tzinfo for an IANA name, or the node's local zone for None.  Raises ScheduleError for unknown names."""
    return _zone(tz) or datetime.timezone.utc


def _when(epoch, tz):
    return datetime.datetime.fromtimestamp(epoch, time_zone(tz)).strftime("%Y-%m-%d %H:%M %Z")


def interval_warnings(schedule, now=None, tz=None):
    """Warnings for a schedule outside the documented replication interval of one minute to one week.

    ``schedule`` is a Schedule or its text.  The runner looks once a minute, so a schedule that fires more
    often runs at most once a minute; one that fires less often than once a week, or never again, is accepted
    but surprising.  Returns a list of messages (empty when the schedule is ordinary).
    """
    if isinstance(schedule, str):
        schedule = parse(schedule)
    now = int(time.time() if now is None else now)
    warnings = []
    if schedule.fires_more_often_than_once_a_minute():
        warnings.append("schedule '%s' fires more often than once a minute; replication runs at most once a minute" % schedule.text)
    rarity = _rarity_warning(schedule, now, tz)
    if rarity:
        warnings.append(rarity)
    return warnings


def setting_warnings(text):
    """interval_warnings for a schedule a job is given (None: unchanged or the default, nothing to say).  An invalid
    one gets none here: the job's validation refuses it, naming the job."""
    if text is None:
        return []
    try:
        return interval_warnings(text)
    except ScheduleError:
        return []
