"""The llem sweep: plan (expand, compose, validate, order), write the manifest, launch in batches."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from llem.atomic import atomic_write_text, remove_stale_temps
from llem.config import CampaignSettings, ConfigError
from llem.config.campaign import CampaignDaemonConfig, campaign_id
from llem.launch.runner import first_line, result_path_of, retryable
from llem.notify import Notifier, notifier_for
from llem.plan import schedule
from llem.plan.campaign_file import CampaignFileError, load_settings
from llem.plan.compose import FastComposer
from llem.plan.expand import Axis, PlanError
from llem.plan.files import attach_config_files, collect_results, write_job_configs
from llem.plan.lock import CampaignLock, CampaignLocked
from llem.plan.manifest import (
    CampaignManifest,
    ManifestJob,
    read_manifest,
    record_event,
    update_jobs,
    utc_now,
    write_manifest,
)
from llem.plan.planner import Plan, build_manifest, make_plan
from llem.plan.preflight import Workers, preflight
from llem.plan.preflight import report as preflight_report
from llem.plan.resume import PlanChanged, reconcile, runnable
from llem.plan.table import print_plan

log = logging.getLogger(__name__)

DEFAULT_SUBDIR = "${hydra.job.num}"


class SweepError(CompactHydraException):
    """A user mistake in the campaign or the command line: Hydra prints the message, no traceback."""


def parse_axes(arguments: Sequence[str], config_loader: Any) -> list[Axis]:
    """Command-line overrides as axes (Hydra's grammar: a,b / choice() / range() / glob())."""
    parser = OverridesParser.create(config_loader=config_loader)
    axes: list[Axis] = []
    for override in parser.parse_overrides(list(arguments)):
        key_element = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise SweepError(f"{override.input_line}: interval sweeps are not supported; list the values")
            choices = [f"{key_element}={v}" for v in override.sweep_string_iterator()]
        else:
            choices = [override.input_line]
        key = override.key_or_group
        axes = [a for a in axes if a.key != key] + [Axis(key=key, choices=choices)]
    return axes


def _is_llem_app(config: DictConfig) -> bool:
    return OmegaConf.select(config, "backend.name") is not None and "model" in config


def _campaign_axes(axes: list[Axis]) -> tuple[list[Axis], list[Axis]]:
    campaign = [a for a in axes if a.key == "campaign" or a.key.startswith("campaign.")]
    rest = [a for a in axes if a not in campaign]
    swept = [a.key for a in campaign if len(a.choices) > 1]
    if swept:
        raise SweepError(f"campaign settings cannot be swept ({', '.join(swept)}): give one value")
    return campaign, rest


def _manifest_path(sweep_dir: Path, settings: CampaignSettings) -> Path:
    state = Path(settings.io.state_dir)
    return (state if state.is_absolute() else sweep_dir / state) / settings.io.manifest_filename


def _invalid_report(plan: Plan) -> str:
    lines = [
        f"llem: {len(plan.invalid)} of {plan.planned_configs} planned configuration(s) are invalid; nothing was launched."
    ]
    for job in plan.invalid:
        lines.append(f"- {job.error}")
    lines.append("Fix them, or run the valid ones with hydra.sweeper.skip_invalid=true.")
    return "\n".join(lines)


def _batches(items: list[Any], size: int | None) -> list[list[Any]]:
    if not size or size < 1:
        return [items] if items else []
    return [items[i : i + size] for i in range(0, len(items), size)]


def _job_outcome(ret: JobReturn) -> dict[str, Any]:
    done = {"completed_at": utc_now(), "result_path": result_path_of(ret)}
    if ret.status == JobStatus.COMPLETED:
        return {**done, "status": "completed", "error": None}
    error = ret._return_value  # the exception a FAILED job carries
    return {**done, "status": "failed", "error": f"{type(error).__name__}: {error}", "retryable": retryable(error)}


def _generic_sweep(sweeper: Any, arguments: list[str]) -> list[Sequence[JobReturn]]:
    """Plain cartesian product for non-llem apps (keeps the sweeper usable with any Hydra app)."""
    axes = parse_axes(arguments, sweeper.hydra_context.config_loader)
    jobs = [list(c) for c in itertools.product(*(a.choices for a in axes))]
    returns: list[Sequence[JobReturn]] = []
    index = 0
    for batch in _batches(jobs, sweeper.max_batch_size):
        results = sweeper.launcher.launch(batch, initial_job_idx=index)
        for r in results:
            _ = r.return_value  # re-raise a failed job, as Hydra's basic sweeper does
        index += len(batch)
        returns.append(results)
    return returns


def _group_options(loader: Any, group: str) -> set[str]:
    try:
        return set(loader.get_group_options(group))
    except Exception:  # noqa: BLE001 - an app without that config group
        return set()


def _plan(sweeper: Any, arguments: list[str]) -> tuple[Plan, CampaignSettings, FastComposer]:
    config: DictConfig = sweeper.config
    loader = sweeper.hydra_context.config_loader
    axes = parse_axes(arguments, loader)
    campaign_axes, experiment_axes = _campaign_axes(axes)
    section = OmegaConf.to_container(config.campaign, resolve=True) if "campaign" in config else None
    cwd = Path(str(OmegaConf.select(config, "hydra.runtime.cwd", default=None) or os.getcwd()))
    try:
        # a campaign file sits beneath the command line: its campaign.* overrides are applied again on top
        settings = load_settings(section, [a.choices[0] for a in campaign_axes], cwd=cwd)  # type: ignore[arg-type]
    except (ConfigError, CampaignFileError) as error:
        raise SweepError(str(error)) from None
    # jobs never carry campaign overrides, so the campaign section is not part of what is validated
    settings = _recorded_seed(config, settings)
    composer = FastComposer(
        loader, config.hydra.job.config_name, list(config.hydra.overrides.hydra), drop_keys=("campaign",)
    )
    try:
        plan = make_plan(
            experiment_axes,
            settings,
            composer.compose,
            default_backend=str(OmegaConf.select(config, "backend.name")),
            model_options=_group_options(loader, "model"),
            dataset_options=_group_options(loader, "dataset"),
        )
    except PlanError as error:
        raise SweepError(f"llem: {error}") from None
    if settings.group_by:
        from llem.report.stats import UnknownColumn, check_group_by

        try:
            check_group_by(settings.group_by, {k for job in plan.jobs for k in job.config.params})
        except UnknownColumn as error:
            raise SweepError(f"llem: campaign.{error}") from None
    return plan, settings, composer


def _recorded_seed(config: DictConfig, settings: CampaignSettings) -> CampaignSettings:
    """A resumed shuffled campaign reuses the seed its manifest recorded, so its plan is the same."""
    execution = settings.execution
    if execution.structure != "shuffled" or execution.shuffle_seed is not None:
        return settings
    path = _manifest_path(Path(str(config.hydra.sweep.dir)).absolute(), settings)
    if not path.exists():
        return settings
    seed = read_manifest(path).shuffle_seed
    return settings.model_copy(update={"execution": execution.model_copy(update={"shuffle_seed": seed})})


def run_sweep(sweeper: Any, arguments: list[str]) -> Any:
    config: DictConfig = sweeper.config
    arguments = [f"{k}={v}" for k, v in sweeper.params.items()] + list(arguments)
    sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not _is_llem_app(config):
        OmegaConf.save(config, sweep_dir / "multirun.yaml")
        return _generic_sweep(sweeper, arguments)

    plan, settings, composer = _plan(sweeper, arguments)
    if plan.invalid and not sweeper.skip_invalid:
        raise SweepError(_invalid_report(plan))
    skipped_report = _invalid_report(plan).replace("nothing was launched", "they are skipped") if plan.invalid else None
    for job in plan.invalid:
        job.status = "skipped"
    sweeper.skipped_report = skipped_report
    manifest_path = _manifest_path(sweep_dir, settings)
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # SIGTERM stops cleanly, like Ctrl-C
    try:
        with CampaignLock(manifest_path.parent) as lock:
            if lock.stale_owner:
                print(f"llem: the previous orchestrator (PID {lock.stale_owner.get('pid')} on "
                      f"{lock.stale_owner.get('host')}) is gone; taking over its campaign", file=sys.stderr)
            return _run_locked(sweeper, plan, settings, composer, sweep_dir, manifest_path)
    except CampaignLocked as error:
        raise SweepError(f"llem: {error}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _new_manifest(sweeper: Any, plan: Plan, settings: CampaignSettings, sweep_dir: Path) -> CampaignManifest:
    config: DictConfig = sweeper.config
    name = settings.campaign_name or str(config.hydra.job.name)
    manifest = build_manifest(plan, campaign_name=name, sweep_dir=sweep_dir)
    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")  # type: ignore[union-attr]
    if str(subdir) != DEFAULT_SUBDIR:
        for job in manifest.jobs:
            job.result_path = None  # known once the launcher reports the job's output dir
    attach_config_files(manifest, sweep_dir, settings.io)
    return manifest


def _run_locked(
    sweeper: Any, plan: Plan, settings: CampaignSettings, composer: FastComposer, sweep_dir: Path, path: Path
) -> Any:
    atomic_write_text(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(sweeper.config))
    fresh = _new_manifest(sweeper, plan, settings, sweep_dir)
    # we hold the lock, so temp files here are leftovers of a killed writer, never work in progress
    for directory in (path.parent, sweep_dir, *sweep_dir.glob("*/")):
        remove_stale_temps(directory)
    if path.exists():
        manifest = read_manifest(path)
        try:
            report = reconcile(manifest, plan, fresh, allow_changes=sweeper.resume_changed)
        except PlanChanged as error:
            raise SweepError(f"llem: {error}") from None
        attach_config_files(manifest, sweep_dir, settings.io)
        for job in manifest.jobs:
            job.retryable = True  # the environment may have been fixed since; preflight checks again
        manifest.campaign_id = campaign_id(manifest.campaign_name)
        manifest.group_by = list(settings.group_by)  # how results are grouped never changes what is measured
        if not sweeper.dry_run:
            manifest.events.append({"at": utc_now(), "kind": "resumed", "pid": os.getpid(), "detail": report.lines()})
            write_manifest(path, manifest)
        print("llem: resuming campaign '%s': %s" % (manifest.campaign_name, "; ".join(report.lines())), file=sys.stderr)
    else:
        manifest = fresh
        write_manifest(path, manifest)
    sweeper.resolved_configs = plan.resolved  # written to configs_dir as their jobs are launched
    log.info("planned %d job(s) with %d composition(s); manifest %s", len(plan.runnable), composer.compositions, path)

    if sweeper.dry_run:
        print_plan(plan)
        print(f"manifest written to {path}; dry run: nothing launched")
        return []
    if getattr(sweeper, "skipped_report", None):
        print(sweeper.skipped_report, file=sys.stderr)
    launcher = sweeper.launcher
    sweeper.io_settings = settings.io
    sweeper.sweep_dir = sweep_dir
    sweeper.notifier = notifier_for(settings, manifest.campaign_name)  # shared with the llem launcher's runner
    try:
        _preflight(sweeper, plan, path)
        try:
            if settings.daemon is not None and settings.daemon.enabled:
                returns = _run_daemon(sweeper, settings, path)
            elif settings.schedule.restricts_start:  # one run, started at a time and/or on an allowed day
                one_shot = CampaignDaemonConfig(enabled=True, at=settings.schedule.at)
                returns = _run_daemon(sweeper, settings.model_copy(update={"daemon": one_shot}), path)
            else:
                returns = _run_repetition(sweeper, settings, path, repetition=0)
        except KeyboardInterrupt:
            _interrupted(path)
            if hasattr(launcher, "finish"):
                launcher.finish()
            if sweeper.notifier is not None:
                sweeper.notifier.campaign_ended(
                    outcome="interrupted", counts=read_manifest(path).counts(), summary_path=None, manifest_path=path
                )
            print(f"llem: campaign interrupted; finished jobs are kept. Resume by running the same command with "
                  f"hydra.sweep.dir={sweep_dir}", file=sys.stderr)
            sys.exit(130)
        if hasattr(launcher, "finish"):
            launcher.finish()
        _finish(path, settings, sweeper.notifier)
    finally:
        if sweeper.notifier is not None:
            sweeper.notifier.close()  # waits for queued events at most the notification timeout
    return returns


def _workers(launcher_cfg: Any) -> Workers | None:
    """Where the llem launchers run jobs; None for other launchers (their jobs run elsewhere, e.g. SLURM)."""
    target = str(launcher_cfg.get("_target_", ""))
    from llem.energy import visible_gpu_count

    if target.endswith("LlemLocalLauncher"):
        return Workers("local", python=launcher_cfg.get("python"), gpu_count=visible_gpu_count())
    if target.endswith("LlemContainerLauncher"):
        images = dict(OmegaConf.to_container(launcher_cfg.get("images") or {}, resolve=True))  # type: ignore[arg-type]
        return Workers("container", engine=str(launcher_cfg.get("engine")), images=images,
                       gpu_count=visible_gpu_count())  # fmt: skip
    return None


def _preflight(sweeper: Any, plan: Plan, path: Path) -> None:
    """Fail, before anything launches, the jobs that cannot run on this machine; print every problem at once."""
    workers = _workers(sweeper.config.hydra.launcher)
    if workers is None:
        return
    todo = runnable(read_manifest(path), sweeper.max_attempts)
    problems = preflight(
        ((j.job_num, plan.resolved[j.config_hash]) for j in todo if j.config_hash in plan.resolved), workers
    )
    if not problems:
        return
    print(preflight_report(problems), file=sys.stderr)
    now = utc_now()
    manifest = update_jobs(path, {
        n: {"status": "failed", "error": f"preflight: {reason}", "retryable": False, "completed_at": now}
        for n, reason in problems.items()
    })  # fmt: skip
    if sweeper.notifier is not None:
        for job in (j for j in manifest.jobs if j.job_num in problems):
            sweeper.notifier.job_finished(
                job_num=job.job_num, overrides=job.overrides, status="failed", error=job.error, cycle=job.cycle,
                repetition=job.repetition, attempt=job.attempts, backend=job.backend,
            )


def _contiguous_batches(jobs: list[ManifestJob], size: int | None) -> list[list[ManifestJob]]:
    """Launchers number a batch's jobs from `initial_job_idx`, so a batch holds consecutive job numbers."""
    batches: list[list[ManifestJob]] = []
    for job in jobs:
        last = batches[-1] if batches else None
        if last and last[-1].job_num + 1 == job.job_num and (not size or size < 1 or len(last) < size):
            last.append(job)
        else:
            batches.append([job])
    return batches


def _launch_jobs(sweeper: Any, jobs: list[ManifestJob], path: Path) -> list[Sequence[JobReturn]]:
    launcher = sweeper.launcher
    managed = hasattr(launcher, "attach_campaign")
    returns: list[Sequence[JobReturn]] = []
    for batch in _contiguous_batches(jobs, sweeper.max_batch_size):
        resolved = getattr(sweeper, "resolved_configs", {})
        wanted = {j.config_hash: resolved[j.config_hash] for j in batch if j.config_hash in resolved}
        write_job_configs(sweeper.sweep_dir, sweeper.io_settings, wanted)
        if not managed:
            update_jobs(path, {j.job_num: {"status": "running", "started_at": utc_now()} for j in batch})
        results = launcher.launch([list(j.overrides) for j in batch], initial_job_idx=batch[0].job_num)
        if not managed:
            current = {j.job_num: j.attempts for j in read_manifest(path).jobs}
            outcomes = {j.job_num: {**_job_outcome(r), "attempts": current[j.job_num] + 1} for j, r in zip(batch, results)}
            update_jobs(path, outcomes)
            _notify_jobs(getattr(sweeper, "notifier", None), batch, outcomes)
        returns.append(results)
    return returns


def _notify_jobs(notifier: Notifier | None, jobs: list[ManifestJob], outcomes: dict[int, dict[str, Any]]) -> None:
    """Job events for launchers that do not send their own (the llem launchers do, as each job ends)."""
    if notifier is None:
        return
    for job in jobs:
        done = outcomes[job.job_num]
        notifier.job_finished(
            job_num=job.job_num, overrides=job.overrides, status=done["status"], error=done["error"],
            result_path=done["result_path"], cycle=job.cycle, repetition=job.repetition, attempt=done["attempts"],
            backend=job.backend,
        )


def _run_repetition(sweeper: Any, settings: CampaignSettings, path: Path, repetition: int) -> list[Any]:
    """Run every job of one repetition that is not done, then retry failures within max_attempts."""
    manifest = read_manifest(path)
    todo = [j for j in runnable(manifest, sweeper.max_attempts, repetition) if j.retryable]
    done = sum(1 for j in manifest.jobs if j.repetition == repetition and j.status == "completed")
    launcher = sweeper.launcher
    if hasattr(launcher, "attach_campaign"):
        launcher.attach_campaign(manifest_path=path, settings=settings, total=len(todo) + done, done=done)
    returns: list[Any] = []
    while todo:
        before = {j.job_num: j.attempts for j in todo}
        returns += _launch_jobs(sweeper, todo, path)
        # retry only jobs whose attempt was counted, so a launcher that does not count cannot loop us forever
        todo = [
            j for j in runnable(read_manifest(path), sweeper.max_attempts, repetition)
            if j.status == "failed" and j.job_num in before and j.attempts > before[j.job_num] and j.retryable
        ]
        if todo:
            print(f"llem: retrying {len(todo)} failed job(s) (max_attempts={sweeper.max_attempts})", file=sys.stderr)
            if hasattr(launcher, "attach_campaign"):
                launcher.attach_campaign(manifest_path=path, settings=settings)
    return returns


def _add_repetition(path: Path, repetition: int) -> None:
    """Copy repetition 0's jobs as new, pending entries with new job numbers and dirs."""
    manifest = read_manifest(path)
    if any(j.repetition == repetition for j in manifest.jobs):
        return
    next_num = max(j.job_num for j in manifest.jobs) + 1
    templates = [
        j for j in manifest.jobs
        if j.repetition == 0 and j.status not in ("invalid", "skipped") and not j.retired
    ]
    for template in templates:
        job = template.model_copy(deep=True)
        job.job_num, job.repetition, job.status = next_num, repetition, "pending"
        job.error = job.started_at = job.completed_at = None
        job.attempts = 0
        job.retryable = True
        job.result_path = str(Path(manifest.sweep_dir) / str(next_num) / "result.json") if template.result_path else None
        manifest.jobs.append(job)
        next_num += 1
    write_manifest(path, manifest)


def _save_schedule(path: Path, state: dict[str, Any]) -> None:
    manifest = read_manifest(path)
    manifest.schedule = state
    write_manifest(path, manifest)


def _sleep_until(when: dt.datetime, what: str) -> None:
    while True:
        left = (when - dt.datetime.now(dt.timezone.utc)).total_seconds()
        if left <= 0:
            return
        log.info("llem: %s at %s (in %.0f s)", what, when.astimezone().isoformat(timespec="seconds"), left)
        time.sleep(min(left, 60.0))


def _run_daemon(sweeper: Any, settings: CampaignSettings, path: Path) -> list[Any]:
    """Repeat the whole campaign on the daemon schedule; the schedule survives restarts."""
    daemon = settings.daemon
    assert daemon is not None
    calendar = schedule.Calendar.of(settings.schedule, at=daemon.at)
    state = read_manifest(path).schedule or schedule.initial_state(daemon, dt.datetime.now(dt.timezone.utc), calendar)
    _save_schedule(path, state)
    returns: list[Any] = []
    while schedule.may_start(state):
        repetition = int(state["repetitions_done"])
        _sleep_until(dt.datetime.fromisoformat(state["next_start"]), f"repetition {repetition} starts")
        now = dt.datetime.now(dt.timezone.utc)
        if not schedule.may_start(state, now):  # overslept past the deadline
            break
        record_event(path, {"kind": "repetition_started", "repetition": repetition, "at": now.isoformat()})
        _add_repetition(path, repetition)
        print(f"llem: daemon repetition {repetition} starting", file=sys.stderr)
        returns += _run_repetition(sweeper, settings, path, repetition)
        state = schedule.after_repetition(state, dt.datetime.now(dt.timezone.utc), calendar)
        _save_schedule(path, state)
    print(f"llem: daemon schedule finished after {state['repetitions_done']} repetition(s)", file=sys.stderr)
    return returns


def _interrupted(path: Path) -> None:
    """Jobs left `running` by a Ctrl-C are marked interrupted (the llem launcher does this itself)."""
    running = [j.job_num for j in read_manifest(path).jobs if j.status == "running"]
    if running:
        update_jobs(path, {n: {"status": "interrupted", "error": "interrupted by the user"} for n in running})


def _finish(path: Path, settings: CampaignSettings, notifier: Notifier | None = None) -> None:
    manifest = read_manifest(path)
    counts = manifest.counts()
    collect_results(manifest, Path(manifest.sweep_dir), settings.io)
    csv_path: Path | None = None
    try:
        from llem.report.summary import write_summary

        csv_path, _ = write_summary(Path(manifest.sweep_dir), path)
        print(f"llem: summary written to {csv_path}", file=sys.stderr)
    except ImportError:
        pass
    failed = counts.get("failed", 0) + counts.get("interrupted", 0)
    if notifier is not None:
        notifier.campaign_ended(
            outcome="failed" if failed else "completed", counts=counts, summary_path=csv_path, manifest_path=path
        )
    text = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"llem: campaign '{manifest.campaign_name}' finished: {text}; manifest {path}", file=sys.stderr)
    if failed:
        raise SweepError(_failure_summary(manifest, failed, path))


def _failure_summary(manifest: Any, failed: int, path: Path, most: int = 10) -> str:
    """One line per failed job (its overrides and the first line of its error), then where the rest is."""
    lines = [f"llem: {failed} job(s) failed:"]
    bad = [j for j in manifest.jobs if j.status in ("failed", "interrupted")]
    for job in bad[:most]:
        reason = first_line(job.error or "no error recorded", limit=300)
        lines.append(f"  job {job.job_num} ({' '.join(job.overrides) or 'defaults'}): {reason}")
    if len(bad) > most:
        lines.append(f"  ... and {len(bad) - most} more")
    lines.append(f"full errors and tracebacks: {path}")
    return "\n".join(lines)
