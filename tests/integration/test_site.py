# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""site.yml, the runner role and the modules on a fresh lab, with real ansible-playbook runs.

The tests of this file run in order on one lab of their own (``<SR_LAB_NAME>-site``, fresh nodes, so that the first
dry run meets nodes without the runner). site.yml's first play is the runner role, so its idempotence ladder is the
role's too: a dry run on fresh nodes reports the role's changes and changes nothing, the real run installs the runner
and converges the configuration, a second dry run and a second run report nothing, and nothing the role or the
modules write has changed (a listing with sizes, modes, times and checksums). Then what the nodes hold (venv, CLI,
units verified by systemd-analyze, settings, identity file, SSH trust, a peer reaching only the receiver),
replication after site.yml, the ladder of each module, --diff, bad inventories, job_info and run, a user's own
playbook (no interpreter setting at all) and a runner installed from another version of the collection; last the role
applied alone, as a user may apply it (it gathers the facts it needs itself): its refusals, which change nothing, and
its web service (runner_web_listen) switched on and off.
The playbooks run from a snapshot of the collection taken when the module starts, so that edits to the working
tree during the run cannot make a second run differ.
"""

from __future__ import annotations

import contextlib
import json
import os
import re

import pytest
import yaml

from lab.site_tour import VOLUMES, replica_digests, site_vars, write_data

from ansible_runner import playbook_lab, run_playbook, snapshot_collection

from ansible_collections.storage.replication.plugins.module_utils.web import hash_password

pytestmark = pytest.mark.lab

CONFDIR = "/etc/storage-replication"
ENGINE = "/opt/storage-replication/lib/ansible_collections/storage/replication/plugins/module_utils"
INSTALL_DIR = "/opt/storage-replication"
PYTHON = INSTALL_DIR + "/venv/bin/python"
UNITS = ("/etc/systemd/system/storage-replication.service", "/etc/systemd/system/storage-replication.timer",
         "/etc/systemd/system/storage-replication-fence.service", "/etc/systemd/system/storage-replication-keeper.service",
         "/etc/systemd/system/storage-replication-preload.service")
# Everything the role and the modules may write on a node; a listing with sizes, modes and times shows any change.
WATCHED = [INSTALL_DIR, CONFDIR, "/var/lib/storage-replication", "/var/log/storage-replication",
           "/etc/systemd/system", "/root/.ssh"]
PINS = {"paramiko": "5.1.0", "croniter": "7.0.0"}
ROLE_TASKS = {"storage.replication.runner : Install the runner's pinned dependencies in its virtual environment",
              "storage.replication.runner : Install the storage-replication launcher",
              "storage.replication.runner : Create the node's SSH key",
              "storage.replication.runner : Let the peers run the engine's receiving side, and nothing else",
              "storage.replication.runner : Install the systemd units"}


@pytest.fixture(scope="module")
def site_lab():
    with playbook_lab("%s-site" % os.environ.get("SR_LAB_NAME", "srtest")[:12], "512M") as lab:
        yield lab


class Site:
    """Runs playbooks against the lab with the example inventory's variables (overridable per run)."""

    def __init__(self, lab, directory):
        self.lab = lab
        self.vars = site_vars()
        # a snapshot: the runs compared see the same code while the tree changes
        self.collections = snapshot_collection(directory / "collections")
        self.role_playbook = directory / "runner.yml"
        self.role_playbook.write_text(yaml.safe_dump([{
            "name": "Apply the runner role", "hosts": "replication_nodes", "gather_facts": False,
            "roles": [{"role": "storage.replication.runner"}]}], sort_keys=False))
        self.last_real_run = None

    def play(self, overrides=None, **kwargs):
        """site.yml with the example inventory's variables (``overrides`` replace some)."""
        extra = dict(self.vars, **(overrides or {}))
        run = run_playbook(self.lab.inventory_path, "playbooks/site.yml", extra_vars=extra, timeout=1800,
                           collections_path=self.collections, **kwargs)
        if not kwargs.get("check") and run.rc == 0:
            self.last_real_run = run
        return run

    def apply_role(self, extra_vars=None, **kwargs):
        """The runner role alone (gather_facts off: the role gathers what it needs)."""
        extra = dict({"runner_pip_wheelhouse": self.vars["runner_pip_wheelhouse"]}, **(extra_vars or {}))
        return run_playbook(self.lab.inventory_path, str(self.role_playbook), extra_vars=extra, timeout=1800,
                            collections_path=self.collections, **kwargs)

    def converge(self, overrides=None, **kwargs):
        """Only site.yml's configuration play (--tags replication_config, through ANSIBLE_RUN_TAGS)."""
        os.environ["ANSIBLE_RUN_TAGS"] = "replication_config"
        try:
            return self.play(overrides, **kwargs)
        finally:
            del os.environ["ANSIBLE_RUN_TAGS"]

    def task(self, tmp_path, tasks, hosts="replication_nodes", inventory=None, **kwargs):
        """A one-play playbook of ``tasks`` (the modules run under the inventory's Python, the node's python3)."""
        play = [{"name": "Module under test", "hosts": hosts, "gather_facts": False, "become": True, "tasks": tasks}]
        path = tmp_path / "play.yml"
        path.write_text(yaml.safe_dump(play, sort_keys=False))
        return run_playbook(inventory or self.lab.inventory_path, str(path), timeout=900, collections_path=self.collections,
                            **kwargs)

    def footprint(self):
        """{node: listing of every watched path (name, size, mode, mtime) + checksums of the files}.

        Lock files are left out: whoever takes a lock writes its pid into it (for the timeout message), and even a
        run that changes nothing takes the configuration's lock to read it consistently."""
        script = ("find %s -xdev -not -name '*.lock' -printf '%%p %%s %%m %%T@\\n' 2>/dev/null | sort; "
                  "find %s -xdev -type f -not -name '*.lock' -exec sha256sum {} + 2>/dev/null | sort") % (" ".join(WATCHED), " ".join(WATCHED))
        return {node: self.lab.exec(node, ["sh", "-c", script]).stdout for node in self.lab.nodes}

    def read(self, node, path):
        return self.lab.exec(node, ["cat", path]).stdout

    def config_files(self):
        """{node: text of replication.cfg + cluster.json} (empty strings where there is none)."""
        files = {}
        for node in self.lab.nodes:
            proc = self.lab.exec(node, ["sh", "-c", "cat %s/replication.cfg %s/cluster.json 2>/dev/null || true" % (CONFDIR, CONFDIR)])
            files[node] = proc.stdout
        return files

    def cluster(self, node="node1"):
        return json.loads(self.lab.exec(node, ["cat", CONFDIR + "/cluster.json"]).stdout)

    def cli(self, node, *argv, check=True):
        return self.lab.exec(node, ["storage-replication"] + list(argv), check=check, timeout=600)


@pytest.fixture(scope="module")
def site(site_lab, tmp_path_factory):
    return Site(site_lab, tmp_path_factory.mktemp("site"))


def assert_replica(lab, target, job_id, name="vm-100-disk-0"):
    source, replica = replica_digests(lab, target, name, job_id)
    assert source == replica, "%s on %s differs from node1's (job %s)" % (name, target, job_id)


# ---------------------------------------------------------------------------------------------------------------
# The idempotence ladder of site.yml and its runner role, and what the nodes hold after it

def test_dry_run_on_fresh_nodes_reports_changes_and_changes_nothing(site):
    before = site.footprint()
    dry = site.play(check=True)
    dry.assert_ok()
    assert dry.changed_count() > 0
    said = dry.task_results("Say why a dry run on fresh nodes cannot show the configuration changes")
    assert len(said) == 1 and "The runner is not installed yet" in said[0]["msg"], said
    for node in site.lab.nodes:
        assert ROLE_TASKS <= set(dry.changed_tasks(node)), dry.describe()
    assert site.footprint() == before
    for node in site.lab.nodes:
        assert site.lab.exec(node, ["ls", "-A", INSTALL_DIR]).stdout == "", "the dry run installed something on %s" % node
        assert site.lab.exec(node, ["test", "-e", "/root/.ssh/id_ed25519"], check=False).returncode == 1
        assert site.lab.exec(node, ["test", "-e", CONFDIR + "/current"], check=False).returncode == 1


def test_real_run_installs_the_runner_and_converges_the_configuration(site):
    real = site.play()
    real.assert_ok()
    for node in site.lab.nodes:
        assert real.changed_count(node) > 0
        venv_versions = site.lab.exec(node, [PYTHON, "-c", "import paramiko, croniter; from importlib.metadata import version; "
                                                           "print(version('paramiko'), version('croniter'))"]).stdout.split()
        assert venv_versions == [PINS["paramiko"], PINS["croniter"]]
        assert site.lab.exec(node, ["storage-replication", "--help"]).stdout.startswith("usage: storage-replication")
        assert site.read(node, "/var/lib/storage-replication/local-node") == node + "\n"
        modes = site.lab.exec(node, ["stat", "-c", "%n %a %U", INSTALL_DIR, CONFDIR, "/var/lib/storage-replication",
                                     "/var/log/storage-replication", INSTALL_DIR + "/bin/storage-replication"]).stdout.splitlines()
        assert modes == [INSTALL_DIR + " 755 root", CONFDIR + " 750 root", "/var/lib/storage-replication 750 root",
                         "/var/log/storage-replication 750 root", INSTALL_DIR + "/bin/storage-replication 755 root"]
    said = real.task_results("storage.replication.runner : Say who starts the runner where systemd does not", "node1")
    assert "installed in /etc/systemd/system and verified, but not started" in said[0]["msg"]

    assert {"Record the nodes of the cluster, their addresses and host keys", "Record the storages",
            "Converge the replication jobs"} <= set(real.changed_tasks("node1"))
    files = site.config_files()
    assert len(set(files.values())) == 1, "the nodes hold different configurations: %s" % files
    model = site.cluster()
    assert sorted(model["nodes"]) == ["node1", "node2", "node3"]
    assert all(n["host_key"].startswith("ssh-ed25519 ") for n in model["nodes"].values())
    assert model["guests"]["100"]["node"] == "node1" and model["guests"]["200"]["type"] == "ct"
    jobs = files["node1"]
    assert "local: 100-0\n\ttarget node2\n" in jobs and "\trate 50\n" in jobs and "local: 200-0\n" in jobs
    assert "\tdisable\n" in jobs


def test_units_are_installed_and_verified(site):
    for node in site.lab.nodes:
        verify = site.lab.exec(node, ["systemd-analyze", "verify"] + list(UNITS), check=False)
        assert verify.returncode == 0, verify.stderr
        service, timer, fence, keeper, preload = (site.read(node, unit) for unit in UNITS)
        assert all(unit.startswith("#") for unit in (service, timer, fence, keeper, preload))  # ansible_managed
        assert "Type=oneshot\n" in service
        exec_start = [line for line in service.splitlines() if line.startswith("ExecStart=")]
        assert exec_start == ["ExecStart=%s/bin/storage-replication run --mail" % INSTALL_DIR]
        assert "IOSchedulingClass=idle\n" in service and "Nice=10\n" in service and "TimeoutStartSec=12h\n" in service
        assert "OnCalendar=minutely\n" in timer and "Persistent=true\n" in timer and "AccuracySec=1s\n" in timer
        assert "ExecStart=%s/bin/storage-replication fence\n" % INSTALL_DIR in fence
        assert "Restart=always\n" in fence and "RestartSec=2\n" in fence and "WantedBy=multi-user.target\n" in fence
        assert "ExecStart=%s/bin/storage-replication keep\n" % INSTALL_DIR in keeper
        assert "RuntimeDirectory=storage-replication\n" in keeper and "RuntimeDirectoryMode=0700\n" in keeper
        assert "Restart=always\n" in keeper and "WantedBy=multi-user.target\n" in keeper
        # the two share /run/storage-replication: neither may remove it (and the other's socket) when it stops
        assert all("RuntimeDirectoryPreserve=yes\n" in unit for unit in (keeper, preload))
        assert "ExecStart=%s/bin/storage-replication preload\n" % INSTALL_DIR in preload
        assert "KillMode=process\n" in preload and "Restart=always\n" in preload, "its runs outlive a restart"


def test_runner_settings_are_written_and_accepted_by_the_runner(site):
    for node in site.lab.nodes:
        settings = json.loads(site.read(node, CONFDIR + "/runner.json"))
        assert settings == {"max_parallel": 4, "log_runs": 10, "notify_command": None,
                            "metrics_file": "/var/lib/prometheus/node-exporter/storage-replication.prom",
                            "fence_after": 60, "fence_interval": 5, "receive_stall_seconds": 120}
    # The runner itself reads them without complaint: an idle run where no guest lives (node1's run, with its jobs,
    # is test_replication_happens_after_site's).
    for node in ("node2", "node3"):
        idle = site.lab.exec(node, [INSTALL_DIR + "/bin/storage-replication", "run"], check=False)
        assert idle.returncode == 0, idle.stderr


def test_authorized_keys_let_peers_run_only_the_receiver(site):
    controller_key = site.lab.controller_key_path.with_suffix(".pub").read_text(encoding="utf-8").strip()
    public = {node: site.read(node, "/root/.ssh/id_ed25519.pub").split()[:2] for node in site.lab.nodes}
    for node in site.lab.nodes:
        lines = site.read(node, "/root/.ssh/authorized_keys").splitlines()
        assert lines[0] == controller_key
        block = lines[lines.index(next(line for line in lines if line.startswith("# BEGIN storage.replication"))):]
        expected = ['restrict,command="%s/bin/storage-replication serve --peer %s" %s storage-replication@%s'
                    % (INSTALL_DIR, peer, " ".join(public[peer]), peer) for peer in site.lab.nodes if peer != node]
        assert block[1:-1] == expected
        assert block[-1].startswith("# END storage.replication")


def test_facts_describe_every_node_for_the_cluster_configuration(site):
    facts = site.last_real_run.facts("node2")
    nodes = facts["runner_cluster_nodes"]
    assert [n["name"] for n in nodes] == site.lab.nodes
    for entry in nodes:
        host_key = site.read(entry["name"], "/etc/ssh/ssh_host_ed25519_key.pub").split()[:2]
        assert entry["address"] == site.lab.address(entry["name"])
        assert entry["port"] == 22
        assert entry["host_key"] == " ".join(host_key)
        assert entry["public_key"] == " ".join(site.read(entry["name"], "/root/.ssh/id_ed25519.pub").split()[:2])
    assert facts["runner_node"] == nodes[1]


def _ssh_from(site, source, target, command, known_hosts_line, key="/root/.ssh/id_ed25519", stdin=None):
    """ssh from source to target with one of source's keys (its own by default), pinning target's host key
    (verification on)."""
    site.lab.exec(source, ["sh", "-c", 'printf "%s\\n" "$1" > /tmp/role-known-hosts', "-", known_hosts_line])
    return site.lab.exec(source, ["ssh", "-i", key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                                  "-o", "UserKnownHostsFile=/tmp/role-known-hosts", "-o", "StrictHostKeyChecking=yes",
                                  "root@" + site.lab.address(target)] + command, input=stdin, check=False, timeout=60)


def test_a_peer_reaches_only_the_receiver(site):
    node2 = site.last_real_run.facts("node1")["runner_cluster_nodes"][1]
    pinned = "%s %s" % (node2["address"], node2["host_key"])
    for command in (["id"], ["/bin/sh", "-c", "id"], []):
        proc = _ssh_from(site, "node1", "node2", command, pinned)
        assert proc.returncode != 0
        assert "uid=0" not in proc.stdout
        answer = json.loads(proc.stdout)
        assert answer["ok"] is False and answer["reason"] == "invalid-operation" and answer["node"] == "node2"


def test_a_wrong_host_key_is_refused(site):
    wrong = site.last_real_run.facts("node1")["runner_cluster_nodes"][2]["host_key"]  # node3's key for node2
    proc = _ssh_from(site, "node1", "node2", ["list"], "%s %s" % (site.lab.address("node2"), wrong))
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr


def test_second_dry_run_and_second_run_change_nothing(site):
    before, files = site.footprint(), site.config_files()
    again_dry = site.play(check=True, diff=True)
    again_dry.assert_ok()
    again = site.play()
    again.assert_ok()
    assert again_dry.changed_tasks() == [] and again.changed_tasks() == [], (again_dry.changed_tasks(), again.changed_tasks())
    assert again_dry.changed_count() == 0 and again.changed_count() == 0
    assert site.footprint() == before
    assert site.config_files() == files


def test_replication_happens_after_site(site):
    """The runner, driven where a timer would fire, replicates guest 100 to node2 and node3 (rate-limited), not 200."""
    lab = site.lab
    for name, mib in VOLUMES.items():
        lab.exec("node1", ["zfs", "create", "-p", "rpool/data/" + name])
        write_data(lab, name, mib)
    site.cli("node1", "run")
    assert_replica(lab, "node2", "100-0")
    assert_replica(lab, "node3", "100-1")
    assert lab.exec("node2", ["zfs", "list", "rpool/data/subvol-200-disk-0"], check=False).returncode != 0, \
        "the disabled job 200-0 replicated"
    status = json.loads(site.cli("node1", "status", "--output-format", "json").stdout)
    assert {j["id"]: j["fail_count"] for j in status} == {"100-0": 0, "100-1": 0, "200-0": 0}

    write_data(lab, "vm-100-disk-0", 1, seek=2)
    site.cli("node1", "run", "--id", "100-0")
    assert_replica(lab, "node2", "100-0")
    log = lab.exec("node1", ["cat", "/var/log/storage-replication/100-0.log"]).stdout
    assert "incremental sync 'local-zfs:vm-100-disk-0'" in log, log


# ---------------------------------------------------------------------------------------------------------------
# Each module: the ladder (dry run reports and changes nothing on any node; real run; then no change)

LADDERS = {
    "storage": [{"name": "Module", "storage.replication.storage": {"id": "tank-zfs", "pool": "rpool/tank"}, "run_once": True}],
    "guest": [{"name": "Module", "storage.replication.guest": {
        "id": 300, "type": "service", "node": "node2", "volumes": ["local-zfs:subvol-300-disk-0"],
        "hooks": {"status": ["/bin/true"]}}, "run_once": True}],
    "job": [{"name": "Module", "storage.replication.job": {"guest": 200, "target": "node3", "schedule": "*/10"}, "run_once": True}],
    "node": [{"name": "Module", "storage.replication.node": {"name": "node4", "address": "192.0.2.44", "allow_unreachable": True},
              "run_once": True}],
}


@pytest.mark.parametrize("module", list(LADDERS))
def test_module_ladder(site, tmp_path, module):
    tasks = LADDERS[module]
    before = site.config_files()
    dry = site.task(tmp_path, tasks, check=True)
    dry.assert_ok()
    assert dry.changed_tasks() == ["Module"]
    assert site.config_files() == before, "the dry run changed a node's configuration"
    real = site.task(tmp_path, tasks, diff=True)
    real.assert_ok()
    assert real.changed_tasks() == ["Module"]
    after = site.config_files()
    assert after != before and len(set(after.values())) == 1
    # The callback does not record diffs: read the diff ansible-playbook printed.
    assert "+++ after: %ss (after)" % module in real.stdout, real.stdout[-3000:]
    if module == "job":
        assert "+local: 200-1\n+\ttarget node3\n+\tschedule */10\n+\tsource node1\n" in real.stdout, real.stdout[-3000:]
    for check in (True, False):
        rerun = site.task(tmp_path, tasks, check=check)
        rerun.assert_ok()
        assert rerun.changed_tasks() == [], (module, check)
    assert site.config_files() == after
    if module == "node":  # node4 does not exist: drop it, or every runner would try to reach it
        removal = {"name": "node4", "state": "absent", "allow_unreachable": True}
        removed = site.task(tmp_path, [{"name": "Remove", "storage.replication.node": removal, "run_once": True}])
        removed.assert_ok()
        assert "node4" not in site.cluster()["nodes"]


def test_job_diff_shows_before_and_after(site, tmp_path):
    tasks = [{"name": "Module", "storage.replication.job": {
        "id": "200-1", "target": "node3", "schedule": "*/20", "rate": 5}, "run_once": True}]
    run = site.task(tmp_path, tasks, diff=True)
    run.assert_ok()
    assert " \ttarget node3\n-\tschedule */10\n+\trate 5\n+\tschedule */20\n \tsource node1\n" in run.stdout, run.stdout[-3000:]


def test_site_restores_the_inventory_and_purges(site):
    """site.yml again: the job added by hand (200-1) is marked for removal, nothing else changes."""
    run = site.converge()
    run.assert_ok()
    assert run.changed_tasks() == ["Converge the replication jobs"]
    assert "\tremove_job full\n" in site.config_files()["node1"].split("local: 200-1")[1]


# ---------------------------------------------------------------------------------------------------------------
# Bad inventory: the play fails with the module's message, and no node's configuration changes

def job(guest, target, **options):
    return dict(options, guest=guest, target=target)


BAD = {
    "invalid schedule": ({"replication_jobs": [job(100, "node2", schedule="every tuesday")]},
                         "Converge the replication jobs", "invalid schedule 'every tuesday'"),
    "duplicate target": ({"replication_jobs": [job(100, "node2"), job(100, "node2", rate=5)]},
                         "Converge the replication jobs", "jobs 1 and 2 are both job of guest '100' to 'node2'"),
    "target equals owner": ({"replication_jobs": [job(100, "node1")]},
                            "Converge the replication jobs", "Source and target must not be identical"),
    "unknown storage": ({"replication_guests": [{"id": 100, "type": "vm", "node": "node1", "volumes": ["nosuch:vm-100-disk-0"]}]},
                        "Record the guests (where each starts; a moved guest stays where it is)",
                        "volume 'nosuch:vm-100-disk-0' is on storage 'nosuch', which does not exist"),
    "unknown node": ({"replication_jobs": [job(100, "node9")]},
                     "Converge the replication jobs", "Target 'node9' does not exist"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inventory_fails_clearly_and_changes_nothing(site, case):
    overrides, task, message = BAD[case]
    before = site.config_files()
    run = site.converge(overrides)
    assert run.rc != 0
    failures = run.failures()
    assert [f["task"] for f in failures] == [task], run.describe()
    msg = failures[0]["result"]["msg"]
    assert message in msg and "on node 'node1'" in msg and "Nothing was changed on any node" in msg, msg
    assert "Traceback" not in run.stdout + run.stderr
    assert site.config_files() == before


# ---------------------------------------------------------------------------------------------------------------
# job_info and run

def test_run_and_job_info(site, tmp_path):
    write_data(site.lab, "vm-100-disk-0", 1, seek=4)
    run = site.task(tmp_path, [{"name": "Run", "storage.replication.run": {"id": "100-1", "timeout": 120}}])
    run.assert_ok()
    statuses = {r["host"]: r["status"] for r in run.results if r["task"] == "Run"}
    assert statuses == {"node1": "changed", "node2": "skipped", "node3": "skipped"}, statuses
    assert_replica(site.lab, "node3", "100-1")
    ran = run.task_results("Run", "node1")[0]
    volume = ran["result"]["volumes"][0]
    assert (volume["volume"], volume["mode"]) == ("local-zfs:vm-100-disk-0", "incremental") and volume["base"]
    assert 1 << 20 <= volume["bytes"] < 3 << 20  # the rewritten MiB, not the whole volume
    assert ran["log"][0] == "start replication job" and ran["log"][-1] == "end replication job"

    info = site.task(tmp_path, [{"name": "Info", "storage.replication.job_info": {"guest": 100, "query": "[?fail_count == `0`].id"}}])
    info.assert_ok()
    node1 = info.task_results("Info", "node1")[0]
    assert [j["id"] for j in node1["jobs"]] == ["100-0", "100-1"]
    assert node1["query_result"] == ["100-0", "100-1"]
    assert all(j["last_sync"] > 0 and j["lag"] is not None and j["status"] == "ok" for j in node1["jobs"])
    node2 = info.task_results("Info", "node2")[0]
    assert node2["jobs"] == [] and node2["elsewhere"] == {"100-0": "node1", "100-1": "node1"}
    assert info.changed_tasks() == []


# ---------------------------------------------------------------------------------------------------------------
# The modules in a user's own playbook, and a runner from another version of the collection

USER_TASKS = [
    {"name": "Job", "run_once": True,
     "storage.replication.job": {"guest": 100, "target": "node2", "schedule": "*/10", "comment": "set by a user's playbook"}},
    {"name": "Info", "storage.replication.job_info": {"guest": 100}},
]


def user_inventory(site, tmp_path):
    """The lab's inventory without any interpreter setting: Ansible discovers the node's own Python."""
    path = tmp_path / "inventory.yml"
    path.write_text(re.sub(r"(?m)^\s*ansible_python_interpreter:.*\n", "", site.lab.inventory_path.read_text()))
    assert "interpreter" not in path.read_text()
    return str(path)


def test_a_users_playbook_runs_the_modules_on_the_nodes_python(site, tmp_path):
    """job and job_info with no interpreter setting anywhere: they run on the node's python3, which has no paramiko,
    and the runner does the work (the push to every node included)."""
    before = site.config_files()
    run = site.task(tmp_path, USER_TASKS, inventory=user_inventory(site, tmp_path))
    run.assert_ok()
    assert run.changed_tasks() == ["Job"]
    interpreters = {r["result"].get("ansible_facts", {}).get("discovered_interpreter_python") for r in run.results} - {None}
    assert len(interpreters) == 1, interpreters
    python = interpreters.pop()
    assert python.startswith("/usr/bin/python3"), python
    assert site.lab.exec("node1", [python, "-c", "import paramiko"], check=False).returncode != 0, "%s has paramiko" % python
    after = site.config_files()
    assert after != before and len(set(after.values())) == 1
    assert "local: 100-0\n\tcomment set by a user's playbook\n\ttarget node2\n\tschedule */10\n" in after["node1"]
    node1 = run.task_results("Info", "node1")[0]
    assert {j["id"]: j["schedule"] for j in node1["jobs"]} == {"100-0": "*/10", "100-1": "*/30"}
    assert run.task_results("Info", "node3")[0]["elsewhere"] == {"100-0": "node1", "100-1": "node1"}
    restored = site.converge()  # back to the inventory
    restored.assert_ok()
    assert restored.changed_tasks() == ["Converge the replication jobs"]


def _replace_line(text, pattern, replacement):
    changed, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert count == 1, pattern
    return changed


TAMPERED = {
    # the version the installed engine says it is: an older runner
    "version": ("_runner_call.py", lambda text: _replace_line(text, r'^VERSION = ".*"$', 'VERSION = "0.0.1"'), "0.0.1"),
    # the same version with other engine files (a development build): only the digest tells
    "engine files": ("names.py", lambda text: text + "# changed on the node\n", None),
}


@contextlib.contextmanager
def tampered_engine(site, case):
    """node1's installed engine changed as TAMPERED[case] says, for the time of the block; then as it was."""
    name, tamper, _version = TAMPERED[case]
    installed = site.lab.private_path("node1", ENGINE) / name
    original, stat = installed.read_bytes(), installed.stat()
    try:
        installed.write_text(tamper(original.decode("utf-8")))
        yield
    finally:
        installed.write_bytes(original)
        os.utime(installed, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as the role's bundle left it


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_runner_from_another_version_is_refused_naming_the_node_and_the_fix(site, tmp_path, case):
    version = TAMPERED[case][2]
    before = site.config_files()
    with tampered_engine(site, case):
        # Both tasks go on after a failure, so that every node's answer is seen.
        run = site.task(tmp_path, [dict(task, ignore_errors=True) for task in USER_TASKS])
    statuses = {(r["task"], r["host"]): r["status"] for r in run.results if r["task"] in ("Job", "Info")}
    assert statuses == {("Job", "node1"): "ignored", ("Info", "node1"): "ignored", ("Info", "node2"): "ok",
                        ("Info", "node3"): "ok"}, run.describe()
    for task in ("Job", "Info"):
        message = run.task_results(task, "node1")[0]["msg"]
        assert "runner on node 'node1' is version %s" % (version or "0.1.0") in message, message
        assert "re-run the storage.replication.runner role" in message and "nothing was changed" in message, message
    assert site.config_files() == before, "the refused task changed a node's configuration"


def test_a_dry_run_of_an_upgrade_skips_the_configuration_saying_why(site):
    """site.yml --check while node1's runner comes from another version, as right after an upgrade of the collection:
    the role reports that it would replace the engine, the configuration play is skipped with one line naming the
    node (its modules would refuse the old engine), the run exits 0, and nothing changes."""
    before, files = site.footprint(), site.config_files()
    with tampered_engine(site, "version"):
        dry = site.play(check=True)
    dry.assert_ok()
    assert "storage.replication.runner : Compare the installed files with their bundles (a dry run)" in dry.changed_tasks("node1")
    assert [dry.facts(node)["runner_engine_outdated"] for node in site.lab.nodes] == [True, False, False]
    said = dry.task_results("Say why a dry run of an upgrade cannot show the configuration changes")
    assert len(said) == 1 and said[0]["msg"].startswith("The runner on node1 comes from another version"), said
    configuration = {r["status"] for r in dry.results if r["task"].startswith(("Record the ", "Converge the replication"))}
    assert configuration == {"skipped"}, dry.describe()
    assert site.footprint() == before and site.config_files() == files


# The runner role alone: refusals change nothing

def test_a_node_left_out_of_the_play_keeps_its_trust(site):
    """Strict, a node left out fails the role on every node and changes nothing; not strict, the others go on, keep
    trusting the key recorded for it, and say that they could not refresh it."""
    before = site.footprint()
    strict = site.apply_role({"runner_strict": True}, limit="node1,node2")
    assert strict.rc != 0
    messages = [f["result"]["msg"] for f in strict.failures()]
    assert len(messages) == 2 and all("node3 of group 'replication_nodes' are not in this play" in m
                                      and "runner_strict" in m for m in messages), messages
    assert site.footprint() == before

    run = site.apply_role(limit="node1,node2")
    run.assert_ok()
    said = run.task_results("storage.replication.runner : Say what could not be refreshed for the nodes not in this play")
    assert len(said) == 2 and all("Kept as recorded, not refreshed: the keys of node3" in s["msg"] for s in said), said
    assert run.changed_count() == 0, run.changed_tasks()
    assert site.footprint() == before
    # The cluster's nodes still include node3, from what node1 trusts and the inventory.
    nodes = run.facts("node1")["runner_cluster_nodes"]
    assert [n["name"] for n in nodes] == ["node1", "node2", "node3"]
    assert nodes[2]["public_key"].startswith("ssh-ed25519 ") and "host_key" not in nodes[2]


def test_unpinned_requirements_are_refused(site):
    before = site.footprint()
    run = site.apply_role({"runner_pip_requirements": ["paramiko>=5", "croniter==7.0.0"]})
    assert run.rc != 0
    messages = {f["host"]: f["result"]["msg"] for f in run.failures()}
    assert sorted(messages) == site.lab.nodes
    assert all("must pin every package as name==version; these do not: paramiko>=5." in m for m in messages.values())
    assert site.footprint() == before


def test_a_timer_systemd_rejects_is_not_installed(site):
    run = site.apply_role({"runner_timer_on_calendar": "every other tuesday"})
    assert run.rc != 0
    messages = {f["host"]: f["result"]["msg"] for f in run.failures()}
    assert sorted(messages) == site.lab.nodes
    assert all("systemd-analyze verify rejects the runner's units" in m and "every other tuesday" in m
               for m in messages.values()), messages
    for node in site.lab.nodes:
        assert "OnCalendar=minutely\n" in site.read(node, UNITS[1])


# ---------------------------------------------------------------------------------------------------------------
# The web service (runner_web_listen)

WEB_UNIT = "/etc/systemd/system/storage-replication-web.service"
WEB_DIR = "/etc/storage-replication/web"


def test_web_pages_off_loopback_without_tls_are_refused_before_any_change(site):
    before = site.footprint()
    run = site.apply_role({"runner_web_listen": "0.0.0.0:8443", "runner_web_token": "0123456789abcdef0123"})
    assert run.rc != 0
    messages = {f["host"]: f["result"]["msg"] for f in run.failures()}
    assert sorted(messages) == site.lab.nodes
    assert all("runner_web_listen is 0.0.0.0:8443, not a loopback address" in m and "runner_web_tls_cert" in m
               for m in messages.values()), messages
    assert "0123456789abcdef0123" not in run.stdout + run.stderr + json.dumps(run.results)  # the token is no_log
    assert site.footprint() == before


def test_web_pages_on_loopback_are_installed_with_read_only_trust(site):
    web = {"runner_web_listen": "127.0.0.1:8099", "runner_web_users": [{"name": "ops", "password_hash": hash_password("a long password")}]}
    run = site.apply_role(web)
    run.assert_ok()
    checked = run.task_results("storage.replication.runner : Check the web service's configuration (its files, TLS, "
                               "users) before it is started", "node1")
    assert checked[0]["stdout"] == ("storage-replication web: would serve http://127.0.0.1:8099/ (read-only, "
                                    "authentication required) for node node1")
    web_keys = {node: " ".join(site.read(node, WEB_DIR + "/id_ed25519.pub").split()[:2]) for node in site.lab.nodes}
    for node in site.lab.nodes:
        verify = site.lab.exec(node, ["systemd-analyze", "verify", WEB_UNIT], check=False)
        assert verify.returncode == 0, verify.stderr
        unit = site.read(node, WEB_UNIT)
        assert ("ExecStart=%s/bin/storage-replication web --listen 127.0.0.1:8099 --refresh 5 --key %%d/web-key "
                "--cluster-file %%d/node.json --local-node-file %%d/local-node --password-file %%d/passwords\n"
                % INSTALL_DIR) in unit
        assert "LoadCredential=web-key:%s/id_ed25519\n" % WEB_DIR in unit and "DynamicUser=yes\n" in unit
        assert site.lab.exec(node, ["stat", "-c", "%n %a", WEB_DIR, WEB_DIR + "/passwords", WEB_DIR + "/node.json"]
                             ).stdout.split() == [WEB_DIR, "700", WEB_DIR + "/passwords", "600", WEB_DIR + "/node.json", "600"]
        assert site.lab.exec(node, ["test", "-e", WEB_DIR + "/token"], check=False).returncode == 1
        assert json.loads(site.read(node, WEB_DIR + "/node.json"))["nodes"][node]["address"] == site.lab.address(node)
        lines = site.read(node, "/root/.ssh/authorized_keys").splitlines()
        # every node's web key (this node's own too), bound to read-only access
        assert ['restrict,command="%s/bin/storage-replication serve --peer %s --read-only" %s storage-replication-web@%s'
                % (INSTALL_DIR, peer, web_keys[peer], peer) for peer in site.lab.nodes] \
            == [line for line in lines if "--read-only" in line]
    # node1's web key reaches node2's read-only receiver, which answers node-status (with what site.yml configured)
    # and runs nothing else
    pinned = "%s %s" % (site.lab.address("node2"), " ".join(site.read("node2", "/etc/ssh/ssh_host_ed25519_key.pub").split()[:2]))
    for operation in ("node-status", "get-config", "prepare"):
        proc = _ssh_from(site, "node1", "node2", [operation], pinned, key=WEB_DIR + "/id_ed25519", stdin='{"source": "node1"}')
        answer = json.loads(proc.stdout)
        if operation == "node-status":
            assert answer["ok"] and sorted(answer["nodes"]) == site.lab.nodes and "100" in answer["guests"], answer
        else:
            assert answer["reason"] == "invalid-operation", (operation, proc.stdout, proc.stderr)
    again = site.apply_role(web)
    again.assert_ok()
    assert again.changed_count() == 0, again.changed_tasks()


def test_web_pages_switched_off_leave_no_unit_and_no_read_only_trust(site):
    site.apply_role().assert_ok()
    for node in site.lab.nodes:
        assert site.lab.exec(node, ["test", "-e", WEB_UNIT], check=False).returncode == 1
        assert site.lab.exec(node, ["test", "-e", WEB_DIR + "/passwords"], check=False).returncode == 1
        assert "--read-only" not in site.read(node, "/root/.ssh/authorized_keys")
