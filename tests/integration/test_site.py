# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""site.yml and the modules on a fresh lab, with real ansible-playbook runs.

The tests of this file run in order on one lab of their own (``$SR_SITE_LAB_NAME``, default srsite, fresh nodes, so that the
first dry run meets nodes without the runner): the site.yml idempotence ladder, replication after it, the ladder
of each module, --diff, bad inventories, job_info and run, a user's own playbook (no interpreter setting at all), and
a runner installed from another version of the collection.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from lab.site_tour import VOLUMES, replica_digests, site_vars, write_data

from ansible_runner import playbook_lab, run_playbook, snapshot_collection

CONFDIR = "/etc/storage-replication"
ENGINE = "/opt/storage-replication/lib/ansible_collections/storage/replication/plugins/module_utils"


@pytest.fixture(scope="module")
def site_lab():
    # Not "<SR_LAB_NAME>-...": lab names must not extend one another (lab down matches by prefix).
    with playbook_lab(os.environ.get("SR_SITE_LAB_NAME", "srsite"), "512M") as lab:
        yield lab


class Site:
    """Runs playbooks against the lab with the example inventory's variables (overridable per run)."""

    def __init__(self, lab, collections):
        self.lab = lab
        self.vars = site_vars()
        self.collections = collections  # a snapshot: the runs compared see the same code while the tree changes

    def play(self, overrides=None, **kwargs):
        """site.yml with the example inventory's variables (``overrides`` replace some)."""
        extra = dict(self.vars, **(overrides or {}))
        return run_playbook(self.lab.inventory_path, "playbooks/site.yml", extra_vars=extra, timeout=1800,
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
    return Site(site_lab, snapshot_collection(tmp_path_factory.mktemp("collection")))


def assert_replica(lab, target, job_id, name="vm-100-disk-0"):
    source, replica = replica_digests(lab, target, name, job_id)
    assert source == replica, "%s on %s differs from node1's (job %s)" % (name, target, job_id)


# ---------------------------------------------------------------------------------------------------------------
# site.yml

def test_site_ladder(site):
    """Dry run on fresh nodes changes nothing; the real run converges; a second dry and real run change nothing."""
    dry = site.play(check=True)
    dry.assert_ok()
    assert dry.changed_count() > 0
    said = dry.task_results("Say why a dry run on fresh nodes cannot show the configuration changes")
    assert len(said) == 1 and "The runner is not installed yet" in said[0]["msg"], said
    for node in site.lab.nodes:
        assert site.lab.exec(node, ["sh", "-c", "ls /opt/storage-replication/venv %s/current 2>&1 || true" % CONFDIR]).stdout.count(
            "No such file") == 2, "the dry run installed something on %s" % node

    real = site.play()
    real.assert_ok()
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

    again_dry = site.play(check=True, diff=True)
    again_dry.assert_ok()
    again = site.play()
    again.assert_ok()
    assert again_dry.changed_tasks() == [] and again.changed_tasks() == [], (again_dry.changed_tasks(), again.changed_tasks())
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


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_runner_from_another_version_is_refused_naming_the_node_and_the_fix(site, tmp_path, case):
    name, tamper, version = TAMPERED[case]
    installed = site.lab.private_path("node1", ENGINE) / name
    original, stat = installed.read_bytes(), installed.stat()
    before = site.config_files()
    try:
        installed.write_text(tamper(original.decode("utf-8")))
        # Both tasks go on after a failure, so that every node's answer is seen.
        run = site.task(tmp_path, [dict(task, ignore_errors=True) for task in USER_TASKS])
    finally:
        installed.write_bytes(original)
        os.utime(installed, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as the role's bundle left it
    statuses = {(r["task"], r["host"]): r["status"] for r in run.results if r["task"] in ("Job", "Info")}
    assert statuses == {("Job", "node1"): "ignored", ("Info", "node1"): "ignored", ("Info", "node2"): "ok",
                        ("Info", "node3"): "ok"}, run.describe()
    for task in ("Job", "Info"):
        message = run.task_results(task, "node1")[0]["msg"]
        assert "runner on node 'node1' is version %s" % (version or "0.1.0") in message, message
        assert "re-run the storage.replication.runner role" in message and "nothing was changed" in message, message
    assert site.config_files() == before, "the refused task changed a node's configuration"
