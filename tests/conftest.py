# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""How `make test` shares two cores (pytest-xdist, --dist loadgroup): the tests on the lab of real nodes run one
after another in one worker (they share the session lab and break nodes of their modules' labs), the collection-level
checks (ansible-test sanity, ansible-lint, the galaxy build) in the other, and the unit tests fill both."""

from __future__ import annotations

import pathlib

import pytest

GROUPS = {"integration": "lab", "openzfs": "lab", "sanity": "sanity"}


def pytest_collection_modifyitems(items):
    for item in items:
        parts = pathlib.Path(str(item.fspath)).parts
        group = next((GROUPS[part] for part in parts if part in GROUPS), None)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
