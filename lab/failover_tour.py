# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The end of `make demo`: a failover tour with a running workload (the story of tests/integration/test_failover.py),
on the cluster that site.yml made.

site.yml runs again with the example inventory plus a service guest (the test workload, tests/integration/workload:
it appends a numbered record every 100 ms) on node3 and its job to node2. node3 dies; the failover playbook starts
the guest on node2 from the last replica; node3 comes back, adopts the newer configuration instead of acting on its
stale one, and becomes the replication target: its writes after the replica are kept aside, and the resync is
incremental. node1 and the example's guests and jobs are left as site.yml made them, for the README's Quick tour.

A second demo run finds the guest on node2, where the first one left it (a failed-over guest stays where it is):
then node2 is the node that dies, and node3 takes over. The guest never lives on node1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from lab import LabError
from lab.site_tour import EXAMPLE_JOBS, cli_json, example_vars

INTEGRATION = Path(__file__).resolve().parents[1] / "tests" / "integration"
GUEST = 900
# The nodes the tour guest lives on; node1 keeps the example's guests 100 and 200 and is never killed.
TOUR_NODES = ("node3", "node2")
REFUSED_AFTER_ADOPTING = "(after adopting the newer cluster configuration)"


def _imports():
    """The playbook runner and the workload live with the integration tests; the tour reuses them."""
    if str(INTEGRATION) not in sys.path:
        sys.path.insert(0, str(INTEGRATION))
    # pylint: disable=import-outside-toplevel,import-error
    from ansible_runner import run_playbook
    from cluster_setup import LAUNCHER
    from workload import guest as workload
    return run_playbook, workload, LAUNCHER


def tour_inventory_vars(guest, owner, target):
    """The example inventory's replication_* variables plus the tour guest (its hooks run the recorder) and its job."""
    example = example_vars()
    hooks = {name: guest.hook(name) for name in ("start", "stop", "status")}
    tour_guest = {"id": GUEST, "type": "service", "node": owner, "volumes": [guest.volume], "hooks": hooks}
    tour_job = {"guest": GUEST, "target": target, "schedule": "*/1", "comment": "the failover tour of make demo"}
    return dict(example, replication_guests=example["replication_guests"] + [tour_guest],
                replication_jobs=example["replication_jobs"] + [tour_job])


def run_job(lab, node, job_id):
    """``storage-replication run --id JOB`` on node: the job's entry of the JSON result ({"ok": False, "error": ...}
    when the command failed)."""
    proc = lab.exec(node, ["storage-replication", "run", "--id", job_id, "--output-format", "json"], check=False,
                    timeout=600)
    if proc.returncode != 0:
        return {"ok": False, "error": (proc.stderr or proc.stdout).strip(), "volumes": []}
    return json.loads(proc.stdout)["jobs"][0]


def show_failures(show, *results):
    for result in results:
        if not result["ok"]:
            show("%s failed: %s" % (result.get("job", "the job"), result.get("error")))


def tour_job(lab, target):
    """The job of the tour guest to ``target`` in the cluster configuration (node1's view), or {}."""
    jobs = [job for job in cli_json(lab, "node1", "list") if job["guest"] == GUEST and job["target"] == target
            and not job.get("remove_job")]
    return jobs[0] if len(jobs) == 1 else {}


def failover_tour(lab, step, show, check, first_step):
    run_playbook, workload, launcher = _imports()
    known = workload.config_of(lab, "node1").guests.get(GUEST)
    owner = known.node if known else TOUR_NODES[0]  # an earlier demo run left it where its failover put it
    if owner not in TOUR_NODES:
        move = "ansible-playbook -i %s playbooks/migrate.yml -e guest=%d -e target=%s" % (
            lab.inventory_path, GUEST, TOUR_NODES[0])
        raise LabError("guest %d runs on %s: the tour kills the node that runs it, and node1 must keep the example's "
                       "guests for the Quick tour. Move it first (%s) or start over (make lab-down)" % (GUEST, owner, move))
    target = TOUR_NODES[1 - TOUR_NODES.index(owner)]
    guest = workload.ServiceGuest(lab, GUEST)

    step(first_step, "site.yml again (--tags replication_config): the example inventory plus service guest %d on %s "
                     "and its job to %s" % (GUEST, owner, target))
    guest.create(owner)  # a fresh volume with 16 MiB of ballast (an earlier run's copies go)
    tour_vars = tour_inventory_vars(guest, owner, target)
    show("replication_guests: the example's + {id: %d, type: service, node: %s, volumes: [%s], hooks: start, stop and "
         "status run tests/integration/workload/recorder.py}" % (GUEST, owner, guest.volume))
    show("replication_jobs: the example's + %s" % json.dumps(tour_vars["replication_jobs"][-1]))
    run = run_playbook(lab.inventory_path, "playbooks/site.yml", extra_vars=tour_vars, tags="replication_config")
    job = tour_job(lab, target)
    check(run.rc == 0 and not run.failures() and job.get("source") == owner,
          "site.yml added guest %d and job %s (%s -> %s)" % (GUEST, job.get("id"), job.get("source"), job.get("target")))
    job_id = job["id"]

    step(first_step + 1, "Guest %d starts on %s and writes a record every 100 ms; 'storage-replication run --id %s' "
                         "there, twice" % (GUEST, owner, job_id))
    guest.start(owner)
    guest.wait_records(owner, 10)
    first = run_job(lab, owner, job_id)
    guest.wait_records(owner, 10)
    replica = run_job(lab, owner, job_id)
    show_failures(show, first, replica)
    modes = [volume.get("mode") for volume in first["volumes"] + replica["volumes"]]
    check(first["ok"] and replica["ok"] and modes == ["full", "incremental"],
          "full sync (%s bytes), then a delta (%s bytes)" % (first.get("bytes"), replica.get("bytes")))
    guest.wait_records(owner, 10)

    step(first_step + 2, "%s dies (every process in its namespaces is killed, the workload too)" % owner)
    lab.kill(owner)
    started = time.strftime("%H:%M:%S", time.localtime(replica["start"]))
    show("last replica started at %s, %s died %.1f s later" % (started, owner, time.time() - replica["start"]))

    # Killed, not cut off: its guests are gone with it, which failed_node_is_off states (no wait for its fence).
    step(first_step + 3, "ansible-playbook playbooks/failover.yml -e failed_node=%s -e failed_node_is_off=true" % owner)
    run = run_playbook(lab.inventory_path, "playbooks/failover.yml",
                       extra_vars={"failed_node": owner, "failed_node_is_off": True})
    for result in run.task_results("Show the plan"):
        show("\n".join(result.get("msg", [])))
    reversed_job = tour_job(lab, owner)
    check(run.rc == 0 and reversed_job.get("id") == job_id and reversed_job.get("source") == target,
          "the failover playbook succeeded: job %s replicates %s -> %s now" % (job_id, reversed_job.get("source"), owner))
    check(guest.running(target), "guest %d runs on %s (its status hook says so)" % (GUEST, target))

    step(first_step + 4, "%s comes back; asked to run job %s, which its old configuration gives it, its runner adopts "
                         "the newer configuration and refuses" % (owner, job_id))
    lab.revive(owner)
    stale = lab.exec(owner, ["storage-replication", "run", "--id", job_id], check=False, timeout=600)
    show("%s$ storage-replication run --id %s\n%s" % (owner, job_id, (stale.stdout + stale.stderr).strip()))
    generations = {node: workload.config_of(lab, node).generation for node in ("node1", owner)}
    check(stale.returncode != 0 and REFUSED_AFTER_ADOPTING in stale.stderr and len(set(generations.values())) == 1,
          "%s holds generation %d as node1 does and ran nothing" % (owner, generations[owner]))
    check(not guest.running(owner), "%s did not start the guest it lost" % owner)

    step(first_step + 5, "%s replicates to %s: incremental, %s's writes after the replica kept aside" % (target, owner, owner))
    resync = run_job(lab, target, job_id)
    show_failures(show, resync)
    volume = resync["volumes"][0] if resync["ok"] else {}
    check(volume.get("mode") == "incremental", "incremental resync %s -> %s (%s bytes)" % (target, owner, volume.get("bytes")))
    kept = volume.get("kept") or []
    lost = len(guest.records(owner, "/" + kept[0])) - len(guest.records_at(target, volume["base"])) if kept else 0
    check(lost > 0, "%s's %d records written after the replica are kept in %s" % (owner, lost, ", ".join(kept) or "nothing"))
    guest.stop(target)
    show("guest %d stopped with its stop hook (it would write forever); it stays in the cluster on %s, replicated "
         "to %s" % (GUEST, target, owner))

    step(first_step + 6, "node1 is as site.yml made it: the example's jobs, the runner the role installed")
    show(lab.exec("node1", ["storage-replication", "status"]).stdout)
    status = [job["id"] for job in cli_json(lab, "node1", "status")]
    check(status == list(EXAMPLE_JOBS), "node1 runs the example's jobs %s" % ", ".join(status))
    for node in lab.nodes:
        check("Ansible managed" in lab.exec(node, ["cat", launcher]).stdout, "%s: %s is the role's" % (node, launcher))
    return first_step + 7
