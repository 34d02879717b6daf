# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The web pages in a real browser: headless Chromium loads each page from a lab node's web service and the tests
read what a person sees there (the rows, the states, a failed job's error text, a log). The service on node1 listens
on its loopback, as by default, and the browser runs in node1's network namespace; the one on node2 listens on its
lab address with TLS and a password file, loaded from the same browser across the lab's network. Real replication
runs between the nodes change what the pages show, and the pages must show it at their next refresh, without being
reloaded. Screenshots for a person to look at: build/web/*.png."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import cluster_setup as cs
import pytest
from browser import Browser, BrowserError

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from tests import certificates

pytestmark = pytest.mark.lab

SHOTS = Path(__file__).resolve().parents[2] / "build" / "web"
REFRESH = 5
# One refresh of the page, then the time its request takes (every node asked in parallel; a second is plenty).
WITHIN = REFRESH + 2
LOCAL = "http://127.0.0.1:8099"
HTTPS_PORT = 8443
PASSWORD = "a password for the lab"


class WebService:
    """`storage-replication web` running inside a node, as the runner role's unit runs it."""

    def __init__(self, lab, node, *options):
        self.process = subprocess.Popen(lab.exec_argv(node, [cs.LAUNCHER, "web", "--refresh", str(REFRESH)] + list(options)),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if "serving" not in line:
            self.process.kill()
            raise AssertionError("the web service on %s did not start: %s%s" % (node, line, self.process.stderr.read()))

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module", name="cluster")
def cluster_fixture(module_lab):
    lab = module_lab
    keys = {node: cs.install_node(lab, node) for node in lab.nodes}
    cfg = cs.base_config(lab)
    cfg.generation = max(configmod.load(str(lab.private_path(n, "/etc/storage-replication"))).generation
                         for n in lab.nodes) + 1
    cfg.guests[100] = configmod.Guest(100, "vm", "node1", ["%s:vm-100-disk-0" % cs.STORAGE])
    cfg.guests[200] = configmod.Guest(200, "ct", "node1", ["%s:subvol-200-disk-0" % cs.STORAGE])
    cfg.add_job(configmod.Job("100-0", "node2", schedule="*/15", rate=50, comment="next door"))
    cfg.add_job(configmod.Job("100-1", "node3", schedule="*/30"))
    cfg.add_job(configmod.Job("200-0", "node3", schedule="*/5"))
    cs.create_volume(lab, "node1", "vm-100-disk-0")
    cs.write_random(lab, "node1", "vm-100-disk-0", "data", 2)
    for volume in ("subvol-200-disk-0",):  # guest 200's volume is missing at first: its job fails
        cs.destroy(lab, "node1", cs.dataset(volume))
    cs.write_config(lab, cfg)  # (it empties the configuration directory, where the web key lives)
    web_keys = {node: cs.install_web_key(lab, node) for node in lab.nodes}
    for node in lab.nodes:
        cs.trust_peers(lab, node, keys, web_keys)
    cs.sr(lab, "node1", "run", "--id", "100-0")
    cs.sr(lab, "node1", "run", "--id", "100-1")
    local = WebService(lab, "node1")
    yield lab
    local.stop()


@pytest.fixture(scope="module", name="browser")
def browser_fixture(cluster, tls_files):
    with Browser(prefix=cluster.net_argv("node1", []),
                 flags=["--ignore-certificate-errors-spki-list=" + tls_files["spki"]]) as chromium:
        yield chromium


def shot(page, name):
    return page.screenshot(str(SHOTS / ("%s.png" % name)))


def test_the_cluster_page_shows_every_job_and_a_node_that_does_not_answer(cluster, browser):
    page = browser.page()
    cluster.partition("node3")
    try:
        assert page.open(LOCAL + "/cluster") == 200
        text = page.text()
        shot(page, "cluster-node3-cut-off")
    finally:
        cluster.heal("node3")
    assert "Datacenter → Replication" in text
    assert "Node node3 did not answer" in text
    rows = {row["Job"]: row for row in page.rows()}
    assert sorted(rows) == ["100-0", "100-1", "200-0"]
    assert rows["100-0"]["Status"] == "OK" and rows["100-0"]["Target"] == "node2" and rows["100-0"]["Source"] == "node1"
    assert rows["100-0"]["Rate limit"] == "50 MB/s" and rows["100-0"]["Comment"] == "next door"
    assert rows["100-0"]["Schedule"] == "*/15" and rows["100-0"]["Enabled"] == "Yes"
    nodes = {row["Node"]: row for row in page.rows("table.nodes")}
    assert nodes["node3"]["Answered"].startswith("NO") and nodes["node1"]["Answered"] == "yes"
    # node3 is back: the next refresh says so, without a reload
    page.wait_for("!document.body.innerText.includes('Node node3 did not answer')", 30, "node3 answering again")


def test_node_and_guest_pages_show_the_panels_columns_and_the_log(cluster, browser):
    page = browser.page()
    assert page.open(LOCAL + "/node/node1") == 200
    rows = {row["Job"]: row for row in page.rows()}
    state = cs.local_state(cluster, "node1")["100"]["local/node2"]
    assert rows["100-0"]["Last Sync"] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state["last_sync"]))
    assert rows["100-0"]["Next Sync"] not in ("", "-") and rows["100-0"]["Duration"].endswith("s")
    assert rows["200-0"]["Last Sync"] == "-" and rows["200-0"]["Lag"] == "no replica yet"
    shot(page, "node1")
    assert page.open(LOCAL + "/node/node2") == 200
    assert "Replicas held here" in page.text()
    assert [row["Guest"] for row in page.rows("table.replicas")] == ["100"]
    assert page.open(LOCAL + "/guest/100") == 200
    text = page.text()
    assert "Guest VM 100 → Replication" in text
    points = {row["Node"]: row for row in page.rows("table.restore-points")}
    assert sorted(points) == ["node2", "node3"]
    assert points["node2"]["Snapshot"] == "__replicate_100-0_%d__" % state["last_sync"]
    log = page.text("#logs-100-0 details[open] pre")
    assert "100-0: end replication job" in log and cs.run_log(cluster, "node1", "100-0").splitlines()[0] in log
    shot(page, "guest-100")


def test_a_job_failing_recovering_and_removed_shows_as_such_at_the_next_refresh(cluster, browser):
    guest_page, cluster_page = browser.page(), browser.page()
    assert guest_page.open(LOCAL + "/guest/200") == 200 and cluster_page.open(LOCAL + "/cluster") == 200
    seen = {}

    def appears(page, expression, what):
        started = time.monotonic()
        page.wait_for(expression, WITHIN + 5, what)
        seen[what] = time.monotonic() - started

    # it fails: the guest's volume does not exist
    assert cs.sr(cluster, "node1", "run", "--id", "200-0", check=False).returncode == 1
    error = cs.local_state(cluster, "node1")["200"]["local/node3"]["error"]
    assert error
    row = "document.querySelector('#job-200-0 [data-column=Status]')"
    appears(guest_page, "%s && %s.innerText === %s" % (row, row, json.dumps(error)), "the error on the guest page")
    appears(cluster_page, "%s && %s.innerText === %s" % (row, row, json.dumps(error)), "the error on the cluster page")
    assert guest_page.rows()[0]["Fail Count"] == "1"
    log = guest_page.text("#logs-200-0 details[open] pre")
    assert error.splitlines()[0] in log
    shot(guest_page, "guest-200-failed")
    # it recovers
    cs.create_volume(cluster, "node1", "subvol-200-disk-0")
    cs.sr(cluster, "node1", "run", "--id", "200-0")
    appears(guest_page, "%s && %s.innerText === 'OK'" % (row, row), "OK on the guest page")
    appears(cluster_page, "%s && %s.innerText === 'OK'" % (row, row), "OK on the cluster page")
    assert guest_page.rows()[0]["Fail Count"] == "0" and guest_page.rows()[0]["Last Sync"] != "-"
    shot(guest_page, "guest-200-recovered")
    # it is removed: first scheduled for removal, then gone once the runner has cleaned up
    cs.sr(cluster, "node1", "delete", "200-0")
    appears(cluster_page, "%s && %s.innerText === 'Removal Scheduled'" % (row, row), "Removal Scheduled")
    shot(cluster_page, "cluster-200-0-removal-scheduled")
    cs.sr(cluster, "node1", "run")
    appears(cluster_page, "!document.querySelector('#job-200-0')", "the job gone")
    appears(guest_page, "document.body.innerText.includes('No replication jobs.')", "no job on the guest page")
    shot(guest_page, "guest-200-removed")
    assert max(seen.values()) <= WITHIN, seen


def test_json_under_the_documented_urls(cluster, browser):
    page = browser.page()
    for path in ("/api", "/api/cluster", "/api/node/node1", "/api/guest/100", "/api/job/100-0"):
        assert page.open(LOCAL + path) == 200, path
    job = json.loads(page.text())
    assert job["job"]["id"] == "100-0" and job["job"]["status_text"] == "OK" and job["logs"][-1]["run"] == 0
    assert page.open(LOCAL + "/api/guest/999") == 404


@pytest.fixture(scope="module", name="tls_files")
def tls_files_fixture(cluster):
    """A certificate for node2's lab address, its key and a password file, in node2's web directory."""
    web_dir = cluster.private_path("node2", "/etc/storage-replication") / "web"
    _cert, _key, spki = certificates.self_signed(web_dir, cluster.address("node2"), "tls")
    line = cluster.exec("node2", [cs.LAUNCHER, "web-password", "ops"], input=PASSWORD + "\n").stdout.strip()
    (web_dir / "passwords").write_text(line + "\n")
    return {"spki": spki}


def test_off_loopback_only_with_tls_and_a_password(cluster, browser, tls_files):
    del tls_files
    address = cluster.address("node2")
    refused = cluster.exec("node2", [cs.LAUNCHER, "web", "--listen", "%s:%d" % (address, HTTPS_PORT)], check=False)
    assert refused.returncode == 2 and "refusing to listen on a non-loopback address without TLS" in refused.stderr
    service = WebService(cluster, "node2", "--listen", "%s:%d" % (address, HTTPS_PORT),
                         "--tls-cert", "/etc/storage-replication/web/tls.pem",
                         "--tls-key", "/etc/storage-replication/web/tls.key",
                         "--password-file", "/etc/storage-replication/web/passwords")
    try:
        url = "https://%s:%d/cluster" % (address, HTTPS_PORT)
        # Without the password, or with a wrong one, the browser gets no page (headless, it asks no one).
        with pytest.raises(BrowserError, match="ERR_INVALID_AUTH_CREDENTIALS"):
            browser.page().open(url)
        wrong = base64.b64encode(b"ops:not the password").decode()
        with pytest.raises(BrowserError, match="ERR_INVALID_AUTH_CREDENTIALS"):
            browser.page(headers={"Authorization": "Basic " + wrong}).open(url)
        good = base64.b64encode(("ops:" + PASSWORD).encode()).decode()
        page = browser.page(headers={"Authorization": "Basic " + good})
        assert page.open(url) == 200
        assert "Updated" in page.text() and "by node2" in page.text()
        rows = {row["Job"]: row for row in page.rows()}
        assert rows["100-0"]["Status"] == "OK" and rows["100-1"]["Status"] == "OK"
        shot(page, "cluster-over-https-from-node2")
        # the page refreshes itself over the same authenticated connection
        before = page.text("#updated")
        page.wait_for("document.getElementById('updated').innerText !== %s" % json.dumps(before), WITHIN + 5,
                      "a refresh")
        assert page.evaluate("document.getElementById('offline').hidden") is True
    finally:
        service.stop()
