# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Restore points across the cluster, and bringing a guest back to one of them (playbooks/rollback.yml).

``survey_points`` asks every node which restore points of a guest it holds (receiver operation ``points``,
read-only) and groups them per node: a point is usable on a node when all the guest's volumes have it there.
``plan_rollback`` (pure) picks the point an operator names (a snapshot name, or a time: the newest point at or
before it) and the node it comes from: the owner when it holds it (``keep_source``), else the replica node that
does. ``rollback_guest`` carries the plan out on the owner, with the guest stopped and its guest lock held (no
replication of it meanwhile):

1. every volume is copied aside first, whole (``zfs send -R`` of a snapshot of its current state: the data as it
   is now and every snapshot, the points newer than the chosen one included), as ``<dataset>-rollback-<stamp>``,
   which nothing here ever destroys;
2. then every volume goes back to the point: ``zfs rollback -r`` to a local point, or, for a point only a replica
   node holds, the volume is replaced by that point pulled back from there (receiver operation ``send-point``,
   one full stream of that snapshot; zfs-fuse cannot rename a filesystem, so the set-aside copy is what keeps the
   old volume, and the volume is destroyed only after the copy holds every snapshot it had).

The jobs continue incrementally from the point: the replica node that holds it has it as a common snapshot with
the restored volume, and its newer points are kept aside there by the receiver before its next receive
(receiver.protect_diverged). A job whose target holds no snapshot of the restored volume is named in the plan:
its next run finds no common base.

This is the one operation that rolls back a guest's data on its owner (DESIGN.md safety rule 1 is about what
replication may do by itself): an operator asks for it, and rule 5 holds - everything it replaces is kept aside
and listed, never destroyed.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import time

from ansible_collections.storage.replication.plugins.module_utils import config as configmod
from ansible_collections.storage.replication.plugins.module_utils import points
from ansible_collections.storage.replication.plugins.module_utils.cluster import (
    connect_peer, describe, on_every_peer, peer_nodes)
from ansible_collections.storage.replication.plugins.module_utils.names import REPLICA_PROPERTY, REPLICATION_SNAPSHOT_RE
from ansible_collections.storage.replication.plugins.module_utils.protocol import POINTS, SEND_POINT, Refused
from ansible_collections.storage.replication.plugins.module_utils.receiver import Receiver
from ansible_collections.storage.replication.plugins.module_utils.replicate import run_guest_hook
from ansible_collections.storage.replication.plugins.module_utils.report import time_text
from ansible_collections.storage.replication.plugins.module_utils.state import DEFAULT_STATEDIR, guest_lock, read_local_node
from ansible_collections.storage.replication.plugins.module_utils.transport import (
    NODE_KEY, ControlChannel, ssh_argv, write_known_hosts)
from ansible_collections.storage.replication.plugins.module_utils.zfs import ZFS, Zfs, ZfsError, recv_argv

ASIDE_INFIX = "-rollback-"
POINTS_TIMEOUT = 60
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d")


class RollbackError(RuntimeError):
    """A rollback (or a point) is refused; the message names the object and what to do. Nothing was changed."""


# ---------------------------------------------------------------------------------------------------------------
# The points of a guest on every node

def node_points(volumes, guest_volumes):
    """[point] of one node from the ``points`` reply's ``volumes`` ({volume: {snapshot: info}}), newest first;
    a point: {snapshot, job, time, time_text, complete (on every volume of the guest), volumes: {volume: {used,
    referenced}}, bytes (used, summed)}."""
    found = {}
    for volume, snaps in volumes.items():
        for name, info in snaps.items():
            point = found.setdefault(name, {"snapshot": name, "job": info["job"], "time": info["time"],
                                            "time_text": time_text(info["time"]), "volumes": {}})
            point["volumes"][volume] = {"used": info.get("used", 0), "referenced": info.get("referenced", 0)}
    for point in found.values():
        point["complete"] = set(point["volumes"]) == set(guest_volumes)
        point["bytes"] = sum(v["used"] for v in point["volumes"].values())
    return sorted(found.values(), key=lambda p: (p["time"], p["snapshot"]), reverse=True)


def survey_points(cfg, guest_id, confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR, key=NODE_KEY,
                  connect=ControlChannel, zfs=None):
    """{node: {"reachable", "error", "owner", "points": [point]}} for every node of ``cfg`` (the others in
    parallel over the replication trust; a node that does not answer is listed with its error)."""
    if guest_id not in cfg.guests:
        raise RollbackError("guest %d is not in the cluster configuration - 'storage-replication list' shows the jobs"
                            % guest_id)
    local = read_local_node(statedir)
    request = {"guest": guest_id, "generation": cfg.generation, "source": local}
    guest_volumes = cfg.guests[guest_id].volumes

    def shaped(reply):
        return {"reachable": True, "error": None, "owner": bool(reply.get("owner")),
                "points": node_points(reply.get("volumes") or {}, guest_volumes)}

    def ask(node):
        channel = connect_peer(node, key, connect)
        try:
            return channel.call(POINTS, request, timeout=POINTS_TIMEOUT)
        finally:
            channel.close()

    here = Receiver(confdir, statedir, zfs=zfs, peer=local)
    try:
        found = {local: shaped(here.list_points(request))}
    except (Refused, ZfsError, configmod.ConfigError) as exc:
        found = {local: {"reachable": True, "error": str(exc), "owner": False, "points": []}}
    for name, answer in on_every_peer(peer_nodes(cfg, local), ask).items():
        found[name] = ({"reachable": False, "error": describe(answer), "owner": False, "points": []}
                       if isinstance(answer, Exception) else shaped(answer))
    return dict(sorted(found.items()))


# ---------------------------------------------------------------------------------------------------------------
# Which point

def parse_point(text, now=None):
    """("snapshot", name) for a replication snapshot's name, else ("time", epoch) for an epoch or a local time
    ('2026-05-01 14:30[:00]', 'T' or a space between date and time); RollbackError for anything else."""
    text = str(text).strip()
    if REPLICATION_SNAPSHOT_RE.match(text):
        return "snapshot", text
    if re.match(r"\A[0-9]{9,11}\Z", text):
        return "time", int(text)
    for form in _TIME_FORMATS:
        try:
            moment = datetime.datetime.strptime(text, form)
        except ValueError:
            continue
        epoch = int(time.mktime(moment.timetuple()))
        if now is not None and epoch > now:
            raise RollbackError("point '%s' is in the future" % text)
        return "time", epoch
    raise RollbackError("point '%s' is neither a restore point's snapshot name (__replicate_<job>_<epoch>__) nor a "
                        "time (an epoch, or local time as '2026-05-01 14:30'); 'storage-replication restore-points "
                        "GUEST' lists the points" % text[:80])


def matching(points, wanted):
    """The complete point of ``points`` that ``wanted`` (parse_point) names: that snapshot, or the newest at or
    before that time; None if there is none."""
    kind, value = wanted
    usable = [p for p in points if p["complete"]]
    if kind == "snapshot":
        return next((p for p in usable if p["snapshot"] == value), None)
    return next((p for p in usable if p["time"] <= value), None)  # newest first


def pick_holder(candidates, wanted, prefer=()):
    """(node, point) of the newest point that ``wanted`` names among ``candidates`` ({node: [point]}); ties go to
    the nodes in ``prefer`` first, then by name; (None, None) if no node holds one."""
    found = [(node, matching(candidates[node], wanted)) for node in sorted(candidates)]
    found = [(node, point) for node, point in found if point is not None]
    if not found:
        return None, None
    return max(found, key=lambda item: (item[1]["time"], item[0] in prefer))  # the first such by name


def plan_rollback(cfg, guest_id, point_text, local_node, survey, stamp, now=None):
    """The plan (pure): the point, where it comes from, what each volume goes back to and is kept aside as, and
    how each job continues; RollbackError if it cannot be done."""
    guest = cfg.guests.get(guest_id)
    if guest is None:
        raise RollbackError("guest %d is not in the cluster configuration" % guest_id)
    if guest.node != local_node:
        raise RollbackError("guest %d is owned by node '%s', not by this node ('%s'): a guest is rolled back on its "
                            "owner - run it there" % (guest_id, guest.node, local_node))
    wanted = parse_point(point_text, now)
    jobs = cfg.jobs_of_guest(guest_id)
    targets = {job.target for job in jobs}
    candidates = {node: view["points"] for node, view in survey.items()
                  if view["reachable"] and (node == local_node or node in targets)}
    node, point = pick_holder(candidates, wanted, prefer=[local_node])
    if point is None:
        raise RollbackError("no node holds a restore point of guest %d %s on every volume (%s) - nothing was changed; "
                            "'storage-replication restore-points %d' lists the points"
                            % (guest_id, "named '%s'" % wanted[1] if wanted[0] == "snapshot"
                               else "at or before %s" % time_text(wanted[1]), _unreachable(survey), guest_id))
    local_points = {p["snapshot"]: p for p in survey.get(local_node, {}).get("points", [])}
    volumes = {}
    for volume, dataset in cfg.guest_datasets(guest_id).items():
        newer = sorted(p["snapshot"] for p in local_points.values() if volume in p["volumes"] and p["time"] > point["time"])
        volumes[volume] = {"dataset": dataset, "kept": "%s%s%s" % (dataset, ASIDE_INFIX, stamp), "newer": newer,
                           "referenced": point["volumes"][volume]["referenced"]}
    plan = {"guest": guest_id, "owner": local_node, "point": {k: point[k] for k in ("snapshot", "job", "time", "time_text")},
            "from": node, "local": node == local_node, "volumes": volumes,
            "jobs": {job.id: _job_after(job, node, point, survey) for job in jobs}}
    plan["summary"] = _summary(plan)
    return plan


def _unreachable(survey):
    down = sorted(node for node, view in survey.items() if not view["reachable"])
    return "not asked: %s" % ", ".join(down) if down else "every node answered"


def _job_after(job, source, point, survey):
    held = {p["snapshot"] for p in survey.get(job.target, {}).get("points", []) if p["complete"]}
    if point["snapshot"] in held:
        return "continues incrementally from %s (node %s holds it; its newer points are kept aside there at the " \
               "next run)" % (point["snapshot"], job.target)
    if not survey.get(job.target, {}).get("reachable"):
        return "node %s did not answer: its next run shows whether it holds a common snapshot" % job.target
    return ("node %s holds no snapshot of the restored volumes (%s): the next run of %s finds no common base - remove "
            "the replica on %s (it holds the state before the rollback) or delete and re-create the job"
            % (job.target, "the point came from %s" % source, job.id, job.target))


def _summary(plan):
    point = plan["point"]
    lines = ["guest %d on %s goes back to %s (%s, job %s), %s" % (
        plan["guest"], plan["owner"], point["time_text"], point["snapshot"], point["job"],
        "a local restore point" if plan["local"] else "pulled back from node %s" % plan["from"])]
    for volume, item in plan["volumes"].items():
        lines.append("%s: back to %d bytes of data as of %s; its current data and every snapshot kept aside as %s%s"
                     % (volume, item["referenced"], point["time_text"], item["kept"],
                        " (with the newer points %s)" % ", ".join(item["newer"]) if item["newer"] else ""))
    for job, text in sorted(plan["jobs"].items()):
        lines.append("job %s: %s" % (job, text))
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Carrying it out, on the owner

def rollback_guest(guest_id, point_text, check_mode=False, confdir=configmod.DEFAULT_CONFDIR, statedir=DEFAULT_STATEDIR,
                   zfs=None, key=NODE_KEY, now=time.time):
    """Bring every volume of the guest (stopped, owned by this node) to the point; returns the plan with
    ``changed`` and, per volume, ``kept`` (the dataset its current data and snapshots went to)."""
    zfs = zfs or Zfs()
    cfg = configmod.load(confdir)
    local = read_local_node(statedir)
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now()))
    survey = survey_points(cfg, guest_id, confdir, statedir, key, zfs=zfs)
    plan = plan_rollback(cfg, guest_id, point_text, local, survey, stamp, int(now()))
    plan.update(changed=not check_mode, survey={node: {k: v for k, v in view.items() if k != "points"}
                                                for node, view in survey.items()})
    if check_mode:
        return plan
    guest = cfg.guests[guest_id]
    with guest_lock(guest_id, statedir):
        if guest.hook("status") and run_guest_hook(guest, "status", allowed_codes=(0, 3)) == 0:
            raise RollbackError("guest %d is running on node '%s': stop it first (rollback.yml does) - nothing was "
                                "changed" % (guest_id, local))
        present = {volume: zfs.exists(item["dataset"]) for volume, item in plan["volumes"].items()}
        for volume, item in plan["volumes"].items():  # first every copy: nothing is replaced before all are kept
            if present[volume]:
                _keep_aside(zfs, item["dataset"], item["kept"], stamp)
            else:
                item["kept"] = None
        for volume, item in plan["volumes"].items():
            if plan["local"]:
                snaps = list(zfs.snapshots(item["dataset"]))
                newer = snaps[snaps.index(plan["point"]["snapshot"]) + 1:]
                points.roll_back(zfs, item["dataset"], plan["point"]["snapshot"], newer)
            else:
                if present[volume]:
                    _replace_after_copy(zfs, item["dataset"], item["kept"])
                _pull_point(zfs, cfg, plan, volume, local, statedir, key)
            item["restored"] = plan["point"]["snapshot"]
    return plan


def _keep_aside(zfs, dataset, aside, stamp):
    """Copy the volume whole (its current data and every snapshot) to ``aside``, a new dataset."""
    if zfs.exists(aside):
        raise RollbackError("'%s' exists already - a rollback at this second ran before; wait a second and run it "
                            "again (nothing was replaced)" % aside)
    mark = "__rollback_%s__" % stamp
    zfs.snapshot([dataset], mark)
    try:
        zfs.copy_local_snapshot("%s@%s" % (dataset, mark), aside, replicate=True)
    finally:
        zfs.destroy("%s@%s" % (dataset, mark))


def _replace_after_copy(zfs, dataset, aside):
    """Destroy the volume, only once its copy holds every snapshot it has (by name and guid)."""
    mine = {name: info["guid"] for name, info in zfs.snapshots(dataset).items()}
    theirs = {name: info["guid"] for name, info in zfs.snapshots(aside).items()}
    missing = sorted(name for name, guid in mine.items() if theirs.get(name) != guid)
    if missing:
        raise RollbackError("the copy '%s' lacks snapshot(s) %s of '%s': the volume is left as it was"
                            % (aside, ", ".join(missing), dataset))
    zfs.destroy(dataset, recursive=True)


def _pull_point(zfs, cfg, plan, volume, local, statedir, key):
    """`ssh <holder> send-point ... | zfs recv <dataset>`: the point as a new volume (it is not there any more)."""
    holder = cfg.nodes[plan["from"]]
    dataset = plan["volumes"][volume]["dataset"]
    point = plan["point"]
    known_hosts = write_known_hosts(os.path.join(statedir, "known_hosts"),
                                    [(n.name, n.host_key) for n in cfg.nodes.values()])
    arguments = [SEND_POINT, "job=%s" % point["job"], "guest=%d" % plan["guest"], "volume=%s" % volume,
                 "snapshot=%s" % point["snapshot"], "generation=%d" % cfg.generation, "source=%s" % local]
    env = dict(os.environ, LC_ALL="C")
    # pylint: disable-next=ansible-bad-function
    sender = subprocess.Popen(ssh_argv(holder.name, holder.address, known_hosts, arguments, key=key, port=holder.port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    # pylint: disable-next=ansible-bad-function
    receiver = subprocess.run(recv_argv(dataset, force=False), stdin=sender.stdout, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, check=False)
    sender.stdout.close()
    _out, sent_err = sender.communicate()
    if sender.returncode != 0 or receiver.returncode != 0:
        detail = (sent_err or receiver.stderr).decode("utf-8", "replace").strip().splitlines()
        raise RollbackError("pulling %s of %s back from node %s failed: %s - the volume's former data is in %s; run "
                            "the rollback again" % (point["snapshot"], volume, holder.name,
                                                    detail[-1] if detail else "exit code %s" % sender.returncode,
                                                    plan["volumes"][volume]["kept"]))
    try:  # the pulled stream carries the replica node's binding, which names another dataset's guid: drop it
        zfs.run([ZFS, "inherit", REPLICA_PROPERTY, dataset], None, True)
    except ZfsError:
        pass
