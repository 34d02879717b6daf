# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A ZFS stream into `zfs recv` on the receiving side: the bytes copied (in the kernel where it can: splice) and
counted, and a failed receive explained with its cause and what happens next."""

from __future__ import annotations

import os
import subprocess

from ansible_collections.storage.replication.plugins.module_utils.files import copy_stream, write_all
from ansible_collections.storage.replication.plugins.module_utils.protocol import Refused


def feed_zfs_recv(argv, stream, node, volume):
    """Run ``argv`` (a `zfs recv`) fed from ``stream`` (a binary file, or the whole stream as bytes when it came
    inline in a session); returns the bytes fed.  Refused ("receive-failed") with a precise cause on failure."""
    env = dict(os.environ, LC_ALL="C")
    # pylint: disable-next=ansible-bad-function
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        total = write_all(proc.stdin.fileno(), stream) if isinstance(stream, bytes) else \
            copy_stream(stream.fileno(), proc.stdin.fileno())
    except BrokenPipeError:
        total = None
    _out, err = proc.communicate()  # closes zfs recv's stdin: end of stream
    if proc.returncode != 0 or total is None:
        raise Refused(explain_recv_failure(node, volume, argv, proc.returncode, err.decode("utf-8", "replace")),
                      "receive-failed")
    return total


def explain_recv_failure(node, volume, argv, rc, stderr):
    """What went wrong in a receive, for the source's run log: a full pool says so, anything else names the command
    and ZFS's last word; either way the previous replica is intact."""
    if stderr.strip():
        detail = stderr.strip().splitlines()[-1]
    else:
        detail = "killed by signal %d" % -rc if rc < 0 else "exit code %s" % rc
    if "out of space" in stderr or "No space left" in stderr:
        return ("the pool on node '%s' is full: cannot receive volume '%s' (%s) - free space on that pool or enlarge "
                "it; the previous replica is intact and the next run resumes from it" % (node, volume, detail))
    return ("'%s' failed on node '%s' for volume '%s': %s - the previous replica is intact; the next run retries"
            % (" ".join(argv), node, volume, detail))
