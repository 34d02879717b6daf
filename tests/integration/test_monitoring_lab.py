# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The collection's alert rules and dashboard against real parts: Debian's node_exporter runs on node1 (in its
namespaces, its textfile collector reading the file node1's runner writes) and Debian's Prometheus scrapes it from
node1's network namespace, with the collection's rule file loaded. Every query of the Grafana dashboard and every
alert expression is asked of that Prometheus and must return the series the lab's state implies (a job that syncs,
a job that fails); then the runner stops ticking, and the stale-runner alert must fire there, no sooner than its
180 s, and end once the runner runs again."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request

import cluster_setup as cs
import pytest
import yaml

from ansible_collections.storage.replication.plugins.module_utils import config as configmod

from tests.unit.test_monitoring import RULES, SERIES_RE, dashboard_queries, rule_expressions, variable_queries

pytestmark = pytest.mark.lab

METRICS_DIR = "/var/lib/storage-replication/prom"
SCRAPE_SECONDS = 2
STALE_AFTER = 180  # the rule's threshold


class Prometheus:
    """The HTTP API of the lab's Prometheus."""

    def __init__(self, url):
        self.url = url

    def get(self, path, **params):
        with urllib.request.urlopen("%s%s?%s" % (self.url, path, urllib.parse.urlencode(params, doseq=True)),
                                    timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr):
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def firing(self, alertname):
        return [a for a in self.get("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


def wait(what, check, timeout, step=1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("after %d s still not: %s" % (timeout, what))
        time.sleep(step)


@pytest.fixture(scope="module", name="monitored")
def monitored_fixture(module_lab, tmp_path_factory):
    lab = module_lab
    keys = {node: cs.install_node(lab, node) for node in lab.nodes}
    for node in lab.nodes:
        cs.trust_peers(lab, node, keys)
    cfg = cs.base_config(lab)
    cfg.generation = max(configmod.load(str(lab.private_path(n, "/etc/storage-replication"))).generation
                         for n in lab.nodes) + 1
    cfg.guests[100] = configmod.Guest(100, "vm", "node1", ["%s:vm-100-disk-0" % cs.STORAGE])
    cfg.guests[200] = configmod.Guest(200, "ct", "node1", ["%s:subvol-200-disk-0" % cs.STORAGE])
    # every minute: the lag alert is due after two minutes without a sync
    cfg.add_job(configmod.Job("100-0", "node2", schedule="*/1"))
    cfg.add_job(configmod.Job("200-0", "node3", schedule="*/1"))  # its volume does not exist: it fails
    cs.create_volume(lab, "node1", "vm-100-disk-0")
    cs.destroy(lab, "node1", cs.dataset("subvol-200-disk-0"))
    cs.write_config(lab, cfg)
    lab.exec("node1", ["mkdir", "-p", METRICS_DIR])
    lab.exec("node1", ["sh", "-c", "cat > /etc/storage-replication/runner.json"],
             input=json.dumps({"metrics_file": METRICS_DIR + "/storage-replication.prom"}))
    cs.sr(lab, "node1", "run")
    cs.sr(lab, "node1", "fence", "--once")  # the fence service's file beside the runner's
    work = tmp_path_factory.mktemp("prometheus")
    address = lab.address("node1")
    (work / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "%ds" % SCRAPE_SECONDS, "evaluation_interval": "%ds" % SCRAPE_SECONDS},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "node",
                            "static_configs": [{"targets": ["127.0.0.1:9100"], "labels": {"instance": "node1"}}]}]}))
    exporter = subprocess.Popen(lab.exec_argv("node1", [
        "prometheus-node-exporter", "--collector.disable-defaults", "--collector.textfile",
        "--collector.textfile.directory=" + METRICS_DIR, "--web.listen-address=127.0.0.1:9100"]),
        stdout=subprocess.DEVNULL, stderr=open(work / "node-exporter.log", "w"))
    server = subprocess.Popen(lab.net_argv("node1", [
        "prometheus", "--config.file=%s" % (work / "prometheus.yml"), "--storage.tsdb.path=%s" % (work / "data"),
        "--web.listen-address=%s:9090" % address]), stdout=subprocess.DEVNULL, stderr=open(work / "prometheus.log", "w"))
    prometheus = Prometheus("http://%s:9090" % address)
    try:
        wait("Prometheus scrapes node1's node_exporter",
             lambda: _answers(prometheus, 'up{job="node"} == 1'), 60)
        yield lab, prometheus
    finally:
        for process in (server, exporter):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _answers(prometheus, expr):
    try:
        return prometheus.query(expr)
    except OSError:
        return None


def ticked(lab, prometheus):
    """Run the runner (what the timer does every minute) and wait until Prometheus has its tick."""
    result = json.loads(cs.sr(lab, "node1", "run", "--output-format", "json", check=False).stdout)
    wait("the tick of the run in Prometheus", lambda: [s for s in prometheus.query(
        "storage_replication_runner_last_tick_timestamp_seconds") if float(s["value"][1]) >= result["iteration"]], 30)
    return result["iteration"]


def labels_of(result, *names):
    return sorted(tuple(series["metric"].get(name) for name in names) for series in result)


def test_every_dashboard_query_and_alert_expression_returns_the_expected_series(monitored):
    lab, prometheus = monitored
    ticked(lab, prometheus)
    state = cs.local_state(lab, "node1")
    assert state["100"]["local/node2"]["fail_count"] == 0 and state["200"]["local/node3"]["fail_count"] >= 1
    # the dashboard's variables
    assert prometheus.get("/api/v1/label/node/values", **{"match[]": "storage_replication_runner_last_tick_timestamp_seconds"}) \
        == ["node1"]
    assert prometheus.get("/api/v1/label/guest/values", **{"match[]": 'storage_replication_job_enabled{node=~"node1"}'}) \
        == ["100", "200"]
    assert set(variable_queries()) == {"node", "guest"}
    # every panel's every query: some series, and the right ones
    expected_values = {"Jobs": 2, "Enabled": 2, "Failing jobs": 1, "Stopped runners": 0, "Fenced nodes": 0,
                       "Configuration generation": cfg_generation(lab), "Quorate": 1}
    for title, expr in dashboard_queries():
        result = prometheus.query(expr)
        assert result, "the dashboard's panel %r asks %s and gets nothing" % (title, expr)
        if "node1" in expr:
            assert {s["metric"].get("node", "node1") for s in result} == {"node1"}, (title, result)
        if '"100"' in expr:  # guest 100's jobs only (an aggregation keeps the job's id)
            assert {s["metric"].get("guest", "100") for s in result} == {"100"}, (title, result)
            assert all(s["metric"]["id"].startswith("100-") for s in result), (title, result)
        if title in expected_values:
            assert float(result[0]["value"][1]) == expected_values[title], (title, result)
    worst = prometheus.query("max(storage_replication_job_lag_seconds < +Inf)")
    assert 0 <= float(worst[0]["value"][1]) <= 120
    pve = prometheus.query("pve_replication_failed_syncs * on(instance, id) group_left(source, target, guest) pve_replication_info")
    assert labels_of(pve, "id", "source", "target", "guest") == [
        ("100-0", "node/node1", "node/node2", "qemu/100"), ("200-0", "node/node1", "node/node3", "lxc/200")]
    # every alert expression: what this state implies, and every series it names exists
    expected = {"StorageReplicationJobFailing": [("200-0",)]}
    for alert, expr in rule_expressions().items():
        if alert == "StorageReplicationFenceServiceStopped":
            continue  # the lab runs no fence service: its one tick gets old while this test runs (see below)
        assert labels_of(prometheus.query(expr), "id") == expected.get(alert, []), alert
        for series in set(SERIES_RE.findall(expr)):
            assert prometheus.query(series), "%s names %s, which Prometheus does not have" % (alert, series)


def cfg_generation(lab):
    return configmod.load(str(lab.private_path("node1", "/etc/storage-replication"))).generation


def test_a_stopped_runner_fires_the_stale_runner_alert_in_the_live_prometheus(monitored):
    lab, prometheus = monitored
    last_tick = ticked(lab, prometheus)
    # The runner stops here (no more ticks); node_exporter keeps serving its file unchanged.
    assert not prometheus.firing("StorageReplicationRunnerStopped")
    lagging = []

    def stale_runner():
        lagging.extend(a["labels"]["id"] for a in prometheus.firing("StorageReplicationLagHigh") if not lagging)
        return prometheus.firing("StorageReplicationRunnerStopped")
    fired = wait("the stale-runner alert", stale_runner, STALE_AFTER + 60, step=2)
    seen = time.time()
    # 100-0 runs every minute: two minutes after its last sync the lag alert fired, though the file stood still
    assert lagging == ["100-0"]
    assert [a["labels"]["node"] for a in fired] == ["node1"]
    assert seen - last_tick >= STALE_AFTER, "fired %d s after the last tick" % (seen - last_tick)
    assert re.match(r"The runner on node1 last ticked \d+m \d+s ago", fired[0]["annotations"]["description"])
    # the fence service's heartbeat is as old, and its alert fires as well (the lab runs no fence service)
    assert prometheus.firing("StorageReplicationFenceServiceStopped")
    # the runner is back: both alerts end
    ticked(lab, prometheus)
    wait("the stale-runner and lag alerts ended", lambda: not prometheus.firing("StorageReplicationRunnerStopped")
         and not prometheus.firing("StorageReplicationLagHigh"), 30)
