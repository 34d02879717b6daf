# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The receiver's fuzzer (tests/fuzz/fuzz_receiver.py) in `make test`: its seed corpus replayed through the harness and
the oracle, deterministically, and a bounded coverage-guided run (FUZZ_TEST_SECONDS, 20 s by default) in a subprocess.

Either fails on a new defect: an exception escaping serve.main(), a reply that is not one JSON line with ok
true/false, a malformed request reaching ZFS, or a refused request that changed something.  Defects already reported
(fuzz_receiver.KNOWN, each with a strict xfail test in test_receiver_fuzz_findings.py) are counted, not failed.
`make fuzz` runs the same fuzzer for longer (FUZZ_SECONDS).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[4]
FUZZER = ROOT / "tests" / "fuzz" / "fuzz_receiver.py"
sys.path.insert(0, str(FUZZER.parent))
import fuzz_receiver  # noqa: E402  pylint: disable=wrong-import-position,import-error

SEEDS = fuzz_receiver.seeds()


@pytest.fixture(scope="module")
def harness():
    node = fuzz_receiver.Harness()
    yield node
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.rmtree(node.root, ignore_errors=True)


def describe(outcome):
    return "replies %s\nchanges %s\nviolations:\n%s" % (
        [w.strip()[:300] for w in outcome.writes], [c.argv for c in outcome.journal if c.mutating],
        "\n".join(str(v)[:2000] for v in outcome.violations))


@pytest.mark.parametrize("name, data, valid", SEEDS, ids=[s[0] for s in SEEDS])
def test_seed_replays_through_the_oracle(harness, name, data, valid):
    outcome = harness.execute(fuzz_receiver.Case.parse(data))
    new = [v for v in outcome.violations if not fuzz_receiver.is_known(v.signature)]
    assert not new, "%s: new defect(s):\n%s" % (name, describe(outcome))
    replies = outcome.replies
    if valid:  # the runner's own requests: accepted, with no violation at all
        assert outcome.violations == [] and replies and all(r["ok"] for r in replies), describe(outcome)
    elif not outcome.violations:  # hostile: refused (unless it shows a reported defect)
        assert replies and not replies[0]["ok"], describe(outcome)
    again = harness.execute(fuzz_receiver.Case.parse(data))
    assert again.writes == outcome.writes and [c.argv for c in again.journal] == [c.argv for c in outcome.journal]


def test_valid_seeds_reach_every_changing_zfs_command(harness):
    """The harness really exercises the receiver: together the valid seeds destroy, roll back, receive, hold, keep
    aside and abort a resume."""
    verbs = set()
    for _name, data, valid in SEEDS:
        if valid:
            outcome = harness.execute(fuzz_receiver.Case.parse(data))
            verbs.update(tuple(c.argv[1:3]) if c.argv[1:3] == ["recv", "-A"] else (c.argv[1],)
                         for c in outcome.journal if c.mutating and c.rc == 0)
    assert verbs >= {("destroy",), ("rollback",), ("recv",), ("recv", "-A"), ("hold",), ("snapshot",)}, verbs


def test_oracle_catches_what_it_is_meant_to(harness):
    """The oracle itself: a crash, a malformed change and a bad reply are each reported."""
    outcome = harness.execute(fuzz_receiver.Case("openzfs", "node1", "prepare", b"{}"))
    assert outcome.violations == []
    bad = fuzz_receiver.Outcome(outcome.case, ["not json\n"], 0, (RuntimeError("x"), "Traceback"), [], {}, [])
    signatures = {v.signature for v in fuzz_receiver.check(bad)}
    assert {"crash:RuntimeError:?", "reply-format"} <= signatures
    change = fuzz_receiver.Command(["zfs", "destroy", "-r", "rpool/data/vm-200-disk-0"], 0, 0, harness.config_now(), {})
    receive = fuzz_receiver.Case("openzfs", "node1", "receive job=100-0 guest=100 volume=local-zfs:vm-200-disk-0 "
                                 "snapshot=__replicate_100-0_5__ generation=7 source=node1", b"")
    bad = fuzz_receiver.Outcome(receive, ['{"ok": true}\n'], 0, None, [change], {}, [])
    assert [v.signature for v in fuzz_receiver.check(bad)] == ["malformed:receive:owned-here"]


@pytest.mark.slow
def test_bounded_fuzzing_finds_no_new_defect(tmp_path):
    assert importlib.util.find_spec("atheris") is not None, \
        "atheris is not installed (requirements/test.txt pins it; run `make deps`)"
    seconds = int(os.environ.get("FUZZ_TEST_SECONDS", "20"))
    result = subprocess.run([sys.executable, str(FUZZER), "--seconds", str(seconds), "--workdir", str(tmp_path),
                             "--quiet", "--coverage-limit", "300"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=seconds + 240,
                            check=False)
    print(result.stdout[-6000:])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert result.returncode == 0 and not summary["new_defects"], \
        "the fuzzer found new defects (inputs in %s/artifacts):\n%s" % (tmp_path, result.stdout[-6000:])
    assert summary["executions"] and summary["executions"] >= 50 * seconds, summary


def test_the_calling_node_is_passed_and_a_non_owner_changes_nothing(tmp_path):
    """The harness runs the receiver as `serve --peer <node>` does: node3 (owner of guest 300, not of guest 100)
    asking to receive into guest 100 is refused, and ZFS is not touched."""
    node = fuzz_receiver.Harness(root=str(tmp_path / "node"))
    assert node.peer_mode
    args = fuzz_receiver.receive_args(source="node3")
    outcome = node.execute(fuzz_receiver.Case("openzfs", "node3", "receive " + " ".join(args), b"\0" * 312))
    assert outcome.violations == [] and [r["reason"] for r in outcome.replies] == ["not-owner"], describe(outcome)
    assert [c.argv for c in outcome.journal if c.mutating] == []
