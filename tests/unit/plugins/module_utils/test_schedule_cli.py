# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The storage-replication command, run as a real process: schedule-analyze, errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.storage.replication.plugins.module_utils import cli

MODULE = "ansible_collections.storage.replication.plugins.module_utils.cli"
START = 1700000000  # Tue 2023-11-14 22:13:20 UTC


def run(*args, tz="UTC"):
    env = dict(os.environ, TZ=tz)
    return subprocess.run([sys.executable, "-m", MODULE] + list(args), env=env, capture_output=True, text=True, check=False, timeout=60)


def test_schedule_analyze_json_matches_proxmox_shape():
    result = run("schedule-analyze", "*/15", "--start", str(START), "--iterations", "3", "--output-format", "json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout) == [
        {"timestamp": 1700000100, "utc": "Tue Nov 14 22:15:00 2023"},
        {"timestamp": 1700001000, "utc": "Tue Nov 14 22:30:00 2023"},
        {"timestamp": 1700001900, "utc": "Tue Nov 14 22:45:00 2023"},
    ]


def test_schedule_analyze_text_table_shows_local_and_utc_time():
    result = run("schedule-analyze", "mon..fri 8:00", "--start", str(START), "--iterations", "2", "--timezone", "Europe/Vienna")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "schedule 'mon..fri 8:00' (calendar, normalized: Mon..Fri *-*-* 08:00:00)",
        "timestamp   local time               utc",
        "1700031600  2023-11-15 08:00:00 CET  Wed Nov 15 07:00:00 2023",
        "1700118000  2023-11-16 08:00:00 CET  Thu Nov 16 07:00:00 2023",
    ]


def test_schedule_analyze_defaults_to_ten_runs_in_the_local_zone_from_now():
    result = run("schedule-analyze", "hourly", "--output-format", "json", tz="America/New_York")
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert len(runs) == 10
    assert [b["timestamp"] - a["timestamp"] for a, b in zip(runs, runs[1:])] == [3600] * 9
    assert runs[0]["timestamp"] % 3600 == 0  # New York is a whole number of hours from UTC


def test_schedule_analyze_evaluates_in_the_nodes_zone_without_timezone():
    result = run("schedule-analyze", "12:00", "--start", str(START), "--iterations", "1", "--output-format", "json", tz="Asia/Tokyo")
    assert json.loads(result.stdout) == [{"timestamp": 1700017200, "utc": "Wed Nov 15 03:00:00 2023"}]


def test_schedule_analyze_cron_expression():
    result = run("schedule-analyze", "0 3 * * 1", "--start", str(START), "--iterations", "1", "--output-format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"timestamp": 1700449200, "utc": "Mon Nov 20 03:00:00 2023"}]


def test_schedule_analyze_of_a_past_date_lists_nothing_and_warns():
    result = run("schedule-analyze", "2015-10-21", "--start", str(START))
    assert result.returncode == 0
    assert "no run time after Tue Nov 14 22:13:20 2023" in result.stdout
    assert result.stderr.strip() == ("storage-replication: warning: schedule '2015-10-21' never fires again: "
                                     "the job will not run until the schedule is changed")
    assert json.loads(run("schedule-analyze", "2015-10-21", "--start", str(START), "--output-format", "json").stdout) == []


def test_schedule_analyze_warns_about_sub_minute_schedules():
    result = run("schedule-analyze", "*:*:0/20", "--start", str(START), "--iterations", "1", "--output-format", "json")
    assert result.returncode == 0
    assert "fires more often than once a minute; replication runs at most once a minute" in result.stderr
    assert json.loads(result.stdout) == [{"timestamp": 1700000020, "utc": "Tue Nov 14 22:13:40 2023"}]


@pytest.mark.parametrize("args, message", [
    (["schedule-analyze", "mon-fri"], "invalid schedule 'mon-fri' at '-fri': unexpected text; weekday ranges are written with '..'"),
    (["schedule-analyze", "*/60"], "minute 60 is out of range (0..59)"),
    (["schedule-analyze", ""], "the schedule is empty"),
    (["schedule-analyze", "*/15", "--iterations", "0"], "argument --iterations: 0 is out of range (1..100)"),
    (["schedule-analyze", "*/15", "--iterations", "101"], "argument --iterations: 101 is out of range (1..100)"),
    (["schedule-analyze", "*/15", "--start", "yesterday"], "argument --start: 'yesterday' is not a UNIX timestamp"),
    (["schedule-analyze", "*/15", "--timezone", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
    (["schedule-analyze", "*/15", "--output-format", "yaml"], "argument --output-format: invalid choice: 'yaml'"),
    (["schedule-analyze"], "the following arguments are required: SCHEDULE"),
    (["no-such-command"], "argument COMMAND: invalid choice: 'no-such-command'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_input_is_one_line_on_stderr_with_exit_code_2(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("storage-replication: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_exits_0_and_lists_subcommands():
    result = run("--help")
    assert result.returncode == 0
    assert "schedule-analyze" in result.stdout
    sub = run("schedule-analyze", "--help")
    assert sub.returncode == 0
    assert "--output-format {text,json}" in sub.stdout and "--iterations N" in sub.stdout


def test_main_returns_exit_codes_in_process(capsys):
    assert cli.main(["schedule-analyze", "*/15", "--start", str(START), "--iterations", "1", "--timezone", "UTC"]) == 0
    assert "1700000100" in capsys.readouterr().out
    assert cli.main(["schedule-analyze", "bogus!"]) == cli.EXIT_BAD_INPUT


def test_subcommands_register_through_the_table(capsys, monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMANDS", dict(cli.SUBCOMMANDS))

    def add_arguments(parser):
        parser.add_argument("--fail", action="store_true")

    @cli.subcommand("echo-test", "Say hello.", add_arguments)
    def echo_test(args):
        if args.fail:
            raise cli.CliError("the operation failed")
        return cli.Output({"hello": "world"}, "hello world")

    assert echo_test is cli.SUBCOMMANDS["echo-test"].run
    assert cli.main(["echo-test", "--output-format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"hello": "world"}
    assert cli.main(["echo-test", "--fail"]) == cli.EXIT_FAILED
    assert capsys.readouterr().err == "storage-replication: error: the operation failed\n"
    with pytest.raises(ValueError, match="registered twice"):
        cli.subcommand("echo-test", "again", add_arguments)(echo_test)


@pytest.mark.parametrize("seconds, text", [(1.2081164530000024, "1.208116453"), (3.412771, "3.412771"), (2.0, "2"),
                                           (None, "-")])
def test_status_prints_a_duration_as_pvesr_does(seconds, text):
    assert cli._duration_text(seconds) == text  # pylint: disable=protected-access
