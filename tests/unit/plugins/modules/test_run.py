# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""storage.replication.run in check mode: it returns what the run would send (the runner's plan) and runs nothing
(the plan itself is tested in tests/unit/plugins/module_utils/test_plan.py, for real in tests/integration/test_cli.py)."""

from __future__ import annotations

import os

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import runner
from ansible_collections.storage.replication.plugins.modules import run as run_module_code

PLANNED = {"job": "100-0", "target": "node2", "ok": True, "error": None, "estimated_bytes": 2_000_000, "log": [],
           "volumes": [{"volume": "local-zfs:vm-100-disk-0", "mode": "incremental",
                        "base": "__replicate_100-0_1700000000__", "estimated_bytes": 2_000_000,
                        "estimate": "written since '__replicate_100-0_1700000000__'"}]}


def test_check_mode_returns_what_the_run_would_send_and_runs_nothing(node_cluster, run_module, monkeypatch, tmp_path):
    cfg = node_cluster["load"]()
    cfg.add_job(configmod.Job("100-0", "node2"))
    configmod.save(cfg, node_cluster["confdir"])
    for name, path in (("CONFDIR", node_cluster["confdir"]), ("STATEDIR", tmp_path / "state"),
                       ("LOGDIR", tmp_path / "log")):
        monkeypatch.setenv("STORAGE_REPLICATION_" + name, str(path))
    asked = []
    monkeypatch.setattr(runner, "plan_job", lambda cfg, job_id, node, statedir: asked.append(job_id) or PLANNED)
    monkeypatch.setattr(runner, "run_job", lambda *args, **kwargs: 1 / 0)
    result = run_module(run_module_code.main, {"id": "100-0"}, check=True)
    assert result["changed"] is True and result["plan"] == PLANNED and asked == ["100-0"]
    assert result["msg"] == ("job '100-0' on node 'node1' would run now to 'node2': about 2 MB; local-zfs:vm-100-disk-0: "
                             "incremental from '__replicate_100-0_1700000000__', about 2 MB (written since "
                             "'__replicate_100-0_1700000000__')")
    assert sorted(os.listdir(tmp_path / "state")) == ["local-node"] and not (tmp_path / "log").exists()
