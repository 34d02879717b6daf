# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A cluster for module tests: node1 (this node) with a real configuration directory, and peers node2, node3
answered by a fake control channel (no SSH). ``run_module`` runs a module's main() and returns its result."""

from __future__ import annotations

import copy
import functools
import json

import pytest
from ansible.module_utils.common import warnings
from ansible.module_utils.testing import patch_module_args

from ansible_collections.storage.replication.plugins.module_utils import _module, cluster
from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils.serve import CONTROL_OPERATIONS
from ansible_collections.storage.replication.plugins.module_utils.transport import TransportError

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFOmI4sx3vPGCUxrBYrxB1NvD5x4Uc8mfv7wbJxeD1oW"


class FakePeers:
    """node2 and node3 as real configuration directories whose receivers run in this process (no SSH): what
    change_cluster does to them is what their acceptors do."""

    def __init__(self, root, cfg):
        self.dirs = {name: str(root / name) for name in ("node2", "node3")}
        for path in self.dirs.values():
            configmod.save(copy.deepcopy(cfg), path)
        self.initial = dict(self.generation)
        self.down = set()
        self.connect_error = None

    @property
    def generation(self):
        return {name: configmod.load(path).generation for name, path in self.dirs.items()}

    @property
    def pushed(self):
        """{node: generation} of the peers a change reached."""
        return {name: gen for name, gen in self.generation.items() if gen != self.initial[name]}

    def sync(self, confdir):
        """The peers take node1's configuration as it is now (as if they had committed the same change)."""
        for path in self.dirs.values():
            configmod.save(configmod.load(confdir), path)
        self.initial = dict(self.generation)

    def channel(self, node_name, address, host_key, key=None, port=22, timeout=None):
        del address, host_key, key, port, timeout
        return _FakeChannel(self, node_name)


class _FakeChannel:
    def __init__(self, peers, node_name):
        self.peers = peers
        self.node_name = node_name

    def connect(self):
        if self.peers.connect_error is not None:
            raise self.peers.connect_error
        if self.node_name in self.peers.down:
            raise TransportError("node '%s' is unreachable (connection refused)" % self.node_name, True)
        return self

    def call(self, operation, request, timeout=None):
        del timeout
        receiver = type("Receiver", (), {"confdir": self.peers.dirs[self.node_name], "node": self.node_name})()
        return dict(CONTROL_OPERATIONS[operation](receiver, json.loads(json.dumps(request))), ok=True)

    def close(self):
        pass


@pytest.fixture
def node_cluster(tmp_path, monkeypatch):
    """node1's directories with a 3-node configuration (storage local-zfs, guest 100 on node1) at generation 1."""
    confdir, statedir = tmp_path / "etc", tmp_path / "state"
    statedir.mkdir()
    (statedir / "local-node").write_text("node1\n")
    cfg = configmod.ClusterConfig()
    for number in (1, 2, 3):
        cfg.set_node(configmod.Node("node%d" % number, "10.0.0.%d" % number, HOST_KEY))
    cfg.set_storage(configmod.Storage("local-zfs"))
    cfg.set_guest(configmod.Guest(100, "vm", "node1", ["local-zfs:vm-100-disk-0"]))
    configmod.save(cfg, str(confdir))
    peers = FakePeers(tmp_path / "peers", configmod.load(str(confdir)))
    monkeypatch.setattr(cluster, "change_cluster", functools.partial(
        cluster.change_cluster, confdir=str(confdir), statedir=str(statedir), connect=peers.channel))
    monkeypatch.setattr(_module, "local_node", lambda: "node1")
    return {"confdir": str(confdir), "peers": peers, "load": lambda: configmod.load(str(confdir))}


@pytest.fixture
def run_module(capsys):
    """``run_module(main, args, check=False, diff=False)``: run a module's main(); returns its result dict."""
    def run(main, args, check=False, diff=False):
        warnings._global_warnings.clear()  # pylint: disable=protected-access
        with patch_module_args(dict(args, _ansible_check_mode=check, _ansible_diff=diff)):
            with pytest.raises(SystemExit):
                main()
        result = json.loads(capsys.readouterr().out)
        result["warnings"] = [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]
        return result
    return run
