"""Apply a job's `gpu.*` settings around its measurement, read them back, and always restore them.

One holder per process (`HOLDER`): a warm worker keeps the settings between jobs with equal values
and changes them only when the next job's differ; a job with `gpu.*` unset gets the GPUs' original
values back. Before any change a restore record is written (energy/devices/gpu_restore.py); the
originals go back at process exit, and a record left by a process that died is restored by the next
one that touches GPU settings, before it changes anything.

In a container the worker lacks the host's privilege: the launcher applies the settings on the host
(`HOST_APPLIED_ENV` is set in the container) and hands each job what it applied (`set_host_applied`);
the job then only reads the effective values back, which needs no privilege.
"""

from __future__ import annotations

import atexit
import logging
import os
import statistics
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llem.config import ExperimentConfig
from llem.config.gpu import GpuSettingsConfig
from llem.energy.devices import DeviceUnavailable
from llem.energy.devices.gpu_control import PRIVILEGE_FIX, GpuControl, GpuControlError, GpuLimits, nearest, neighbours
from llem.energy.devices.gpu_restore import RestoreRecord, RestoreRecords, restore_gpu, restore_stale
from llem.measure.gpu_settings_result import GpuKnob, GpuSettingsEntry

log = logging.getLogger(__name__)

POWER_TOLERANCE_W = 1.0
# Set in a worker's environment when the launcher applies `gpu.*` on the host: the worker never changes them.
HOST_APPLIED_ENV = "LLEM_GPU_SETTINGS_BY_HOST"
_CLOCK_NAMES = {"sm": "SM", "mem": "memory"}


class GpuSettingsError(RuntimeError):
    """The job's `gpu.*` settings cannot be applied here; the message names the key and what is allowed."""


@dataclass(frozen=True)
class Resolved:
    """Settings for one GPU, checked against it: watts, and clocks as (min, max) MHz after rounding."""

    power_limit_w: int | None = None
    sm_clock_mhz: tuple[int, int] | None = None
    mem_clock_mhz: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Resolved:
        """The inverse of `as_dict` (what a launcher applied on the host, as the job receives it)."""
        clocks = {k: (int(data[k][0]), int(data[k][1])) for k in ("sm_clock_mhz", "mem_clock_mhz") if data.get(k)}
        power = data.get("power_limit_w")
        return cls(power_limit_w=None if power is None else int(power), **clocks)


def _gpu_name(limits: GpuLimits) -> str:
    return f"{limits.name} ({limits.uuid})" if limits.name else f"GPU {limits.uuid}"


def _resolve_clock(key: str, value: int | list[int], supported: Sequence[int] | None, rounding: str,
                   limits: GpuLimits, what: str) -> tuple[int, int]:  # fmt: skip
    ends = [value, value] if isinstance(value, int) else list(value)
    shown = value if isinstance(value, int) else list(value)
    if not supported:
        raise GpuSettingsError(f"{key}={shown}: {_gpu_name(limits)} does not report supported {what} clocks, so "
                               f"they cannot be locked")  # fmt: skip
    low, high = min(supported), max(supported)
    if any(not low <= v <= high for v in ends):
        raise GpuSettingsError(f"{key}={shown} is outside the supported {what} clocks of {_gpu_name(limits)}: "
                               f"{low}-{high} MHz")  # fmt: skip
    out = []
    for v in ends:
        if v in supported:
            out.append(v)
        elif rounding == "nearest":
            out.append(nearest(v, supported)[-1])
        else:
            near = ", ".join(str(n) for n in neighbours(v, supported))
            raise GpuSettingsError(f"{key}={shown}: {v} MHz is not a supported {what} clock of {_gpu_name(limits)}; "
                                   f"nearest supported: {near} MHz (or set gpu.clock_rounding=nearest)")  # fmt: skip
    return out[0], out[1]


def resolve(settings: GpuSettingsConfig, limits: GpuLimits) -> Resolved:
    """The settings for one GPU, or GpuSettingsError naming the key and the device's allowed values."""
    power = None
    if settings.power_limit_w is not None:
        span = limits.power_limit_range_w
        if span is None:
            raise GpuSettingsError(f"gpu.power_limit_w={settings.power_limit_w}: {_gpu_name(limits)} does not report "
                                   f"its power limit range, so its limit cannot be set")  # fmt: skip
        if not span[0] <= settings.power_limit_w <= span[1]:
            raise GpuSettingsError(f"gpu.power_limit_w={settings.power_limit_w} is outside the limits of "
                                   f"{_gpu_name(limits)}: {span[0]:g}-{span[1]:g} W")  # fmt: skip
        power = settings.power_limit_w
    mem = sm = None
    if settings.mem_clock_mhz is not None:
        mem = _resolve_clock("gpu.mem_clock_mhz", settings.mem_clock_mhz, limits.mem_clocks_mhz,
                             settings.clock_rounding, limits, "memory")  # fmt: skip
    if settings.sm_clock_mhz is not None:
        sm = _resolve_clock("gpu.sm_clock_mhz", settings.sm_clock_mhz, limits.sm_clocks_mhz,
                            settings.clock_rounding, limits, "SM")  # fmt: skip
    return Resolved(power_limit_w=power, sm_clock_mhz=sm, mem_clock_mhz=mem)


def no_gpu_problem(experiment: ExperimentConfig, job_gpus: Sequence[int]) -> str | None:
    """A job that sets `gpu.*` but runs without a GPU: the message names the keys."""
    if not experiment.gpu.is_set or job_gpus:
        return None
    keys = ", ".join(experiment.gpu.set_keys())
    why = "backend.device=cpu" if getattr(experiment.backend, "device", None) == "cpu" else "no NVIDIA GPU is visible"
    return f"{keys} set, but this job runs without a GPU ({why}); remove {keys} from this job or run it on a GPU"


@dataclass
class JobGpuSettings:
    """The settings in force for one job, on its GPUs (CUDA index -> UUID), with what was read back."""

    settings: GpuSettingsConfig
    uuids: dict[int, str]
    resolved: dict[str, Resolved]
    limits: dict[str, GpuLimits]
    changed: bool
    power_read_w: dict[str, float | None] = field(default_factory=dict)
    clocks_read_mhz: dict[str, dict[str, int | None]] = field(default_factory=dict)

    def read_back(self, control: GpuControl) -> JobGpuSettings:
        """What each GPU really enforces now (the driver may clamp or ignore a setting), for the result."""
        for uuid in self.uuids.values():
            self.power_read_w[uuid] = control.enforced_power_limit_w(uuid)
            self.clocks_read_mhz[uuid] = {w: control.clock_mhz(uuid, w) for w in ("sm", "mem")}
        return self

    def section(self, telemetry: Iterable[dict[str, Any]] | None) -> tuple[dict[str, GpuSettingsEntry], list[str]]:
        """result.json's `gpu_settings` and the warnings for effective values that differ from what was set.

        `telemetry` is the sampler's rows over the measured window (None without telemetry).
        """
        rows = list(telemetry) if telemetry is not None else None
        out: dict[str, GpuSettingsEntry] = {}
        warnings: list[str] = []
        s = self.settings
        for index, uuid in self.uuids.items():
            label = f"gpu{index}"
            mine = None if rows is None else [r for r in rows if r.get("device") == label]
            r = self.resolved[uuid]
            entry = GpuSettingsEntry(uuid=uuid, changed_for_job=self.changed, throttle_reasons=_reasons(mine))
            if r.power_limit_w is not None and s.power_limit_w is not None:
                effective = self.power_read_w.get(uuid)
                entry.power_limit_w = GpuKnob(
                    requested=s.power_limit_w, applied=r.power_limit_w, effective=effective,
                    effective_source="enforced power limit read after setting it",
                    default=self.limits[uuid].default_power_limit_w,
                )  # fmt: skip
                if effective is None:
                    warnings.append(f"{label}: the power limit could not be read back after setting it")
                elif abs(effective - r.power_limit_w) > POWER_TOLERANCE_W:
                    warnings.append(f"{label}: gpu.power_limit_w={s.power_limit_w} but the GPU enforces "
                                    f"{effective:g} W")  # fmt: skip
            for which, key, requested, applied in (("sm", "sm_clock_mhz", s.sm_clock_mhz, r.sm_clock_mhz),
                                                   ("mem", "mem_clock_mhz", s.mem_clock_mhz, r.mem_clock_mhz)):
                if applied is None or requested is None:
                    continue
                effective_clock, source = self._clock(uuid, which, mine)
                shown = applied[0] if isinstance(requested, int) else list(applied)
                setattr(entry, key, GpuKnob(requested=requested, applied=shown, effective=effective_clock,
                                            effective_source=source, default=None))  # fmt: skip
                if effective_clock is None:
                    warnings.append(f"{label}: the {_CLOCK_NAMES[which]} clock could not be read back")
                elif not applied[0] <= effective_clock <= applied[1]:
                    reasons = f" (throttled: {', '.join(entry.throttle_reasons)})" if entry.throttle_reasons else ""
                    warnings.append(f"{label}: gpu.{key} locked at {shown} MHz but the {_CLOCK_NAMES[which]} clock "
                                    f"was {effective_clock:g} MHz{reasons}")  # fmt: skip
            out[label] = entry
        return out, warnings

    def _clock(self, uuid: str, which: str, rows: list[dict[str, Any]] | None) -> tuple[float | None, str]:
        column = "sm_clock_mhz" if which == "sm" else "mem_clock_mhz"
        values = [r[column] for r in rows or [] if r.get(column) is not None]
        if values:
            return float(statistics.median(values)), "median over the measured window"
        read = self.clocks_read_mhz.get(uuid, {}).get(which)
        return (None if read is None else float(read)), "read after setting it"


def _reasons(rows: list[dict[str, Any]] | None) -> list[str] | None:
    if rows is None:
        return None
    seen = []
    if any(r.get("throttle_power") for r in rows):
        seen.append("power_cap")
    if any(r.get("throttle_thermal") for r in rows):
        seen.append("thermal")
    return seen


class GpuSettingsHolder:
    """What this process has set on which GPU; restores the originals when told to and at exit."""

    def __init__(self, records: Callable[[], RestoreRecords] = RestoreRecords) -> None:
        self._records = records
        self.held: dict[str, Resolved] = {}
        self._nvml: Any = None
        self._checked_stale = False
        self._atexit = False
        self._lock = threading.Lock()
        self.restored_stale: list[str] = []

    # ------------------------------------------------------------------ per job
    def apply(self, experiment: ExperimentConfig, job_gpus: Sequence[int], uuids: dict[int, str],
              nvml: Any = None, scope: Collection[str] | None = None) -> JobGpuSettings | None:  # fmt: skip
        """Put the job's settings in force on its GPUs (`uuids`: CUDA index -> UUID); None when it sets none.

        Every GPU is checked before any is changed, so a refused value changes nothing. GPUs held from
        earlier jobs that this job does not set are restored; with `scope` (UUIDs), only those among them,
        so a launcher holding the GPUs of jobs that run side by side leaves the others' GPUs alone.
        """
        settings = experiment.gpu
        with self._lock:
            self._nvml = nvml
            self.restore_stale_once(nvml)
            problem = no_gpu_problem(experiment, job_gpus)
            if problem is not None:
                raise GpuSettingsError(problem)
            records = self._records()
            for uuid in list(self.held):  # a sibling worker may have taken a GPU over since our last job
                record = records.read(uuid)
                if record is None or not record.is_mine:
                    self.held.pop(uuid)
            siblings = [u for u in uuids.values() if (r := records.read(u)) is not None and r.sibling]
            held = [u for u in self.held if scope is None or u in scope]
            if not settings.is_set and not held and not siblings:
                return None  # llem touches nothing
            try:
                control = GpuControl(nvml)
            except DeviceUnavailable as error:
                raise GpuSettingsError(f"{', '.join(settings.set_keys())}: cannot reach the GPUs: {error.reason}")
            try:
                wanted = set(uuids.values()) if settings.is_set else set()
                for uuid in dict.fromkeys([*held, *siblings]):
                    if uuid not in wanted:
                        self._restore(control, uuid)
                if not settings.is_set:
                    return None
                limits = {uuid: control.limits(uuid) for uuid in uuids.values()}
                resolved = {uuid: resolve(settings, limits[uuid]) for uuid in uuids.values()}
                changed = False
                for uuid, values in resolved.items():
                    if self.held.get(uuid) != values:
                        self._set(control, uuid, values)
                        changed = True
                return JobGpuSettings(settings, dict(uuids), resolved, limits, changed).read_back(control)
            finally:
                control.close()

    def sibling_records(self) -> list[RestoreRecord]:
        """Records another worker of this process's launcher holds (their GPUs may be this job's)."""
        return [r for r in self._records().all() if r.sibling]

    def restore_stale_once(self, nvml: Any = None) -> None:
        """Before this process's first job: GPUs a process that died left changed get their originals back, so
        no job, whether it sets `gpu.*` or not, is measured under a crashed run's settings."""
        if not self._checked_stale:
            self._checked_stale = True
            self.restored_stale, failed = restore_stale(nvml, self._records())
            for line in self.restored_stale:
                log.warning("llem: %s", line)
            for line in failed:
                log.warning("llem: could not restore %s", line)

    def _set(self, control: GpuControl, uuid: str, values: Resolved) -> None:
        records = self._records()
        with records.lock(uuid):
            record = records.read(uuid)
            if record is not None and not record.is_mine:
                if record.sibling:  # an idle warm worker of our launcher left them set: ours now, originals kept
                    record.adopt()
                elif not record.stale:
                    raise GpuSettingsError(f"GPU {uuid}'s power limit and clocks are held by another llem process "
                                           f"(PID {record.pid}); it restores them when it ends")  # fmt: skip
                else:
                    problems = restore_gpu(control, records, record)
                    if problems:
                        raise GpuSettingsError("; ".join(problems))
                    record = None
            fresh = record is None
            record = record or RestoreRecord.mine(uuid)
            changed = False
            try:
                if values.power_limit_w is not None and record.original_power_limit_mw is None:
                    record.original_power_limit_mw = control.power_limit_mw(uuid)
                for which, value in (("sm", values.sm_clock_mhz), ("mem", values.mem_clock_mhz)):
                    if value is not None and which not in record.locked_clocks:
                        record.locked_clocks.append(which)
                record.applied = values.as_dict()
                records.write(record)  # before the first change: a crash from here on is restored later
                self._at_exit()
                if values.power_limit_w is not None:
                    control.set_power_limit_mw(uuid, values.power_limit_w * 1000)
                    changed = True
                elif record.original_power_limit_mw is not None:
                    control.set_power_limit_mw(uuid, record.original_power_limit_mw)
                for which, value in (("sm", values.sm_clock_mhz), ("mem", values.mem_clock_mhz)):
                    if value is not None:
                        control.lock_clocks(uuid, which, *value)
                        changed = True
                    elif which in record.locked_clocks:
                        control.reset_clocks(uuid, which)
            except GpuControlError as error:
                self.held.pop(uuid, None)
                if fresh and not changed:
                    records.remove(uuid)  # the first change failed: nothing to put back
                else:
                    restore_gpu(control, records, record)  # leave nothing half-set
                fix = f"; {PRIVILEGE_FIX}" if error.kind == "no_permission" else ""
                raise GpuSettingsError(f"{error}{fix}") from None
            self.held[uuid] = values

    def _restore(self, control: GpuControl, uuid: str) -> list[str]:
        records = self._records()
        with records.lock(uuid):
            record = records.read(uuid)
            if record is not None and record.sibling:
                record.adopt()
            problems = restore_gpu(control, records, record) if record is not None and record.is_mine else []
        self.held.pop(uuid, None)
        return problems

    # ------------------------------------------------------------------ at the end
    def _at_exit(self) -> None:
        if not self._atexit:
            self._atexit = True
            atexit.register(self.restore_all)

    def restore_all(self, uuids: Collection[str] | None = None) -> list[str]:
        """Put back the original settings of every GPU this holder changed (or of those among `uuids`); the
        problems, if any."""
        with self._lock:
            mine = [u for u in self.held if uuids is None or u in uuids]
            if not mine:
                return []
            try:
                control = GpuControl(self._nvml)
            except DeviceUnavailable as error:
                return [f"cannot restore GPU settings: {error.reason}"]
            problems: list[str] = []
            try:
                for uuid in mine:
                    problems += self._restore(control, uuid)
            finally:
                control.close()
            return problems


# One per process: a warm worker keeps its GPU settings between jobs with the same values.
HOLDER = GpuSettingsHolder()


def job_uuids(experiment: ExperimentConfig, nvml: Any = None) -> tuple[list[int], dict[int, str]]:
    """The job's CUDA indices and their GPU UUIDs (reading them needs no privilege)."""
    from llem.energy import visible_gpu_count
    from llem.energy.devices.nvml import NvmlDevices
    from llem.measure.job_devices import job_gpu_devices

    job_gpus = job_gpu_devices(experiment, visible_gpu_count(nvml_module=nvml))
    uuids: dict[int, str] = {}
    if job_gpus:
        try:
            devices = NvmlDevices.open(job_gpus, nvml=nvml)
        except DeviceUnavailable as error:
            raise GpuSettingsError(f"{', '.join(experiment.gpu.set_keys()) or 'gpu'}: {error.reason}") from None
        try:
            uuids = {i: devices.uuid(i) for i in devices.indices}
        finally:
            devices.close()
    return job_gpus, uuids


def apply_for_job(experiment: ExperimentConfig, nvml: Any = None,
                  holder: GpuSettingsHolder | None = None) -> JobGpuSettings | None:  # fmt: skip
    """The harness's entry: find the job's GPUs and put its `gpu.*` settings in force (see `GpuSettingsHolder`).

    Opens nothing when the job sets nothing and this process holds nothing. Where the launcher applies
    them on the host (`HOST_APPLIED_ENV`), only reads them back (`read_host_applied`).
    """
    if os.environ.get(HOST_APPLIED_ENV) == "1":
        return read_host_applied(experiment, nvml)
    holder = HOLDER if holder is None else holder
    holder.restore_stale_once(nvml)
    if not experiment.gpu.is_set and not holder.held and not holder.sibling_records():
        return None
    job_gpus, uuids = job_uuids(experiment, nvml)
    return holder.apply(experiment, job_gpus, uuids, nvml)


# ---------------------------------------------------------------------- applied on the host
_HOST_APPLIED: dict[str, Any] = {}


def host_applied(job: JobGpuSettings | None) -> dict[str, Any] | None:
    """What a launcher that applied a job's settings on the host hands the job (see `set_host_applied`)."""
    if job is None:
        return None
    return {"applied": {uuid: r.as_dict() for uuid, r in job.resolved.items()}, "changed": job.changed}


def set_host_applied(facts: Mapping[str, Any] | None) -> None:
    """In a worker whose launcher applies `gpu.*` on the host: what it applied for the next job (None: nothing)."""
    _HOST_APPLIED.clear()
    _HOST_APPLIED.update(facts or {})


def read_host_applied(experiment: ExperimentConfig, nvml: Any = None) -> JobGpuSettings | None:
    """The job's settings as the host applied them, with the effective values read back here; changes nothing.

    Fails when the job sets `gpu.*` but the host applied nothing, or applied it on other GPUs than the
    job's own (a container that numbers its GPUs otherwise than the launcher expects).
    """
    facts = dict(_HOST_APPLIED)
    _HOST_APPLIED.clear()  # for this job only
    settings = experiment.gpu
    if not settings.is_set:
        return None
    keys = ", ".join(settings.set_keys())
    applied = facts.get("applied")
    if not applied:
        raise GpuSettingsError(f"{keys} set, but the launcher applied no GPU settings on the host for this job; "
                               f"this worker lacks the privilege to apply them itself")  # fmt: skip
    job_gpus, uuids = job_uuids(experiment, nvml)
    problem = no_gpu_problem(experiment, job_gpus)
    if problem is not None:
        raise GpuSettingsError(problem)
    missing = [u for u in uuids.values() if u not in applied]
    if missing:
        raise GpuSettingsError(f"{keys}: the launcher applied them on {', '.join(sorted(applied))}, but this job "
                               f"runs on {', '.join(missing)}")  # fmt: skip
    try:
        control = GpuControl(nvml)
    except DeviceUnavailable as error:
        raise GpuSettingsError(f"{keys}: cannot read the GPUs back: {error.reason}") from None
    try:
        limits = {uuid: control.limits(uuid) for uuid in uuids.values()}
        resolved = {uuid: Resolved.from_dict(applied[uuid]) for uuid in uuids.values()}
        return JobGpuSettings(settings, dict(uuids), resolved, limits,
                              bool(facts.get("changed", True))).read_back(control)  # fmt: skip
    finally:
        control.close()
