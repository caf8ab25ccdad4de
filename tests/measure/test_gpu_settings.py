"""GPU power limit and clocks: set, read back into result.json, kept by a warm process, always restored.

Everything runs against the scripted NVML, which records every set and reset call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llem.config import ExperimentConfig
from llem.energy.devices.gpu_restore import RestoreRecord, RestoreRecords, restore_stale
from llem.measure import gpu_settings
from llem.measure.gpu_settings import GpuSettingsError, GpuSettingsHolder, apply_for_job
from llem.measure.harness import MeasurementError, run_experiment
from llem.measure.result import read_result
from llem.measure.session import BackendSession
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml

SET_POWER = "nvmlDeviceSetPowerManagementLimit"
LOCK_SM = "nvmlDeviceSetGpuLockedClocks"
RESET_SM = "nvmlDeviceResetGpuLockedClocks"
UUID0 = "GPU-00000000-fake-0000-0000-000000000000"
UUID1 = "GPU-00000001-fake-0000-0000-000000000000"


@pytest.fixture(autouse=True)
def records_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "restore"
    monkeypatch.setenv("LLEM_GPU_RESTORE_DIR", str(directory))
    return directory


@pytest.fixture
def holder(monkeypatch: pytest.MonkeyPatch) -> GpuSettingsHolder:
    fresh = GpuSettingsHolder()
    monkeypatch.setattr(gpu_settings, "HOLDER", fresh)
    yield fresh
    fresh.restore_all()


def _experiment(gpu: dict[str, Any] | None = None, **overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "model": {"name": "builtin:tiny"},
        "num_input_prompts": 2,
        "max_input_tokens": 16,
        "max_output_tokens": 3,
        "warmup": {"num_prompts": 0},
        "baseline": {"enabled": False},
        "measure": {"min_window_seconds": 0.0, "phase_split": False},
        "backend": {"name": "pytorch", "batch_size": 2},
        "gpu": gpu or {},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


def _sets(fake: FakeNvml) -> list[tuple[str, str, tuple[int, ...]]]:
    return list(fake.settings_log)


# ------------------------------------------------------------------------------------------- config
def test_config_accepts_a_value_or_a_range_and_unset_changes_nothing() -> None:
    assert not _experiment().gpu.is_set
    e = _experiment({"power_limit_w": 300, "sm_clock_mhz": [1200, 1500]})
    assert e.gpu.sm_clock_mhz == [1200, 1500] and e.gpu.set_keys() == ["gpu.power_limit_w", "gpu.sm_clock_mhz"]
    for bad, needle in (({"sm_clock_mhz": [1500, 1200]}, "0 < min <= max"), ({"sm_clock_mhz": [1, 2, 3]}, "[min, max]"),
                        ({"power_limit_w": 0}, "greater than or equal to 1"), ({"clock_rounding": "up"}, "exact")):
        with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            _experiment(bad)


def test_unset_gpu_settings_keep_the_config_hash_of_results_written_before_them() -> None:
    from llem.config.hashing import config_hash

    unset = _experiment()
    before = unset.model_dump(mode="json")
    before.pop("gpu")
    assert config_hash(unset) == config_hash(before)
    assert config_hash(_experiment({"power_limit_w": 300})) != config_hash(unset)


# ------------------------------------------------------------------------------------------- result.json
@pytest.mark.slow
def test_effective_values_are_recorded_in_result_json(tmp_path: Path, holder: GpuSettingsHolder,
                                                      records_dir: Path) -> None:  # fmt: skip
    fake = FakeNvml([FakeGpu(clock_reasons=0x04)])  # the power cap holds the clocks down during the window
    session = BackendSession()
    try:
        result = run_experiment(_experiment({"power_limit_w": 300, "sm_clock_mhz": 1400, "clock_rounding": "nearest"}),
                                tmp_path, session, nvml_module=fake)  # fmt: skip
    finally:
        session.release()
    on_disk = json.loads((tmp_path / "result.json").read_text())["gpu_settings"]["gpu0"]
    assert on_disk["uuid"] == UUID0 and on_disk["changed_for_job"] is True
    assert on_disk["power_limit_w"] == {"requested": 300, "applied": 300, "effective": 300.0, "default": 700.0,
                                        "effective_source": "enforced power limit read after setting it"}
    sm = on_disk["sm_clock_mhz"]
    # 1400 MHz is not supported: rounded to the nearest, 1395
    assert (sm["requested"], sm["applied"], sm["effective"], sm["default"]) == (1400, 1395, 1395.0, None)
    assert sm["effective_source"] == "median over the measured window"
    assert on_disk["throttle_reasons"] == ["power_cap"]
    assert result.warnings == [] or not any("gpu0" in w for w in result.warnings)
    typed = read_result(tmp_path / "result.json").gpu_settings
    assert typed is not None and typed["gpu0"].power_limit_w is not None and typed["gpu0"].power_limit_w.effective == 300
    assert _sets(fake) == [(SET_POWER, UUID0, (300_000,)), (LOCK_SM, UUID0, (1395, 1395))]
    assert [r.uuid for r in RestoreRecords().all()] == [UUID0]  # held until the process (worker) ends
    assert holder.restore_all() == []
    assert _sets(fake)[2:] == [(SET_POWER, UUID0, (700_000,)), (RESET_SM, UUID0, ())]
    assert RestoreRecords().all() == []


def test_an_effective_value_that_differs_from_the_request_warns(holder: GpuSettingsHolder) -> None:
    fake = FakeNvml([FakeGpu(enforced_power_limit_mw=280_000)])
    job = apply_for_job(_experiment({"power_limit_w": 300, "sm_clock_mhz": [1200, 1410]}), fake)
    assert job is not None
    rows = [{"device": "gpu0", "sm_clock_mhz": 990, "mem_clock_mhz": 2619, "throttle_power": True,
             "throttle_thermal": False}]  # fmt: skip
    section, warnings = job.section(rows)
    assert section["gpu0"].power_limit_w.effective == 280.0  # type: ignore[union-attr]
    assert "gpu0: gpu.power_limit_w=300 but the GPU enforces 280 W" in warnings
    assert any("gpu.sm_clock_mhz locked at [1200, 1410] MHz but the SM clock was 990 MHz (throttled: power_cap)" in w
               for w in warnings)
    within, quiet = job.section([{**rows[0], "sm_clock_mhz": 1300}])
    assert [w for w in quiet if "sm_clock" in w] == []
    assert within["gpu0"].sm_clock_mhz.effective == 1300.0  # type: ignore[union-attr]


@pytest.mark.slow
def test_a_limit_the_gpu_does_not_enforce_makes_the_verdict_warn(tmp_path: Path, holder: GpuSettingsHolder) -> None:
    fake = FakeNvml([FakeGpu(enforced_power_limit_mw=280_000)])
    session = BackendSession()
    try:
        result = run_experiment(_experiment({"power_limit_w": 300}), tmp_path, session, nvml_module=fake)
    finally:
        session.release()
    assert "gpu0: gpu.power_limit_w=300 but the GPU enforces 280 W" in result.warnings
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk["gpu_settings"]["gpu0"]["power_limit_w"]["effective"] == 280.0
    assert on_disk["verdict"]["status"] in ("warn", "fail")
    assert "gpu_settings_differ" in [r["rule"] for r in on_disk["verdict"]["reasons"]]


def test_unset_touches_nothing_not_even_nvml(holder: GpuSettingsHolder, records_dir: Path) -> None:
    fake = FakeNvml([FakeGpu()])
    assert apply_for_job(_experiment(), fake) is None
    assert fake.init_calls == 0 and _sets(fake) == [] and not records_dir.exists()


# ------------------------------------------------------------------------------------------- refused values
def test_out_of_range_and_unsupported_values_are_refused_before_anything_changes(holder: GpuSettingsHolder) -> None:
    fake = FakeNvml([FakeGpu(name="H100"), FakeGpu(name="H100", power_limit_max_mw=350_000)])
    with pytest.raises(GpuSettingsError, match=r"gpu.power_limit_w=900 is outside the limits of H100 .*: 100-700 W"):
        apply_for_job(_experiment({"power_limit_w": 900}), fake)
    with pytest.raises(GpuSettingsError, match=r"1400 MHz is not a supported SM clock .*nearest supported: "
                                               r"1395, 1410 MHz \(or set gpu.clock_rounding=nearest\)"):
        apply_for_job(_experiment({"sm_clock_mhz": 1400}), fake)
    with pytest.raises(GpuSettingsError, match=r"gpu.sm_clock_mhz=\[100, 1410\] is outside the supported SM clocks .*"
                                               r"345-1980 MHz"):
        apply_for_job(_experiment({"sm_clock_mhz": [100, 1410]}, energy={"devices": [0, 1]}), fake)
    # GPU 1 allows less: the job on both GPUs is refused before GPU 0 is changed
    with pytest.raises(GpuSettingsError, match=r"gpu.power_limit_w=400 is outside .*100-350 W"):
        apply_for_job(_experiment({"power_limit_w": 400}, energy={"devices": [0, 1]}), fake)
    assert _sets(fake) == [] and RestoreRecords().all() == []


def test_a_job_without_a_gpu_is_refused_naming_the_key(tmp_path: Path, holder: GpuSettingsHolder) -> None:
    fake = FakeNvml([FakeGpu()])
    cpu = _experiment({"power_limit_w": 300}, backend={"name": "pytorch", "device": "cpu"})
    with pytest.raises(MeasurementError, match=r"gpu.power_limit_w set, but this job runs without a GPU "
                                               r"\(backend.device=cpu\)"):
        run_experiment(cpu, tmp_path, BackendSession(), nvml_module=fake)
    no_gpu = FakeNvml([])
    with pytest.raises(MeasurementError, match="gpu.sm_clock_mhz set, but this job runs without a GPU"):
        run_experiment(_experiment({"sm_clock_mhz": 1410}), tmp_path, BackendSession(), nvml_module=no_gpu)
    assert not (tmp_path / "result.json").exists() and _sets(fake) == []


def test_no_permission_is_refused_with_the_fix_and_leaves_nothing_behind(holder: GpuSettingsHolder) -> None:
    fake = FakeNvml([FakeGpu()], privileged=False)
    with pytest.raises(GpuSettingsError, match=r"Insufficient Permissions.*needs root or CAP_SYS_ADMIN.*sudo -E"):
        apply_for_job(_experiment({"power_limit_w": 300}), fake)
    assert RestoreRecords().all() == [] and holder.held == {}


def test_a_partial_failure_restores_what_was_set() -> None:
    from tests.fakes import fake_pynvml as fk

    fake = FakeNvml([FakeGpu(errors={LOCK_SM: fk.NVMLError_Unknown})])
    holder = GpuSettingsHolder()
    with pytest.raises(GpuSettingsError, match="cannot lock its sm clock"):
        holder.apply(_experiment({"power_limit_w": 300, "sm_clock_mhz": 1410}), [0], {0: UUID0}, fake)
    assert _sets(fake) == [(SET_POWER, UUID0, (300_000,)), (SET_POWER, UUID0, (700_000,)), (RESET_SM, UUID0, ())]
    assert fake.gpus[0].power_limit_mw == 700_000 and RestoreRecords().all() == []


# ------------------------------------------------------------------------------------------- warm worker
def test_a_warm_process_changes_settings_only_when_the_values_differ() -> None:
    fake = FakeNvml([FakeGpu(), FakeGpu()])
    holder = GpuSettingsHolder()
    a = _experiment({"power_limit_w": 300})
    b = _experiment({"power_limit_w": 450, "sm_clock_mhz": 1410})
    changed = []
    for experiment in (a, a, b, b, a):
        job = holder.apply(experiment, [0], {0: UUID0}, fake)
        assert job is not None
        changed.append(job.changed)
    assert changed == [True, False, True, False, True]
    assert _sets(fake) == [
        (SET_POWER, UUID0, (300_000,)),
        (SET_POWER, UUID0, (450_000,)), (LOCK_SM, UUID0, (1410, 1410)),
        (SET_POWER, UUID0, (300_000,)), (RESET_SM, UUID0, ()),  # the next job locks no clock: unlocked again
    ]
    record = RestoreRecords().read(UUID0)
    assert record is not None and record.original_power_limit_mw == 700_000  # the original, not the previous job's
    del fake.settings_log[:]
    assert holder.apply(_experiment(), [0], {0: UUID0}, fake) is None  # a job that sets nothing gets the originals
    assert _sets(fake) == [(SET_POWER, UUID0, (700_000,)), (RESET_SM, UUID0, ())]
    assert RestoreRecords().all() == [] and holder.held == {}


def test_another_live_process_holding_the_gpu_is_not_overridden() -> None:
    fake = FakeNvml([FakeGpu()])
    records = RestoreRecords()
    other = RestoreRecord.mine(UUID0)
    other.pid, other.pid_start = os.getppid(), None  # alive, and not us
    other.original_power_limit_mw = 700_000
    records.write(other)
    with pytest.raises(GpuSettingsError, match=f"held by another llem process \\(PID {os.getppid()}\\)"):
        GpuSettingsHolder().apply(_experiment({"power_limit_w": 300}), [0], {0: UUID0}, fake)
    assert _sets(fake) == [] and records.read(UUID0) is not None


# ------------------------------------------------------------------------------------------- stale records
def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_record_whose_owner_is_gone_is_restored_first(holder: GpuSettingsHolder) -> None:
    fake = FakeNvml([FakeGpu(power_limit_mw=250_000, sm_locked_mhz=(990, 990)), FakeGpu()])
    records = RestoreRecords()
    stale = RestoreRecord.mine(UUID0)
    stale.pid, stale.original_power_limit_mw, stale.locked_clocks = _dead_pid(), 650_000, ["sm"]
    records.write(stale)
    assert records.read(UUID0).stale  # type: ignore[union-attr]
    # the next process that touches GPU settings restores it before its own change, on another GPU
    job = apply_for_job(_experiment({"power_limit_w": 300}, energy={"devices": [1]}), fake)
    assert job is not None
    assert _sets(fake) == [(SET_POWER, UUID0, (650_000,)), (RESET_SM, UUID0, ()), (SET_POWER, UUID1, (300_000,))]
    assert holder.restored_stale and "left changed by PID" in holder.restored_stale[0]
    assert [r.uuid for r in records.all()] == [UUID1]
    assert restore_stale(fake) == ([], [])  # ours is alive: left alone


def test_a_job_that_sets_nothing_is_not_measured_under_a_crashed_runs_settings(holder: GpuSettingsHolder) -> None:
    fake = FakeNvml([FakeGpu(power_limit_mw=250_000)])
    stale = RestoreRecord.mine(UUID0)
    stale.pid, stale.original_power_limit_mw = _dead_pid(), 700_000
    RestoreRecords().write(stale)
    assert apply_for_job(_experiment(), fake) is None
    assert _sets(fake) == [(SET_POWER, UUID0, (700_000,))] and RestoreRecords().all() == []
