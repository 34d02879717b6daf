# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""python -m openzfs image | key | up [--nodes N] | down | status | ssh NODE [CMD...]  (--name NAME, default ozfs)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from openzfs._image import ImageError, ensure_image, recipe_key
from openzfs._tier import Tier, TierError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openzfs", description=__doc__)
    parser.add_argument("--name", default=os.environ.get("SR_OPENZFS_NAME", "ozfs"), help="tier name (default ozfs)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("image", help="build the guest image if its recipe changed; print its directory")
    sub.add_parser("key", help="print the image's recipe key (its directory's name in the cache: a CI cache key)")
    up = sub.add_parser("up", help="boot the tier's nodes (node1..nodeN)")
    up.add_argument("--nodes", type=int, default=2)
    sub.add_parser("down", help="power the tier's nodes off and remove its files")
    sub.add_parser("status", help="what runs, as JSON")
    ssh = sub.add_parser("ssh", help="run a command on a node (a shell without one)")
    ssh.add_argument("node")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    tier = Tier(args.name)
    try:
        if args.command == "image":
            print(ensure_image())
        elif args.command == "key":
            print(recipe_key())
        elif args.command == "up":
            tier.up(nodes=args.nodes)
            print("ssh -F %s node1" % tier.ssh_config_path)
        elif args.command == "down":
            tier.down()
        elif args.command == "status":
            print(json.dumps(tier.status(), indent=1))
        elif args.command == "ssh":
            argv = ["ssh", "-F", str(tier.ssh_config_path), args.node] + (["--"] + args.cmd if args.cmd else [])
            os.execvp("ssh", argv)
    except (ImageError, TierError) as exc:
        print("openzfs: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
