# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The end of `make demo`: a failover tour with a running workload (the same story as tests/integration/test_failover.py).

A service guest appends numbered records every 100 ms on node1 and is replicated to node2; node1 dies; the
failover playbook starts the guest on node2 from the last replica; node1 comes back, adopts the newer
configuration instead of acting on its stale one, and becomes the replication target: its writes after the
replica are kept aside, and the resync is incremental.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

INTEGRATION = Path(__file__).resolve().parents[1] / "tests" / "integration"
GUEST = 900


def _imports():
    """The lab cluster set-up and the workload live with the integration tests; the tour reuses them."""
    if str(INTEGRATION) not in sys.path:
        sys.path.insert(0, str(INTEGRATION))
    # pylint: disable=import-outside-toplevel,import-error
    import cluster_setup
    from ansible_runner import run_playbook
    from workload import guest as workload
    return cluster_setup, run_playbook, workload


def failover_tour(lab, step, show, check, first_step):
    cs, run_playbook, workload = _imports()
    from ansible_collections.storage.replication.plugins.module_utils import config as configmod  # pylint: disable=import-outside-toplevel

    step(first_step, "A service guest on node1 writes a numbered record every 100 ms; job 900-0 replicates it to node2")
    cfg = workload.setup_cluster(lab)
    guest = workload.ServiceGuest(lab, GUEST)
    guest.create("node1")
    cfg.guests[GUEST] = guest.definition("node1")
    cfg.jobs["%d-0" % GUEST] = configmod.Job(id="%d-0" % GUEST, target="node2", schedule="*/1")
    cfg.generation += 1
    cs.write_config(lab, cfg)
    guest.start("node1")
    guest.wait_records("node1", 10)
    first = cs.run_job(lab, "node1", "%d-0" % GUEST)
    guest.wait_records("node1", 10)
    replica = cs.run_job(lab, "node1", "%d-0" % GUEST)
    check(first["ok"] and replica["ok"], "full sync (%d bytes), then a delta (%d bytes)" % (first["bytes"], replica["bytes"]))
    guest.wait_records("node1", 10)

    step(first_step + 1, "node1 dies (every process in its namespaces is killed, the workload too)")
    lab.kill("node1")
    killed = time.time()
    started = time.strftime("%H:%M:%S", time.localtime(replica["start"]))
    show("last replica started at %s, node1 died %.1f s later" % (started, killed - replica["start"]))

    # Killed, not cut off: its guests are gone with it, which failed_node_is_off states (no wait for its fence).
    step(first_step + 2, "ansible-playbook playbooks/failover.yml -e failed_node=node1 -e failed_node_is_off=true")
    run = run_playbook(lab.inventory_path, "playbooks/failover.yml",
                       extra_vars={"failed_node": "node1", "failed_node_is_off": True})
    for result in run.task_results("Show the plan"):
        show("\n".join(result.get("msg", [])))
    check(run.rc == 0, "the failover playbook succeeded")
    check(guest.running("node2"), "guest %d runs on node2" % GUEST)

    step(first_step + 3, "node1 comes back: its runner adopts the newer configuration and starts nothing")
    lab.revive("node1")
    code, result = workload.runner(lab, "node1")
    show("\n".join(result.get("warnings", [])) if isinstance(result, dict) else str(result))
    check(code == 0 and not guest.running("node1"), "node1 did not start the guest it lost")

    step(first_step + 4, "node2 replicates to node1: incremental, node1's writes after the replica kept aside")
    resync = cs.run_job(lab, "node2", "%d-0" % GUEST)
    volume = resync["volumes"][0] if resync["ok"] else {}
    check(resync["ok"] and volume["mode"] == "incremental", "incremental resync node2 -> node1 (%s bytes)" % volume.get("bytes"))
    kept = volume.get("kept") or []
    lost = len(guest.records("node1", "/" + kept[0])) - len(guest.records_at("node2", volume["base"])) if kept else 0
    check(bool(kept), "node1's %d records written after the replica are kept in %s" % (lost, ", ".join(kept)))
    guest.stop("node2")
