# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A run's start time names its snapshots: never a second an earlier run of the job already used."""

from __future__ import annotations

import time

import pytest

from ansible_collections.storage.replication.plugins.module_utils.replicate import ReplicationError, _start_time


def test_a_run_after_an_unfinished_one_of_the_same_second_takes_the_next_second():
    second = int(time.time())
    assert _start_time(second - 60, second, time.time) > second  # killed at this second: its snapshot name is taken


def test_a_last_try_ahead_of_this_clock_is_not_waited_for():
    began = time.monotonic()
    second = int(time.time())
    assert _start_time(second - 60, second + 3600, time.time) in (second, second + 1)
    assert time.monotonic() - began < 1.0


def test_a_start_not_after_the_last_sync_is_refused_as_pvesr_does():
    with pytest.raises(ReplicationError, match="start time before last sync"):
        _start_time(int(time.time()) + 3600, 0, time.time)
