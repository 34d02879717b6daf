# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""python -m lab [--name NAME] {up,down,status,exec,ssh,kill,revive,partition,heal,fill,unfill} [--name NAME] ..."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from lab import Lab, LabError

NODE_ACTIONS = {
    "kill": ("the node dies: all its processes end, its disk stays", "killed ({n} processes)"),
    "revive": ("start the node's zfs-fuse (pool imported again) and sshd", "revived"),
    "partition": ("take the node's network link down", "partitioned (link down)"),
    "heal": ("bring the node's network link up again", "healed (link up)"),
    "fill": ("make the node's pool run out of space", "pool filled"),
    "unfill": ("give the node's pool its free space back", "pool unfilled"),
}


def build_parser() -> argparse.ArgumentParser:
    # --name before or after the command: the command's own copy only counts when it is given (SUPPRESS).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", default=argparse.SUPPRESS, help="lab name (default: srlab)")
    parser = argparse.ArgumentParser(prog="python -m lab", description="A lab of real ZFS nodes on this machine.")
    parser.add_argument("--name", default="srlab", help="lab name (default: srlab)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser("up", parents=[common], help="create the lab, or repair it (harmless when it is up)")
    up.add_argument("--nodes", type=int, help="number of nodes, node1..nodeN (default: as the lab has, else 3)")
    up.add_argument("--pool-size", help="size of each node's sparse pool file (default: as the lab has, else 1G)")
    commands.add_parser("down", parents=[common], help="remove everything of the lab")
    status = commands.add_parser("status", parents=[common], help="show the lab's nodes and what runs on them")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    for command in ("exec", "ssh"):
        sub = commands.add_parser(command, parents=[common], help=("run a command in the node's namespaces" if command == "exec"
                                                                   else "run a command on the node through its sshd"))
        sub.add_argument("node")
        sub.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    for command, (text, _done) in NODE_ACTIONS.items():
        commands.add_parser(command, parents=[common], help=text).add_argument("node")
    return parser


def print_status(status: dict) -> None:
    if not status["exists"]:
        print(f"lab {status['name']}: not up")
        return
    print(f"lab {status['name']}: {status['state']}, subnet {status['subnet']}, pool size {status['pool_size']}, "
          f"dir {status['dir']}")
    print(f"  {'node':8} {'address':15} {'link':5} {'zfs':4} {'sshd':5} ssh")
    for node, info in status["nodes"].items():
        flags = ["up" if info[k] else "-" for k in ("zfs", "sshd", "ssh")]
        print(f"  {node:8} {info['address']:15} {info['link']:5} {flags[0]:4} {flags[1]:5} {flags[2]}")


def run_command(lab: Lab, args) -> int:
    if args.command == "up":
        lab.up(nodes=args.nodes, pool_size=args.pool_size)
    elif args.command == "down":
        lab.down()
    elif args.command == "status":
        status = lab.status()
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            print_status(status)
    elif args.command in ("exec", "ssh"):
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            raise LabError(f"{args.command} {args.node}: no command given (python -m lab {args.command} NODE -- COMMAND...)")
        # Streams pass straight through (binary, e.g. `zfs send`), so the command is not captured.
        return subprocess.run(getattr(lab, f"{args.command}_argv")(args.node, argv), check=False).returncode
    else:
        count = getattr(lab, args.command)(args.node)
        print(f"lab {lab.name}: {args.node} " + NODE_ACTIONS[args.command][1].format(n=count))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command(Lab(args.name), args)
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lab: interrupted; `python -m lab down` removes a half-built lab", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
