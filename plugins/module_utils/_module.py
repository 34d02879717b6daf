# Copyright (c) 2026, storage.replication developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What each Ansible module does, done by the runner on the node (``storage-replication module-call <module>``).

The modules in plugins/modules/ only validate their arguments and hand them over (``_runner_call.py``); the work is
here, in the engine the role installed, so that the modules and the runner's timer always run one engine.
``MODULES`` maps a module's name to ``task(params, check_mode, diff) -> result``: ``params`` are the arguments as
Ansible validated them (every option present, None when not given), the result is the module's return values
(``changed``, ``diff`` when asked for, ``warnings``). A task refuses by raising ModuleFailure (or one of the
engine's errors, ENGINE_ERRORS); ``call`` turns every refusal into a failed result with one message.

The configuration-changing modules describe their change as a function ``change(cfg)`` that edits a ClusterConfig
(and raises ConfigError for bad input); ``converge`` hands it to the engine's ``change_cluster`` (validate
everything, then push to every node, or in check mode only look), and turns the outcome into the result:
``changed`` only when the configuration changed, a diff of the managed fields, warnings, and one failure message
for every refusal.
"""

from __future__ import annotations

import json
import time
import traceback

from ansible_collections.storage.replication.plugins.module_utils import _runner_call, cluster, config as configmod
from ansible_collections.storage.replication.plugins.module_utils import failover, fence, migrate, rollback, runner, state
from ansible_collections.storage.replication.plugins.module_utils._converge import (
    apply_guests, apply_jobs, apply_nodes, apply_storages, describe_item, guest_info_view, job_view)
from ansible_collections.storage.replication.plugins.module_utils._specs import (
    GUEST_OPTIONS, JOB_OPTIONS, NODE_OPTIONS, STORAGE_OPTIONS)
from ansible_collections.storage.replication.plugins.module_utils.replicate import ReplicationError
from ansible_collections.storage.replication.plugins.module_utils.files import LockError
from ansible_collections.storage.replication.plugins.module_utils.plan import summary, volume_lines
from ansible_collections.storage.replication.plugins.module_utils.report import job_report
from ansible_collections.storage.replication.plugins.module_utils.settings import Paths, load_settings
from ansible_collections.storage.replication.plugins.module_utils.transport import RemoteError, TransportError
from ansible_collections.storage.replication.plugins.module_utils.zfs import ZfsError

RUN_POLL_SECONDS = 1.0


class ModuleFailure(Exception):
    """The module fails with ``msg``; ``extra`` are more return values of the failed result."""

    def __init__(self, msg, **extra):
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


# The exceptions by which the engine refuses or reports a failure, each with a message for the operator.
ENGINE_ERRORS = (failover.FailoverError, fence.FenceStateError, migrate.MigrationError, rollback.RollbackError,
                 cluster.ClusterError, configmod.ConfigError, ReplicationError, LockError, state.StateError, RemoteError,
                 TransportError, ZfsError, OSError)

MODULES = {}  # module name -> task(params, check_mode, diff) -> result


def module_task(name):
    """Register the decorated function as the work of module ``name``."""
    def register(task):
        if name in MODULES:
            raise ValueError("module %s is registered twice" % name)
        MODULES[name] = task
        return task
    return register


def local_node():
    return state.read_local_node()


def missing_module_message(exc, what):
    return ("%s needs the Python package %s, which the runner's environment lacks; re-run the "
            "storage.replication.runner role on node '%s' to install it" % (what, exc.name, local_node()))


def call(name, params, check_mode=False, diff=False):
    """The result of module ``name`` (a failed one for every refusal); never raises."""
    task = MODULES.get(name)
    if task is None:
        return {"failed": True, "msg": "the runner on node '%s' has no module '%s' (it has: %s)"
                % (local_node(), name, ", ".join(sorted(MODULES)))}
    try:
        result = task(params, check_mode, diff)
    except ModuleFailure as exc:
        result = dict(exc.extra, failed=True, msg=exc.msg)
    except ImportError as exc:
        result = {"failed": True, "msg": missing_module_message(exc, "module %s" % name)}
    except ENGINE_ERRORS as exc:
        result = {"failed": True, "msg": str(exc), "node": local_node()}
    except Exception as exc:  # pylint: disable=broad-exception-caught
        # A bug: the task still gets an answer (with the traceback for -vvv), not a broken reply.
        result = {"failed": True, "msg": "module %s failed on node '%s': %s: %s" % (name, local_node(), type(exc).__name__, exc),
                  "exception": traceback.format_exc()}
    result.setdefault("changed", False)
    return result


def serve_call(name, text, engine=None):
    """The reply to one module call: ``text`` is the JSON request the module sent (``_runner_call``). A request that
    expects another engine than this one (``engine``, default the files this runs from) is refused unread."""
    engine = engine or _runner_call.identity()
    node = local_node()
    try:
        request = _runner_call.parse_request(text)
    except ValueError as exc:
        return _runner_call.reply_of(engine, node, {"failed": True, "changed": False, "msg": "module %s: %s" % (name, exc)})
    if _runner_call.mismatch(request["expect"], engine):
        return _runner_call.reply_of(engine, node)
    return _runner_call.reply_of(engine, node, call(name, request["params"], request["check_mode"], request["diff"]))


# ---------------------------------------------------------------------------------------------------------------
# The configuration-changing modules

def failure_message(exc, what):
    """One line for a refused change: the problems, where, and that nothing was written."""
    problems = getattr(exc, "problems", None) or [str(exc)]
    return "%s refused on node '%s': %s. Nothing was changed on any node." % (what, local_node(), "; ".join(problems))


def converge(params, check_mode, diff, change, what, diff_of, result_of):
    """Apply ``change`` to the whole cluster (check mode: only look); returns the module's result.

    ``what`` names the object for messages ("job 100-0"); ``diff_of(before, after)`` returns the before/after of
    the managed fields; ``result_of(after, change_result)`` the module's own return values.
    """
    caught_up = catch_up_first(check_mode)
    try:
        outcome = cluster.change_cluster(change, force=params["allow_unreachable"], check_mode=check_mode)
    except configmod.ConfigError as exc:
        raise ModuleFailure(failure_message(exc, "The change of %s was" % what), problems=list(exc.problems)) from None
    except (cluster.ClusterError, LockError, state.StateError, OSError) as exc:
        raise ModuleFailure(failure_message(exc, "The change of %s was" % what)) from None
    except ImportError as exc:
        raise ModuleFailure(missing_module_message(exc, "%s: the change on the other nodes" % what)) from None
    result = change_result(outcome, diff, diff_of, result_of)
    result["warnings"] = caught_up + result["warnings"]
    return result


def change_result(outcome, diff, diff_of, result_of):
    """The module result of a cluster change (a ClusterChange): whether it changed, the generation, what each node
    did, the warnings, ``result_of(after, change_result)`` and, with ``diff``, ``diff_of(before, after)``."""
    summary = outcome.as_dict()
    result = {"changed": summary["changed"], "generation": summary["generation"], "push": summary["nodes"],
              "warnings": list(outcome.warnings)}
    result.update(result_of(outcome.after, outcome.result))
    if diff:
        result["diff"] = diff_of(outcome.before, outcome.after)
    return result


def catch_up_first(check_mode):
    """Adopt the newer configuration a peer holds before the change is computed; returns what to warn of. The task
    may run on a node that was down and missed changes (site.yml runs it on the first node that answers): computed
    on what that node holds, a change could look like nothing to do. What stops the catch-up is left to the change
    itself to report (it needs the peers too); check mode adopts nothing and says that the dry run is computed on
    the older configuration."""
    try:
        found = cluster.catch_up(check_mode=check_mode)
    except (cluster.ClusterError, configmod.ConfigError, OSError, ImportError):
        return []
    if found.adopted is None:
        return []
    if check_mode:
        return ["node '%s' holds cluster configuration generation %d, newer than this node's (%d): this dry run is "
                "computed on this node's; the real run adopts the newer one first" % (found.source, found.adopted, found.generation)]
    return ["this node adopted cluster configuration generation %d from node '%s' first (it had missed changes)"
            % (found.adopted, found.source)]


def json_diff(before, after, header):
    """A diff of two JSON-able values as text, so that Ansible shows it line by line."""
    return {
        "before": json.dumps(before, indent=2, sort_keys=True) + "\n",
        "after": json.dumps(after, indent=2, sort_keys=True) + "\n",
        "before_header": "%s (before)" % header,
        "after_header": "%s (after)" % header,
    }


def requested_items(params, item_options, plural):
    """The items of the task: the list option ``plural``, or one item made of the top-level options."""
    if params[plural] is not None:
        return params[plural]
    return [{name: params[name] for name in item_options}]


class ItemsTask:
    """A task over one table of the configuration (nodes, storages, guests or jobs), in its single or list form.

    ``key`` is the option that names an object; ``apply(cfg, items, **options) -> (keys, warnings)`` edits the
    configuration; ``view(obj, cfg)`` shapes one object for the result; ``diff_text(cfg, keys)`` (optional) renders
    the managed objects for the diff, else they are shown as JSON of their views.
    """

    def __init__(self, params, table, singular, key, item_options, apply, view, diff_text=None):
        self.params = params
        self.table = table
        self.singular = singular
        self.key = key
        self.items = requested_items(params, item_options, table)
        self.apply = apply
        self.view = view
        self.diff_text = diff_text
        self.managed = []
        self.warnings = []

    def change(self, cfg, **options):
        keys, warnings = self.apply(cfg, self.items, **options)
        self.managed.extend(keys)
        self.warnings.extend(warnings)

    def views(self, cfg):
        table = getattr(cfg, self.table)
        return [self.view(table[key], cfg) for key in table if key in self.managed]

    def diff_of(self, before, after):
        if self.diff_text is not None:
            return {"before": self.diff_text(before, self.managed), "after": self.diff_text(after, self.managed),
                    "before_header": "%s (before)" % self.table, "after_header": "%s (after)" % self.table}
        return json_diff(self.views(before), self.views(after), self.table)

    def result_of(self, after, _result):
        views = self.views(after)
        result = {self.table: views}
        if self.params[self.table] is None:
            result[self.singular] = views[0] if views else None
        return result

    def what(self):
        """The object(s) of the task for messages: "the guests", or "guest '100'"."""
        if self.params[self.table] is not None:
            return "the %s" % self.table
        return "%s '%s'" % (self.singular, self.params[self.key])

    def require(self, option, advice):
        """Refuse an item that is to be present without ``option``; ``advice`` says what to give."""
        for item in self.items:
            if item["state"] == "present" and not item.get(option):
                raise ModuleFailure("%s '%s': %s" % (self.singular, item[self.key], advice))

    def run(self, what, check_mode, diff, **options):
        result = converge(self.params, check_mode, diff, lambda cfg: self.change(cfg, **options), what, self.diff_of,
                          self.result_of)
        # change() runs again when the change is rebuilt on a newer version: each warning is said once
        result["warnings"] = list(dict.fromkeys(self.warnings + result["warnings"]))
        return result


def node_view(node, _cfg):
    return {"name": node.name, "address": node.address, "port": node.port, "host_key": node.host_key}


def storage_view(storage, _cfg):
    return {"id": storage.id, "type": storage.type, "pool": storage.pool}


def guest_view(guest, _cfg):
    return {"id": guest.id, "type": guest.type, "node": guest.node, "volumes": list(guest.volumes), "hooks": dict(guest.hooks)}


def job_sections(cfg, names):
    """The pvesr sections of the named jobs, as replication.cfg shows them, with our options (kept in cluster.json)
    after each section, so that a change of keep shows in the diff too."""
    text = ""
    for job in (cfg.jobs[n] for n in cfg.jobs if n in names):
        ours = "".join("# %s %s\n" % (key, getattr(job, key)) for key in configmod.EXTENSION_KEYS if getattr(job, key))
        text += configmod.format_job(job) + ours + "\n"
    return text


BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def split_keep(params):
    """The job module's top-level keep: a boolean is pvesr's ``delete --keep`` (returned, and the single item keeps
    no restore points), a text the single job's restore points (left in the item's ``keep``, False returned)."""
    value = params["keep"]
    if value is None or isinstance(value, bool) or str(value).strip().lower() in BOOLEAN_WORDS:
        params["keep"] = None
        return value if isinstance(value, bool) else BOOLEAN_WORDS.get(str(value).strip().lower(), False)
    if params["jobs"] is not None:
        raise ModuleFailure("keep: with jobs, keep is the boolean of pvesr delete --keep for the jobs purge removes; "
                            "give each job's restore points as jobs[].keep")
    params["keep"] = str(value)
    return False


@module_task("node")
def node_module(params, check_mode, diff):
    task = ItemsTask(params, "nodes", "node", "name", NODE_OPTIONS, apply_nodes, node_view)
    return task.run(task.what(), check_mode, diff, purge=params["purge"])


@module_task("storage")
def storage_module(params, check_mode, diff):
    task = ItemsTask(params, "storages", "storage", "id", STORAGE_OPTIONS, apply_storages, storage_view)
    task.require("pool", "give its dataset prefix (pool), e.g. rpool/data")
    return task.run(task.what(), check_mode, diff, purge=params["purge"])


@module_task("guest")
def guest_module(params, check_mode, diff):
    task = ItemsTask(params, "guests", "guest", "id", GUEST_OPTIONS, apply_guests, guest_view)
    task.require("type", "give its type (vm, ct or service)")
    return task.run(task.what(), check_mode, diff, purge=params["purge"])


@module_task("job")
def job_module(params, check_mode, diff):
    removal_keep = split_keep(params)
    if removal_keep and params["force"]:
        raise ModuleFailure("keep conflicts with force: a forced removal cleans up nothing, so there is nothing to keep; "
                            "use one of them")
    if params["purge"] and params["jobs"] is None:
        raise ModuleFailure("purge needs jobs: the whole set of jobs to keep")
    task = ItemsTask(params, "jobs", "job", "id", JOB_OPTIONS, apply_jobs, job_view, diff_text=job_sections)
    for number, item in enumerate(task.items, 1):
        if not item.get("id") and item.get("guest") is None:
            raise ModuleFailure("jobs[%d]: give the job's id, or its guest and target" % number)
    what = "the jobs" if params["jobs"] is not None else describe_item(task.items[0])
    return task.run(what, check_mode, diff, purge=params["purge"], keep=removal_keep, force=params["force"])


# ---------------------------------------------------------------------------------------------------------------
# job_info and run: the jobs this node runs

def _matches(job, params):
    return (params["guest"] is None or job.guest == params["guest"]) and params["job"] in (None, job.id)


@module_task("job_info")
def job_info_module(params, _check_mode, _diff):
    paths = Paths.from_environment()
    try:
        cfg = configmod.load(paths.confdir)
        node = state.read_local_node(paths.statedir)
        report = job_report(cfg, state.StateFile(paths.statedir).read(), node, int(time.time()))
    except (configmod.ConfigError, state.StateError, OSError) as exc:
        raise ModuleFailure("cannot read the replication jobs on node '%s': %s" % (state.read_local_node(paths.statedir), exc)) from None
    jobs = [figures for figures in report if _matches(cfg.jobs[figures["id"]], params)]
    shown = {figures["id"] for figures in report}
    elsewhere = {job.id: cfg.guests[job.guest].node for job in cfg.jobs.values()
                 if _matches(job, params) and job.id not in shown and job.guest in cfg.guests}
    warnings = []
    if params["job"] and params["job"] not in cfg.jobs:
        warnings.append("job '%s' does not exist in the cluster configuration of node '%s'" % (params["job"], node))
    return {"changed": False, "node": node, "generation": cfg.generation, "jobs": jobs, "elsewhere": elsewhere,
            "warnings": warnings}


# ---------------------------------------------------------------------------------------------------------------
# guest_info: where each guest runs, whether it runs, its jobs and the replicas the nodes hold

@module_task("guest_info")
def guest_info_module(params, _check_mode, _diff):
    paths = Paths.from_environment()
    cfg = configmod.load(paths.confdir)
    node = state.read_local_node(paths.statedir)
    views = (failover.survey(cfg, paths.confdir, paths.statedir) if params["peers"]
             else {node: failover.local_view(cfg, paths.confdir, paths.statedir)})
    wanted = [guest for guest_id, guest in sorted(cfg.guests.items()) if params["guest"] in (None, guest_id)]
    guests, warnings = [], []
    for guest in wanted:
        running = None
        # The status hook tells about this node only: asked where the guest is supposed to run.
        if guest.node == node:
            try:
                running = failover.guest_running(guest)
            except ReplicationError as exc:  # one broken hook must not hide the other guests
                warnings.append("%s - running is null for guest %d" % (exc, guest.id))
        guests.append(guest_info_view(guest, cfg, views, node, running))
    newer = {name: view.generation for name, view in views.items() if view.reachable and (view.generation or 0) > cfg.generation}
    if newer:
        warnings.append("node(s) %s hold a newer cluster configuration than this node ('%s', generation %d): this "
                        "answer may be out of date - this node adopts the newer one at its runner's next run"
                        % (", ".join("'%s' (%d)" % item for item in sorted(newer.items())), node, cfg.generation))
    if params["guest"] is not None and not wanted:
        warnings.append("guest %d is not in the cluster configuration of node '%s' (guests: %s)"
                        % (params["guest"], node, ", ".join(str(g) for g in sorted(cfg.guests)) or "none"))
    return {"changed": False, "node": node, "generation": cfg.generation, "guests": guests, "warnings": warnings,
            "unreachable_nodes": {name: view.error for name, view in sorted(views.items()) if not view.reachable}}


def _owner_of(cfg, job_id):
    """The node that runs the job (its guest's owner); None if the job or its guest is unknown."""
    job = cfg.jobs.get(job_id)
    guest = cfg.guests.get(job.guest) if job else None
    return guest.node if guest else None


def _run_when_free(paths, job_id, timeout):
    """Run the job, waiting up to ``timeout`` seconds while another runner holds the node's runner lock."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return runner.run(paths, load_settings(paths.settings_file), job_id=job_id)
        except runner.RunnerBusy:
            if time.monotonic() >= deadline:
                raise
            time.sleep(RUN_POLL_SECONDS)


def _schedule_now(paths, cfg, job_id, node, check_mode):
    job = cfg.jobs[job_id]
    state_file = state.StateFile(paths.statedir)
    entry = state_file.read().get(str(job.guest), {}).get(job.target_id)
    # pvesr touches only an existing entry: a job that never ran is due at the next run anyway.
    changed = entry is not None and entry.get("last_try", 0) != 0
    if changed and not check_mode:
        state_file.schedule_now(job)
    return {"changed": changed, "node": node, "msg": "job '%s' is due at the next run on node '%s'" % (job_id, node)}


def _check_run(paths, job_id, node):
    """Check mode: what the run would send, changing nothing on either node."""
    try:
        planned = runner.Runner(paths, load_settings(paths.settings_file)).check(job_id)["jobs"][0]
    except (runner.RunnerRefused, configmod.ConfigError, state.StateError) as exc:
        raise ModuleFailure("job '%s' on node '%s' cannot be planned: %s" % (job_id, node, exc), node=node) from None
    msg = "job '%s' on node '%s' %s%s" % (job_id, node, summary(planned), "".join("; " + line for line in volume_lines(planned)))
    return {"changed": True, "node": node, "plan": planned, "msg": msg}


@module_task("run")
def run_module(params, check_mode, _diff):
    job_id = params["id"]
    paths = Paths.from_environment()
    node = state.read_local_node(paths.statedir)
    try:
        cfg = configmod.load(paths.confdir)
    except configmod.ConfigError as exc:
        raise ModuleFailure("job '%s': cannot read the cluster configuration on node '%s': %s" % (job_id, node, exc)) from None
    owner = _owner_of(cfg, job_id)
    if owner is None:
        raise ModuleFailure("job '%s' does not exist in the cluster configuration of node '%s' (jobs: %s); "
                            "storage.replication.job_info lists them" % (job_id, node, ", ".join(sorted(cfg.jobs)) or "none"))
    if owner != node:
        return {"changed": False, "skipped": True, "node": node, "msg": "job '%s' runs on node '%s', the owner of its guest" % (job_id, owner)}
    if params["schedule_now"]:
        return _schedule_now(paths, cfg, job_id, node, check_mode)
    if check_mode:
        return _check_run(paths, job_id, node)
    try:
        outcome = _run_when_free(paths, job_id, params["timeout"])
    except runner.RunnerBusy as exc:
        raise ModuleFailure("job '%s' on node '%s': another runner was still active after %d s (%s); raise timeout or "
                            "try again" % (job_id, node, params["timeout"], exc), node=node) from None
    except (runner.RunnerRefused, configmod.ConfigError, state.StateError) as exc:
        raise ModuleFailure("job '%s' on node '%s' was refused: %s" % (job_id, node, exc), node=node) from None
    result = outcome["jobs"][0] if outcome["jobs"] else {"job": job_id, "ok": False, "error": "the runner did not run it"}
    log = result.pop("log", [])
    if not result["ok"]:
        raise ModuleFailure("job '%s' failed on node '%s': %s. The run log is /var/log/storage-replication/%s.log"
                            % (job_id, node, result.get("error"), job_id), node=node, result=result, log=log)
    return {"changed": True, "node": node, "result": result, "log": log}


# ---------------------------------------------------------------------------------------------------------------
# Migration and failover: the steps of playbooks/migrate.yml and failover.yml

@module_task("guest_migrate")
def guest_migrate_module(params, check_mode, _diff):
    return migrate.migrate(params["guest"], params["target"], check_mode=check_mode)


@module_task("failover_plan")
def failover_plan_module(params, check_mode, _diff):
    cluster.catch_up(check_mode=check_mode)
    cfg = configmod.load()
    views = failover.survey(cfg)
    local = state.read_local_node()
    points = None
    if params["point"] is not None:  # the restore points of the failed node's guests on every node that answers
        points = {guest: rollback.survey_points(cfg, guest) for guest, item in cfg.guests.items()
                  if item.node == params["failed_node"] and (params["guests"] is None or guest in params["guests"])}
    result = failover.plan_failover(cfg, local, params["failed_node"], views, params["guests"], params["to"],
                                    params["force_quorum"], point=params["point"], points=points)
    command = None
    if params["fence_command"] and not check_mode:
        command = failover.run_fence_command(params["fence_command"])
    decision = failover.fence_decision(params["failed_node"], local, fence.read_state(), int(time.time()),
                                       params["failed_node_is_off"], command)
    if check_mode and params["fence_command"] and not decision["fenced"]:
        decision["text"] += " (the fence command is not run in check mode)"
    result["fence"] = decision
    result["summary"].insert(1, "fence: %s%s" % ("OK - " if decision["fenced"] else "NOT YET - ", decision["text"]))
    if not decision["fenced"]:
        if not check_mode:
            raise failover.FailoverError("refusing to start the guests of %s elsewhere yet: %s - nothing was changed"
                                         % (params["failed_node"], decision["text"]))
        result["warnings"].append("not fenced yet: %s" % decision["text"])
    result["changed"] = False
    return result


@module_task("replica_promote")
def replica_promote_module(params, check_mode, _diff):
    return failover.promote_replica(params["guest"], check_mode=check_mode, point=params["point"])


@module_task("guest_rollback")
def guest_rollback_module(params, check_mode, _diff):
    return rollback.rollback_guest(params["guest"], params["point"], check_mode=check_mode)


def _owners(cfg, guests):
    return {str(g): {"node": cfg.guests[g].node, "jobs": {j.id: "%s -> %s" % (j.source, j.target) for j in cfg.jobs_of_guest(g)}}
            for g in sorted(guests) if g in cfg.guests}


@module_task("guest_takeover")
def guest_takeover_module(params, check_mode, diff):
    moves = {item["id"]: item["node"] for item in params["guests"]}
    # Without converge's catch-up first: in a failover the failed node is among the peers it would ask, and a
    # change built on an older generation is rebuilt on the newer one when it commits (cluster.change_cluster).
    outcome = failover.take_over(moves, params["allow_unreachable"], check_mode=check_mode,
                                 force_quorum=params["force_quorum"])
    return change_result(
        outcome, diff, lambda before, after: json_diff(_owners(before, moves), _owners(after, moves), "guest owners"),
        lambda _after, moved: {"moved": {str(g): m for g, m in (moved or {}).items()}, "forced": outcome.forced})


@module_task("guest_service")
def guest_service_module(params, check_mode, _diff):
    found = cluster.catch_up(check_mode=check_mode)
    result = failover.set_guest_running(params["guest"], params["state"] == "started", check_mode=check_mode)
    result["adopted"] = found.adopted
    if found.adopted is not None:
        result["warnings"] = ["this node %s cluster configuration generation %d from node '%s' first"
                              % ("would adopt" if check_mode else "adopted", found.adopted, found.source)]
    return result
