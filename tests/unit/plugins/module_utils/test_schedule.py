# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of schedules: every element of the pvesr calendar grammar, its quirks, errors, DST, cron, warnings."""

from __future__ import annotations

import datetime
import re
import sys
import zoneinfo

import pytest

from ansible_collections.storage.replication.plugins.module_utils import schedule as schedmod
from ansible_collections.storage.replication.plugins.module_utils.schedule import (
    DEFAULT_SCHEDULE, CalendarEvent, CronExpression, ScheduleError, interval_warnings, parse)

UTC = "UTC"
VIENNA = "Europe/Vienna"
NEW_YORK = "America/New_York"


def epoch(text, tz=UTC, fold=0):
    """'2026-03-28 12:00[:ss]' in zone tz -> epoch seconds."""
    fmt = "%Y-%m-%d %H:%M:%S" if text.count(":") == 2 else "%Y-%m-%d %H:%M"
    local = datetime.datetime.strptime(text, fmt).replace(tzinfo=zoneinfo.ZoneInfo(tz), fold=fold)
    return int(local.timestamp())


def local(seconds, tz=UTC):
    """epoch -> 'Sat 2026-03-28 12:00:00 CET' in zone tz."""
    return datetime.datetime.fromtimestamp(seconds, zoneinfo.ZoneInfo(tz)).strftime("%a %Y-%m-%d %H:%M:%S %Z")


def runs(text, start, count=4, tz=UTC):
    """The next `count` run times of schedule `text` after local time `start`, as local text."""
    return [local(e, tz) for e in parse(text).events(epoch(start, tz), count, tz)]


START = "2023-11-14 22:13:20"  # a Tuesday; 1700000000


# --- keywords ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("keyword, expected", [
    ("minutely", ["Tue 2023-11-14 22:14:00 UTC", "Tue 2023-11-14 22:15:00 UTC"]),
    ("hourly", ["Tue 2023-11-14 23:00:00 UTC", "Wed 2023-11-15 00:00:00 UTC"]),
    ("daily", ["Wed 2023-11-15 00:00:00 UTC", "Thu 2023-11-16 00:00:00 UTC"]),
    ("weekly", ["Mon 2023-11-20 00:00:00 UTC", "Mon 2023-11-27 00:00:00 UTC"]),
    ("monthly", ["Fri 2023-12-01 00:00:00 UTC", "Mon 2024-01-01 00:00:00 UTC"]),
    ("yearly", ["Mon 2024-01-01 00:00:00 UTC", "Wed 2025-01-01 00:00:00 UTC"]),
    ("annually", ["Mon 2024-01-01 00:00:00 UTC", "Wed 2025-01-01 00:00:00 UTC"]),
    ("quarterly", ["Mon 2024-01-01 00:00:00 UTC", "Mon 2024-04-01 00:00:00 UTC"]),
    ("semiannually", ["Mon 2024-01-01 00:00:00 UTC", "Mon 2024-07-01 00:00:00 UTC"]),
    ("semi-annually", ["Mon 2024-01-01 00:00:00 UTC", "Mon 2024-07-01 00:00:00 UTC"]),
])
def test_keywords(keyword, expected):
    assert runs(keyword, START, 2) == expected


def test_keyword_with_utc_suffix_is_evaluated_in_utc_whatever_the_zone():
    assert runs("daily UTC", "2026-01-10 12:00", 1, VIENNA) == ["Sun 2026-01-11 01:00:00 CET"]
    assert parse("dailyUTC").normalized == "*-*-* 00:00:00 UTC"


@pytest.mark.parametrize("text, message", [
    ("Daily", "keywords are lower-case: write 'daily'"),
    ("HOURLY", "keywords are lower-case: write 'hourly'"),
    ("daily 12:00", "the keyword 'daily' cannot be combined"),
    ("mon daily", "the keyword 'daily' cannot be combined"),
    ("weekly mon", "the keyword 'weekly' cannot be combined"),
])
def test_keywords_are_case_sensitive_and_not_combinable(text, message):
    with pytest.raises(ScheduleError, match=message):
        parse(text)


# --- weekdays ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, same_as", [
    ("mon,tue,wed,thu,fri", "mon..fri"),
    ("sat,sun", "sat..sun"),
    ("Monday,WEDNESDAY,friday", "mon,wed,fri"),
    ("fri..mon", "fri,sat,sun,mon"),
    ("sun..sat", "daily"),
    ("mon..wed 30/10", "mon,tue,wed 30,40,50"),
    ("fri 12..13:5/20", "fri 12,13:5,25,45"),
])
def test_weekday_lists_ranges_wrap_and_names(text, same_as):
    assert runs(text, START, 12) == runs(same_as, START, 12)


def test_weekday_wrap_around_range_fires_from_friday_to_monday():
    assert [r[:3] for r in runs("fri..mon", START, 5)] == ["Fri", "Sat", "Sun", "Mon", "Fri"]


def test_weekday_may_touch_the_time():
    assert runs("mon12:00", START, 1) == ["Mon 2023-11-20 12:00:00 UTC"]
    assert runs("monUTC", START, 1) == ["Mon 2023-11-20 00:00:00 UTC"]


# --- dates -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, start, expected", [
    ("2015-10-21", "2015-01-01 00:00", ["Wed 2015-10-21 00:00:00 UTC"]),
    ("*-05", START, ["Tue 2023-12-05 00:00:00 UTC", "Fri 2024-01-05 00:00:00 UTC"]),
    ("*-*-01", START, ["Fri 2023-12-01 00:00:00 UTC", "Mon 2024-01-01 00:00:00 UTC"]),
    ("2020-7..9-2/2 6:00", "2020-01-01 00:00", ["Thu 2020-07-02 06:00:00 UTC", "Sat 2020-07-04 06:00:00 UTC"]),
    ("2020,2021-12-31", "2020-06-01 00:00", ["Thu 2020-12-31 00:00:00 UTC", "Fri 2021-12-31 00:00:00 UTC"]),
    ("1965/5-01-01", START, ["Wed 2025-01-01 00:00:00 UTC", "Tue 2030-01-01 00:00:00 UTC"]),
    ("Sat *-1..7 15:00", START, ["Sat 2023-12-02 15:00:00 UTC", "Sat 2024-01-06 15:00:00 UTC"]),
    ("*-02-29", START, ["Thu 2024-02-29 00:00:00 UTC", "Tue 2028-02-29 00:00:00 UTC"]),
    ("12-25 18:00", START, ["Mon 2023-12-25 18:00:00 UTC", "Wed 2024-12-25 18:00:00 UTC"]),
])
def test_dates(text, start, expected):
    assert runs(text, start, 2) == expected


def test_a_date_that_never_comes_gives_no_event():
    assert parse("2015-10-21").next_event(epoch(START)) is None  # a past one-shot date
    assert parse("*-02-30").next_event(epoch(START)) is None  # pvesr gives up after its 1000 passes
    assert parse("*-00-01").next_event(epoch(START)) is None  # month 0 parses but never matches


# --- times -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("5", ["Tue 2023-11-14 23:05:00 UTC", "Wed 2023-11-15 00:05:00 UTC"]),  # a lone number is minutes
    ("*/15", ["Tue 2023-11-14 22:15:00 UTC", "Tue 2023-11-14 22:30:00 UTC"]),
    ("0/15", ["Tue 2023-11-14 22:15:00 UTC", "Tue 2023-11-14 22:30:00 UTC"]),
    ("*", ["Tue 2023-11-14 22:14:00 UTC", "Tue 2023-11-14 22:15:00 UTC"]),
    ("12:05", ["Wed 2023-11-15 12:05:00 UTC", "Thu 2023-11-16 12:05:00 UTC"]),
    ("8:00/15", ["Wed 2023-11-15 08:00:00 UTC", "Wed 2023-11-15 08:15:00 UTC"]),
    ("12/2:5", ["Wed 2023-11-15 12:05:00 UTC", "Wed 2023-11-15 14:05:00 UTC"]),
    ("22:13:30", ["Tue 2023-11-14 22:13:30 UTC", "Wed 2023-11-15 22:13:30 UTC"]),
    ("*:*:0/20", ["Tue 2023-11-14 22:13:40 UTC", "Tue 2023-11-14 22:14:00 UTC"]),
    ("mon..fri 8..17,22:0/15", ["Tue 2023-11-14 22:15:00 UTC", "Tue 2023-11-14 22:30:00 UTC"]),
    ("1..30:00", ["Tue 2023-11-14 22:14:00 UTC", "Tue 2023-11-14 22:15:00 UTC"]),  # hour '1' then '..': minutes 1..30
])
def test_times(text, expected):
    assert runs(text, START, 2) == expected


def test_documented_equivalences():
    for text, same_as in [("12,14,16,18,20,22:5", "12/2:5"), ("*/5", "0/5"), ("*", "*/1"), ("minutely", "*-*-* *:*:00"),
                          ("hourly", "*-*-* *:00:00"), ("weekly", "mon *-*-* 00:00:00"), ("quarterly", "*-01,04,07,10-01 00:00:00")]:
        assert runs(text, START, 10) == runs(same_as, START, 10), text


@pytest.mark.parametrize("text, normalized, expected", [
    ("24:00", "*-*-* *:24:00", ["Tue 2023-11-14 22:24:00 UTC", "Tue 2023-11-14 23:24:00 UTC"]),
    ("25:30", "*-*-* *:25:30", ["Tue 2023-11-14 22:25:30 UTC", "Tue 2023-11-14 23:25:30 UTC"]),
    ("12,25:30", "*-*-* *:12,25:30", ["Tue 2023-11-14 22:25:30 UTC", "Tue 2023-11-14 23:12:30 UTC"]),
])
def test_hours_that_do_not_parse_are_read_again_as_minutes_and_seconds(text, normalized, expected):
    """pvesr's 24:00 quirk: the hour list fails, so the parser backtracks and reads MINUTES:SECONDS."""
    assert parse(text).normalized == normalized
    assert runs(text, START, 2) == expected


def test_open_repetition_overflow_skips_the_start_of_the_next_hour_like_pvesr():
    """pvesr's find_next may return minute 63 for '*/7'; normalising carries it to :03 of the next hour,
    so :00 is skipped (systemd would fire at 01:00)."""
    assert runs("*/7", "2026-01-01 00:55", 3) == [
        "Thu 2026-01-01 00:56:00 UTC", "Thu 2026-01-01 01:07:00 UTC", "Thu 2026-01-01 01:14:00 UTC"]


# --- repetition 0: the deliberate difference ----------------------------------------------------------

@pytest.mark.parametrize("text", ["*/00", "*/0", "0/0", "0/00"])
def test_repetition_zero_is_just_the_start_value_so_star_slash_00_is_hourly(text):
    assert runs(text, START, 24) == runs("hourly", START, 24)
    assert parse(text).normalized == "*-*-* *:00:00"


def test_repetition_zero_in_other_fields():
    assert runs("8..10/0:30", START, 2) == ["Wed 2023-11-15 08:30:00 UTC", "Thu 2023-11-16 08:30:00 UTC"]
    assert runs("*-*/0-01", START, 1) == ["Mon 2024-01-01 00:00:00 UTC"]  # month '*/0' = month 1


# --- UTC and time zones ------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["12:05UTC", "12:05 UTC", "12:05   UTC"])
def test_utc_suffix_wins_over_the_requested_zone(text):
    assert runs(text, "2026-01-10 00:00", 1, VIENNA) == ["Sat 2026-01-10 13:05:00 CET"]


def test_zone_none_is_the_nodes_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", NEW_YORK)
    after = epoch("2026-01-10 00:00", NEW_YORK)
    assert parse("12:00").next_event(after) == epoch("2026-01-10 12:00", NEW_YORK)
    monkeypatch.setenv("TZ", ":" + VIENNA)
    assert parse("12:00").next_event(after) == epoch("2026-01-10 12:00", VIENNA)
    monkeypatch.setenv("TZ", "")
    assert parse("12:00").next_event(after) == epoch("2026-01-10 12:00", UTC)


def test_unknown_time_zones_are_reported():
    with pytest.raises(ScheduleError, match="unknown time zone 'Mars/Olympus'"):
        parse("*/15").next_event(0, "Mars/Olympus")


def test_next_event_is_strictly_after_and_a_float_start_is_truncated():
    schedule = parse("*/15")
    exact = epoch("2026-01-01 10:15")
    assert schedule.next_event(exact, UTC) == exact + 900
    assert schedule.next_event(exact - 1, UTC) == exact
    assert schedule.next_event(exact - 0.5, UTC) == exact


# --- DST (section 6.3 of the pvesr reference) ---------------------------------------------------------

@pytest.mark.parametrize("tz, spring_day, label", [(VIENNA, "2026-03-29", "CEST"), (NEW_YORK, "2026-03-08", "EDT")])
def test_daily_time_inside_the_spring_gap_skips_that_day(tz, spring_day, label):
    day_before = (datetime.date.fromisoformat(spring_day) - datetime.timedelta(days=1)).isoformat()
    day_after = (datetime.date.fromisoformat(spring_day) + datetime.timedelta(days=1)).isoformat()
    result = runs("2:30", day_before + " 12:00", 1, tz)
    assert result == [local(epoch(day_after + " 02:30", tz), tz)]
    assert result[0].endswith(label)


def test_every_30_minutes_across_spring_forward_in_vienna():
    assert runs("*/30", "2026-03-29 01:00", 3, VIENNA) == [
        "Sun 2026-03-29 01:30:00 CET", "Sun 2026-03-29 03:00:00 CEST", "Sun 2026-03-29 03:30:00 CEST"]


def test_every_30_minutes_across_spring_forward_in_new_york():
    assert runs("*/30", "2026-03-08 01:00", 3, NEW_YORK) == [
        "Sun 2026-03-08 01:30:00 EST", "Sun 2026-03-08 03:00:00 EDT", "Sun 2026-03-08 03:30:00 EDT"]


@pytest.mark.parametrize("tz, day, before, after", [
    (VIENNA, "2026-10-25", "CEST", "CET"),
    (NEW_YORK, "2026-11-01", "EDT", "EST"),
])
def test_autumn_repeated_hour_never_fires_twice(tz, day, before, after):
    repeated_hour = "02" if tz == VIENNA else "01"
    start = "%s %02d:00" % (day, int(repeated_hour) - 1)
    results = runs("*/30", start, 6, tz)
    hh = int(repeated_hour)
    assert results == [
        "Sun %s %02d:30:00 %s" % (day, hh - 1, before), "Sun %s %02d:00:00 %s" % (day, hh, before),
        "Sun %s %02d:30:00 %s" % (day, hh, before), "Sun %s %02d:00:00 %s" % (day, hh + 1, after),
        "Sun %s %02d:30:00 %s" % (day, hh + 1, after), "Sun %s %02d:00:00 %s" % (day, hh + 2, after)]
    hourly = runs("hourly", start, 3, tz)
    assert hourly == ["Sun %s %02d:00:00 %s" % (day, hh, before), "Sun %s %02d:00:00 %s" % (day, hh + 1, after),
                      "Sun %s %02d:00:00 %s" % (day, hh + 2, after)]


def test_search_starting_inside_the_repeated_hour_never_returns_the_past():
    """From 02:10 CET (the second 02:10), the first occurrence of 02:30 is in the past: the answer is the
    second occurrence, never an earlier instant."""
    after = epoch("2026-10-25 02:10", VIENNA, fold=1)
    result = parse("*/30").next_event(after, VIENNA)
    assert result > after
    assert result == epoch("2026-10-25 02:30", VIENNA, fold=1)


# --- normalized form ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, normalized", [
    ("*/15", "*-*-* *:00/15:00"),
    ("mon..fri 8..17,22:0/15", "Mon..Fri *-*-* 08..17,22:00/15:00"),
    ("fri..mon", "Mon,Fri..Sun *-*-* 00:00:00"),
    ("mon,tue", "Mon,Tue *-*-* 00:00:00"),
    ("sun..sat 12:00", "*-*-* 12:00:00"),
    ("2015-10-21", "2015-10-21 00:00:00"),
    ("*-5", "*-*-05 00:00:00"),
    ("2020-7..9-2/2", "2020-07..09-02/2 00:00:00"),
    ("8..17/2:00", "*-*-* 08..17/2:00:00"),
    ("weekly", "Mon *-*-* 00:00:00"),
    ("12:05 UTC", "*-*-* 12:05:00 UTC"),
    ("5,1,3", "*-*-* *:01,03,05:00"),
])
def test_normalized_form_is_systemd_style(text, normalized):
    schedule = parse(text)
    assert schedule.kind == "calendar"
    assert isinstance(schedule, CalendarEvent)
    assert schedule.normalized == normalized


@pytest.mark.parametrize("text", ["*/7", "mon..fri 8..17,22:0/15", "fri..mon 2020-7..9-2/2 1:2:3", "24:00", "1965/5-01-01", "*:*:0/20 UTC"])
def test_normalized_form_means_the_same(text):
    assert parse(parse(text).normalized).normalized == parse(text).normalized
    assert runs(parse(text).normalized, START, 20) == runs(text, START, 20)


def test_whitespace_around_is_trimmed_and_default_is_every_15_minutes():
    assert DEFAULT_SCHEDULE == "*/15"
    assert parse("  */15\t").normalized == parse(DEFAULT_SCHEDULE).normalized
    assert parse("*/15") == parse("0/15")


# --- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("", "invalid schedule '': the schedule is empty"),
    ("   ", "the schedule is empty"),
    ("UTC", "'UTC' needs a weekday, date or time before it"),
    ("fortnightly", "at 'fortnightly': 'fortnightly' is neither a keyword"),
    ("mo", "'mo' is neither a keyword"),
    ("tues", "'tues' is neither a keyword"),
    ("mon-fri", "at '-fri': unexpected text; weekday ranges are written with '..', e.g. 'mon..fri'"),
    ("mon, tue", "at ' tue': expected a weekday .*lists take no spaces"),
    ("mon,foo", "at 'foo': 'foo' is neither a keyword"),
    ("*/60", "at '60': minute 60 is out of range \\(0..59\\)"),
    ("61", "minute 61 is out of range \\(0..59\\)"),
    ("0..80", "minute 80 is out of range"),
    ("25:61", "at '61': second 61 is out of range \\(0..59\\)"),
    ("*-13-01", "at '13-01': month 13 is out of range \\(0..12\\)"),
    ("*-01-32", "at '32': day 32 is out of range \\(0..31\\)"),
    ("2200-01-01", "year 2200 is out of range \\(0..2199\\)"),
    ("5..3", "the range 5..3 of minute runs backwards"),
    ("12:00 foo", "at ' foo': unexpected text"),
    ("12:05 utc", "the suffix 'UTC' is upper-case"),
    ("12:00~", "at '~': unexpected text"),
    ("2026-01-01T12:00", "at 'T12:00': unexpected text"),
    ("?", "expected a keyword .* a weekday, a date"),
    ("@reboot", "the cron keywords accepted are @hourly"),
    ("*/15" + " " * 130, "longer than 128 characters"),
])
def test_bad_input_names_the_offending_part(text, message):
    with pytest.raises(ScheduleError, match=message) as raised:
        parse(text)
    assert isinstance(raised.value, ValueError)


def test_a_schedule_must_be_text():
    with pytest.raises(ScheduleError, match="must be a string, not int"):
        parse(15)


# --- cron --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, normalized, expected", [
    ("0 * * * *", "0 * * * *", ["Tue 2023-11-14 23:00:00 UTC", "Wed 2023-11-15 00:00:00 UTC"]),
    ("*/5  *  * * *", "*/5 * * * *", ["Tue 2023-11-14 22:15:00 UTC", "Tue 2023-11-14 22:20:00 UTC"]),
    ("30 2 * * 1-5", "30 2 * * 1-5", ["Wed 2023-11-15 02:30:00 UTC", "Thu 2023-11-16 02:30:00 UTC"]),
    ("@daily", "0 0 * * *", ["Wed 2023-11-15 00:00:00 UTC", "Thu 2023-11-16 00:00:00 UTC"]),
    ("@weekly", "0 0 * * 0", ["Sun 2023-11-19 00:00:00 UTC", "Sun 2023-11-26 00:00:00 UTC"]),
])
def test_cron_expressions(text, normalized, expected):
    schedule = parse(text)
    assert schedule.kind == "cron"
    assert isinstance(schedule, CronExpression)
    assert schedule.normalized == normalized
    assert runs(text, START, 2) == expected


def test_cron_is_evaluated_in_the_zone_and_strictly_after():
    assert runs("0 12 * * *", "2026-01-10 00:00", 1, VIENNA) == ["Sat 2026-01-10 12:00:00 CET"]
    on_the_hour = epoch("2026-01-10 12:00")
    assert parse("0 * * * *").next_event(on_the_hour, UTC) == on_the_hour + 3600


def test_cron_expression_that_never_matches_has_no_event():
    assert parse("0 0 30 2 *").next_event(epoch(START), UTC) is None
    assert "never fires again" in interval_warnings("0 0 30 2 *", now=NOW, tz=UTC)[0]


def test_bad_cron_expression():
    with pytest.raises(ScheduleError, match="invalid cron expression '61 \\* \\* \\* \\*'"):
        parse("61 * * * *")


def test_cron_without_croniter_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "croniter", None)  # makes 'import croniter' fail
    with pytest.raises(ScheduleError, match="cron expressions need the Python package croniter .*pip install croniter"):
        parse("0 * * * *")
    assert parse("*/15").kind == "calendar"  # calendar events never need it


# --- interval warnings -------------------------------------------------------------------------------

NOW = epoch("2026-01-05 10:00")


@pytest.mark.parametrize("text", ["*/15", "daily", "weekly", "mon..fri 22:00", "0 * * * *", "sat,sun 3:00", "minutely"])
def test_ordinary_schedules_have_no_warning(text):
    assert interval_warnings(text, now=NOW, tz=UTC) == []


@pytest.mark.parametrize("text, message", [
    ("*:*:0/10", "fires more often than once a minute; replication runs at most once a minute"),
    ("*:*:*", "fires more often than once a minute"),
    ("monthly", "fires less often than once a week \\(nothing between 2026-01-05 10:00 UTC and 2026-02-01 00:00 UTC\\)"),
    ("@monthly", "fires less often than once a week"),
    ("*-02-* 12:00", "fires less often than once a week"),
    ("*-*-1,9,17,25", "fires less often than once a week"),
    ("2015-10-21", "never fires again"),
    ("2026-01-20 12:00", "fires for the last time at 2026-01-20 12:00 UTC"),
    ("2026-01-05..10", "fires for the last time at 2026-01-10 00:00 UTC"),
])
def test_schedules_outside_one_minute_to_one_week_are_accepted_with_a_warning(text, message):
    warnings = interval_warnings(text, now=NOW, tz=UTC)
    assert len(warnings) == 1
    assert text in warnings[0]
    assert re.search(message, warnings[0]), warnings[0]


def test_warning_checks_accept_a_parsed_schedule_and_default_to_now():
    assert interval_warnings(parse("*/15")) == []


def test_field_tables_are_shared_between_schedules():
    assert parse("mon 8:*/15").minutes is parse("tue 9:0/15").minutes
    assert schedmod.parse("*/15").minutes.contains(45) and not schedmod.parse("*/15").minutes.contains(44)


# --- the zone clock against zoneinfo ------------------------------------------------------------------

@pytest.mark.parametrize("tz", [VIENNA, NEW_YORK, "Australia/Lord_Howe", "Asia/Kathmandu", "America/Sao_Paulo", "Europe/Dublin",
                                "Pacific/Apia", "Asia/Tokyo"])
def test_zone_clock_agrees_with_zoneinfo(tz):
    """The clock's integer arithmetic gives zoneinfo's fields for epochs and zoneinfo's fold=0 reading of wall
    times, also next to every transition (Lord Howe moves by 30 minutes, Dublin has negative DST, Apia
    skipped a whole day in 2011)."""
    zone = zoneinfo.ZoneInfo(tz)
    clock = schedmod._ZoneClock(zone)
    rng = __import__("random").Random(tz)
    epochs = [rng.randrange(0, 4102444800) for _index in range(300)]
    transitions = [e for e in range(1293840000, 1956528000, 3600 * 6)
                   if zone.utcoffset(datetime.datetime.fromtimestamp(e, zone)) != zone.utcoffset(datetime.datetime.fromtimestamp(e + 3600 * 6, zone))]
    epochs += [e + delta for e in transitions for delta in range(-3 * 3600, 9 * 3600, 600)]
    for moment in epochs:
        expected = datetime.datetime.fromtimestamp(moment, zone)
        assert clock.fields(moment) == (expected.year, expected.month, expected.day, expected.hour, expected.minute,
                                        expected.second, expected.weekday()), moment
        wall = schedmod._wall_seconds(expected.year, expected.month, expected.day, expected.hour, expected.minute, expected.second)
        naive = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=wall)
        assert clock.epoch(wall, floor=0) == int(naive.replace(tzinfo=zone).timestamp()), moment
        assert clock.epoch(wall, floor=moment) == moment  # never before the floor: the second occurrence if need be
