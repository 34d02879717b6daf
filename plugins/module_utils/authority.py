# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Who may ask what of this node's receiver: the checks every request passes before anything is touched.

The values of a request (IDs, names, numbers) must match names.py's strict patterns.  The caller is the node whose
key opened the session (authorized_keys binds each peer's key to `serve --peer <node>`), never what the request
says; it must be a node of the cluster configuration in force, and for a guest's data the guest's owner, while
this node must not own the guest (DESIGN.md, safety rules 1 and 3); a caller with a newer generation makes this
node adopt it first (rule 2).  A job must replicate the guest to this node, a volume must be the guest's (rule 3),
and a dataset bound to another guest is never touched (rule 2).  Anything else is Refused, naming the cause and
the fix.
"""

from __future__ import annotations

from ansible_collections.storage.replication.plugins.module_utils import cluster
from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils.names import (
    GUEST_ID_MAX, GUEST_ID_MIN, JOB_ID_RE, NUMBER_RE, VOLUME_RE, job_guest, migration_copy_job)
from ansible_collections.storage.replication.plugins.module_utils.protocol import Refused
from ansible_collections.storage.replication.plugins.module_utils.zfs import bound_identity


# ---------------------------------------------------------------- the values of a request

def check(value, pattern, what):
    if not isinstance(value, str) or not pattern.match(value):
        raise Refused("invalid %s %r: refused" % (what, value), "invalid-argument")
    return value


def check_int(value, what, minimum=0, maximum=2 ** 63):
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise Refused("invalid %s %r: refused" % (what, value), "invalid-argument")
    return value


def check_job(request):
    job = check(request.get("job"), JOB_ID_RE, "job ID")
    guest = check_int(request.get("guest"), "guest ID", GUEST_ID_MIN, GUEST_ID_MAX)
    if job_guest(job) != guest:
        raise Refused("job '%s' does not belong to guest %d: refused" % (job, guest), "invalid-argument")
    return job, guest


def check_volumes(values):
    if not isinstance(values, list):
        raise Refused("invalid volume list %r: refused" % (values,), "invalid-argument")
    return [check(v, VOLUME_RE, "volume") for v in values]


def int_or_none(text):
    """A key=value number as an int; anything but plain ASCII digits stays text, for check_int to refuse."""
    return int(text) if isinstance(text, str) and NUMBER_RE.match(text) else text


# ---------------------------------------------------------------- who asks, for what

class Authority:
    """The checks that need this node's configuration and ZFS; the Receiver is one.  It provides ``cfg`` (the
    configuration in force), ``forget_config()``, ``node``, ``peer`` (the node whose key opened the session),
    ``confdir``, ``statedir``, ``zfs``, ``pools_present`` (the storage datasets seen to exist in this
    session) and ``say(line)``."""

    def caller(self, request):
        """The calling node, as its key says (never as the request says): refused when the key names no node, the
        request claims another source, or the caller is no node of the cluster configuration."""
        if self.peer is None:
            raise Refused("this key is not bound to a node (its forced command is 'serve' without '--peer'): refused "
                          "- re-run the runner role (site.yml) on every node, which binds each peer's key to its name",
                          "unbound-key")
        claimed = request.get("source") if isinstance(request, dict) else None
        if claimed is None:
            raise Refused("the request names no source node: refused", "invalid-argument")
        if claimed != self.peer:
            raise Refused("the request says it comes from node %r, but it came with the key of node '%s': refused"
                          % (str(claimed)[:80], self.peer), "wrong-source")
        return self.peer

    def check_member(self, source):
        if source not in self.cfg.nodes:
            raise Refused("node '%s' is not a node of the cluster configuration on node '%s' (generation %d): refused - "
                          "add it to the inventory and re-run the site playbook" % (source, self.node,
                                                                                    self.cfg.generation), "not-a-node")

    def check_caller(self, request, guest, adopt=True):
        """The caller must be the guest's owner in the configuration in force (after adopting a newer one it sent),
        and this node must not own the guest (DESIGN.md, safety rules 1 and 3).

        A caller with an older generation is judged by what its request depends on, in this node's newer
        configuration: the guest's owner here, and the job (check_job_here).  A change to another guest, a job
        removal or a schedule edit since then does not fail its run (safety rule 4: fencing by guest).  Without
        ``adopt`` (a plan, which changes nothing) a newer generation is only said, and the request judged by this
        node's own."""
        source = self.caller(request)
        generation = check_int(request.get("generation"), "cluster generation")
        if generation > self.cfg.generation and adopt:
            self.adopt_newer(source, generation)
        elif generation > self.cfg.generation:
            self.say("this node holds cluster configuration generation %d, node '%s' %d: a run makes it adopt the "
                     "newer one first" % (self.cfg.generation, source, generation))
        self.check_member(source)
        owner = self.cfg.guests.get(guest)
        if owner is None:
            raise Refused("guest %d is not in the cluster configuration on node '%s' (generation %d): refused - add the "
                          "guest to the inventory and re-run the site playbook" % (guest, self.node, self.cfg.generation),
                          "unknown-guest")
        if owner.node == self.node:
            raise Refused(
                "guest %d is owned by node '%s' (this node) in the cluster configuration: refusing to let '%s' "
                "replicate into, roll back or delete its volumes here - check the guest's owner and the job's target"
                % (guest, self.node, source), "owner")
        if owner.node != source:
            behind = (" - node '%s' holds the older generation %d and adopts the newer one at its next run"
                      % (source, generation) if generation < self.cfg.generation else "")
            raise Refused("node '%s' asked for guest %d, which is owned by node '%s' in the cluster configuration on node "
                          "'%s' (generation %d): only the owner replicates a guest - refused%s"
                          % (source, guest, owner.node, self.node, self.cfg.generation, behind), "not-owner")
        return source

    def check_job_here(self, job, guest):
        """The job must replicate ``guest`` to this node in the configuration in force (or be the migration's one-off
        copy job, which is never saved)."""
        if job == migration_copy_job(guest):
            return
        found = self.cfg.jobs.get(job)
        if found is None:
            raise Refused("job '%s' is not in the cluster configuration on node '%s' (generation %d): refused - create "
                          "it first (site playbook or create-local-job)" % (job, self.node, self.cfg.generation),
                          "unknown-job")
        if found.target != self.node:
            raise Refused("job '%s' replicates guest %d to node '%s', not to this node ('%s'): refused"
                          % (job, guest, found.target, self.node), "wrong-target")

    def check_guest_volumes(self, guest, volumes):
        """Every volume must be one of the guest's in the configuration in force (safety rule 3)."""
        foreign = [v for v in volumes if v not in self.cfg.guests[guest].volumes]
        if foreign:
            raise Refused("volume(s) %s are not volumes of guest %d in the cluster configuration on node '%s': refused "
                          "- a job only ever touches its guest's own volumes" % (", ".join(foreign), guest, self.node),
                          "not-guest-volume")
        return volumes

    def check_replica(self, volume, dataset, guest, bound=None):
        """Refuse to touch a dataset bound to another guest (safety rule 2); ``bound`` is its (identity, guid) when
        the caller has read it already.  A configured volume of the guest that carries no identity (a replica made
        before identities, or the guest's former own volume after a migration) is the guest's, as pvesr treats it."""
        identity, guid = bound = bound if bound is not None else self.zfs.replica_identity(dataset)
        if identity is not None and identity["guid"] == guid and identity["guest"] != guest:
            raise Refused("volume '%s' on node '%s' (dataset '%s') is a replica of guest %d (job %s from node '%s'), not "
                          "of guest %d: refused, nothing was changed - check the guests' volume lists"
                          % (volume, self.node, dataset, identity["guest"], identity["job"], identity["source"], guest),
                          "not-ours")
        return bound

    def checked_replicas(self, guest, volumes):
        """{volume: dataset} once every volume has passed every check: nothing is touched for a request that is
        refused for a later volume."""
        datasets = {volume: self.dataset(volume) for volume in self.check_guest_volumes(guest, volumes)}
        for volume, dataset in datasets.items():
            self.check_replica(volume, dataset, guest)
        return datasets

    def read_replicas(self, guest, volumes, properties):
        """{volume: (dataset, props)} as checked_replicas() checks them, with what the caller reads next in the same
        single `zfs get`: ``props`` holds ``properties`` of every dataset and of its snapshots (zfs.parse_get form).
        A volume whose dataset does not exist is refused, like any other that fails a check, before anything is
        touched."""
        datasets = {volume: self.dataset(volume, look=False) for volume in self.check_guest_volumes(guest, volumes)}
        props = self.zfs.volume_props(list(datasets.values()), properties)
        for volume, dataset in datasets.items():
            self.pool_found(volume, dataset in props)
            if dataset not in props:
                raise Refused("volume '%s' has no replica on node '%s' (dataset '%s' does not exist): refused, nothing "
                              "was changed - the next run of its job sends it again" % (volume, self.node, dataset),
                              "replica-missing")
            self.check_replica(volume, dataset, guest, bound_identity(props[dataset]))
        return {volume: (dataset, props) for volume, dataset in datasets.items()}

    def adopt_newer(self, source, generation):
        """The caller holds a newer configuration: this node adopts it before judging the request (DESIGN rule 2).

        A node that was down while a guest moved (failover) still believes it owns the guest; without this, the
        new owner's first replication to it would be refused until its own runner happened to catch up."""
        try:
            found = cluster.catch_up(self.confdir, self.statedir)
        except cluster.ClusterError as exc:
            raise Refused("node '%s' sent cluster configuration generation %d, newer than this node's %d, and "
                          "adopting it failed: %s" % (source, generation, self.cfg.generation, exc), "stale-generation")
        self.forget_config()
        if found.adopted is not None:
            self.say("adopted cluster configuration generation %d from node '%s'" % (found.adopted, found.source))
        if self.cfg.generation < generation:
            raise Refused("node '%s' sent cluster configuration generation %d, but node '%s' could only reach "
                          "generation %d from its peers - run the site playbook or retry when the nodes answer"
                          % (source, generation, self.node, self.cfg.generation), "stale-generation")

    def storage_pool(self, storage_id, required, look=True):
        """The storage's pool (its parent dataset); Refused ("storage-missing") if the storage is not a replicable one
        here, or (``look``) its dataset does not exist; None instead where not ``required``."""
        storage = self.cfg.storages.get(storage_id)
        if storage is None or storage.type not in configmod.REPLICATABLE_STORAGE_TYPES:
            if not required:
                return None
            raise Refused("storage '%s' is not defined as a zfspool storage on node '%s' - add it to the cluster "
                          "configuration (storages) and re-run the site playbook" % (storage_id, self.node),
                          "storage-missing")
        # Asked once per session, not once per request and volume (a `zfs get` each, three per job; on a slow CPU a
        # process start is tenths of a second).  Only presence is remembered: a pool found missing is asked again, and
        # one destroyed since makes the request's own `zfs` commands fail, which changes nothing.
        if look and storage.pool not in self.pools_present:
            if not self.zfs.exists(storage.pool):
                if not required:
                    return None
                raise Refused("storage '%s': dataset '%s' does not exist on node '%s' - create it (zfs create %s) or "
                              "fix the storage's pool in the cluster configuration" % (
                                  storage_id, storage.pool, self.node, storage.pool), "storage-missing")
            self.pools_present.add(storage.pool)
        return storage.pool

    def dataset(self, volume, look=True):
        """The volume's dataset here.  ``look=False``: its pool's presence is not asked for, because the caller reads
        the dataset itself (a dataset that exists says its pool does) and calls pool_found() with what it found."""
        storage_id, _sep, name = volume.partition(":")
        return "%s/%s" % (self.storage_pool(storage_id, True, look), name)

    def pool_found(self, volume, dataset_exists):
        """After a read of the volume's dataset itself (dataset(look=False)): its pool exists if it does; if it does
        not, the pool is looked for, so that a missing pool is refused as such ("storage-missing")."""
        if dataset_exists:
            self.pools_present.add(self.storage_pool(volume.partition(":")[0], True, look=False))
        else:
            self.dataset(volume)
