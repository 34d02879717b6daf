# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""How the tests share two workers (pytest-xdist, --dist loadgroup): tests that would disturb each other from two
processes keep to one worker: the collection-level checks (ansible-test sanity and friends) run one after another,
and so do the lab's tests."""

from __future__ import annotations

import pathlib

import pytest

GROUPS = {"sanity": "sanity", "integration": "lab", "openzfs": "lab"}


def pytest_collection_modifyitems(items):
    for item in items:
        parts = pathlib.Path(str(item.fspath)).parts
        group = next((GROUPS[part] for part in parts if part in GROUPS), None)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
