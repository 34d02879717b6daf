# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bandwidth windows: a job's rate limit by time of day, week and date (issue 19).

pvesr's ``rate`` is one number of MB/s for every transfer of a job.  A job's ``rate_windows`` varies it::

    mon..fri 8..17:*: 10; sat,sun: 50; *-12-24..26: unlimited

Windows are separated by ``;`` (or by a comma followed by a blank: a comma without one belongs to a list inside a
calendar event).  Each is ``<calendar event>: <MB/s>`` or ``<calendar event>: unlimited``; the calendar event is
pvesr's grammar (schedule.py parses it), read as the set of seconds whose local date and time it matches, the parts
it leaves out matching anything: without a time the whole day, without seconds the whole minute (``8..17:*`` is
08:00:00 to 17:59:59).  A time of minutes alone (``8..18``, minutes past every hour in that grammar) is refused with
the hour form to write instead.  The first window that matches wins; outside every window the job's ``rate`` applies
(unlimited when unset), which is also what pvesr itself would apply: replication.cfg keeps ``rate`` as pvesr's plain
number, and the windows live in cluster.json like ``keep``.  Windows are evaluated in the node's local time (an event
ending in ``UTC`` in UTC), as schedules are; across a DST change a window holds the wall-clock times it names, so
02:00..02:59 is absent on the spring-forward day and lasts two hours on the autumn one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from typing import Optional, Tuple

from ansible_collections.storage.replication.plugins.module_utils.schedule import (
    HOUR, MINUTE_FIELD, SECOND, CalendarEvent, ScheduleError, parse as parse_schedule)

MAX_LENGTH = 1024
UNLIMITED = "unlimited"
EXAMPLE = "mon..fri 8..17:*: 10; *: unlimited"
# ';', or a comma followed by a blank (a list inside a calendar event takes no blanks)
_SEPARATOR_RE = re.compile(r"\s*;\s*|,(?=[ \t])\s*")
_TIME_FIELDS = frozenset((HOUR, MINUTE_FIELD, SECOND))


class WindowError(ValueError):
    """An invalid window expression; the message names the window and its bad part."""


def rate_error(rate):
    """The message for an invalid rate (MB/s, >= 1, pvesr's schema), or None."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or math.isnan(rate) or math.isinf(rate):
        return "rate '%s' must be a number of MB/s" % (rate,)
    if rate < 1:
        return "rate '%s' is below the minimum of 1 (MB/s); leave it unset for no limit" % (rate,)
    return None


@dataclasses.dataclass(frozen=True)
class Window:
    """One window: its calendar event as written, the event, its limit in MB/s (None: unlimited) and the time fields
    its matching leaves out."""

    text: str
    event: CalendarEvent
    rate: Optional[float]
    ignore: frozenset

    def contains(self, epoch, tz=None):
        return self.event.matches(epoch, tz, self.ignore)

    def always(self):
        """Whether the window matches every second (``*``, ``*-*-*``, ``*:*``): no window after it can apply."""
        event = self.event
        fields = [event.weekdays, event.years, event.months, event.days]
        fields += [getattr(event, name) for name, field in (("hours", HOUR), ("minutes", MINUTE_FIELD), ("seconds", SECOND))
                   if field not in self.ignore]
        return all(values is None for values in fields)


def parse(text):
    """The windows of an expression, in order; WindowError naming the window and its bad part."""
    if not isinstance(text, str):
        raise WindowError("rate windows must be a text such as '%s'" % EXAMPLE)
    return _parse(text)


@functools.lru_cache(maxsize=256)  # jobs share a few expressions; the runner and `status` evaluate them often
def _parse(text):
    if len(text) > MAX_LENGTH:
        raise WindowError("rate windows '%s...' are longer than %d characters" % (text[:20], MAX_LENGTH))
    if "\n" in text or "\r" in text:
        raise WindowError("rate windows must be one line, windows separated by ';'")
    parts = _SEPARATOR_RE.split(text.strip())
    if parts == [""]:
        raise WindowError("rate windows are empty; write e.g. '%s', or leave them unset" % EXAMPLE)
    windows = []
    for number, part in enumerate(parts, 1):
        window = _window(number, part)
        for earlier_number, earlier in enumerate(windows, 1):
            if earlier.always():
                raise WindowError("window %d '%s' never applies: window %d '%s' before it matches all the time (the "
                                  "first window that matches wins); put the catch-all last" % (
                                      number, part, earlier_number, earlier.text))
        windows.append(window)
    return tuple(windows)


def _window(number, part):
    what = "window %d '%s'" % (number, part)
    if not part:
        raise WindowError("window %d is empty: remove the extra separator" % number)
    event_text, colon, rate_text = part.rpartition(":")
    event_text, rate_text = event_text.strip(), rate_text.strip()
    if not colon or not event_text:
        hint = "; lists inside a calendar event take no blanks ('mon,tue')" if part.strip()[:1].isalpha() else ""
        raise WindowError("%s has no rate: write '<calendar event>: <MB/s or %s>', e.g. 'mon..fri 8..17:*: 10'%s"
                          % (what, UNLIMITED, hint))
    rate = _rate(what, rate_text)
    try:
        event = parse_schedule(event_text)
    except ScheduleError as exc:
        raise WindowError("%s: %s" % (what, str(exc).replace("invalid schedule ", "invalid calendar event ", 1))) from None
    if not isinstance(event, CalendarEvent):
        raise WindowError("%s: '%s' is a cron expression; a window is a calendar event such as 'mon..fri 8..17:*'"
                          % (what, event_text))
    if event.keyword:
        raise WindowError("%s: the keyword '%s' is one moment, not a span of time; write the days and hours it should "
                          "cover, e.g. 'mon..fri 8..17:*' or 'sat,sun'" % (what, event.keyword))
    if not event.time_written:
        ignore = _TIME_FIELDS  # no time: the whole day
    elif HOUR not in event.time_written and event.minutes is not None:
        time_text = (event_text[:-3].rstrip() if event.utc else event_text).split()[-1]
        if SECOND in event.time_written:  # pvesr reads '24:00' or '8..25:*' as minutes:seconds
            raise WindowError("%s: '%s' is minutes:seconds past every hour in the calendar-event grammar (hours are "
                              "0..23); write hours as '<hours>:<minutes>', e.g. '8..17:*'" % (what, time_text))
        raise WindowError("%s: '%s' alone is minutes past every hour in the calendar-event grammar; for the hours %s "
                          "write '%s:*'" % (what, time_text, time_text, time_text))
    else:
        ignore = frozenset() if SECOND in event.time_written else frozenset((SECOND,))
    return Window(text=event_text, event=event, rate=rate, ignore=ignore)


def _rate(what, text):
    if text.lower() == UNLIMITED:
        return None
    try:
        value = float(text)
    except ValueError:
        raise WindowError("%s: rate '%s' must be a number of MB/s (at least 1) or '%s'" % (what, text, UNLIMITED)) from None
    problem = rate_error(value)
    if problem:
        raise WindowError("%s: %s" % (what, problem.replace("leave it unset for no limit", "write '%s' for no limit" % UNLIMITED)))
    return int(value) if value.is_integer() else value


def error(text):
    """The message for invalid rate windows, or None."""
    try:
        parse(text)
    except WindowError as exc:
        return str(exc)
    return None


def in_effect(windows_text, rate, epoch, tz=None) -> Tuple[Optional[float], Optional[str]]:
    """(the limit in MB/s at the epoch second, None for unlimited; the window that set it, None when the job's
    ``rate`` applies because no window matches or there are none)."""
    if windows_text:
        for window in parse(windows_text):
            if window.contains(epoch, tz):
                return window.rate, window.text
    return (rate or None), None


def job_limit(job, epoch=None):
    """A job's rate now as the reports show it: {rate_now (MB/s, None: unlimited), rate_window (the window in effect,
    None: the job's rate), rate_windows (the expression, None: none)}."""
    now, window = in_effect(job.rate_windows, job.rate, time.time() if epoch is None else epoch)
    return {"rate_now": now, "rate_window": window, "rate_windows": job.rate_windows}


def format_number(value):
    """A rate as pvesr would print it: 10 for 10.0, 2.5 for 2.5."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def limit_text(rate):
    """A limit for the run log, as pvesr writes it: '10 MByte/s' or 'none'."""
    return "none" if rate is None else "%s MByte/s" % format_number(rate)


def rate_now_text(figures):
    """job_limit's figures for people: "10 MByte/s (window 'mon..fri 8..17:*' of 'mon..fri 8..17:*: 10')"."""
    why = ("window '%s'" % figures["rate_window"]) if figures["rate_window"] else "outside every window: the job's rate"
    text = "%s (%s" % (limit_text(figures["rate_now"]), why)
    return text + (" of '%s')" % figures["rate_windows"] if figures["rate_windows"] else ")")
