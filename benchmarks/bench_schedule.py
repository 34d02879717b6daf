# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark of schedules: parse 10,000 distinct calendar events and compute each one's next event.

A runner with thousands of jobs asks every minute which are due, so next_event must be cheap: the target is
under 50 µs per call on this machine.  Prints a table and writes build/bench/bench_schedule.json (the
contract of benchmarks/run_all.py); the headline figure, schedule_next_event_us, is measured in a zone with
DST (Europe/Vienna), the realistic case on a node.
"""

from __future__ import annotations

import itertools
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "build" / "collections"), str(ROOT)]

from ansible_collections.storage.replication.plugins.module_utils.schedule import parse  # noqa: E402  pylint: disable=wrong-import-position

COUNT = 10000
START = 1767225600 + 12345  # 2026-01-01, a little after midnight UTC
TARGET_US = 50.0
ROUNDS = 5


def distinct_schedules(count):
    """Deterministic, distinct calendar events covering the grammar: weekdays, dates, lists, ranges, repetitions."""
    weekdays = ["", "mon..fri ", "sat,sun ", "fri..mon ", "tue,thu ", "wed "]
    dates = ["", "*-*-1..7 ", "*-01,04,07,10-01 ", "*-*/2-15 ", "2026..2030-*-* "]
    times = ["*/%d" % r for r in (1, 2, 3, 5, 10, 15, 20, 30)]
    times += ["%d:%02d" % (h, m) for h in (0, 2, 8, 12, 22) for m in (0, 15, 30, 45)]
    times += ["%d..%d:0/%d" % (a, a + 8, r) for a in (0, 6, 12) for r in (5, 15, 30)]
    times += ["*:%d/%d" % (m, r) for m in (1, 7) for r in (10, 20)]
    combos = ["%s%s%s" % combo for combo in itertools.product(weekdays, dates, times)]
    extra = ("%s%d,%d:%02d:%02d" % (w, h, (h + 7) % 24, m, s)
             for w, h, m, s in itertools.product(("", "mon..fri "), range(24), range(60), (0, 20, 40, 50)))
    result = list(dict.fromkeys(itertools.chain(combos, extra)))[:count]
    if len(result) != count:
        raise SystemExit("only %d distinct schedules generated" % len(result))
    return result


def best_per_call(function, items):
    """Best of ROUNDS passes over items, in microseconds of this process's CPU time per item (the machine is
    shared: wall time would also count other processes)."""
    best = None
    for _round in range(ROUNDS):
        begin = time.process_time()
        for item in items:
            function(item)
        elapsed = time.process_time() - begin
        best = elapsed if best is None or elapsed < best else best
    return best / len(items) * 1e6


def main():
    texts = distinct_schedules(COUNT)
    begin = time.process_time()
    schedules = [parse(text) for text in texts]  # first pass: builds the shared field tables
    first_parse_us = (time.process_time() - begin) / COUNT * 1e6
    figures = {
        "schedule_parse_us": best_per_call(parse, texts),
        "schedule_parse_cold_us": first_parse_us,
        "schedule_next_event_us": best_per_call(lambda s: s.next_event(START, "Europe/Vienna"), schedules),
        "schedule_next_event_utc_us": best_per_call(lambda s: s.next_event(START, "UTC"), schedules),
    }
    crons = [parse("%d %d * * %d" % (m, h, d)) for m, h, d in itertools.product(range(0, 60, 6), range(24), range(7))][:1000]
    figures["schedule_cron_next_event_us"] = best_per_call(lambda s: s.next_event(START, "Europe/Vienna"), crons)
    baseline = best_per_call(lambda s: (START // 900 + 1) * 900, schedules)
    figures["schedule_next_event_baseline_ratio"] = figures["schedule_next_event_us"] / baseline

    rows = [
        ("parse, first time (builds field tables)", figures["schedule_parse_cold_us"], ""),
        ("parse, tables cached", figures["schedule_parse_us"], ""),
        ("next_event, Europe/Vienna", figures["schedule_next_event_us"], "target < %.0f" % TARGET_US),
        ("next_event, UTC", figures["schedule_next_event_utc_us"], ""),
        ("next_event, cron via croniter (1,000)", figures["schedule_cron_next_event_us"], "for comparison"),
        ("trivial baseline: (t // 900 + 1) * 900", baseline, "x%.0f for next_event" % figures["schedule_next_event_baseline_ratio"]),
    ]
    print("%d distinct calendar events, best of %d rounds, CPU time" % (COUNT, ROUNDS))
    print("%-44s %12s  %s" % ("operation", "µs per call", "note"))
    for name, value, note in rows:
        print("%-44s %12.2f  %s" % (name, value, note))
    out = ROOT / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_schedule.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0 if figures["schedule_next_event_us"] < TARGET_US else 1


if __name__ == "__main__":
    sys.exit(main())
