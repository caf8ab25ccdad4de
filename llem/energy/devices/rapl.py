"""CPU package energy from the Linux powercap (RAPL) sysfs tree.

Only top-level package zones (`intel-rapl:N`, and `amd-rapl:N` where a kernel
names them so) are read: sub-zones (core, uncore, dram) are contained in the
package, `psys` overlaps it, and `intel-rapl-mmio` duplicates it, so summing
any of those would double count. Since the 2020 PLATYPUS mitigation,
`energy_uj` is readable by root only on most distributions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llem.energy.devices import DeviceReadError, DeviceUnavailable

DEFAULT_ROOT = "/sys/class/powercap"
_ZONE = re.compile(r"^(intel-rapl|amd-rapl):(\d+)$")


def _read_text(path: Path) -> str:
    return path.read_text()


@dataclass(frozen=True)
class RaplDomain:
    key: str  # result key, e.g. "package-0"
    zone: str  # sysfs directory name, e.g. "intel-rapl:0"
    path: Path
    max_energy_range_uj: int


def delta_uj(start: int, end: int, max_range: int) -> int:
    """Energy between two counter readings, allowing for one wrap past `max_range`."""
    if end >= start:
        return end - start
    if max_range <= 0:
        raise ValueError("RAPL counter went backwards and max_energy_range_uj is unknown")
    return end + (max_range - start)


class RaplDomains:
    """Readable RAPL package domains under `root`; raises DeviceUnavailable when there are none."""

    def __init__(self, root: str | Path = DEFAULT_ROOT, *, reader: Callable[[Path], str] = _read_text) -> None:
        self.root = Path(root)
        self._read = reader
        self.domains: list[RaplDomain] = self._discover()

    def _discover(self) -> list[RaplDomain]:
        if not self.root.is_dir():
            raise DeviceUnavailable(f"RAPL not available ({self.root} does not exist)")
        zones = sorted(
            (p for p in self.root.iterdir() if _ZONE.match(p.name)),
            key=lambda p: (p.name.split(":")[0], int(p.name.split(":")[1])),
        )
        if not zones:
            raise DeviceUnavailable(f"RAPL not available (no intel-rapl package zones under {self.root})")
        found: list[RaplDomain] = []
        problems: list[str] = []
        for zone in zones:
            try:
                name = self._read(zone / "name").strip()
            except OSError:
                name = zone.name
            if not name.startswith("package"):
                continue  # psys and similar overlap the packages
            try:
                int(self._read(zone / "energy_uj").strip())
            except PermissionError:
                problems.append(f"{zone.name}/energy_uj: permission denied (readable by root only since 2020 kernels)")
                continue
            except (OSError, ValueError) as exc:
                problems.append(f"{zone.name}/energy_uj: {exc}")
                continue
            try:
                max_range = int(self._read(zone / "max_energy_range_uj").strip())
            except (OSError, ValueError):
                max_range = 0
            key = name if name not in {d.key for d in found} else f"{name}-{zone.name}"
            found.append(RaplDomain(key=key, zone=zone.name, path=zone, max_energy_range_uj=max_range))
        if not found:
            detail = "; ".join(problems) if problems else "no package zones"
            raise DeviceUnavailable(f"RAPL energy not readable ({detail})")
        return found

    def keys(self) -> list[str]:
        return [d.key for d in self.domains]

    def energy_uj(self, domain: RaplDomain) -> int:
        try:
            return int(self._read(domain.path / "energy_uj").strip())
        except (OSError, ValueError) as exc:
            raise DeviceReadError(domain.key, "RAPL energy", str(exc)) from exc

    def read_all_uj(self) -> dict[str, int | None]:
        """One reading per domain; None where that read failed."""
        out: dict[str, int | None] = {}
        for d in self.domains:
            try:
                out[d.key] = self.energy_uj(d)
            except DeviceReadError:
                out[d.key] = None
        return out
