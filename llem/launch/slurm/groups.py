"""Split one launch's jobs into groups: one SLURM job per group, its jobs run in one process.

Jobs share a group when they route to the same worker key (`route_by`, e.g. the backend) and load
the same model (name, revision, precision), so a group loads its model once and every later job of
the group reuses it. Groups keep the jobs' order; groups are ordered by their first job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


@dataclass
class JobSpec:
    """One composed job, as the launcher plans and the SLURM job runs it."""

    index: int  # position in the launch's job_overrides
    job_num: int
    overrides: list[str]
    config: DictConfig
    key: str = "default"
    model: str = ""
    gpus: int = 0
    config_hash: str | None = None
    job_dir: str = ""
    # the GPU need comes from `backend.device=auto` (the job can run on CPU where there is no GPU)
    gpu_auto: bool = False
    period: tuple[int | None, int | None] = (None, None)  # (repetition, cycle), for gaps and health checks
    experiment: Any = None  # the settings the plan validated from this very config (None: the task validates)


@dataclass
class Group:
    key: str
    model: str
    jobs: list[JobSpec] = field(default_factory=list)

    @property
    def gpus(self) -> int:
        """GPUs the SLURM job asks for: the most any of its jobs needs (0: none)."""
        return max((j.gpus for j in self.jobs), default=0)

    @property
    def name(self) -> str:
        return f"{self.key}:{self.model}" if self.model else self.key


def job_dir(config: DictConfig) -> str:
    """The job's output dir (sweep dir / sweep subdir), absolute."""
    return str(Path(str(config.hydra.sweep.dir)).absolute() / str(config.hydra.sweep.subdir))


def describe(spec: JobSpec, route_by: str, experiment: Any = None) -> JobSpec:
    """Fill the spec's routing key, model, GPU need and config hash from its composed config.

    The engine is not imported here (the submitting host may not have it); a config that does not
    validate keeps hash None and no GPUs, and fails when the job runs, with the task's own message.
    `experiment`: the job's settings as a campaign's plan validated them (then not validated again).
    """
    config = spec.config
    spec.key = str(OmegaConf.select(config, route_by, default=None) or "default")
    model_parts = [OmegaConf.select(config, k, default=None) for k in ("model.name", "model.revision", "fp_precision")]
    spec.model = "@".join(str(p) for p in model_parts if p is not None)
    spec.job_dir = job_dir(config)
    from llem.config.hashing import config_hash
    from llem.measure.job_devices import gpu_need

    if experiment is None:
        try:
            from llem.composed import validate_composed

            task_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])  # what the task gets
            experiment = validate_composed(task_cfg).experiment
        except Exception:  # noqa: BLE001 - not an llem job, or an invalid one
            return spec
    spec.config_hash = config_hash(experiment)
    try:
        spec.gpus = gpu_need(experiment)
    except ValueError:
        spec.gpus = 0
    spec.gpu_auto = spec.gpus > 0 and getattr(experiment.backend, "device", None) == "auto"
    return spec


def group_jobs(specs: list[JobSpec], split_by_model: bool = True) -> list[Group]:
    groups: dict[tuple[str, str], Group] = {}
    for spec in specs:
        gkey = (spec.key, spec.model if split_by_model else "")
        if gkey not in groups:
            groups[gkey] = Group(key=gkey[0], model=gkey[1])
        groups[gkey].jobs.append(spec)
    return list(groups.values())


def campaign_value(config: DictConfig, key: str, default: Any) -> Any:
    """A campaign setting from a composed job config (`campaign.<key>`), or `default` outside llem apps."""
    value = OmegaConf.select(config, f"campaign.{key}", default=None)
    return default if value is None else value
