"""Launch logic shared by the llem launchers: build the runner, compose jobs, handle interrupts."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from omegaconf import DictConfig, OmegaConf

from llem.config import CampaignSettings
from llem.launch.container import ContainerSpec, ContainerWorker
from llem.launch.handle import WorkerHandle
from llem.launch.local import LocalWorker
from llem.launch.runner import CampaignRunner, RunnerOptions, compose_job

log = logging.getLogger(__name__)

CAMPAIGN_LABEL = "llem.campaign"


def campaign_id(sweep_dir: str) -> str:
    """A label value naming the campaign (its sweep dir), to find containers a crash left behind."""
    import hashlib

    return hashlib.sha256(sweep_dir.encode()).hexdigest()[:16]


class LauncherRunner(CampaignRunner):
    """A CampaignRunner that owns its socket dir and progress display and cleans up at exit."""

    def __init__(self, launcher: Any) -> None:
        opts = launcher.options
        if launcher.kind == "container":
            sweep_dir = str(Path(str(launcher.config.hydra.sweep.dir)).absolute())
            from llem.launch.container import remove_leftovers

            gone = remove_leftovers(str(opts.get("engine", "docker")), CAMPAIGN_LABEL, campaign_id(sweep_dir))
            if gone:
                log.warning("llem: removed containers left by an earlier run of this campaign: %s", ", ".join(gone))
        super().__init__(self._factory, RunnerOptions(route_by=opts.get("route_by", "backend.name"),
                                                      timeout_s=opts.get("timeout_s")))
        self.launcher = launcher
        # Unix socket paths are limited to ~100 bytes: keep them short, outside the sweep dir.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="llem-w-"))
        config: DictConfig = launcher.config
        self.log_dir = Path(str(config.hydra.sweep.dir)).absolute() / ".workers"
        self._progress_cm: Any = None
        self._closed = False
        atexit.register(self.close)

    def _factory(self, key: str) -> WorkerHandle:
        state = Singleton.get_state()
        opts = self.launcher.options
        if self.launcher.kind == "local":
            return LocalWorker(key, self.socket_dir, self.log_dir, state, python=opts.get("python") or sys.executable,
                               env={str(k): str(v) for k, v in (opts.get("env") or {}).items()})
        return ContainerWorker(key, self.socket_dir, state, container_spec(self.launcher, key, self.socket_dir))

    def start_progress(self, total: int, done: int = 0) -> None:
        from llem.progress import CampaignProgress

        if self._progress_cm is None:
            quiet = bool(self.context.settings and self.context.settings.daemon and self.context.settings.daemon.quiet)
            self._progress_cm = CampaignProgress(total, quiet=quiet, already_done=done)
            self.progress = self._progress_cm.__enter__()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stop_all()
        if self._progress_cm is not None:
            self._progress_cm.__exit__(None, None, None)
            self._progress_cm = None
            self.progress = None
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def _parse_mount(text: str) -> tuple[str, str, str]:
    parts = text.split(":")
    if len(parts) == 2:
        return parts[0], parts[1], "rw"
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        return parts[0], parts[1], parts[2]
    raise ValueError(f"hydra.launcher.mounts: expected 'host:container[:ro|rw]', got {text!r}")


def container_spec(launcher: Any, key: str, socket_dir: Path) -> ContainerSpec:
    opts = launcher.options
    images = dict(opts.get("images") or {})
    if key not in images:
        raise RuntimeError(f"hydra.launcher.images has no image for '{key}' (known: {sorted(images)})")
    sweep_dir = str(Path(str(launcher.config.hydra.sweep.dir)).absolute())
    mounts = [(sweep_dir, sweep_dir, "rw"), (str(socket_dir), str(socket_dir), "rw")]
    env = {str(k): str(v) for k, v in (opts.get("env") or {}).items()}
    if opts.get("mount_caches", True):
        hf_home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
        llem_cache = os.environ.get("LLEM_CACHE_DIR") or str(Path.home() / ".cache" / "llem")
        for path, var in ((hf_home, "HF_HOME"), (llem_cache, "LLEM_CACHE_DIR")):
            Path(path).mkdir(parents=True, exist_ok=True)
            mounts.append((path, path, "rw"))
            env.setdefault(var, path)
    workdir = None
    if opts.get("mount_cwd", True):
        workdir = str(Path.cwd())
        if workdir != sweep_dir:
            mounts.append((workdir, workdir, "rw"))
    mounts += [_parse_mount(str(m)) for m in opts.get("mounts") or []]
    labels = {CAMPAIGN_LABEL: campaign_id(sweep_dir)}
    gpus = opts.get("gpus")
    if gpus is not None and not isinstance(gpus, str):
        gpus = [int(g) for g in gpus]
    return ContainerSpec(
        engine=str(opts.get("engine", "docker")),
        image=str(images[key]),
        python=str(opts.get("python", "python")),
        gpus=gpus,
        network=opts.get("network"),
        mounts=mounts,
        env=env,
        env_passthrough=[str(n) for n in opts.get("env_passthrough") or []],
        shm_size=opts.get("shm_size"),
        labels=labels,
        workdir=workdir,
    )


def _runner(launcher: Any) -> LauncherRunner:
    if launcher.runner is None:
        launcher.runner = LauncherRunner(launcher)
    return launcher.runner


def attach(launcher: Any, *, manifest_path: Path, settings: CampaignSettings, total: int | None = None,
           done: int = 0) -> None:
    runner = _runner(launcher)
    runner.attach(manifest_path, settings)
    if total is not None:
        runner.start_progress(total, done)


def _settings_from_config(config: DictConfig) -> CampaignSettings | None:
    """Campaign settings of an llem app run under another sweeper (None for other apps)."""
    if "campaign" not in config or OmegaConf.select(config, "backend.name") is None:
        return None
    from llem.composed import validate_campaign

    return validate_campaign(OmegaConf.to_container(config.campaign, resolve=True))  # type: ignore[arg-type]


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    setup_globals()
    config: DictConfig = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    runner = _runner(launcher)
    if runner.context.settings is None and runner.context.manifest_path is None:
        runner.context.settings = _settings_from_config(config)
    log.info("llem %s launcher: %d job(s)", launcher.kind, len(job_overrides))
    returns: list[JobReturn] = []
    current: int | None = None
    previous = signal.getsignal(signal.SIGTERM)

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if signal.getsignal(signal.SIGTERM) is not None:
        signal.signal(signal.SIGTERM, _terminate)
    composed: dict[int, DictConfig | Exception] = {}

    def compose(idx: int) -> None:
        """Compose job `idx` (if any and not yet done); called for the next job while one runs."""
        if idx < len(job_overrides) and idx not in composed:
            try:
                composed[idx] = compose_job(launcher.hydra_context, config, job_overrides[idx], initial_job_idx + idx)
            except Exception as error:  # noqa: BLE001 - fails that job only (e.g. a config file edited meanwhile)
                composed[idx] = error

    try:
        for idx, overrides in enumerate(job_overrides):
            current = initial_job_idx + idx
            log.info("\t#%d : %s", current, " ".join(filter_overrides(list(overrides))))
            compose(idx)
            job_config = composed.pop(idx)
            if isinstance(job_config, Exception):
                returns.append(runner.compose_failed(current, overrides, job_config))
                current = None
                continue
            returns.append(
                runner.run_job(
                    job_config, overrides, launcher.task_function, launcher.hydra_context,
                    while_waiting=lambda i=idx: compose(i + 1),
                )
            )
            current = None
    except KeyboardInterrupt:
        runner.mark_interrupted(current)
        runner.close()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return returns
