# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The web service without a lab: its refusals to start, authentication, the read-only receiver it asks, and the
pages served over a real socket (HTTP and HTTPS) from nodes whose receivers run in this process. The pages in a real
browser on lab nodes: tests/integration/test_web_lab.py."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import ssl
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.storage.replication.plugins.module_utils import config as C
from ansible_collections.storage.replication.plugins.module_utils import nodeview, receiver, serve, web
from ansible_collections.storage.replication.plugins.module_utils.state import StateFile
from ansible_collections.storage.replication.plugins.module_utils.transport import RemoteError, TransportError
from tests import certificates

KEY = "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))).decode()
NODES = ("node1", "node2", "node3")
READ_ONLY = nodeview.OPERATIONS
ERROR = "command 'zfs send' failed: exit code 1: cannot open 'rpool/data/vm-200-disk-0': dataset does not exist"


class Cluster:
    """Three nodes as directories (configuration, state, logs); ``down`` are the nodes that do not answer."""

    def __init__(self, tmp_path):
        self.root = tmp_path
        self.down = set()
        self.lock = threading.Lock()
        cfg = C.ClusterConfig(generation=3)
        for number, name in enumerate(NODES, 1):
            cfg.nodes[name] = C.Node(name, "10.0.0.%d" % number, KEY)
        cfg.storages["local-zfs"] = C.Storage("local-zfs")
        cfg.guests[100] = C.Guest(100, "vm", "node1", ["local-zfs:vm-100-disk-0"])
        cfg.guests[200] = C.Guest(200, "ct", "node2", ["local-zfs:subvol-200-disk-0"])
        cfg.add_job(C.Job("100-0", "node2", schedule="*/5", rate=10, comment="nearby"))
        cfg.add_job(C.Job("100-1", "node3"))
        cfg.add_job(C.Job("200-0", "node3", schedule="*/2"))
        self.cfg = cfg
        for name in NODES:
            for part in ("conf", "state", "log"):
                self.dir(name, part).mkdir(parents=True)
            (self.dir(name, "state") / "local-node").write_text(name + "\n")
            C.save(cfg, str(self.dir(name, "conf")))

    def dir(self, name, part):
        return self.root / name / part

    def job(self, job_id):
        return self.cfg.jobs[job_id]

    def synced(self, node, job_id, when, duration=2.5):
        state = StateFile(str(self.dir(node, "state")))
        state.record_job_start(self.job(job_id), when, node=node)
        state.record_job_end(self.job(job_id), when, duration, bytes_sent=4096)

    def failed(self, node, job_id, when, error=ERROR):
        state = StateFile(str(self.dir(node, "state")))
        state.record_job_start(self.job(job_id), when, node=node)
        state.record_job_end(self.job(job_id), when, 0.5, error=error)

    def log(self, node, job_id, *runs):
        for age, lines in enumerate(runs):
            name = "%s.log" % job_id + ("" if age == 0 else ".%d" % age)
            (self.dir(node, "log") / name).write_text("".join("2026-01-02 03:04:05 %s: %s\n" % (job_id, line) for line in lines))

    def receiver(self, node, caller):
        return receiver.Receiver(str(self.dir(node, "conf")), str(self.dir(node, "state")), peer=caller)

    def connect(self, name, address, host_key, key=None, port=22, timeout=None):
        del address, host_key, key, port, timeout
        return FakeChannel(self, name)


class FakeChannel:
    """A control channel to ``name`` whose read-only receiver runs here, as `serve --peer node1 --read-only` would."""

    def __init__(self, cluster, name):
        self.cluster = cluster
        self.node_name = name

    def connect(self):
        if self.node_name in self.cluster.down:
            raise TransportError("target node '%s' (10.0.0.9) is unreachable: Connection refused - check that the node "
                                 "is up" % self.node_name, unreachable=True)
        return self

    def call(self, operation, request, timeout=None):
        del timeout
        if self.node_name in self.cluster.down:
            raise TransportError("connection lost", unreachable=True)
        with self.cluster.lock:  # the log directory comes from the environment, as on a node
            os.environ["STORAGE_REPLICATION_LOGDIR"] = str(self.cluster.dir(self.node_name, "log"))
            target = self.cluster.receiver(self.node_name, "node1")
            reply = serve.answer(target, lambda: serve.control(target, operation, json.loads(json.dumps(request)), READ_ONLY))
        if not reply["ok"]:
            raise RemoteError(self.node_name, operation, reply)
        return reply

    def close(self):
        pass


@pytest.fixture(name="cluster")
def cluster_fixture(tmp_path, monkeypatch):
    monkeypatch.setenv("STORAGE_REPLICATION_LOGDIR", str(tmp_path))
    return Cluster(tmp_path)


def app_for(cluster, **options):
    nodes = web.Nodes("node1", cluster.cfg.nodes, cluster.cfg.generation, connect=cluster.connect, answer_seconds=2)
    return web.App(nodes, "node1", **options)


# ---------------------------------------------------------------------------------------------------------------
# Refusals to start

@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8099", ("127.0.0.1", 8099, True)), ("localhost:80", ("127.0.0.1", 80, True)),
    ("[::1]:8099", ("::1", 8099, True)), ("0.0.0.0:8443", ("0.0.0.0", 8443, False)),
    ("192.0.2.10:8443", ("192.0.2.10", 8443, False))])
def test_listen_addresses(text, expected):
    assert web.parse_listen(text) == expected


@pytest.mark.parametrize("text, message", [
    ("8099", "must be HOST:PORT"), ("127.0.0.1:0", "must be HOST:PORT"), ("127.0.0.1:99999", "must be HOST:PORT"),
    ("example.com:8099", "'example.com' is not an IP address")])
def test_bad_listen_addresses_are_refused_with_the_form_to_use(text, message):
    with pytest.raises(web.WebError, match=message):
        web.parse_listen(text)


@pytest.mark.parametrize("tls, auth, missing", [
    (False, False, "without TLS (--tls-cert and --tls-key) and authentication"),
    (True, False, "without authentication (--token-file or --password-file)"),
    (False, True, "without TLS (--tls-cert and --tls-key):")])
def test_off_loopback_the_service_refuses_to_start_without_tls_and_authentication(tmp_path, tls, auth, missing):
    cert, key = self_signed(tmp_path) if tls else (None, None)
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123\n")
    with pytest.raises(web.WebError, match=missing.replace("(", r"\(").replace(")", r"\)")):
        web.serve("0.0.0.0:1", tls_cert=cert, tls_key=key, token_file=str(token) if auth else None,
                  key="/nonexistent", cluster_file="/nonexistent", local_node_file="/nonexistent")


def test_the_cli_says_why_it_does_not_start(capsys):
    from ansible_collections.storage.replication.plugins.module_utils import cli
    assert cli.main(["web", "--listen", "192.0.2.10:8443"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on a non-loopback address without TLS" in err and "Traceback" not in err


def test_check_config_says_how_it_would_serve_and_serves_nothing(cluster, tmp_path, capsys):
    from ansible_collections.storage.replication.plugins.module_utils import cli
    cert, key = self_signed(tmp_path)
    (tmp_path / "web-key").write_text("a key\n")
    (tmp_path / "token").write_text("0123456789abcdef0123\n")
    argv = ["web", "--listen", "192.0.2.10:8443", "--key", str(tmp_path / "web-key"), "--check-config",
            "--cluster-file", str(cluster.dir("node1", "conf") / "cluster.json"),
            "--local-node-file", str(cluster.dir("node1", "state") / "local-node")]
    assert cli.main(argv + ["--tls-cert", cert, "--tls-key", key, "--token-file", str(tmp_path / "token")]) == 0
    assert capsys.readouterr().out == ("storage-replication web: would serve https://192.0.2.10:8443/ (read-only, "
                                       "authentication required) for node node1\n")
    assert cli.main(argv + ["--tls-cert", key, "--tls-key", key, "--token-file", str(tmp_path / "token")]) == 2
    assert "cannot load the TLS certificate" in capsys.readouterr().err


@pytest.mark.parametrize("token, message", [("short", "at least 16"), ("two words in this token file", "one word")])
def test_a_weak_token_is_refused(tmp_path, token, message):
    path = tmp_path / "token"
    path.write_text(token)
    with pytest.raises(web.WebError, match=message):
        web.read_token(str(path))


# ---------------------------------------------------------------------------------------------------------------
# Authentication

def test_password_file_lines_of_both_hash_kinds_are_checked(tmp_path):
    import bcrypt
    path = tmp_path / "passwords"
    hashes = (web.hash_password("alice's secret"), bcrypt.hashpw(b"bob's secret", bcrypt.gensalt(4)).decode())
    path.write_text("# operators\n\nalice:%s\nbob:%s\n" % hashes)
    auth = web.Auth(users=web.read_password_file(str(path)))
    assert auth.check(basic("alice", "alice's secret")) and auth.check(basic("bob", "bob's secret"))
    assert not auth.check(basic("alice", "bob's secret")) and not auth.check(basic("carol", "alice's secret"))
    assert not auth.check(None) and not auth.check("Bearer alice's secret") and not auth.check("Basic !!!")


@pytest.mark.parametrize("line, message", [
    ("alice:secret", "not a bcrypt .* or scrypt .* hash; plain, MD5"),
    ("alice:$apr1$abc$def", "not a bcrypt"),
    ("alice", "is not 'user:hash'"),
    ("al ice:$2y$05$" + "a" * 53, "is not 'user:hash'")])
def test_a_password_file_line_that_is_no_strong_hash_is_refused_by_its_number(tmp_path, line, message):
    path = tmp_path / "passwords"
    path.write_text("# first\n%s\n" % line)
    with pytest.raises(web.WebError, match="line 2.*" + message):
        web.read_password_file(str(path))


def test_a_token_is_taken_as_bearer_and_as_any_users_password():
    auth = web.Auth(token="0123456789abcdef0123")
    assert auth.check("Bearer 0123456789abcdef0123") and auth.check(basic("anyone", "0123456789abcdef0123"))
    assert not auth.check("Bearer 0123456789abcdef012") and not auth.check(basic("anyone", "nope"))


def test_a_checked_password_is_remembered_and_the_hash_not_computed_again(monkeypatch):
    auth = web.Auth(users={"alice": web.hash_password("alice's secret")})
    assert auth.check(basic("alice", "alice's secret"))
    monkeypatch.setattr(web, "_check_scrypt", lambda *_a: pytest.fail("computed again"))
    assert auth.check(basic("alice", "alice's secret"))


def test_web_password_prints_a_line_the_service_accepts(tmp_path, monkeypatch, capsys):
    from ansible_collections.storage.replication.plugins.module_utils import cli
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse battery\n"))
    assert cli.main(["web-password", "ops"]) == 0
    line = capsys.readouterr().out.strip()
    path = tmp_path / "passwords"
    path.write_text(line + "\n")
    assert web.Auth(users=web.read_password_file(str(path))).check(basic("ops", "correct horse battery"))


# ---------------------------------------------------------------------------------------------------------------
# The read-only receiver (`serve --read-only`) and node-status

@pytest.mark.parametrize("operation", ["prepare", "finalize", "get-config", "quorum-commit", "set-state", "list"])
def test_the_read_only_key_runs_nothing_but_node_status(cluster, operation):
    target = cluster.receiver("node2", "node1")
    reply = serve.answer(target, lambda: serve.handle(operation, target, io.BytesIO(b'{"source": "node1"}'), READ_ONLY))
    assert reply["ok"] is False and reply["reason"] == "invalid-operation"
    assert "(node-status, session)" in reply["error"]


def test_the_read_only_key_cannot_send_a_stream(cluster):
    target = cluster.receiver("node2", "node1")
    reply = serve.answer(target, lambda: serve.handle(
        "receive job=100-0 guest=100 volume=local-zfs:vm-100-disk-0 snapshot=__replicate_100-0_1__ generation=3 "
        "source=node1", target, io.BytesIO(b"stream"), READ_ONLY))
    assert reply["reason"] == "invalid-operation"
    session = io.BytesIO(json.dumps({"operation": "receive", "request": {"arguments": [], "bytes": 6}}).encode() + b"\nstream")
    out = io.StringIO()
    serve.session(target, session, out, READ_ONLY)
    assert json.loads(out.getvalue().splitlines()[0])["reason"] == "invalid-operation"


def test_node_status_tells_the_jobs_replicas_and_logs_of_the_node(cluster):
    cluster.synced("node1", "100-0", 1_700_000_000)
    cluster.failed("node1", "100-1", 1_700_000_100)
    cluster.log("node1", "100-1", ["start replication job", "end replication job with error: " + ERROR], ["earlier run"])
    os.makedirs(cluster.dir("node2", "state") / "guests")
    (cluster.dir("node2", "state") / "guests" / "100.json").write_text(json.dumps(
        {"guest": 100, "job": "100-0", "source": "node1", "last_sync": 1_700_000_000, "volumes": ["local-zfs:vm-100-disk-0"]}))
    one = FakeChannel(cluster, "node1").call("node-status", {"source": "node1", "logs": {"jobs": ["100-1"], "runs": 2}})
    assert [j["id"] for j in one["jobs"]] == ["100-0", "100-1"]
    assert one["jobs"][1]["error"] == ERROR and one["jobs"][1]["fail_count"] == 1
    assert [job["id"] for job in one["config_jobs"]] == ["100-0", "100-1", "200-0"]
    assert one["logs"]["100-1"] == [
        {"run": -1, "lines": ["2026-01-02 03:04:05 100-1: earlier run"]},
        {"run": 0, "lines": ["2026-01-02 03:04:05 100-1: start replication job",
                             "2026-01-02 03:04:05 100-1: end replication job with error: " + ERROR]}]
    two = FakeChannel(cluster, "node2").call("node-status", {"source": "node1"})
    assert two["replicas"]["100"]["snapshot"] == "__replicate_100-0_1700000000__" and "logs" not in two


def test_node_status_says_a_state_file_is_damaged_instead_of_showing_no_jobs(cluster):
    (cluster.dir("node1", "state") / "replication-state.json").write_text("{broken")
    reply = FakeChannel(cluster, "node1").call("node-status", {"source": "node1"})
    assert "is not valid JSON" in reply["state_error"] and "jobs" not in reply


def test_node_status_refuses_a_caller_outside_the_cluster_and_bad_log_requests(cluster):
    stranger = cluster.receiver("node1", "node9")
    reply = serve.answer(stranger, lambda: serve.control(stranger, "node-status", {"source": "node9"}, READ_ONLY))
    assert reply["reason"] == "not-a-node"
    for logs in ({"jobs": ["../../etc/shadow"]}, {"jobs": ["100-0"], "runs": 0}, {"jobs": "100-0"}, {"what": 1}):
        with pytest.raises(RemoteError, match="refused"):
            FakeChannel(cluster, "node1").call("node-status", {"source": "node1", "logs": logs})


# ---------------------------------------------------------------------------------------------------------------
# The pages, served

@pytest.fixture(name="server")
def server_fixture(cluster):
    servers = []

    def start(app, tls=None):
        server = web.Server(("127.0.0.1", 0), app, tls)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def get(port, path, headers=None, method="GET", context=None):
    connection = (http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10) if context
                  else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
    connection.request(method, path, headers=headers or {})
    response = connection.getresponse()
    body = response.read().decode("utf-8")
    connection.close()
    return response, body


def test_the_cluster_page_shows_every_job_with_its_state_and_the_node_that_did_not_answer(cluster, server):
    now = int(time.time())
    cluster.synced("node1", "100-0", now - 70)
    cluster.failed("node1", "100-1", now - 30)
    cluster.down.add("node2")
    port = server(app_for(cluster))
    response, body = get(port, "/cluster")
    assert response.status == 200 and response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert "script-src 'self'" in response.getheader("Content-Security-Policy")
    assert '<tr id="job-100-0" class="ok">' in body and '<tr id="job-100-1" class="error">' in body
    assert web.html.escape(ERROR) in body
    assert '<tr id="job-200-0" class="unknown">' in body and "node &#x27;node2&#x27; did not answer" in body
    assert "Node node2 did not answer: node &#x27;node2&#x27; (10.0.0.9) is unreachable" in body
    assert "http://" not in body and "https://" not in body  # nothing from elsewhere
    data = json.loads(get(port, "/api/cluster")[1])
    assert data["unanswered"] == ["node2"] and data["generation"] == 3
    jobs = {j["id"]: j for j in data["jobs"]}
    assert jobs["100-0"]["status_text"] == "OK" and 60 <= jobs["100-0"]["lag"] <= 80
    assert jobs["100-1"]["status_text"] == ERROR and jobs["200-0"]["answered"] is False


def test_a_job_with_bandwidth_windows_shows_the_limit_in_effect_now(cluster, server):
    cluster.job("100-0").rate_windows = "*-*-* 00..23:*: 7"  # every hour of every day: 7 MB/s now, not the rate 10
    cluster.cfg.generation += 1
    for name in NODES:
        C.save(cluster.cfg, str(cluster.dir(name, "conf")))
    port = server(app_for(cluster))
    body = get(port, "/guest/100")[1]
    cell = '<td data-column="Rate limit">%s</td>'
    assert cell % "7 MB/s now (windows: *-*-* 00..23:*: 7)" in body.split('id="job-100-0"')[1].split("</tr>")[0], body
    assert cell % "-" in body.split('id="job-100-1"')[1].split("</tr>")[0]  # no rate, no windows: pvesr's dash
    jobs = {j["id"]: j for j in json.loads(get(port, "/api/cluster")[1])["jobs"]}
    assert (jobs["100-0"]["rate_now"], jobs["100-0"]["rate_window"], jobs["100-0"]["rate"]) == (7, "*-*-* 00..23:*", 10)
    assert (jobs["100-1"]["rate_now"], jobs["100-1"]["rate_windows"]) == (None, None)


def test_guest_and_job_pages_show_logs_and_restore_points(cluster, server):
    now = int(time.time())
    cluster.synced("node1", "100-0", now - 10)
    cluster.log("node1", "100-0", ["start replication job", "end replication job"], ["an older run"])
    os.makedirs(cluster.dir("node2", "state") / "guests")
    (cluster.dir("node2", "state") / "guests" / "100.json").write_text(json.dumps(
        {"guest": 100, "job": "100-0", "source": "node1", "last_sync": now - 10, "volumes": ["local-zfs:vm-100-disk-0"]}))
    port = server(app_for(cluster))
    _response, body = get(port, "/guest/100")
    assert "<h1>Guest VM 100 → Replication</h1>" in body and "__replicate_100-0_%d__" % (now - 10) in body
    assert '<details id="log-100-0-run0" open>' in body and "100-0: end replication job" in body
    assert "an older run" in body and '<details id="log-100-0-run1">' in body
    data = json.loads(get(port, "/api/job/100-0")[1])
    assert [run["run"] for run in data["logs"]] == [-1, 0] and data["job"]["owner"] == "node1"
    assert get(port, "/guest/999")[0].status == 404 and get(port, "/api/job/100-9")[0].status == 404
    assert get(port, "/node/../etc")[0].status == 404


def test_removal_and_syncing_show_as_the_panels_say(cluster, server):
    cluster.cfg.mark_job_for_removal("100-1", "full")
    for name in NODES:
        C.save(cluster.cfg, str(cluster.dir(name, "conf")))
    StateFile(str(cluster.dir("node1", "state"))).record_job_start(cluster.job("100-0"), time.time(), node="node1")
    port = server(app_for(cluster))
    data = {j["id"]: j for j in json.loads(get(port, "/api/node/node1")[1])["jobs"]}
    assert data["100-1"]["status_text"] == "Removal Scheduled" and data["100-0"]["running"] is True
    body = get(port, "/node/node1")[1]
    assert '<td data-column="Last Sync">syncing</td>' in body and ">Removal Scheduled<" in body


def test_only_get_and_head_and_only_loopback_names(cluster, server):
    port = server(app_for(cluster))
    assert get(port, "/cluster", method="POST")[0].status == 405
    assert get(port, "/cluster", method="DELETE")[0].getheader("Allow") == "GET, HEAD"
    assert get(port, "/cluster", method="HEAD")[0].status == 200
    assert get(port, "/cluster", headers={"Host": "attacker.example:8099"})[0].status == 421
    assert get(port, "/cluster", headers={"Host": "localhost:8099"})[0].status == 200
    script = get(port, "/static/web.js")
    assert script[0].getheader("Content-Type").startswith("text/javascript") and "setTimeout(refresh" in script[1]
    assert get(port, "/")[0].getheader("Location") == "/cluster"


def test_https_with_a_password_file(cluster, server, tmp_path):
    cert, key = self_signed(tmp_path)
    auth = web.Auth(users={"ops": web.hash_password("open sesame")})
    port = server(app_for(cluster, auth=auth, loopback=False), tls=web.tls_context(cert, key))
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    response, _body = get(port, "/cluster", context=context)
    assert response.status == 401 and response.getheader("WWW-Authenticate").startswith("Basic ")
    response, body = get(port, "/cluster", headers={"Authorization": basic("ops", "open sesame")}, context=context)
    assert response.status == 200 and "Datacenter → Replication" in body
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        get(port, "/cluster")  # plain HTTP to the TLS port


def test_a_slow_client_does_not_hold_up_the_others(cluster, server, tmp_path):
    cert, key = self_signed(tmp_path)
    port = server(app_for(cluster), tls=web.tls_context(cert, key))
    import socket
    idle = socket.create_connection(("127.0.0.1", port))  # connects and never says hello
    try:
        context = ssl.create_default_context(cafile=cert)
        context.check_hostname = False
        started = time.monotonic()
        assert get(port, "/api", context=context)[0].status == 200
        assert time.monotonic() - started < 5
    finally:
        idle.close()


def test_a_run_does_not_import_the_web_service():
    code = ("import sys; from ansible_collections.storage.replication.plugins.module_utils import cli, runner, replicate, "
            "receiver; cli.build_parser(); print(sorted(m for m in sys.modules if m.endswith(('.web', '.nodeview')) "
            "or m in ('http.server', 'ssl')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------------

def basic(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def self_signed(tmp_path):
    return certificates.self_signed(tmp_path)[:2]
