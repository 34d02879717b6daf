# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Declarative convergence for the modules: turn the desired nodes, storages, guests and jobs into changes of a
ClusterConfig, using the model's own change methods (each validates the whole result).

Every ``apply_*`` function edits the configuration it is given and returns ``(names, warnings)``: the keys of
the objects the task manages (for the diff and the result) and what the user should hear without a change.
Items are plain dicts as Ansible validated them (every option present, None when not given).

The inventory says where a guest starts; the cluster says where it is now. A guest's owner is therefore only
set when the guest is created, and a job whose direction a migration or failover reversed is recognised
instead of being created again (``_pair_reversed``).

``job_view`` and ``guest_info_view`` shape jobs and guests as the modules return them.
"""

from __future__ import annotations

from ansible_collections.storage.replication.plugins.module_utils.config import ConfigError, Guest, Job, Node, Storage
from ansible_collections.storage.replication.plugins.module_utils.failover import time_text
from ansible_collections.storage.replication.plugins.module_utils.schedule import setting_warnings

ABSENT = "absent"


def _prefixed(what, exc):
    """The same ConfigError, every problem prefixed with the item the user wrote (unless it names it already)."""
    return ConfigError([problem if problem.startswith(what) else "%s: %s" % (what, problem)
                        for problem in exc.problems])


def _absent(item):
    return item.get("state") == ABSENT


def _purge(table, wanted, remove):
    """Remove every key of ``table`` not in ``wanted``; returns the removed keys."""
    removed = [key for key in list(table) if key not in wanted]
    for key in removed:
        remove(key)
    return removed


# ---------------------------------------------------------------------------------------------------------------
# Nodes, storages and guests: one loop over the items of a table

def _apply_items(table, items, key, what, remove, put, purge):
    """Converge ``table`` (cfg.nodes, ...) to ``items``: an absent item is removed, any other is ``put(item)``
    (which returns warnings); with ``purge`` every key no item names is removed too."""
    names, warnings = [], []
    for item in items:
        name = item[key]
        names.append(name)
        try:
            if _absent(item):
                if name in table:
                    remove(name)
                continue
            warnings += put(item)
        except ConfigError as exc:
            raise _prefixed("%s '%s'" % (what, name), exc) from None
    if purge:
        names += _purge(table, names, remove)
    return names, warnings


def apply_nodes(cfg, items, purge=False):
    return _apply_items(cfg.nodes, items, "name", "node", cfg.remove_node, lambda item: _set_node(cfg, item), purge)


def apply_storages(cfg, items, purge=False):
    return _apply_items(cfg.storages, items, "id", "storage", cfg.remove_storage,
                        lambda item: _set_storage(cfg, item), purge)


def apply_guests(cfg, items, purge=False):
    # _set_guest reports the guests a move took elsewhere; they make one warning line.
    names, moved = _apply_items(cfg.guests, items, "id", "guest", cfg.remove_guest, lambda item: _set_guest(cfg, item),
                                purge)
    return names, [drift_warning(cfg, moved)] if moved else []


def _set_node(cfg, item):
    """Create or update a node; an address or host key the item leaves out stays as it is."""
    old = cfg.nodes.get(item["name"])
    host_key = item.get("host_key")
    if host_key is None:
        host_key = old.host_key if old else ""
    cfg.set_node(Node(name=item["name"], address=item["address"] or (old.address if old else ""),
                      host_key=" ".join(host_key.split()[:2]), port=item.get("port") or 22))
    return []


def _set_storage(cfg, item):
    cfg.set_storage(Storage(id=item["id"], type=item.get("type") or "zfspool", pool=item["pool"]))
    return []


def _set_guest(cfg, item):
    """Create or update a guest; the owner comes from the item only when the guest is new. Returns ``[its ID]`` when
    it runs elsewhere than the item's node (a migration or failover moved it), else ``[]``."""
    old = cfg.guests.get(item["id"])
    if old is None and not item.get("node"):
        raise ConfigError("a new guest needs the node it starts on (node); known nodes: %s"
                          % (", ".join(sorted(cfg.nodes)) or "none"))
    owner = old.node if old is not None else item["node"]
    cfg.set_guest(Guest(id=item["id"], type=item["type"], node=owner, volumes=list(item.get("volumes") or []),
                        hooks={name: list(argv) if isinstance(argv, list) else argv for name, argv in (item.get("hooks") or {}).items()}))
    return [item["id"]] if old is not None and item.get("node") and item["node"] != owner else []


def drift_warning(cfg, moved):
    """One line for every guest that runs elsewhere than the inventory says, with what to write to end it (the
    inventory's node is only where a guest starts, so nothing is moved back; the jobs the move reversed are paired
    with the inventory's items silently, see _pair_reversed)."""
    fixes = []
    for guest_id in sorted(moved):
        targets = sorted(job.target for job in cfg.jobs_of_guest(guest_id))
        fixes.append("guest %d node: %s%s" % (guest_id, cfg.guests[guest_id].node,
                                              " (its jobs' targets: %s)" % ", ".join(targets) if targets else ""))
    return ("moved by a migration or failover, left where they run now: %s - the inventory names where they started; "
            "to bring it in line set %s (README: 'Bringing the inventory in line')"
            % (", ".join("%d on %s" % (g, cfg.guests[g].node) for g in sorted(moved)), "; ".join(fixes)))


# ---------------------------------------------------------------------------------------------------------------
# Jobs

JOB_FIELDS = ("schedule", "rate", "comment", "disable", "remove_job", "keep", "keep_source", "rate_windows")


def job_fields(item):
    """The job options an item asks for: omitted options are pvesr's defaults (no rate, default schedule, ...)."""
    return {"schedule": item.get("schedule"), "rate": item.get("rate"), "comment": item.get("comment") or None,
            "disable": item.get("enabled") is False, "remove_job": None, "keep": item.get("keep") or None,
            "keep_source": item.get("keep_source") or None, "rate_windows": item.get("rate_windows") or None}


def describe_item(item):
    if item.get("id"):
        return "job '%s'" % item["id"]
    return "job of guest '%s' to '%s'" % (item.get("guest"), item.get("target"))


def apply_jobs(cfg, items, purge=False, keep=False, force=False):
    """Converge the jobs of ``items``; with ``purge`` every other job is removed too (as by state=absent)."""
    _check_duplicates(items)
    matches = _pair_reversed(cfg, items, [_match(cfg, item) for item in items])
    names, warnings = [], []
    for item, job_id in zip(items, matches):
        try:
            names.append(_apply_job(cfg, item, job_id, keep, force, warnings))
        except ConfigError as exc:
            raise _prefixed(describe_item(item), exc) from None
    if purge:
        for job_id in [j for j in cfg.jobs if j not in names]:
            _remove_job(cfg, job_id, keep, force)
            names.append(job_id)
    return [n for n in names if n], warnings


def _check_duplicates(items):
    seen = {}
    for number, item in enumerate(items, 1):
        key = item.get("id") or (item.get("guest"), item.get("target"))
        if key in seen:
            raise ConfigError("jobs %d and %d are both %s; keep one job per guest and target"
                              % (seen[key], number, describe_item(item)))
        seen[key] = number


def _match(cfg, item):
    """The ID of the existing job the item means, or None (a new job, or a reversed one: see _pair_reversed)."""
    if item.get("id"):
        return item["id"] if item["id"] in cfg.jobs else None
    job = cfg.job_for_target(item["guest"], item["target"])
    return job.id if job else None


def _pair_reversed(cfg, items, matches):
    """An item whose target now owns the guest means the job a migration reversed (pvesr switches the target to
    the old owner): pair it with the guest's one job no other item claims, if there is exactly one."""
    claimed = {m for m in matches if m}
    paired = list(matches)
    for number, (item, match) in enumerate(zip(items, matches)):
        guest = cfg.guests.get(item.get("guest") or _guest_of(item.get("id")))
        if match or guest is None or item.get("target") != guest.node or _absent(item):
            continue
        others = [j.id for j in cfg.jobs_of_guest(guest.id) if j.id not in claimed]
        if len(others) == 1:
            paired[number] = others[0]
            claimed.add(others[0])
    return paired


def _guest_of(job_id):
    try:
        return int(str(job_id).split("-", maxsplit=1)[0])
    except ValueError:
        return None


def _apply_job(cfg, item, job_id, keep, force, warnings):
    """Create, update or remove the job of one item; returns its ID (None if nothing is managed)."""
    guest_id = item.get("guest")
    if item.get("id") and guest_id is not None and _guest_of(item["id"]) != guest_id:
        raise ConfigError("the ID '%s' belongs to guest '%s', not '%s'; fix the ID or the guest"
                          % (item["id"], _guest_of(item["id"]), guest_id))
    if _absent(item):
        wanted = job_id or item.get("id")
        if wanted:
            _remove_job(cfg, wanted, keep, force)
        return wanted
    fields = job_fields(item)
    warnings += setting_warnings(fields["schedule"])
    if job_id is None:
        return _create_job(cfg, item, fields)
    job = cfg.jobs[job_id]
    # A target that differs is only accepted as the old direction of a job a move reversed (_pair_reversed): the job
    # stays as it is, and the guest's drift warning says what to write in the inventory.
    if item.get("target") and item["target"] != job.target and item["target"] != cfg.guests[job.guest].node:
        raise ConfigError("replication job '%s' targets '%s'; a job's target cannot change: remove the job "
                          "(state=absent) and create one to '%s'" % (job_id, job.target, item["target"]))
    cfg.update_job(job_id, **fields)
    return job_id


def _create_job(cfg, item, fields):
    guest_id = item.get("guest") or _guest_of(item.get("id"))
    if not item.get("target"):
        raise ConfigError("a new job needs its target node (target)")
    job_id = item.get("id") or "%d-%d" % (guest_id, cfg.next_jobnum(guest_id))
    return cfg.add_job(Job(id=job_id, target=item["target"], **fields)).id


def _remove_job(cfg, job_id, keep, force):
    """pvesr delete: mark for removal (the runner cleans up and drops it), or with ``force`` drop it now."""
    if force:
        cfg.remove_job(job_id, missing_ok=True)
        return
    mode = "local" if keep else "full"
    if job_id in cfg.jobs and cfg.jobs[job_id].remove_job != mode:
        cfg.mark_job_for_removal(job_id, mode)


def job_view(job, cfg):
    """A job as the modules return it."""
    guest = cfg.guests.get(job.guest)
    return {"id": job.id, "guest": job.guest, "jobnum": job.jobnum, "target": job.target,
            "source": guest.node if guest else job.source, "schedule": job.schedule, "rate": job.rate,
            "comment": job.comment, "enabled": not job.disable, "remove_job": job.remove_job, "keep": job.keep,
            "keep_source": job.keep_source, "rate_windows": job.rate_windows}


# ---------------------------------------------------------------------------------------------------------------
# Guests as guest_info returns them

def guest_info_view(guest, cfg, views, local_node, running=None):
    """One guest for guest_info: where it runs now, its jobs, and the replica each node that answered holds.

    ``views`` is ``{node: failover.NodeView}`` (this node alone, or every node that was asked); ``running`` is what
    the guest's status hook said on this node (None when it was not asked: this node does not own the guest, or the
    guest has no status hook). A node's replica is complete when it holds every volume of the guest; the newest
    complete one is where a failover would start the guest from.
    """
    replicas = {}
    for name, view in sorted(views.items()):
        record = view.replicas.get(guest.id) if view.reachable and name != guest.node else None
        if record is None:
            continue
        last_sync = int(record.get("last_sync", 0))
        replicas[name] = {"last_sync": last_sync, "time": time_text(last_sync), "job": record.get("job"),
                          "source": record.get("source"),
                          "complete": not set(guest.volumes) - set(record.get("volumes", []))}
    complete = [name for name, replica in replicas.items() if replica["complete"]]
    newest = max(complete, key=lambda name: (replicas[name]["last_sync"], name)) if complete else None
    return {"id": guest.id, "type": guest.type, "owner": guest.node, "owned_here": guest.node == local_node,
            "running": running, "volumes": sorted(guest.volumes), "hooks": sorted(guest.hooks),
            "jobs": [job_view(job, cfg) for job in cfg.jobs_of_guest(guest.id)], "replicas": replicas,
            "newest_replica": dict(replicas[newest], node=newest) if newest else None}
