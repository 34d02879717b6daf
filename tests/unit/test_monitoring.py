# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the collection ships for Prometheus and Grafana (monitoring/): the alert rules pass `promtool check rules`
and their unit tests (`promtool test rules`), every query of the dashboard is valid PromQL, and every series the
rules and the dashboard name is one the runner or the fence service writes. Against a live Prometheus and
node_exporter on the lab: tests/integration/test_monitoring_lab.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from ansible_collections.storage.replication.plugins.module_utils import config as C
from ansible_collections.storage.replication.plugins.module_utils import fence, metrics
from ansible_collections.storage.replication.plugins.module_utils.report import job_report

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "prometheus" / "storage-replication-rules.yml"
RULE_TESTS = ROOT / "monitoring" / "prometheus" / "storage-replication-rules.test.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "storage-replication.json"
SERIES_RE = re.compile(r"\b((?:storage_replication|pve_replication)_[a-z_]+)\b")
# What Grafana puts in place of the dashboard's variables when one value is chosen.
VARIABLES = {"$node": "node1", "$guest": "100"}
ALERTS = {"StorageReplicationLagHigh", "StorageReplicationJobFailing", "StorageReplicationRunnerStopped",
          "StorageReplicationConfigConflict", "StorageReplicationConfigUnreadable", "StorageReplicationGuestFenced",
          "StorageReplicationFenceStopFailed", "StorageReplicationFenceServiceStopped"}


def promtool(*argv, cwd=None):
    return subprocess.run(["promtool"] + list(argv), capture_output=True, text=True, check=False, cwd=cwd)


def dashboard_queries(dashboard=None):
    """[(panel title, PromQL with the variables filled in)] of every panel's targets, and the variables' queries."""
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], fill(target["expr"])))
    return found


def variable_queries(dashboard=None):
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    return {v["name"]: fill(v["query"]["query"]) for v in dashboard["templating"]["list"] if v["type"] == "query"}


def fill(expr):
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def rule_expressions():
    return {rule["alert"]: rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}


def test_the_alert_rules_pass_promtool_check():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0 and "SUCCESS: 8 rules found" in result.stdout, result.stdout + result.stderr


def test_the_alert_rules_pass_their_unit_tests():
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_every_alert_the_issue_asks_for_is_there_and_tested():
    assert set(rule_expressions()) == ALERTS
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", [])}
    assert tested == ALERTS


def test_every_dashboard_query_is_valid_promql(tmp_path):
    queries = dashboard_queries()
    assert len(queries) >= 20
    records = [{"record": "dashboard:query_%d" % number, "expr": expr} for number, (_title, expr) in enumerate(queries)]
    rules = {"groups": [{"name": "dashboard", "rules": records}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_has_cluster_node_and_guest_rows_with_the_figures_asked_for():
    dashboard = json.loads(DASHBOARD.read_text())
    rows, current = {}, None
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], [])
        else:
            current.append(" ".join(t["expr"] for t in panel["targets"]))
    assert list(rows) == ["Cluster", "Node $node", "Guest $guest"]
    guest = " ".join(rows["Guest $guest"])
    for series in ("last_sync_timestamp_seconds", "last_duration_seconds", "last_bytes_sent", "fail_count"):
        assert "storage_replication_job_%s{guest=~\"$guest\"}" % series in guest
    # the lag as Prometheus counts it: it keeps growing when a runner stops writing its file
    assert 'time() - (storage_replication_job_last_sync_timestamp_seconds{guest=~"$guest"} > 0)' in guest
    assert all("$node" in expr for expr in rows["Node $node"])
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "node", "guest"}
    assert all(p.get("datasource", {}).get("uid") == "${datasource}" for p in dashboard["panels"] if p["type"] != "row")


def test_every_series_named_is_one_the_nodes_write():
    cfg = C.ClusterConfig(generation=1)
    cfg.nodes["node1"] = C.Node("node1", "10.0.0.1")
    cfg.nodes["node2"] = C.Node("node2", "10.0.0.2")
    cfg.storages["local-zfs"] = C.Storage("local-zfs")
    cfg.guests[100] = C.Guest(100, "vm", "node1", ["local-zfs:vm-100-disk-0"])
    cfg.add_job(C.Job("100-0", "node2"))
    state = {"100": {"local/node2": {"last_sync": 1000, "last_try": 1000, "duration": 1.5, "fail_count": 0}}}
    written = metrics.format_metrics(job_report(cfg, state, "node1", 2000), "node1", 1, 2000, guest_types={100: "vm"})
    written += fence.metrics_text({"tick": 2000, "quorate": True}, "node1")
    names = {line.split("{")[0] for line in written.splitlines() if not line.startswith("#")}
    used = set(SERIES_RE.findall(" ".join(list(rule_expressions().values()) + [q for _t, q in dashboard_queries()]
                                          + list(variable_queries().values()))))
    assert used and used - names == set()
    for series in ("pve_replication_info", "pve_replication_duration_seconds", "pve_replication_last_sync_timestamp_seconds",
                   "pve_replication_last_try_timestamp_seconds", "pve_replication_next_sync_timestamp_seconds",
                   "pve_replication_failed_syncs", "storage_replication_runner_last_tick_timestamp_seconds"):
        assert series in names


@pytest.mark.parametrize("path", [RULES, RULE_TESTS])
def test_the_rule_files_carry_the_license_header(path):
    assert "SPDX-License-Identifier: GPL-3.0-or-later" in path.read_text()
