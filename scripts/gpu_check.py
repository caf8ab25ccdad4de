#!/usr/bin/env python3
"""Check llem's NVML meters on a real NVIDIA GPU: energy counter vs integrated power.

Loads each selected GPU with a matmul loop (torch on CUDA; idle when torch or
CUDA is missing), measures idle baseline power first, then runs the counter and
polling meters over the same windows and prints counter J, polled J and their
difference. Exit status: 0 agree, 1 disagree beyond --threshold-pct, 2 no usable
NVML energy counter here.

    python scripts/gpu_check.py --windows 2,5,10 --threshold-pct 10
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

try:
    import llem  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llem.energy.baseline import measure_baseline
from llem.energy.devices import DeviceUnavailable
from llem.energy.devices.nvml import NvmlDevices
from llem.energy.meters import CrossCheckedMeter, NvmlCounterMeter, NvmlPollingMeter
from llem.energy.quality import counter_polled_diff_pct
from llem.energy.sampler import TelemetrySampler


def _parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _parse_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


class MatmulLoad:
    """Keeps each GPU busy with back-to-back matmuls until stopped."""

    def __init__(self, indices: list[int], size: int) -> None:
        self.indices = indices
        self.size = size
        self.note = ""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.iterations: dict[int, int] = {}

    def start(self) -> bool:
        try:
            import torch
        except ImportError:
            self.note = "torch not installed: measuring an idle GPU"
            return False
        if not torch.cuda.is_available():
            self.note = "torch has no CUDA: measuring an idle GPU"
            return False
        for i in self.indices:
            t = threading.Thread(target=self._loop, args=(torch, i), daemon=True)
            t.start()
            self._threads.append(t)
        self.note = f"matmul load {self.size}x{self.size} bf16 on cuda:{','.join(map(str, self.indices))}"
        return True

    def _loop(self, torch: Any, i: int) -> None:
        dev = torch.device(f"cuda:{i}")
        a = torch.randn(self.size, self.size, device=dev, dtype=torch.bfloat16)
        b = torch.randn(self.size, self.size, device=dev, dtype=torch.bfloat16)
        n = 0
        while not self._stop.is_set():
            for _ in range(8):
                torch.matmul(a, b)
            torch.cuda.synchronize(dev)
            n += 8
        self.iterations[i] = n

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def _fmt(x: float | None, spec: str) -> str:
    return format(x, spec) if x is not None else "n/a"


def main(argv: list[str] | None = None, *, nvml_module: Any = None) -> int:
    """Run the check; `nvml_module` swaps in a fake NVML for tests."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=_parse_ints, default=None, help="CUDA indices, e.g. 0,1 (default: all)")
    ap.add_argument("--windows", type=_parse_floats, default=[2.0, 5.0, 10.0], help="window lengths in s")
    ap.add_argument("--interval-ms", type=int, default=100, help="power polling interval")
    ap.add_argument("--threshold-pct", type=float, default=10.0, help="fail above this counter/polled gap")
    ap.add_argument("--baseline-s", type=float, default=5.0, help="idle baseline length (0 skips it)")
    ap.add_argument("--warmup-s", type=float, default=3.0, help="load before the first window")
    ap.add_argument("--matrix", type=int, default=8192, help="matmul size")
    ap.add_argument("--idle", action="store_true", help="do not load the GPU")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    try:
        devs = NvmlDevices.open(args.devices, nvml=nvml_module)
    except DeviceUnavailable as exc:
        print(f"gpu_check: NVML unavailable: {exc.reason}", file=sys.stderr)
        return 2
    try:
        return _check(devs, args)
    finally:
        devs.close()


def _check(devs: NvmlDevices, args: argparse.Namespace) -> int:
    for label, info in devs.describe_all().items():
        print(f"{label}: {info['name']}  uuid={info['uuid']}  driver={info['driver_version']}  "
              f"cuda={info['cuda_driver_version']}  power_limit={info['power_limit_w']} W  "
              f"energy_counter={info['energy_counter']}  persistence={info['persistence_mode']}")
    missing = [devs.label(i) for i in devs.indices if not devs.supports_energy_counter(i)]
    if missing:
        print(f"gpu_check: no energy counter on {', '.join(missing)}; nothing to cross-check", file=sys.stderr)
        return 2

    interval = args.interval_ms / 1000.0
    meter = CrossCheckedMeter(NvmlCounterMeter(devs), NvmlPollingMeter(devs, interval))
    sampler = TelemetrySampler(devs, interval)
    results: dict[str, Any] = {"devices": devs.describe_all(), "windows": []}
    load = MatmulLoad(devs.indices, args.matrix)
    rows = []
    try:
        if args.baseline_s > 0:
            base = measure_baseline(meter, args.baseline_s)
            per = "  ".join(f"{k}={v:.1f} W" if v is not None else f"{k}=n/a" for k, v in base.per_device_w.items())
            print(f"\nidle baseline over {base.duration_s:.1f} s: {per}")
            results["baseline"] = base.to_dict()

        loaded = False if args.idle else load.start()
        print(load.note or "idle (--idle)")
        if loaded:
            time.sleep(args.warmup_s)
        sampler.start()
        for length in args.windows:
            name = f"window-{length:g}s"
            meter.begin_window(name)
            time.sleep(length)
            w = meter.end_window(name)
            for label in w.per_device:
                c = w.per_device[label]
                p = (w.polled_per_device or {}).get(label)
                diff = counter_polled_diff_pct(c, p) if c is not None and p is not None else None
                rows.append((length, label, w.duration_s, c, p, diff, w.samples))
            results["windows"].append(w.to_dict())
    finally:
        sampler.stop()
        load.stop()
        meter.close()

    print(f"\n{'window':>7} {'device':>6} {'dur s':>7} {'counter J':>11} {'polled J':>10} "
          f"{'diff %':>7} {'counter W':>10} {'polled W':>9} {'samples':>7}")
    worst = 0.0
    failed = False
    for length, label, dur, c, p, diff, n in rows:
        cw = c / dur if c is not None and dur > 0 else None
        pw = p / dur if p is not None and dur > 0 else None
        print(f"{length:>6g}s {label:>6} {dur:>7.2f} {_fmt(c, '11.1f'):>11} {_fmt(p, '10.1f'):>10} "
              f"{_fmt(diff, '7.1f'):>7} {_fmt(cw, '10.1f'):>10} {_fmt(pw, '9.1f'):>9} {n:>7}")
        if diff is None:
            failed = True
        else:
            worst = max(worst, diff)
    summary = sampler.summary()
    for label, s in summary.items():
        print(f"{label}: max temp {s['max_temperature_c']} C, mean util {s['mean_gpu_util_pct']}%, "
              f"thermal throttle {s['throttle_thermal']}, power throttle {s['throttle_power']}")
    results["telemetry"] = summary
    results["worst_diff_pct"] = worst
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if failed:
        print("\nFAIL: some windows have no counter or polled figure", file=sys.stderr)
        return 1
    if worst > args.threshold_pct:
        print(f"\nFAIL: counter and polled energy differ by up to {worst:.1f}% (> {args.threshold_pct:g}%)",
              file=sys.stderr)
        return 1
    print(f"\nOK: counter and polled energy agree within {worst:.1f}% (threshold {args.threshold_pct:g}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
