# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The runner role's defaults agree with requirements/node.txt and with its argument spec."""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
ROLE = ROOT / "roles" / "runner"


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


def _requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def test_pins_match_requirements_node_txt():
    defaults = _yaml(ROLE / "defaults" / "main.yml")
    assert sorted(defaults["runner_pip_requirements"]) == sorted(_requirement_lines(ROOT / "requirements" / "node.txt"))


def test_every_pin_is_exact():
    defaults = _yaml(ROLE / "defaults" / "main.yml")
    loose = [req for req in defaults["runner_pip_requirements"] if "==" not in req]
    assert loose == []


def test_argument_spec_documents_every_default_with_the_same_value():
    defaults = _yaml(ROLE / "defaults" / "main.yml")
    options = _yaml(ROLE / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert sorted(options) == sorted(defaults)
    mismatched = {name: (spec.get("default"), defaults[name]) for name, spec in options.items()
                  if spec.get("default") != defaults[name]}
    assert mismatched == {}


def test_every_option_is_prefixed_and_described():
    options = _yaml(ROLE / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert [name for name in options if not name.startswith("runner_")] == []
    assert [name for name, spec in options.items() if not spec.get("description") or not spec.get("type")] == []
