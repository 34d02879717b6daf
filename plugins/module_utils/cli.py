# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``storage-replication`` command: pvesr-compatible subcommands over the engine.

Adding a subcommand: write one function that takes the parsed arguments and returns an ``Output`` (the data
for ``--output-format json`` and the text for people), and register it with ``@subcommand``, naming a
function that adds its arguments.  ``main()`` adds ``--output-format`` to every subcommand, prints the
result, and turns a ``CliError`` into one line on stderr and an exit code (2: bad input, 1: the operation
failed); it never shows a traceback for those.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time

from ansible_collections.storage.replication.plugins.module_utils.schedule import (
    ScheduleError,
    interval_warnings,
    parse,
    time_zone,
)

PROG = "storage-replication"
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A failure to report to the user as one line; ``exit_code`` 1 means the operation failed."""

    exit_code = EXIT_FAILED


class UsageError(CliError):
    """Bad input (arguments, schedule, time zone): nothing was changed; exit code 2."""

    exit_code = EXIT_BAD_INPUT


class Output:
    """What a subcommand produced: ``data`` for JSON, ``text`` for people, ``warnings`` for stderr."""

    def __init__(self, data, text, warnings=()):
        self.data = data
        self.text = text
        self.warnings = list(warnings)


class _Subcommand:
    def __init__(self, name, summary, add_arguments, run):
        self.name = name
        self.summary = summary
        self.add_arguments = add_arguments
        self.run = run


SUBCOMMANDS = {}  # name -> _Subcommand, in registration order (the order of --help)


def subcommand(name, summary, add_arguments):
    """Register the decorated function ``run(args) -> Output`` as subcommand ``name``."""
    def register(run):
        if name in SUBCOMMANDS:
            raise ValueError("subcommand %s is registered twice" % name)
        SUBCOMMANDS[name] = _Subcommand(name, summary, add_arguments, run)
        return run
    return register


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing the usage and exiting."""

    def error(self, message):
        where = self.prog[len(PROG):].strip()
        raise UsageError("%s%s (see '%s --help')" % (where + ": " if where else "", message, self.prog))


def build_parser():
    parser = _ArgumentParser(prog=PROG, description="Replicate guests' ZFS volumes between nodes, like Proxmox VE's pvesr.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    commands.required = True
    for command in SUBCOMMANDS.values():
        sub = commands.add_parser(command.name, help=command.summary, description=command.summary)
        command.add_arguments(sub)
        sub.add_argument("--output-format", choices=("text", "json"), default="text", help="text for people (default) or JSON")
        sub.set_defaults(run=command.run)
    return parser


def main(argv=None):
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        output = args.run(args)
    except SystemExit as exc:  # --help and --version end argparse this way
        return exc.code if isinstance(exc.code, int) else 0
    except CliError as exc:
        print("%s: error: %s" % (PROG, exc), file=sys.stderr)
        return exc.exit_code
    for warning in output.warnings:
        print("%s: warning: %s" % (PROG, warning), file=sys.stderr)
    if args.output_format == "json":
        print(json.dumps(output.data, indent=2))
    elif output.text:
        print(output.text)
    return 0


# ---------------------------------------------------------------------------------------------------------
# Argument helpers shared by subcommands
# ---------------------------------------------------------------------------------------------------------

def bounded_int(low, high):
    """An argparse type: an integer in low..high, with a message that names the bounds."""
    def convert(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("'%s' is not a whole number" % text) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError("%d is out of range (%d..%d)" % (value, low, high))
        return value
    return convert


def epoch_seconds(text):
    """An argparse type: a UNIX timestamp in whole seconds."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("'%s' is not a UNIX timestamp in seconds, e.g. %d" % (text, int(time.time()))) from None


def render_table(headers, rows):
    """Left-aligned columns separated by two spaces, with a header line."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [headers] + rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# schedule-analyze
# ---------------------------------------------------------------------------------------------------------

def _schedule_analyze_arguments(parser):
    parser.add_argument("schedule", metavar="SCHEDULE", help="a pvesr calendar event (e.g. '*/15', 'mon..fri 22:00') or a cron expression")
    parser.add_argument("--start", type=epoch_seconds, metavar="EPOCH", help="UNIX timestamp to start from (default: now)")
    parser.add_argument("--iterations", type=bounded_int(1, 100), default=10, metavar="N", help="how many run times to show (1..100, default 10)")
    parser.add_argument("--timezone", metavar="TZ", help="IANA time zone to evaluate in (default: the node's local time zone)")


def _utc_text(epoch):
    """UTC time as Perl's scalar(gmtime), the 'utc' field of Proxmox's schedule-analyze."""
    return time.asctime(time.gmtime(epoch))


def _local_text(epoch, zone):
    return datetime.datetime.fromtimestamp(epoch, zone).strftime("%Y-%m-%d %H:%M:%S %Z")


@subcommand("schedule-analyze", "Show the next run times of a schedule.", _schedule_analyze_arguments)
def schedule_analyze(args):
    start = int(time.time()) if args.start is None else args.start
    try:
        schedule = parse(args.schedule)
        events = schedule.events(start, args.iterations, args.timezone)
        warnings = interval_warnings(schedule, now=start, tz=args.timezone)
        zone = time_zone(args.timezone)
    except ScheduleError as exc:
        raise UsageError(str(exc)) from None
    data = [{"timestamp": epoch, "utc": _utc_text(epoch)} for epoch in events]
    heading = "schedule '%s' (%s, normalized: %s)" % (schedule.text, schedule.kind, schedule.normalized)
    if not events:
        return Output(data, heading + "\nno run time after %s" % _utc_text(start), warnings)
    rows = [[str(epoch), _local_text(epoch, zone), _utc_text(epoch)] for epoch in events]
    return Output(data, heading + "\n" + render_table(["timestamp", "local time", "utc"], rows), warnings)


def _no_arguments(parser):
    del parser


@subcommand("serve", "The receiving side for peer nodes (the SSH forced command; reads SSH_ORIGINAL_COMMAND).",
            _no_arguments)
def serve(args):
    """Answers on stdout itself (one JSON line); a refused operation exits 1."""
    del args
    from ansible_collections.storage.replication.plugins.module_utils import receiver  # pylint: disable=import-outside-toplevel
    if receiver.main() != 0:
        sys.exit(EXIT_FAILED)
    return Output(None, "")


if __name__ == "__main__":
    sys.exit(main())
