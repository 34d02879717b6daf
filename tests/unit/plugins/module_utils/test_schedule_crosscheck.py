# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Cross-checks of the next-event computation against independent implementations.

Hundreds of schedules are generated from a seeded random model and written three ways: in pvesr's grammar
(lone minutes, '*/R', wrap-around weekday ranges, full day names, optional parts), in systemd's (explicit
seconds, no wrap-around), and, where one exists, as a cron expression.  ``systemd-analyze calendar`` (run in
a few batches) and croniter must give the same run times as ``schedule.parse(...).next_event``.

The model avoids the one place where pvesr knowingly differs from both (an open repetition whose next value
overflows its field past the first value of the next unit, see test_schedule.py): open repetitions only use
steps that divide the rest of their field, and days stay below 29.
"""

from __future__ import annotations

import calendar
import datetime
import os
import random
import subprocess
import time
import zoneinfo

from croniter import croniter

from ansible_collections.storage.replication.plugins.module_utils.schedule import parse

SEED = 20260601
ITERATIONS = 6
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FULL_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
ZONES = ("UTC", "Europe/Vienna", "America/New_York")
STARTS = ("2026-01-01 00:00:00", "2026-02-27 23:59:59", "2026-03-28 23:10:07", "2026-10-24 22:45:00", "2028-02-28 12:00:00")

# field: (lowest value, bound, start of '*/R')
FIELDS = {
    "year": (2024, 2031, None),
    "month": (1, 13, 1),
    "day": (1, 29, 1),
    "hour": (0, 24, 0),
    "minute": (0, 60, 0),
    "second": (0, 60, 0),
}


# --- the model -----------------------------------------------------------------------------------------

def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def random_item(rng, field, alone):
    """(kind, start, end, step) with kind single | range | steps (a..b/r) | open (a/r) | star (*/r, only alone)."""
    low, bound, star_start = FIELDS[field]
    kinds = ["single", "single", "range", "steps"]
    if field not in ("year", "day"):
        kinds += ["open", "star"] if alone else ["open"]
    kind = rng.choice(kinds)
    if kind == "star":
        step = rng.choice([d for d in divisors(bound - star_start) if d < bound - star_start][1:] or [1])
        return ("star", star_start, None, step)
    start = rng.randrange(low, bound - 1)
    # systemd wants every range and repetition to yield at least two values
    steps = [d for d in divisors(bound - start) if start + d < bound]
    if kind == "single" or not steps:
        return ("single", start, start, 0)
    if kind == "open":
        return ("open", start, None, rng.choice(steps))
    end = rng.randrange(start + 1, bound)
    if kind == "range":
        return ("range", start, end, 1)
    return ("steps", start, end, rng.randrange(1, end - start + 1))


def random_values(rng, field, wildcard_chance):
    if rng.random() < wildcard_chance:
        return None
    count = rng.choice([1, 1, 1, 2, 3])
    return [random_item(rng, field, alone=count == 1) for _index in range(count)]


def random_spec(rng, with_seconds=True):
    spec = {
        "weekdays": None if rng.random() < 0.6 else sorted(rng.sample(range(7), rng.randrange(1, 7))),
        "year": random_values(rng, "year", 0.9),
        "month": random_values(rng, "month", 0.7),
        "day": random_values(rng, "day", 0.7),
        "hour": random_values(rng, "hour", 0.35),
        "minute": random_values(rng, "minute", 0.1),
        "second": [("single", 0, 0, 0)],
    }
    if with_seconds and rng.random() < 0.25:
        spec["second"] = random_values(rng, "second", 0.0)
    return spec


# --- pvesr text (with every freedom the grammar allows) -------------------------------------------------

def pvesr_number(rng, value, field):
    return ("%02d" % value) if field != "year" and value < 10 and rng.random() < 0.3 else str(value)


def pvesr_item(rng, item, field):
    kind, start, end, step = item
    number = pvesr_number(rng, start, field)
    if kind == "single":
        return number
    if kind == "star":
        return "*/%d" % step
    if kind == "open":
        return "%s/%d" % (number, step)
    text = "%s..%s" % (number, pvesr_number(rng, end, field))
    return text if kind == "range" else "%s/%d" % (text, step)


def pvesr_values(rng, values, field):
    return "*" if values is None else ",".join(pvesr_item(rng, item, field) for item in values)


def weekday_name(rng, day):
    name = rng.choice([WEEKDAYS, FULL_WEEKDAYS])[day]
    return rng.choice([name, name.upper(), name.capitalize()])


def pvesr_weekdays(rng, days):
    """Runs of days as ranges or lists; a run through Sunday and Monday may be written as a wrapping range."""
    runs, current = [], [days[0]]
    for day in days[1:]:
        if day == current[-1] + 1:
            current.append(day)
        else:
            runs.append(current)
            current = [day]
    runs.append(current)
    if len(runs) > 1 and runs[0][0] == 0 and runs[-1][-1] == 6 and rng.random() < 0.7:
        runs = [runs[-1] + runs[0]] + runs[1:-1]  # e.g. [sat, sun, mon] -> 'sat..mon'
    parts = []
    for run in runs:
        if len(run) > 1 and rng.random() < 0.7:
            parts.append("%s..%s" % (weekday_name(rng, run[0]), weekday_name(rng, run[-1])))
        else:
            parts.extend(weekday_name(rng, day) for day in run)
    rng.shuffle(parts)
    return ",".join(parts)


def pvesr_text(rng, spec, utc):
    parts = []
    if spec["weekdays"] is not None:
        parts.append(pvesr_weekdays(rng, spec["weekdays"]))
    month_day = "%s-%s" % (pvesr_values(rng, spec["month"], "month"), pvesr_values(rng, spec["day"], "day"))
    if spec["year"] is not None:
        parts.append("%s-%s" % (pvesr_values(rng, spec["year"], "year"), month_day))
    elif spec["month"] is not None or spec["day"] is not None:
        parts.append(rng.choice([month_day, "*-" + month_day]))
    elif rng.random() < 0.2:
        parts.append("*-*-*")
    midnight = [spec[f] for f in ("hour", "minute", "second")] == [[("single", 0, 0, 0)]] * 3
    minute = pvesr_values(rng, spec["minute"], "minute")
    if midnight and parts and rng.random() < 0.5:
        pass  # no time at all means 00:00:00
    elif spec["second"] == [("single", 0, 0, 0)] and spec["hour"] is None and rng.random() < 0.6:
        parts.append(minute)  # a lone number is minutes
    else:
        time_text = "%s:%s" % (pvesr_values(rng, spec["hour"], "hour"), minute)
        if spec["second"] != [("single", 0, 0, 0)] or rng.random() < 0.3:
            time_text += ":" + pvesr_values(rng, spec["second"], "second")
        parts.append(time_text)
    text = " ".join(parts)
    if spec["weekdays"] is not None and len(parts) > 1 and rng.random() < 0.2:
        text = text.replace(" ", "", 1)  # 'mon12:00' is valid
    return text + rng.choice([" UTC", "UTC"]) if utc else text


# --- systemd text ----------------------------------------------------------------------------------------

def systemd_item(item):
    kind, start, end, step = item
    if kind == "single":
        return str(start)
    if kind in ("open", "star"):
        return "%d/%d" % (start, step)
    return "%d..%d" % (start, end) if kind == "range" else "%d..%d/%d" % (start, end, step)


def systemd_values(values):
    return "*" if values is None else ",".join(systemd_item(item) for item in values)


def systemd_text(spec, utc):
    date = "-".join(systemd_values(spec[f]) for f in ("year", "month", "day"))
    time_text = ":".join(systemd_values(spec[f]) for f in ("hour", "minute", "second"))
    text = "%s %s" % (date, time_text)
    if spec["weekdays"] is not None:
        text = ",".join(WEEKDAYS[d] for d in spec["weekdays"]) + " " + text
    return text + " UTC" if utc else text


def systemd_runs(expressions, start, tz):
    """Run systemd-analyze calendar once for a batch; returns one list of epoch run times per expression."""
    env = dict(os.environ, TZ=tz, LC_ALL="C")
    argv = ["systemd-analyze", "calendar", "--iterations=%d" % ITERATIONS, "--base-time=@%d" % start, "--"] + expressions
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    blocks = []
    for line in result.stdout.splitlines():
        key, _sep, value = line.strip().partition(": ")
        if key == "Normalized form":
            blocks.append([])
        elif (key == "Next elapse" or key.startswith("Iter. #")) and value != "never":
            blocks[-1].append(value)
        elif key == "(in UTC)":
            blocks[-1][-1] = value
    assert len(blocks) == len(expressions)
    return [[calendar.timegm(time.strptime(v, "%a %Y-%m-%d %H:%M:%S UTC")) for v in block] for block in blocks]


def local_epoch(text, tz):
    return int(datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=zoneinfo.ZoneInfo(tz)).timestamp())


def describe(seconds, tz):
    return [datetime.datetime.fromtimestamp(s, zoneinfo.ZoneInfo(tz)).strftime("%a %Y-%m-%d %H:%M:%S %Z") for s in seconds]


def generated_calendar_cases(count):
    """(pvesr text, systemd text, tz, start text), grouped so that each (tz, start) is one systemd call."""
    rng = random.Random(SEED)
    cases = []
    for index in range(count):
        spec = random_spec(rng)
        utc = rng.random() < 0.2
        tz = ZONES[index % len(ZONES)]
        start = STARTS[(index // len(ZONES)) % len(STARTS)]
        cases.append((pvesr_text(rng, spec, utc), systemd_text(spec, utc), tz, start))
    return cases


def test_generated_calendar_events_agree_with_systemd():
    cases = generated_calendar_cases(450)
    assert len({c[0] for c in cases}) > 400  # hundreds of distinct expressions
    disagreements = []
    batches = {}
    for case in cases:
        batches.setdefault(case[2:], []).append(case)
    for (tz, start_text), batch in sorted(batches.items()):
        start = local_epoch(start_text, tz)
        expected = systemd_runs([systemd for _pvesr, systemd, _tz, _start in batch], start, tz)
        for (pvesr, systemd, _tz, _start), want in zip(batch, expected):
            got = parse(pvesr).events(start, ITERATIONS, tz)
            if got != want:
                disagreements.append((pvesr, systemd, tz, start_text, describe(got, tz), describe(want, tz)))
    assert not disagreements, "\n".join(map(str, disagreements[:10]))


def test_documented_examples_agree_with_systemd():
    """The examples of pve-docs calendar-events.adoc, translated by hand where systemd's grammar differs."""
    examples = [
        ("mon,tue,wed,thu,fri", "mon..fri"), ("sat,sun", "sat,sun"), ("mon,wed,fri", "mon,wed,fri"), ("12:05", "12:05"),
        ("*/5", "*:0/5"), ("mon..wed 30/10", "mon..wed *:30/10"), ("mon..fri 8..17,22:0/15", "mon..fri 8..17,22:0/15"),
        ("fri 12..13:5/20", "fri 12..13:5/20"), ("12,14,16,18,20,22:5", "12,14,16,18,20,22:5"), ("*", "*:*"),
        ("*-05", "*-*-05"), ("Sat *-1..7 15:00", "Sat *-1..7 15:00"), ("2015-10-21", "2015-10-21"), ("8:00/15", "8:00/15"),
        ("minutely", "minutely"), ("hourly", "hourly"), ("daily", "daily"), ("weekly", "weekly"), ("monthly", "monthly"),
        ("yearly", "yearly"), ("quarterly", "quarterly"), ("semiannually", "semiannually"), ("fri..mon", "fri,sat,sun,mon"),
        ("friday..monday 02:30", "fri,sat,sun,mon 02:30"), ("24:00", "*:24:00"), ("25:30", "*:25:30"), ("*/00", "hourly"),
    ]
    for tz in ("UTC", "Europe/Vienna"):
        start = local_epoch("2026-03-27 12:34:56", tz)
        expected = systemd_runs([systemd for _pvesr, systemd in examples], start, tz)
        for (pvesr, systemd), want in zip(examples, expected):
            assert parse(pvesr).events(start, ITERATIONS, tz) == want, (pvesr, systemd, tz)


# --- cron --------------------------------------------------------------------------------------------------

CRON_MAX = {"minute": 59, "hour": 23, "day": 31, "month": 12}


def cron_item(item, field):
    kind, start, end, step = item
    if kind == "single":
        return str(start)
    if kind == "star":
        return "*/%d" % step
    if kind == "open":
        return "%d-%d/%d" % (start, CRON_MAX[field], step)
    return "%d-%d" % (start, end) if kind == "range" else "%d-%d/%d" % (start, end, step)


def cron_values(values, field):
    return "*" if values is None else ",".join(cron_item(item, field) for item in values)


def cron_text(spec):
    weekdays = "*" if spec["weekdays"] is None else ",".join(str((d + 1) % 7) for d in spec["weekdays"])
    return " ".join([cron_values(spec["minute"], "minute"), cron_values(spec["hour"], "hour"),
                     cron_values(spec["day"], "day"), cron_values(spec["month"], "month"), weekdays])


def test_generated_calendar_events_agree_with_croniter():
    """Calendar events with a cron equivalent (second 0, no year) against croniter with AND-ed day fields."""
    rng = random.Random(SEED + 1)
    disagreements, checked = [], 0
    for index in range(250):
        spec = random_spec(rng, with_seconds=False)
        spec["year"] = None
        pvesr = pvesr_text(rng, spec, utc=False)
        cron = cron_text(spec)
        tz = ("UTC", "Asia/Tokyo", "America/Sao_Paulo")[index % 3]
        start = local_epoch(STARTS[index % len(STARTS)], tz)
        cursor = croniter(cron, datetime.datetime.fromtimestamp(start, zoneinfo.ZoneInfo(tz)), day_or=False)
        want = [int(cursor.get_next(float)) for _index in range(ITERATIONS)]
        got = parse(pvesr).events(start, ITERATIONS, tz)
        checked += 1
        if got != want:
            disagreements.append((pvesr, cron, tz, describe(got, tz), describe(want, tz)))
    assert checked == 250
    assert not disagreements, "\n".join(map(str, disagreements[:10]))
