# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The runner role on fresh lab nodes, with real ansible-playbook runs.

The tests run in order on a lab of their own (``<SR_LAB_NAME>-role``, fresh nodes): the idempotence ladder
(dry run changes nothing, real run, second dry run and second run report nothing), what the nodes hold afterwards
(venv, CLI, units verified by systemd-analyze, identity file, SSH trust), a peer reaching only the receiver, and
refusals that change nothing. The playbook applies the role alone, from a snapshot of the collection taken when
the module starts, so that edits to the working tree during the run cannot make a second run differ.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from lab.site_tour import ensure_wheelhouse

from ansible_runner import playbook_lab, run_playbook, snapshot_collection

from ansible_collections.storage.replication.plugins.module_utils.web import hash_password

pytestmark = pytest.mark.lab

INSTALL_DIR = "/opt/storage-replication"
UNITS = ("/etc/systemd/system/storage-replication.service", "/etc/systemd/system/storage-replication.timer",
         "/etc/systemd/system/storage-replication-fence.service")
# Everything the role may write on a node; a listing with sizes, modes and times shows any change.
WATCHED = [INSTALL_DIR, "/etc/storage-replication", "/var/lib/storage-replication", "/var/log/storage-replication",
           "/etc/systemd/system", "/root/.ssh"]
PINS = {"paramiko": "5.1.0", "croniter": "7.0.0"}


@pytest.fixture(scope="module")
def role_lab():
    with playbook_lab("%s-role" % os.environ.get("SR_LAB_NAME", "srtest")[:12], "256M") as lab:
        yield lab


class Role:
    """Applies the runner role alone to the lab's replication_nodes, from a snapshot of the collection."""

    def __init__(self, lab, directory):
        self.lab = lab
        self.collections = snapshot_collection(directory / "collections")
        self.playbook = directory / "runner.yml"
        self.playbook.write_text(yaml.safe_dump([{
            "name": "Apply the runner role", "hosts": "replication_nodes", "gather_facts": False,
            "roles": [{"role": "storage.replication.runner"}]}], sort_keys=False))
        self.wheelhouse = ensure_wheelhouse()
        self.last_real_run = None

    def apply(self, check=False, extra_vars=None, **kwargs):
        extra = dict({"runner_pip_wheelhouse": self.wheelhouse}, **(extra_vars or {}))
        run = run_playbook(self.lab.inventory_path, str(self.playbook), check=check, extra_vars=extra,
                           collections_path=self.collections, timeout=1800, **kwargs)
        if not check and run.rc == 0:
            self.last_real_run = run
        return run

    def footprint(self):
        """{node: listing of every watched path (name, size, mode, mtime) + checksums of the files}."""
        script = ("find %s -xdev -printf '%%p %%s %%m %%T@\\n' 2>/dev/null | sort; "
                  "find %s -xdev -type f -exec sha256sum {} + 2>/dev/null | sort") % (" ".join(WATCHED), " ".join(WATCHED))
        return {node: self.lab.exec(node, ["sh", "-c", script]).stdout for node in self.lab.nodes}

    def read(self, node, path):
        return self.lab.exec(node, ["cat", path]).stdout


@pytest.fixture(scope="module")
def role(role_lab, tmp_path_factory):
    return Role(role_lab, tmp_path_factory.mktemp("role"))


def test_dry_run_on_fresh_nodes_reports_changes_and_changes_nothing(role):
    before = role.footprint()
    run = role.apply(check=True)
    run.assert_ok()
    for node in role.lab.nodes:
        changed = set(run.changed_tasks(node))
        assert {"storage.replication.runner : Install the runner's pinned dependencies in its virtual environment",
                "storage.replication.runner : Install the storage-replication launcher",
                "storage.replication.runner : Create the node's SSH key",
                "storage.replication.runner : Let the peers run the engine's receiving side, and nothing else",
                "storage.replication.runner : Install the systemd units"} <= changed, run.describe()
    assert role.footprint() == before
    for node in role.lab.nodes:
        assert role.lab.exec(node, ["ls", "-A", INSTALL_DIR]).stdout == ""
        assert role.lab.exec(node, ["test", "-e", "/root/.ssh/id_ed25519"], check=False).returncode == 1


def test_real_run_installs_the_runner(role):
    run = role.apply()
    run.assert_ok()
    for node in role.lab.nodes:
        assert run.changed_count(node) > 0
        venv_versions = role.lab.exec(node, [INSTALL_DIR + "/venv/bin/python", "-c",
                                             "import paramiko, croniter; from importlib.metadata import version; "
                                             "print(version('paramiko'), version('croniter'))"]).stdout.split()
        assert venv_versions == [PINS["paramiko"], PINS["croniter"]]
        assert role.lab.exec(node, ["storage-replication", "--help"]).stdout.startswith("usage: storage-replication")
        assert role.read(node, "/var/lib/storage-replication/local-node") == node + "\n"
        modes = role.lab.exec(node, ["stat", "-c", "%n %a %U", INSTALL_DIR, "/etc/storage-replication",
                                     "/var/lib/storage-replication", "/var/log/storage-replication",
                                     INSTALL_DIR + "/bin/storage-replication"]).stdout.splitlines()
        assert modes == [INSTALL_DIR + " 755 root", "/etc/storage-replication 750 root",
                         "/var/lib/storage-replication 750 root", "/var/log/storage-replication 750 root",
                         INSTALL_DIR + "/bin/storage-replication 755 root"]
    said = run.task_results("storage.replication.runner : Say who starts the runner where systemd does not", "node1")
    assert "installed in /etc/systemd/system and verified, but not started" in said[0]["msg"]


def test_units_are_installed_and_verified(role):
    for node in role.lab.nodes:
        verify = role.lab.exec(node, ["systemd-analyze", "verify"] + list(UNITS), check=False)
        assert verify.returncode == 0, verify.stderr
        service, timer, fence = (role.read(node, unit) for unit in UNITS)
        assert service.startswith("#") and timer.startswith("#") and fence.startswith("#")  # ansible_managed
        assert "Type=oneshot\n" in service
        exec_start = [line for line in service.splitlines() if line.startswith("ExecStart=")]
        assert exec_start == ["ExecStart=%s/bin/storage-replication run --mail" % INSTALL_DIR]
        assert "IOSchedulingClass=idle\n" in service and "Nice=10\n" in service and "TimeoutStartSec=12h\n" in service
        assert "OnCalendar=minutely\n" in timer and "Persistent=true\n" in timer and "AccuracySec=1s\n" in timer
        assert "ExecStart=%s/bin/storage-replication fence\n" % INSTALL_DIR in fence
        assert "Restart=always\n" in fence and "RestartSec=2\n" in fence and "WantedBy=multi-user.target\n" in fence


def test_runner_settings_are_written_and_accepted_by_the_runner(role):
    for node in role.lab.nodes:
        settings = json.loads(role.read(node, "/etc/storage-replication/runner.json"))
        assert settings == {"max_parallel": 4, "log_runs": 10, "notify_command": None,
                            "metrics_file": "/var/lib/prometheus/node-exporter/storage-replication.prom",
                            "fence_after": 60, "fence_interval": 5, "receive_stall_seconds": 120}
        # The runner itself reads them without complaint (an idle run: no jobs are configured yet).
        idle = role.lab.exec(node, [INSTALL_DIR + "/bin/storage-replication", "run"], check=False)
        assert idle.returncode == 0, idle.stderr


def test_authorized_keys_let_peers_run_only_the_receiver(role):
    controller_key = role.lab.controller_key_path.with_suffix(".pub").read_text(encoding="utf-8").strip()
    public = {node: role.read(node, "/root/.ssh/id_ed25519.pub").split()[:2] for node in role.lab.nodes}
    for node in role.lab.nodes:
        lines = role.read(node, "/root/.ssh/authorized_keys").splitlines()
        assert lines[0] == controller_key
        block = lines[lines.index(next(line for line in lines if line.startswith("# BEGIN storage.replication"))):]
        expected = ['restrict,command="%s/bin/storage-replication serve --peer %s" %s storage-replication@%s'
                    % (INSTALL_DIR, peer, " ".join(public[peer]), peer) for peer in role.lab.nodes if peer != node]
        assert block[1:-1] == expected
        assert block[-1].startswith("# END storage.replication")


def test_facts_describe_every_node_for_the_cluster_configuration(role):
    facts = role.last_real_run.facts("node2")
    nodes = facts["runner_cluster_nodes"]
    assert [n["name"] for n in nodes] == role.lab.nodes
    for entry in nodes:
        host_key = role.read(entry["name"], "/etc/ssh/ssh_host_ed25519_key.pub").split()[:2]
        assert entry["address"] == role.lab.address(entry["name"])
        assert entry["port"] == 22
        assert entry["host_key"] == " ".join(host_key)
        assert entry["public_key"] == " ".join(role.read(entry["name"], "/root/.ssh/id_ed25519.pub").split()[:2])
    assert facts["runner_node"] == nodes[1]


def _ssh_from(role, source, target, command, known_hosts_line):
    """ssh from source to target with source's own key, pinning target's host key (verification on)."""
    role.lab.exec(source, ["sh", "-c", 'printf "%s\\n" "$1" > /tmp/role-known-hosts', "-", known_hosts_line])
    return role.lab.exec(source, ["ssh", "-i", "/root/.ssh/id_ed25519", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                                  "-o", "UserKnownHostsFile=/tmp/role-known-hosts", "-o", "StrictHostKeyChecking=yes",
                                  "root@" + role.lab.address(target)] + command, check=False, timeout=60)


def test_a_peer_reaches_only_the_receiver(role):
    node2 = role.last_real_run.facts("node1")["runner_cluster_nodes"][1]
    pinned = "%s %s" % (node2["address"], node2["host_key"])
    for command in (["id"], ["/bin/sh", "-c", "id"], []):
        proc = _ssh_from(role, "node1", "node2", command, pinned)
        assert proc.returncode != 0
        assert "uid=0" not in proc.stdout
        answer = json.loads(proc.stdout)
        assert answer["ok"] is False and answer["reason"] == "invalid-operation" and answer["node"] == "node2"


def test_a_wrong_host_key_is_refused(role):
    wrong = role.last_real_run.facts("node1")["runner_cluster_nodes"][2]["host_key"]  # node3's key for node2
    proc = _ssh_from(role, "node1", "node2", ["list"], "%s %s" % (role.lab.address("node2"), wrong))
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr


def test_second_dry_run_and_second_run_change_nothing(role):
    before = role.footprint()
    dry = role.apply(check=True)
    dry.assert_ok()
    assert dry.changed_count() == 0, dry.changed_tasks()
    again = role.apply()
    again.assert_ok()
    assert again.changed_count() == 0, again.changed_tasks()
    assert role.footprint() == before


def test_a_node_left_out_of_the_play_keeps_its_trust(role):
    """Strict, a node left out fails the role on every node and changes nothing; not strict, the others go on, keep
    trusting the key recorded for it, and say that they could not refresh it."""
    before = role.footprint()
    strict = role.apply(limit="node1,node2", extra_vars={"runner_strict": True})
    assert strict.rc != 0
    messages = [f["result"]["msg"] for f in strict.failures()]
    assert len(messages) == 2 and all("node3 of group 'replication_nodes' are not in this play" in m
                                      and "runner_strict" in m for m in messages), messages
    assert role.footprint() == before

    run = role.apply(limit="node1,node2")
    run.assert_ok()
    said = run.task_results("storage.replication.runner : Say what could not be refreshed for the nodes not in this play")
    assert len(said) == 2 and all("Kept as recorded, not refreshed: the keys of node3" in s["msg"] for s in said), said
    assert run.changed_count() == 0, run.changed_tasks()
    assert role.footprint() == before
    # The cluster's nodes still include node3, from what node1 trusts and the inventory.
    nodes = run.facts("node1")["runner_cluster_nodes"]
    assert [n["name"] for n in nodes] == ["node1", "node2", "node3"]
    assert nodes[2]["public_key"].startswith("ssh-ed25519 ") and "host_key" not in nodes[2]


def test_unpinned_requirements_are_refused(role):
    before = role.footprint()
    run = role.apply(extra_vars={"runner_pip_requirements": ["paramiko>=5", "croniter==7.0.0"]})
    assert run.rc != 0
    messages = {f["host"]: f["result"]["msg"] for f in run.failures()}
    assert sorted(messages) == role.lab.nodes
    assert all("must pin every package as name==version; these do not: paramiko>=5." in m for m in messages.values())
    assert role.footprint() == before


def test_a_timer_systemd_rejects_is_not_installed(role):
    run = role.apply(extra_vars={"runner_timer_on_calendar": "every other tuesday"})
    assert run.rc != 0
    messages = {f["host"]: f["result"]["msg"] for f in run.failures()}
    assert sorted(messages) == role.lab.nodes
    assert all("systemd-analyze verify rejects the runner's units" in m and "every other tuesday" in m
               for m in messages.values()), messages
    for node in role.lab.nodes:
        assert "OnCalendar=minutely\n" in role.read(node, UNITS[1])


# ---------------------------------------------------------------------------------------------------------------
# The web service (runner_web_listen)

WEB_UNIT = "/etc/systemd/system/storage-replication-web.service"
WEB_DIR = "/etc/storage-replication/web"


def test_web_pages_off_loopback_without_tls_are_refused_before_any_change(role):
    before = role.footprint()
    run = role.apply(extra_vars={"runner_web_listen": "0.0.0.0:8443", "runner_web_token": "0123456789abcdef0123"})
    assert run.rc != 0
    messages = {f["host"]: f["result"]["msg"] for f in run.failures()}
    assert sorted(messages) == role.lab.nodes
    assert all("runner_web_listen is 0.0.0.0:8443, not a loopback address" in m and "runner_web_tls_cert" in m
               for m in messages.values()), messages
    assert "0123456789abcdef0123" not in run.stdout + run.stderr + json.dumps(run.results)  # the token is no_log
    assert role.footprint() == before


def test_web_pages_on_loopback_are_installed_with_read_only_trust(role):
    web = {"runner_web_listen": "127.0.0.1:8099", "runner_web_users": [{"name": "ops", "password_hash": hash_password("a long password")}]}
    run = role.apply(extra_vars=web)
    run.assert_ok()
    checked = run.task_results("storage.replication.runner : Check the web service's configuration (its files, TLS, "
                               "users) before it is started", "node1")
    assert checked[0]["stdout"] == ("storage-replication web: would serve http://127.0.0.1:8099/ (read-only, "
                                    "authentication required) for node node1")
    web_keys = {node: " ".join(role.read(node, WEB_DIR + "/id_ed25519.pub").split()[:2]) for node in role.lab.nodes}
    for node in role.lab.nodes:
        verify = role.lab.exec(node, ["systemd-analyze", "verify", WEB_UNIT], check=False)
        assert verify.returncode == 0, verify.stderr
        unit = role.read(node, WEB_UNIT)
        assert ("ExecStart=%s/bin/storage-replication web --listen 127.0.0.1:8099 --refresh 5 --key %%d/web-key "
                "--cluster-file %%d/node.json --local-node-file %%d/local-node --password-file %%d/passwords\n"
                % INSTALL_DIR) in unit
        assert "LoadCredential=web-key:%s/id_ed25519\n" % WEB_DIR in unit and "DynamicUser=yes\n" in unit
        assert role.lab.exec(node, ["stat", "-c", "%n %a", WEB_DIR, WEB_DIR + "/passwords", WEB_DIR + "/node.json"]
                             ).stdout.split() == [WEB_DIR, "700", WEB_DIR + "/passwords", "600", WEB_DIR + "/node.json", "600"]
        assert role.lab.exec(node, ["test", "-e", WEB_DIR + "/token"], check=False).returncode == 1
        assert json.loads(role.read(node, WEB_DIR + "/node.json"))["nodes"][node]["address"] == role.lab.address(node)
        lines = role.read(node, "/root/.ssh/authorized_keys").splitlines()
        # every node's web key (this node's own too), bound to read-only access
        assert ['restrict,command="%s/bin/storage-replication serve --peer %s --read-only" %s storage-replication-web@%s'
                % (INSTALL_DIR, peer, web_keys[peer], peer) for peer in role.lab.nodes] \
            == [line for line in lines if "--read-only" in line]
    # node1's web key reaches node2's read-only receiver, which runs node-status (refused here only because the role
    # alone writes no cluster configuration) and nothing else
    pinned = "%s %s" % (role.lab.address("node2"), " ".join(role.read("node2", "/etc/ssh/ssh_host_ed25519_key.pub").split()[:2]))
    role.lab.exec("node1", ["sh", "-c", 'printf "%s\\n" "$1" > /tmp/role-known-hosts', "-", pinned])
    for operation, reason in (("node-status", "not-a-node"), ("get-config", "invalid-operation"), ("prepare", "invalid-operation")):
        proc = role.lab.exec("node1", ["ssh", "-i", WEB_DIR + "/id_ed25519", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                                       "-o", "UserKnownHostsFile=/tmp/role-known-hosts", "-o", "StrictHostKeyChecking=yes",
                                       "root@" + role.lab.address("node2"), operation],
                             input='{"source": "node1"}', check=False, timeout=60)
        assert json.loads(proc.stdout)["reason"] == reason, (operation, proc.stdout, proc.stderr)
    again = role.apply(extra_vars=web)
    again.assert_ok()
    assert again.changed_count() == 0, again.changed_tasks()


def test_web_pages_switched_off_leave_no_unit_and_no_read_only_trust(role):
    role.apply().assert_ok()
    for node in role.lab.nodes:
        assert role.lab.exec(node, ["test", "-e", WEB_UNIT], check=False).returncode == 1
        assert role.lab.exec(node, ["test", "-e", WEB_DIR + "/passwords"], check=False).returncode == 1
        assert "--read-only" not in role.read(node, "/root/.ssh/authorized_keys")
