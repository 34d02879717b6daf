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
import os
import sys
import time

from ansible_collections.storage.replication.plugins.module_utils.files import LockError, atomic_write
from ansible_collections.storage.replication.plugins.module_utils.joblog import read_logs
from ansible_collections.storage.replication.plugins.module_utils.names import NODE_RE
from ansible_collections.storage.replication.plugins.module_utils.schedule import (
    DEFAULT_SCHEDULE as DEFAULT_SCHEDULE_TEXT,
    ScheduleError,
    interval_warnings,
    parse,
    setting_warnings,
    time_zone,
)

PROG = "storage-replication"
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A failure to report to the user as one line; ``exit_code`` 1 means the operation failed. ``data``, if any,
    is printed on stdout for ``--output-format json`` (so that scripts read the failure as they read the result)."""

    exit_code = EXIT_FAILED

    def __init__(self, message, data=None):
        super().__init__(message)
        self.data = data


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
        # A subcommand without a summary is internal: argparse lists only those added with a help text.
        listed = {"help": command.summary} if command.summary else {}
        sub = commands.add_parser(command.name, description=command.summary, **listed)
        command.add_arguments(sub)
        sub.add_argument("--output-format", choices=("text", "json"), default="text", help="text for people (default) or JSON")
        sub.set_defaults(run=command.run)
    return parser


def say(text, stream=None):
    """Write one line for the user (stdout unless told otherwise); the command's only way to print."""
    (stream or sys.stdout).write(text + "\n")


def main(argv=None):
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit code."""
    args = None
    try:
        args = build_parser().parse_args(argv)
        output = args.run(args)
    except SystemExit as exc:  # --help and --version end argparse this way
        return exc.code if isinstance(exc.code, int) else 0
    except CliError as exc:
        if exc.data is not None and getattr(args, "output_format", None) == "json":
            say(json.dumps(exc.data, indent=2))
        say("%s: error: %s" % (PROG, exc), sys.stderr)
        return exc.exit_code
    for warning in output.warnings:
        say("%s: warning: %s" % (PROG, warning), sys.stderr)
    if args.output_format == "json":
        say(json.dumps(output.data, indent=2))
    elif output.text:
        say(output.text)
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


def _serve_arguments(parser):
    parser.add_argument("--peer", type=node_name, metavar="NODE",
                        help="the node whose key runs this command (authorized_keys binds each peer's key to its name)")
    _flag(parser, "--read-only", "only the operations that read (node-status): the forced command of a node's web "
          "service key")


@subcommand("serve", "The receiving side for peer nodes (the SSH forced command; reads SSH_ORIGINAL_COMMAND).",
            _serve_arguments)
def serve(args):
    """Answers on stdout itself (one JSON line); a refused operation exits 1."""
    from ansible_collections.storage.replication.plugins.module_utils import serve as serving  # pylint: disable=import-outside-toplevel
    operations = None
    if args.read_only:
        from ansible_collections.storage.replication.plugins.module_utils import nodeview  # pylint: disable=import-outside-toplevel
        operations = nodeview.OPERATIONS
    if serving.main(peer=args.peer, operations=operations) != 0:
        raise SystemExit(EXIT_FAILED)
    return Output(None, "")


def _module_call_arguments(parser):
    parser.add_argument("module", metavar="MODULE", help="the storage.replication module whose work to do")


@subcommand("module-call", None, _module_call_arguments)
def module_call(args):
    """The runner's side of an Ansible module (module_utils/_runner_call.py, _module.py): the module's JSON request on
    stdin, one JSON reply on stdout. Whatever the engine or a hook it starts writes goes to stderr meanwhile, so
    that nothing but the reply reaches stdout."""
    from ansible_collections.storage.replication.plugins.module_utils import _module  # pylint: disable=import-outside-toplevel
    text = sys.stdin.read()
    sys.stdout.flush()
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        reply = _module.serve_call(args.module, text)
    finally:
        sys.stdout.flush()
        os.dup2(reply_fd, 1)
        os.close(reply_fd)
    say(json.dumps(reply, sort_keys=True))
    return Output(None, "")


# ---------------------------------------------------------------------------------------------------------
# web, web-password: the read-only web views (web.py), imported only here
# ---------------------------------------------------------------------------------------------------------

def _web_arguments(parser):
    parser.add_argument("--listen", default="127.0.0.1:8099", metavar="HOST:PORT",
                        help="address and port (default 127.0.0.1:8099); any but a loopback address needs TLS and "
                             "authentication")
    parser.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain) for HTTPS")
    parser.add_argument("--tls-key", metavar="FILE", help="its PEM private key")
    parser.add_argument("--token-file", metavar="FILE", help="a file with the bearer token (one word, >= 16 characters); "
                        "browsers give it as the password of any user name")
    parser.add_argument("--password-file", metavar="FILE", help="'user:hash' lines, bcrypt (htpasswd -B) or scrypt "
                        "(storage-replication web-password USER)")
    parser.add_argument("--key", metavar="FILE", default="/etc/storage-replication/web/id_ed25519",
                        help="the SSH key the service asks the nodes with (bound to read-only access on every node)")
    parser.add_argument("--cluster-file", metavar="FILE",
                        help="the cluster configuration's cluster.json, where the nodes are found at start "
                             "(default: the one in the configuration directory)")
    parser.add_argument("--local-node-file", metavar="FILE",
                        help="the file naming this node (default: local-node in the state directory)")
    parser.add_argument("--refresh", type=bounded_int(2, 3600), default=5, metavar="SECONDS",
                        help="how often the pages refresh themselves (default 5)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="a host name besides localhost that requests to a loopback address may name (repeatable)")
    _flag(parser, "--check-config", "check the options and the files they name, say how it would serve, and exit")


def _web_engine():
    from ansible_collections.storage.replication.plugins.module_utils import web  # pylint: disable=import-outside-toplevel
    return web


@subcommand("web", "Serve the read-only replication pages (cluster, node, guest, job) and their JSON.", _web_arguments)
def web(args):
    webmod = _web_engine()
    paths = _paths()
    try:
        summary = webmod.serve(
            args.listen, key=args.key, cluster_file=args.cluster_file or os.path.join(paths.confdir, "cluster.json"),
            local_node_file=args.local_node_file or os.path.join(paths.statedir, "local-node"), tls_cert=args.tls_cert,
            tls_key=args.tls_key, token_file=args.token_file, password_file=args.password_file, refresh=args.refresh,
            allowed_hosts=args.allow_host, check_only=args.check_config)
    except webmod.WebError as exc:
        raise UsageError(str(exc)) from None
    return Output({"listen": args.listen, "summary": summary}, summary if args.check_config else "")


def _web_password_arguments(parser):
    parser.add_argument("user", metavar="USER", help="the user name (letters, digits and ._@-)")


@subcommand("web-password", "Print a password file line (user:scrypt hash) for the web service; the password is read "
            "from stdin (asked twice on a terminal).", _web_password_arguments)
def web_password(args):
    import getpass  # pylint: disable=import-outside-toplevel
    webmod = _web_engine()
    if not webmod.USER_RE.match(args.user):
        raise UsageError("user name %r: letters, digits and ._@- only, at most 64" % args.user[:80])
    if sys.stdin.isatty():
        password = getpass.getpass("password for %s: " % args.user)
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ; nothing was printed")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        raise UsageError("the password must have at least 8 characters")
    line = "%s:%s" % (args.user, webmod.hash_password(password))
    return Output({"user": args.user, "line": line}, line)


# ---------------------------------------------------------------------------------------------------------
# pvesr's job commands: the cluster-wide changes (cluster.change_cluster), reading, status, the runner
# ---------------------------------------------------------------------------------------------------------

TRUE_WORDS = ("1", "yes", "true", "on")
FALSE_WORDS = ("0", "no", "false", "off")
REMOVAL_NOTE = "Replication job removal is a background task and will take some time."


def boolean(text):
    """An argparse type: pvesr's boolean values (1/0, yes/no, true/false, on/off)."""
    if text.lower() in TRUE_WORDS:
        return True
    if text.lower() in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError("'%s' is not a boolean; use 1 or 0" % text)


def _flag(parser, name, help_text):
    """``--name`` alone means 1; pvesr's ``--name 1``/``--name 0`` work too."""
    parser.add_argument(name, nargs="?", const=True, default=False, type=boolean, metavar="0|1", help=help_text)


def node_name(text):
    """An argparse type: a node name (names.NODE_RE)."""
    if not NODE_RE.match(text):
        raise argparse.ArgumentTypeError("'%s' is not a valid node name" % text[:80])
    return text


def job_id(text):
    """An argparse type: a replication job ID in pvesr's canonical form."""
    from ansible_collections.storage.replication.plugins.module_utils.config import job_id_error  # pylint: disable=import-outside-toplevel
    error = job_id_error(text)
    if error:
        raise argparse.ArgumentTypeError(error)
    return text


def rate(text):
    """An argparse type: a rate limit in MB/s (a number >= 1)."""
    from ansible_collections.storage.replication.plugins.module_utils.config import rate_error  # pylint: disable=import-outside-toplevel
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("rate '%s' must be a number of MB/s, e.g. 10 or 2.5" % text) from None
    error = rate_error(value)
    if error:
        raise argparse.ArgumentTypeError(error)
    return int(value) if value.is_integer() else value


def keep_rules(text):
    """An argparse type: a keep rule set (retention.py)."""
    from ansible_collections.storage.replication.plugins.module_utils import retention  # pylint: disable=import-outside-toplevel
    error = retention.error(text)
    if error:
        raise argparse.ArgumentTypeError(error)
    return text


def _engine():
    """The engine modules, imported when a job command runs (schedule-analyze and serve stay light)."""
    from ansible_collections.storage.replication.plugins.module_utils import cluster, config, runner, state  # pylint: disable=import-outside-toplevel
    return cluster, config, runner, state


def _node_settings():
    """settings.py (the node's directories and runner.json), imported when a command needs them."""
    from ansible_collections.storage.replication.plugins.module_utils import settings  # pylint: disable=import-outside-toplevel
    return settings


def _one_line(exc):
    problems = getattr(exc, "problems", None) or str(exc).split("\n")
    return "; ".join(p for p in problems if p)


def _paths():
    return _node_settings().Paths.from_environment()


def _load_config(data=None):
    """This node's configuration; CliError (with ``data`` and the error for JSON) if it cannot be read."""
    _cluster, config, _runner, _state = _engine()
    try:
        return config.load(_paths().confdir)
    except config.ConfigError as exc:
        raise CliError(_one_line(exc), None if data is None else dict(data, error=_one_line(exc))) from None


def _existing_job(cfg, wanted):
    if wanted not in cfg.jobs:
        raise UsageError("no such job '%s' - 'storage-replication list' shows the jobs" % wanted)
    return cfg.jobs[wanted]


def _apply(args, change, done, warnings=()):
    """Run a cluster-wide change; ``done(outcome)`` is the text for people. ConfigError is bad input (exit 2)."""
    cluster, config, _runner, _state = _engine()
    paths = _paths()
    try:
        outcome = cluster.change_cluster(change, paths.confdir, paths.statedir, force=args.allow_unreachable)
    except config.ConfigCorrupt as exc:  # this node's own configuration, not the input: nothing was changed anywhere
        raise CliError(_one_line(exc)) from None
    except config.ConfigError as exc:
        raise UsageError(_one_line(exc)) from None
    except (cluster.ClusterError, LockError) as exc:
        raise CliError(_one_line(exc)) from None
    data = dict(outcome.as_dict(), job=args.id)
    if not outcome.changed:
        return Output(data, "replication job '%s': nothing to change" % args.id, warnings)
    reached = sorted(name for name, (status, _detail) in outcome.nodes.items() if status in (cluster.WRITTEN, cluster.UNCHANGED))
    text = "%s; cluster configuration generation %d is on %s" % (done, outcome.generation, ", ".join(reached) or "this node")
    return Output(data, text, list(warnings) + outcome.warnings)


UNREACHABLE_HELP = "change the nodes that can be reached even if some cannot (they adopt the change when they are back)"


def _force_argument(parser):
    parser.add_argument("--allow-unreachable", "--force", dest="allow_unreachable", nargs="?", const=True, default=False,
                        type=boolean, metavar="0|1", help=UNREACHABLE_HELP + "; --force is the same")


def _job_option_arguments(parser):
    parser.add_argument("--schedule", metavar="SCHEDULE", help="when to replicate (pvesr calendar event, default '*/15')")
    parser.add_argument("--rate", type=rate, metavar="MBPS", help="rate limit in MB/s (default: unlimited); with "
                        "--rate-windows the limit outside every window")
    parser.add_argument("--rate-windows", dest="rate_windows", metavar="WINDOWS",
                        help="limits by calendar windows, the first matching wins, e.g. 'mon..fri 8..17:*: 10; "
                        "sat,sun: 50; *-12-24..26: unlimited' (README: Bandwidth windows)")
    parser.add_argument("--comment", metavar="TEXT", help="a description")
    parser.add_argument("--disable", nargs="?", const=True, default=None, type=boolean, metavar="0|1", help="disable the job")
    parser.add_argument("--keep", type=keep_rules, metavar="RULES", help="restore points kept on the target, e.g. "
                        "'last=4,hourly=24,daily=7,weekly=4,monthly=6' (default: the newest replica only, as pvesr)")
    parser.add_argument("--keep-source", dest="keep_source", type=keep_rules, metavar="RULES",
                        help="restore points kept on the source too, same form (default: the newest only)")


def _create_arguments(parser):
    parser.add_argument("id", type=job_id, metavar="ID", help="the job ID, <guest>-<jobnum>, e.g. 100-0")
    parser.add_argument("target", metavar="TARGET", help="the node to replicate to")
    _job_option_arguments(parser)
    _force_argument(parser)


@subcommand("create-local-job", "Create a replication job on every node.", _create_arguments)
def create_local_job(args):
    config = _engine()[1]
    job = config.Job(id=args.id, target=args.target, schedule=args.schedule, rate=args.rate, comment=args.comment,
                     disable=bool(args.disable), keep=args.keep, keep_source=args.keep_source,
                     rate_windows=args.rate_windows)
    return _apply(args, lambda cfg: cfg.add_job(job), "replication job '%s' to '%s' created" % (args.id, args.target),
                  setting_warnings(args.schedule))


def _update_arguments(parser):
    parser.add_argument("id", type=job_id, metavar="ID", help="the job ID")
    _job_option_arguments(parser)
    parser.add_argument("--delete", metavar="LIST", help="options to reset to their default, e.g. 'rate,comment,keep'")
    _force_argument(parser)


@subcommand("update", "Change options of a replication job on every node.", _update_arguments)
def update(args):
    changes = {key: getattr(args, key) for key in ("schedule", "rate", "comment", "disable", "keep", "keep_source",
                                                   "rate_windows") if getattr(args, key) is not None}
    delete = [key.strip() for key in (args.delete or "").replace(";", ",").split(",") if key.strip()]
    both = sorted(set(changes) & set(delete))
    if both:
        raise UsageError("option '%s' is both set and deleted; do one or the other" % both[0])
    if not changes and not delete:
        raise UsageError("update: nothing to change; give --schedule, --rate, --rate-windows, --comment, --disable, "
                         "--keep, --keep-source or --delete")
    return _apply(args, lambda cfg: cfg.update_job(args.id, delete=delete, **changes),
                  "replication job '%s' updated" % args.id, setting_warnings(changes.get("schedule")))


def _id_and_force_arguments(parser):
    parser.add_argument("id", type=job_id, metavar="ID", help="the job ID")
    _force_argument(parser)


@subcommand("enable", "Enable a replication job on every node.", _id_and_force_arguments)
def enable(args):
    return _apply(args, lambda cfg: cfg.update_job(args.id, disable=False), "replication job '%s' enabled" % args.id)


@subcommand("disable", "Disable a replication job on every node.", _id_and_force_arguments)
def disable(args):
    return _apply(args, lambda cfg: cfg.update_job(args.id, disable=True), "replication job '%s' disabled" % args.id)


def _delete_arguments(parser):
    parser.add_argument("id", type=job_id, metavar="ID", help="the job ID")
    _flag(parser, "--keep", "keep the replicated data on the target (remove the job's snapshots on this side only)")
    # pvesr's --force, with pvesr's meaning. It also goes ahead when nodes are unreachable: whoever drops a job
    # without cleanup is usually getting rid of a dead target. Marking for removal with an unrelated node down
    # needs only --allow-unreachable, and keeps the cleanup.
    _flag(parser, "--force", "remove the job from the configuration of every node now, WITHOUT any cleanup (the job's "
          "snapshots and the replicas stay), even if some nodes are unreachable")
    _flag(parser, "--allow-unreachable", "mark the job for removal although some nodes are unreachable (they adopt the "
          "change when they are back); the cleanup still happens")


@subcommand("delete", "Mark a replication job for removal (the runner cleans up), or remove it at once with --force "
            "(no cleanup).", _delete_arguments)
def delete(args):
    if args.keep and args.force:
        raise UsageError("parameter '--keep' conflicts with parameter '--force': --force removes the job at once without "
                         "any cleanup, so there is nothing to keep")
    if args.force:
        args.allow_unreachable = True
        return _apply(args, lambda cfg: cfg.remove_job(args.id, missing_ok=True),
                      "replication job '%s' removed (no cleanup of snapshots or replicas)" % args.id)
    output = _apply(args, lambda cfg: cfg.mark_job_for_removal(args.id, "local" if args.keep else "full"),
                    "replication job '%s' marked for removal" % args.id)
    output.text += "\n" + REMOVAL_NOTE
    return output


def _job_dict(job):
    data = {"id": job.id, "guest": job.guest, "jobnum": job.jobnum, "type": job.type, "target": job.target}
    for key in ("schedule", "rate", "comment", "remove_job", "source", "keep", "keep_source", "rate_windows"):
        if getattr(job, key) is not None:
            data[key] = getattr(job, key)
    if job.disable:
        data["disable"] = 1
    return data


def _sorted_jobs(jobs):
    return sorted(jobs, key=lambda j: (j.guest, j.jobnum))


@subcommand("list", "List the replication jobs of the cluster.", _no_arguments)
def list_jobs(args):
    del args
    config = _engine()[1]
    jobs = _sorted_jobs(_load_config().jobs.values())
    lines = ["%-20s %-20s %10s %5s %8s" % ("JobID", "Target", "Schedule", "Rate", "Enabled")]
    for job in jobs:
        lines.append("%-20s %-20s %10s %5s %8s" % (job.id, job.target_id, job.schedule or DEFAULT_SCHEDULE_TEXT,
                                                   config.format_number(job.rate) if job.rate else "-",
                                                   "no" if job.disable else "yes"))
    return Output([_job_dict(job) for job in jobs], "\n".join(lines))


def _id_argument(parser):
    parser.add_argument("id", type=job_id, metavar="ID", help="the job ID")


@subcommand("read", "Show the configuration of one replication job (JSON, as pvesr).", _id_argument)
def read(args):
    import hashlib  # pylint: disable=import-outside-toplevel
    config = _engine()[1]
    cfg = _load_config()
    data = _job_dict(_existing_job(cfg, args.id))
    data["digest"] = hashlib.sha1(config.format_replication_cfg(cfg.jobs.values()).encode("utf-8")).hexdigest()
    return Output(data, json.dumps(data, indent=4, sort_keys=True))


def _status_arguments(parser):
    parser.add_argument("--guest", type=bounded_int(100, 999999999), metavar="ID", help="only the jobs of this guest")


def _status_time(epoch):
    return time.strftime("%Y-%m-%d_%H:%M:%S", time.localtime(epoch)) if epoch else "-"


def _next_sync_text(epoch, now):
    if epoch is None or epoch == 0:
        return "-"
    return "pending" if epoch <= now else _status_time(epoch)


@subcommand("status", "Show the state of the replication jobs this node runs.", _status_arguments)
def status(args):
    from ansible_collections.storage.replication.plugins.module_utils.bandwidth import rate_now_text  # pylint: disable=import-outside-toplevel
    from ansible_collections.storage.replication.plugins.module_utils.report import job_report  # pylint: disable=import-outside-toplevel
    _cluster, _config, runner, state = _engine()
    paths = _paths()
    now = int(time.time())
    node = state.read_local_node(paths.statedir)
    readable = {"node": node, "config_readable": False, "state_readable": False}
    cfg = _load_config(readable)
    readable["config_readable"] = True
    try:
        report = job_report(cfg, state.StateFile(paths.statedir).read(), node, now)
    except state.StateError as exc:
        raise CliError(str(exc), dict(readable, error=str(exc))) from None
    report = [job for job in report if args.guest is None or job["guest"] == args.guest]
    form = "%-10s %-10s %-20s %20s %20s %10s %10s %s"
    lines = [form % ("JobID", "Enabled", "Target", "LastSync", "NextSync", "Duration", "FailCount", "State")]
    for job in report:
        lines.append(form % (job["id"], "Yes" if job["enabled"] else "No", "local/" + job["target"], _status_time(job["last_sync"]),
                             _next_sync_text(job["next_sync"], now), _duration_text(job["duration"]),
                             job["fail_count"], job["state"].replace("\n", " ")))
    # pvesr's columns stay as they are; the limit now of a job whose rate windows vary it goes below the table.
    lines += ["%s: rate limit now %s" % (job["id"], rate_now_text(job)) for job in report if job["rate_windows"]]
    # A configuration conflict or a failed catch-up stops every job of this node: say so above the table.
    refusal = runner.last_peer_check(paths.statedir).get("error")
    return Output(report, "\n".join(lines), [refusal] if refusal else [])


def _from_the_peers(what, nothing):
    """Run cluster.<what>(confdir, statedir) and say what it did (``nothing`` when it found nothing to do)."""
    cluster, config, _runner, _state = _engine()
    paths = _paths()
    try:
        restored = getattr(cluster, what)(paths.confdir, paths.statedir)
    except (cluster.ClusterError, config.ConfigError) as exc:
        raise CliError(_one_line(exc)) from None
    if restored is None:
        return Output({"restored": False}, nothing)
    return Output({"restored": True, "generation": restored.generation, "source": restored.source, "kept": restored.kept},
                  restored.message)


def _duration_text(seconds):
    """As pvesr prints a float (Perl's 15 significant digits): 1.208116453, not Python's 1.2081164530000024."""
    return "-" if seconds is None else "%.15g" % seconds


@subcommand("restore-config", "Restore this node's damaged cluster configuration from a majority of its peers.",
            _no_arguments)
def restore_config(args):
    del args
    return _from_the_peers("restore_config", "the cluster configuration of this node is readable: nothing to restore")


@subcommand("resolve-conflict", "Take the cluster configuration a majority holds when this node holds another under "
            "the same generation (after a change forced without quorum); this node's own is kept aside.", _no_arguments)
def resolve_conflict(args):
    del args
    return _from_the_peers("resolve_conflict", "no configuration conflict: the nodes that answer hold this node's "
                           "version or newer ones")


@subcommand("schedule-now", "Make a job due at the next run of the runner.", _id_argument)
def schedule_now(args):
    _cluster, _config, _runner, state = _engine()
    paths = _paths()
    cfg = _load_config()
    job = _existing_job(cfg, args.id)
    node = state.read_local_node(paths.statedir)
    owner = cfg.guests[job.guest].node if job.guest in cfg.guests else None
    if owner != node:
        raise UsageError("job '%s' runs on node '%s' (the owner of guest %d), not on '%s': run schedule-now there"
                         % (args.id, owner, job.guest, node))
    state_file = state.StateFile(paths.statedir)
    try:
        if job.target_id in state_file.read().get(str(job.guest), {}):
            state_file.schedule_now(job)  # pvesr: only an existing entry; a job that never ran is due anyway
    except state.StateError as exc:
        raise CliError(str(exc)) from None
    return Output({"job": args.id, "due": "next run"}, "replication job '%s' is due at the next run" % args.id)


def _run_arguments(parser):
    parser.add_argument("--id", type=job_id, metavar="ID", help="run only this job, now, whatever its schedule")
    _flag(parser, "--verbose", "print the job log while it runs")
    _flag(parser, "--mail", "send failure and recovery notifications (the timer's runs do)")
    _flag(parser, "--check", "say what the run would send (per volume full or incremental, from which snapshot, about "
          "how many bytes), changing nothing on any node")


def _run_text(result):
    lines = []
    for job in result["jobs"]:
        if job.get("skipped"):
            lines.append("%s: skipped - %s" % (job["job"], job["error"]))
        elif job["ok"]:
            lines.append("%s: OK (%d bytes in %.1f s)" % (job["job"], job.get("bytes") or 0, job.get("seconds") or 0))
        else:
            lines.append("%s: failed - %s" % (job["job"], (job["error"] or "").split("\n")[0]))
    return "\n".join(lines)


def _check_text(result):
    """run --check for people: per job what it would send, volume by volume, and what it would delete."""
    from ansible_collections.storage.replication.plugins.module_utils import plan  # pylint: disable=import-outside-toplevel
    lines = []
    for job in result["jobs"]:
        lines.append("%s: %s" % (job["job"], plan.summary(job)))
        lines += ["  " + line for line in plan.volume_lines(job) + job["log"]]
    if not result["jobs"]:
        upcoming = result.get("next")
        lines.append("nothing is due now" + ("; next: %s at %s" % (upcoming["job"], _status_time(upcoming["at"]))
                                             if upcoming else ""))
    return "\n".join(lines)


@subcommand("run", "Run the due replication jobs of this node (what the timer starts every minute).", _run_arguments)
def run(args):
    _cluster, config, runner, state = _engine()
    if args.id and args.mail:
        raise UsageError("Mail and id are mutually exclusive! (--mail is for the scheduled runs; --id runs one job now)")
    if args.check and args.mail:
        raise UsageError("--check sends nothing, no notification either: leave out --mail")
    paths = _paths()
    try:
        settings = _node_settings().load_settings(paths.settings_file)
        if args.check:
            result = runner.Runner(paths, settings).check(args.id)
            return Output(result, _check_text(result), result["warnings"])
        result = runner.run(paths, settings, job_id=args.id, notify=args.mail, echo=print if args.verbose else None)
    except runner.RunnerBusy as exc:
        if args.id:
            raise CliError(str(exc)) from None
        return Output({"busy": str(exc), "jobs": []}, "", [str(exc)])
    except (runner.RunnerRefused, state.StateError) as exc:
        raise CliError(str(exc)) from None
    except config.ConfigError as exc:
        raise CliError(_one_line(exc)) from None
    failed = [job for job in result["jobs"] if not job["ok"] and not job.get("skipped")]
    refused = (result.get("peer_check") or {}).get("error")
    if (args.id and failed) or refused:
        for warning in result["warnings"]:
            say("%s: warning: %s" % (PROG, warning), sys.stderr)
        raise CliError(refused or "job '%s' failed: %s" % (args.id, _one_line(failed[0]["error"])))
    return Output(result, _run_text(result), result["warnings"])


def _prepare_arguments(parser):
    parser.add_argument("id", type=job_id, metavar="ID", help="the job ID")
    parser.add_argument("volumes", nargs="*", metavar="VOLID", help="the volumes the job replicates")
    parser.add_argument("--scan", metavar="STORAGES", default="", help="more storage IDs to scan for stale volumes (comma-separated)")
    _flag(parser, "--force", "allow an empty volume list (job removal)")
    parser.add_argument("--last_sync", "--last-sync", type=bounded_int(0, 2 ** 62), default=0, metavar="EPOCH",
                        help="the job's last sync time; 0 keeps all snapshots, 1 removes all of the job's")
    parser.add_argument("--parent_snapname", "--parent-snapname", metavar="NAME", help="a snapshot to keep")


def _receiver_call(operation, cfg, request):
    """Run receiver operation ``operation`` (prepare, finalize) on this node, as a peer would over SSH."""
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.storage.replication.plugins.module_utils import protocol, receiver, serve as serving, zfs
    config = _engine()[1]
    paths = _paths()
    # root on this node speaks for the guest's owner here (pvesr's internal commands); the receiver's rules still apply
    local = receiver.Receiver(paths.confdir, paths.statedir, peer=request["source"])
    try:
        reply = serving.CONTROL_OPERATIONS[operation](local, dict(request, generation=cfg.generation))
    except protocol.Refused as exc:
        raise CliError(str(exc)) from None
    except (zfs.ZfsError, config.ConfigError, OSError) as exc:
        raise CliError(_one_line(exc)) from None
    finally:
        for line in local.log:
            say(line, sys.stderr)
    return reply


@subcommand("prepare-local-job", "Internal (target side): remove stale replication snapshots and volumes; print what remains.",
            _prepare_arguments)
def prepare_local_job(args):
    cfg = _load_config()
    request = {"job": args.id, "guest": int(args.id.split("-")[0]), "volumes": args.volumes,
               "scan": [s for s in args.scan.split(",") if s], "last_sync": args.last_sync, "force": bool(args.force),
               "source": _owner_or_self(cfg, args.id)}
    if args.parent_snapname:
        request["parent_snapname"] = args.parent_snapname
    reply = _receiver_call("prepare", cfg, request)
    return Output(reply["volumes"], json.dumps(reply["volumes"], sort_keys=True))


def _owner_or_self(cfg, wanted):
    guest = cfg.guests.get(int(wanted.split("-")[0]))
    if guest is not None:
        return guest.node
    return _engine()[3].read_local_node(_paths().statedir)


def _finalize_arguments(parser):
    parser.add_argument("id", type=job_id, metavar="ID", help="the job ID")
    parser.add_argument("volumes", nargs="*", metavar="VOLID", help="the volumes the job replicated")
    parser.add_argument("--last_sync", "--last-sync", type=bounded_int(0, 2 ** 62), default=0, metavar="EPOCH",
                        help="the sync to keep; the job's other replication snapshots are removed")


@subcommand("finalize-local-job", "Internal (target side): keep only the job's newest replication snapshot.", _finalize_arguments)
def finalize_local_job(args):
    import dataclasses  # pylint: disable=import-outside-toplevel
    if not args.volumes:
        raise UsageError("no volumes specified")
    cfg = _load_config()
    guest = cfg.guests.get(int(args.id.split("-")[0]))
    if guest is None:
        raise UsageError("no such guest '%s'" % args.id.split("-")[0])
    if args.last_sync < 2:
        return Output({}, "")  # pvesr: last_sync 0 removes nothing (a stolen guest keeps its snapshots)
    request = {"job": args.id, "guest": guest.id, "volumes": args.volumes, "last_sync": args.last_sync,
               "guest_definition": dataclasses.asdict(guest), "source": guest.node}
    _receiver_call("finalize", cfg, request)
    return Output({}, "")


def _set_state_arguments(parser):
    parser.add_argument("vmid", type=bounded_int(100, 999999999), metavar="VMID", help="the guest ID")
    parser.add_argument("state", metavar="STATE", help="the guest's job states as JSON: {\"local/<target>\": {...}}")


@subcommand("set-state", "Internal (migration): replace the job state of a guest on this node.", _set_state_arguments)
def set_state(args):
    state = _engine()[3]
    try:
        states = json.loads(args.state)
    except ValueError as exc:
        raise UsageError("set-state: STATE is not valid JSON (%s)" % exc) from None
    if not isinstance(states, dict) or not all(isinstance(k, str) and k.startswith("local/") and isinstance(v, dict)
                                               for k, v in states.items()):
        raise UsageError("set-state: STATE must be a JSON object {\"local/<target>\": {<job state>}, ...}")
    try:
        state.StateFile(_paths().statedir).set_guest_states(args.vmid, states)
    except state.StateError as exc:
        raise CliError(str(exc)) from None
    return Output({"guest": args.vmid, "targets": sorted(states)}, "")


def _log_arguments(parser):
    parser.add_argument("id", type=job_id, metavar="ID", help="the job ID")
    parser.add_argument("--runs", type=bounded_int(1, 1000), default=1, metavar="N", help="how many of the last runs (default 1)")


@subcommand("log", "Show the log of a job's last run(s), oldest first.", _log_arguments)
def log(args):
    runs = read_logs(_paths().logdir, args.id, args.runs)
    if not runs and args.id not in _load_config().jobs:
        raise UsageError("no such job '%s' and no logs of it - 'storage-replication list' shows the jobs" % args.id)
    data = [{"run": -age, "lines": lines} for age, lines in runs]
    if not runs:
        return Output(data, "no content (job '%s' has not run on this node yet)" % args.id)
    if len(runs) == 1:
        return Output(data, "\n".join(runs[0][1]))
    text = "\n".join("--- run %d (%s)\n%s" % (-age, "latest" if age == 0 else "%d before the latest" % age, "\n".join(lines))
                     for age, lines in runs)
    return Output(data, text)


# ---------------------------------------------------------------------------------------------------------
# restore-points: a guest's restore points on every node (rollback.py)
# ---------------------------------------------------------------------------------------------------------

def _guest_argument(parser):
    parser.add_argument("guest", type=bounded_int(100, 999999999), metavar="GUEST", help="the guest ID")


def size_text(count):
    """Bytes for people: 1023 B, 1.5 KiB, 20.0 MiB, ..."""
    value, unit = float(count or 0), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return "%d B" % value if unit == "B" else "%.1f %s" % (value, unit)


@subcommand("restore-points", "Show a guest's restore points on every node: per volume the time, job, snapshot and "
            "the space each holds.", _guest_argument)
def restore_points(args):
    from ansible_collections.storage.replication.plugins.module_utils import rollback  # pylint: disable=import-outside-toplevel
    paths = _paths()
    cfg = _load_config()
    try:
        survey = rollback.survey_points(cfg, args.guest, paths.confdir, paths.statedir)
    except rollback.RollbackError as exc:
        raise UsageError(str(exc)) from None
    rows = []
    for node, view in survey.items():
        for point in view["points"]:
            for volume, space in sorted(point["volumes"].items()):
                rows.append([node + (" (owner)" if view["owner"] else ""), volume, point["time_text"], point["job"],
                             point["snapshot"], size_text(space["used"]), size_text(space["referenced"]),
                             "" if point["complete"] else "incomplete"])
    data = {"guest": args.guest, "owner": cfg.guests[args.guest].node, "nodes": survey}
    warnings = ["node %s did not answer: %s" % (node, view["error"]) for node, view in survey.items() if view["error"]]
    if not rows:
        return Output(data, "guest %d has no restore point on the nodes that answered" % args.guest, warnings)
    return Output(data, render_table(["NODE", "VOLUME", "TIME", "JOB", "SNAPSHOT", "HELD", "DATA", ""], rows), warnings)


# ---------------------------------------------------------------------------------------------------------
# fence, fence-status: self-fencing (fence.py)
# ---------------------------------------------------------------------------------------------------------

def _fence_arguments(parser):
    parser.add_argument("--interval", type=bounded_int(1, 3600), metavar="SECONDS",
                        help="seconds between ticks (default: fence_interval of runner.json, else 5)")
    parser.add_argument("--fence-after", type=bounded_int(1, 86400), metavar="SECONDS",
                        help="seconds without quorum before this node stops its guests (default: fence_after of "
                             "runner.json, else 60)")
    _flag(parser, "--once", "one tick, then exit (tests, by hand)")


def _fence_engine():
    from ansible_collections.storage.replication.plugins.module_utils import fence  # pylint: disable=import-outside-toplevel
    return fence


@subcommand("fence", "Watch this node's quorum and stop its guests when it has been cut off for fence_after seconds "
            "(the storage-replication-fence service).", _fence_arguments)
def fence(args):
    fencemod = _fence_engine()
    _cluster, config, runner, state = _engine()
    paths = _paths()
    try:
        settings = _node_settings().load_settings(paths.settings_file)
    except config.ConfigError as exc:
        raise CliError(_one_line(exc)) from None
    interval = args.interval or settings["fence_interval"]
    node = state.read_local_node(paths.statedir)
    watcher = fencemod.Fence(node, paths.statedir, load_config=lambda: config.load(paths.confdir),
                             fence_after=args.fence_after or settings["fence_after"], interval=interval)
    metrics = fencemod.metrics_path(settings["metrics_file"])
    previous = None
    while True:
        started = time.monotonic()
        current = watcher.tick()
        if metrics and os.path.isdir(os.path.dirname(metrics)):
            atomic_write(metrics, fencemod.metrics_text(current, node).encode("utf-8"))
        if args.once:
            return Output(current, fencemod.describe(current, node))
        summary = (current.get("quorate"), bool(current.get("fenced")), json.dumps(current.get("fenced"), sort_keys=True),
                   current.get("error"))
        if summary != previous:  # the journal gets the changes, not every tick
            say(fencemod.describe(current, node))
            sys.stdout.flush()
            previous = summary
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


@subcommand("fence-status", "Show this node's quorum and fence state (what the fence service recorded).", _no_arguments)
def fence_status(args):
    del args
    fencemod = _fence_engine()
    paths = _paths()
    node = _engine()[3].read_local_node(paths.statedir)
    try:
        current = fencemod.read_state(paths.statedir)
    except fencemod.FenceStateError as exc:
        raise CliError(str(exc)) from None
    return Output(current or {}, fencemod.describe(current, node))


# ---------------------------------------------------------------------------------------------------------
# keep: the connection keeper (keeper.py)

def _socket_arguments(default):
    def arguments(parser):
        parser.add_argument("--socket", metavar="PATH", default=None,
                            help="the socket this node's commands find it at (default: %s)" % default)
    return arguments


@subcommand("keep", "Keep this node's SSH connections to its peers, and their receiver sessions, open between runs "
            "(the storage-replication-keeper service): a run borrows them instead of connecting.",
            _socket_arguments("/run/storage-replication/keeper.sock"))
def keep(args):
    from ansible_collections.storage.replication.plugins.module_utils import keeper  # pylint: disable=import-outside-toplevel
    import signal  # pylint: disable=import-outside-toplevel
    server = keeper.Keeper(args.socket) if args.socket else keeper.Keeper()
    try:
        server.listen()
    except (keeper.KeeperError, OSError) as exc:
        raise CliError(str(exc)) from None
    signal.signal(signal.SIGTERM, lambda *_args: server.stop())
    say("keeping connections for the runs of this node at %s" % server.path)
    sys.stdout.flush()
    server.serve()
    return Output(server.status(), "stopped: %(lent)d sessions lent, %(reused)d of them kept from an earlier run"
                  % server.status())


# ---------------------------------------------------------------------------------------------------------
# preload: the engine loaded once, a process forked from it per run and peer login (preload.py)

@subcommand("preload", "Keep the engine loaded and start this node's runs and its peers' logins from it (the "
            "storage-replication-preload service): each skips Python's imports.",
            _socket_arguments("/run/storage-replication/preload.sock"))
def preload(args):
    from ansible_collections.storage.replication.plugins.module_utils import preload as preloading  # pylint: disable=import-outside-toplevel
    server = preloading.Preload(args.socket or preloading.PRELOAD_SOCKET, main)  # the engine on disk, noted first
    preloading.load_engine()
    try:
        server.listen()
    except (preloading.PreloadError, OSError) as exc:
        raise CliError(str(exc)) from None
    say("starting runs and peer logins preloaded at %s" % server.path)
    sys.stdout.flush()
    server.serve()
    return Output(server.status(), "stopped: %(started)d commands started, %(running)d still running" % server.status())


if __name__ == "__main__":
    raise SystemExit(main())
