# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Named points in a run where the lab's crash tests cut the process down, as a kill -9 or a power cut would.

`SR_FAILPOINT=<name>` in the environment makes the process kill itself with SIGKILL when it reaches `reach(name)`:
no `finally`, no clean-up, exactly what a crash leaves behind.  Nothing sets it outside the tests; unset, a point
costs one environment lookup.  The names a run passes, in order, are those the crash tests cut at
(tests/integration/test_interrupted_runs.py).
"""

from __future__ import annotations

import os
import signal

VARIABLE = "SR_FAILPOINT"


def reach(name):
    if os.environ.get(VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
