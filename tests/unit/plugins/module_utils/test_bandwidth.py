# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bandwidth windows (bandwidth.py) in virtual time: which limit is in effect at a given second (first match, the job's
rate outside every window, unlimited windows, midnight wrap, DST edges, seconds), the precise errors of bad
expressions, where the windows are stored (cluster.json, never replication.cfg) and the limit function a transfer asks
every second."""

from __future__ import annotations

import calendar
import datetime
import time
import types
import zoneinfo

import pytest

from ansible_collections.storage.replication.plugins.module_utils import bandwidth
from ansible_collections.storage.replication.plugins.module_utils import config as C
from ansible_collections.storage.replication.plugins.module_utils import replicate

VIENNA = "Europe/Vienna"


def utc(*fields):
    return calendar.timegm(fields + (0,) * (6 - len(fields)))


def local(zone, *fields):
    return int(datetime.datetime(*fields, tzinfo=zoneinfo.ZoneInfo(zone)).timestamp())


def rate_at(windows, epoch, rate=None, tz="UTC"):
    return bandwidth.in_effect(windows, rate, epoch, tz)


OFFICE = "mon..fri 8..17:*: 10; sat,sun: 50; *-12-24..26: unlimited"


@pytest.mark.parametrize("when, expected", [
    (utc(2026, 3, 2, 7, 59, 59), (100, None)),  # Monday before office hours: the job's rate
    (utc(2026, 3, 2, 8, 0, 0), (10, "mon..fri 8..17:*")),
    (utc(2026, 3, 2, 17, 59, 59), (10, "mon..fri 8..17:*")),
    (utc(2026, 3, 2, 18, 0, 0), (100, None)),
    (utc(2026, 3, 7, 3, 0, 0), (50, "sat,sun")),  # a window without a time is the whole day
    (utc(2026, 12, 24, 12, 0, 0), (10, "mon..fri 8..17:*")),  # a Thursday: the first matching window wins
    (utc(2026, 12, 24, 20, 0, 0), (None, "*-12-24..26")),  # ... and after it, the unlimited one
    (utc(2026, 12, 26, 12, 0, 0), (50, "sat,sun")),
])
def test_the_first_matching_window_wins_and_the_job_rate_applies_outside_every_window(when, expected):
    assert rate_at(OFFICE, when, rate=100) == expected


def test_without_a_rate_outside_the_windows_is_unlimited_and_without_windows_the_rate_applies():
    assert rate_at("mon..fri 8..17:*: 10", utc(2026, 3, 2, 20)) == (None, None)
    assert rate_at(None, utc(2026, 3, 2, 9), rate=7.5) == (7.5, None)
    assert rate_at("*: unlimited", utc(2026, 3, 2, 9), rate=7.5) == (None, "*")


@pytest.mark.parametrize("when, expected", [
    (utc(2026, 3, 2, 21, 59, 59), 100),
    (utc(2026, 3, 2, 22, 0, 0), 5),
    (utc(2026, 3, 2, 23, 59, 59), 5),
    (utc(2026, 3, 3, 0, 0, 0), 5),  # across midnight
    (utc(2026, 3, 3, 5, 59, 59), 5),
    (utc(2026, 3, 3, 6, 0, 0), 100),
])
def test_a_night_window_wraps_midnight_as_a_list_of_hours(when, expected):
    assert rate_at("22..23,0..5:*: 5", when, rate=100)[0] == expected


def test_a_weekend_window_wraps_the_week():
    windows = "fri 18..23:*: 40; sat,sun: 40; mon 0..5:*: 40"
    assert rate_at(windows, utc(2026, 3, 6, 17, 59, 59), rate=10)[0] == 10  # Friday
    assert rate_at(windows, utc(2026, 3, 6, 18), rate=10)[0] == 40
    assert rate_at(windows, utc(2026, 3, 8, 23, 59, 59), rate=10)[0] == 40  # Sunday night
    assert rate_at(windows, utc(2026, 3, 9, 5, 59, 59), rate=10)[0] == 40  # Monday morning
    assert rate_at(windows, utc(2026, 3, 9, 6), rate=10)[0] == 10
    assert rate_at("fri..mon: 40", utc(2026, 3, 8, 12), rate=10)[0] == 40  # pvesr's wrapping weekday range


def test_seconds_make_a_window_precise_to_the_second():
    windows = "12:30:00..29 UTC: 5"
    assert [rate_at(windows, utc(2026, 3, 2, 12, 30, s), tz=VIENNA)[0] for s in (0, 29, 30)] == [5, 5, None]
    assert rate_at(windows, utc(2026, 3, 2, 12, 29, 59), tz=VIENNA)[0] is None


def _minutes_in_window(windows, zone, day):
    """How many minutes of the local day the first window holds (sampled each minute across 26 hours)."""
    start = local(zone, *day, 0, 0) - 3600
    return sum(1 for minute in range(26 * 60) if rate_at(windows, start + 60 * minute, tz=zone)[1] is not None
               and datetime.datetime.fromtimestamp(start + 60 * minute, zoneinfo.ZoneInfo(zone)).day == day[2])


def test_windows_follow_the_wall_clock_across_dst_changes():
    # Vienna: 2026-03-29 02:00 CET jumps to 03:00 CEST; 2026-10-25 03:00 CEST falls back to 02:00 CET.
    assert _minutes_in_window("2:*: 5", VIENNA, (2026, 3, 28)) == 60
    assert _minutes_in_window("2:*: 5", VIENNA, (2026, 3, 29)) == 0  # the hour does not exist
    assert _minutes_in_window("2:*: 5", VIENNA, (2026, 10, 25)) == 120  # the hour happens twice
    assert _minutes_in_window("8..17:*: 5", VIENNA, (2026, 3, 29)) == 600  # a whole window is still ten hours
    # the edges, in UTC: 08:00 local is 07:00 UTC before the change and 06:00 UTC after it
    assert rate_at("8..17:*: 5", utc(2026, 3, 28, 7, 0, 0), tz=VIENNA)[0] == 5
    assert rate_at("8..17:*: 5", utc(2026, 3, 30, 5, 59, 59), tz=VIENNA)[0] is None
    assert rate_at("8..17:*: 5", utc(2026, 3, 30, 6, 0, 0), tz=VIENNA)[0] == 5
    # an event in UTC ignores the zone
    assert rate_at("8..17:* UTC: 5", utc(2026, 3, 30, 6, 0, 0), tz=VIENNA)[0] is None


def test_the_node_s_local_zone_is_the_default(monkeypatch):
    monkeypatch.setenv("TZ", VIENNA)
    assert bandwidth.in_effect("8..17:*: 5", None, utc(2026, 3, 30, 6, 0, 0)) == (5, "8..17:*")
    monkeypatch.setenv("TZ", "UTC")
    assert bandwidth.in_effect("8..17:*: 5", None, utc(2026, 3, 30, 6, 0, 0)) == (None, None)


@pytest.mark.parametrize("text, fragments", [
    ("mon..fri 8..18: 10, *: 100", ["window 1 'mon..fri 8..18: 10'", "'8..18' alone is minutes", "write '8..18:*'"]),
    ("*: 5; mon 8..17:*: 3", ["window 2 'mon 8..17:*: 3' never applies", "window 1 '*' before it"]),
    ("daily: 4", ["window 1 'daily: 4'", "the keyword 'daily' is one moment"]),
    ("mon, tue 8..17:*: 10", ["window 1 'mon' has no rate", "lists inside a calendar event take no blanks"]),
    ("mon..fri 8..17:*: 0.5", ["window 1 'mon..fri 8..17:*: 0.5'", "below the minimum of 1", "'unlimited'"]),
    ("sat: fast", ["window 1 'sat: fast'", "rate 'fast' must be a number of MB/s"]),
    ("mon..fri 8..25:*: 3", ["window 1", "'8..25:*' is minutes:seconds", "hours are 0..23"]),
    ("mon..fry 8..17:*: 3", ["window 1 'mon..fry 8..17:*: 3'", "invalid calendar event 'mon..fry 8..17:*' at 'fry"]),
    ("*/5 * * * *: 3", ["'*/5 * * * *' is a cron expression"]),
    ("sat: 5;; sun: 6", ["window 2 is empty"]),
    ("  ", ["rate windows are empty"]),
    ("sat: 5\nsun: 6", ["must be one line"]),
    (5, ["must be a text"]),
])
def test_bad_expressions_are_named_precisely(text, fragments):
    message = bandwidth.error(text)
    assert message is not None and all(fragment in message for fragment in fragments), message


def cluster():
    """Two nodes and guest 100 on node1, no job yet."""
    return C.ClusterConfig(generation=1, nodes={name: C.Node(name, "10.0.0.%s" % name[-1]) for name in ("node1", "node2")},
                           storages={"local-zfs": C.Storage("local-zfs")},
                           guests={100: C.Guest(100, "vm", "node1", ["local-zfs:vm-100-disk-0"])})


def test_windows_live_in_cluster_json_and_replication_cfg_keeps_pvesr_s_rate(tmp_path):
    cfg = cluster()
    cfg.add_job(C.Job("100-0", "node2", rate=50, rate_windows=OFFICE))
    C.save(cfg, str(tmp_path))
    stored = C.load(str(tmp_path))
    assert stored.jobs["100-0"].rate_windows == OFFICE and stored.jobs["100-0"].rate == 50
    assert stored.content()["replication.cfg"] == "local: 100-0\n\ttarget node2\n\trate 50\n\tsource node1\n\n"
    assert '"rate_windows": "%s"' % OFFICE in stored.content()["cluster.json"]


def test_bad_windows_name_the_job_and_change_nothing():
    cfg = cluster()
    cfg.add_job(C.Job("100-0", "node2", rate_windows="sat,sun: 50"))
    with pytest.raises(C.ConfigError, match=r"replication job '100-0': rate_windows: window 2 'sun 8\.\.18: 9': "
                                            r"'8\.\.18' alone is minutes"):
        cfg.update_job("100-0", rate_windows="sat: 50; sun 8..18: 9")
    assert cfg.jobs["100-0"].rate_windows == "sat,sun: 50"
    cfg.update_job("100-0", delete=["rate_windows"])
    assert cfg.jobs["100-0"].rate_windows is None


def test_a_transfer_s_limit_function_follows_the_windows_and_logs_each_change(monkeypatch):
    now = [utc(2026, 3, 2, 17, 59, 58)]
    monkeypatch.setattr(bandwidth, "time", types.SimpleNamespace(time=lambda: now[0]))
    lines = []
    job = C.Job("100-0", "node2", rate=100, rate_windows="mon..fri 8..17:* UTC: 10")
    limit = replicate.rate_bps(job, lines.append)
    assert limit() == 10_000_000 and lines == []
    now[0] += 2
    assert limit() == 100_000_000
    assert lines == ["the bandwidth limit changes to 100 MByte/s (outside every window: the job's rate of "
                     "'mon..fri 8..17:* UTC: 10')"]
    assert replicate.rate_bps(C.Job("100-0", "node2", rate=2.5)) == 2_500_000  # no windows: pvesr's number
    assert replicate.limit_now_text(job) == ("100 MByte/s (outside every window: the job's rate of 'mon..fri 8..17:* "
                                             "UTC: 10'); it follows the windows within a running transfer")


def test_evaluating_windows_is_cheap():
    """A transfer asks once a second and `status` once per job: a few microseconds each, not a search."""
    windows = OFFICE + "; 22..23,0..5:*: 30"
    start = time.perf_counter()
    for second in range(20000):
        bandwidth.in_effect(windows, 100, utc(2026, 3, 2) + 17 * second, VIENNA)
    assert time.perf_counter() - start < 2.0


def test_run_check_says_the_limit_a_transfer_would_start_with(monkeypatch):
    from ansible_collections.storage.replication.plugins.module_utils import plan  # pylint: disable=import-outside-toplevel
    monkeypatch.setattr(bandwidth, "time", types.SimpleNamespace(time=lambda: utc(2026, 3, 2, 9)))
    job = C.Job("100-0", "node2", rate=100, rate_windows="mon..fri 8..17:* UTC: 10")
    planned = {"volumes": [], **bandwidth.job_limit(job)}
    assert (planned["rate_now"], planned["rate_window"]) == (10, "mon..fri 8..17:* UTC")
    assert plan.volume_lines(planned) == ["rate limit now: 10 MByte/s (window 'mon..fri 8..17:* UTC' of "
                                          "'mon..fri 8..17:* UTC: 10')"]
    assert plan.volume_lines({"volumes": [], **bandwidth.job_limit(C.Job("100-0", "node2", rate=100))}) == []
