"""CPU package and DRAM energy from the Linux powercap (RAPL) sysfs tree.

Two kinds of domain are read, and never summed into one another:

- package: the top-level zones (`intel-rapl:N`, and `amd-rapl:N` where a kernel
  names them so) whose name starts with "package". Their `core` and `uncore`
  sub-zones are contained in the package and are not read; `psys` overlaps the
  packages and `intel-rapl-mmio` duplicates them, so neither is read either.
- dram: the sub-zone of a package named "dram" (`intel-rapl:N:M`). It is a
  separate counter, not part of the package's energy.

Since the 2020 PLATYPUS mitigation `energy_uj` is readable by root only on most
distributions, so an unreadable zone is reported with that explanation.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llem.energy.devices import DeviceReadError, DeviceUnavailable

DEFAULT_ROOT = "/sys/class/powercap"
PACKAGE = "package"
DRAM = "dram"
_PACKAGE_ZONE = re.compile(r"^(intel-rapl|amd-rapl):(\d+)$")
_PERMISSION_HINT = "permission denied (readable by root only since 2020 kernels)"


def _read_text(path: Path) -> str:
    return path.read_text()


@dataclass(frozen=True)
class RaplDomain:
    key: str  # result key, e.g. "package-0" or "dram-0"
    kind: str  # PACKAGE or DRAM
    zone: str  # sysfs directory name, e.g. "intel-rapl:0" or "intel-rapl:0:2"
    path: Path
    max_energy_range_uj: int


def delta_uj(start: int, end: int, max_range: int) -> int:
    """Energy between two counter readings, allowing for one wrap past `max_range`."""
    if end >= start:
        return end - start
    if max_range <= 0:
        raise ValueError("RAPL counter went backwards and max_energy_range_uj is unknown")
    return end + (max_range - start)


def _zone_order(path: Path) -> tuple[str, ...]:
    prefix, *numbers = path.name.split(":")
    return (prefix, *(f"{int(n):06d}" for n in numbers))


class RaplDomains:
    """Readable RAPL package domains and their DRAM sub-zones under `root`.

    Raises DeviceUnavailable when no package domain can be read. `missing` says,
    per kind, why no domain of that kind was found (e.g. no DRAM sub-zone).
    """

    def __init__(self, root: str | Path = DEFAULT_ROOT, *, reader: Callable[[Path], str] = _read_text) -> None:
        self.root = Path(root)
        self._read = reader
        self.missing: dict[str, str] = {}
        self.domains: list[RaplDomain] = self._discover()

    # ------------------------------------------------------------------ discovery
    def _discover(self) -> list[RaplDomain]:
        if not self.root.is_dir():
            raise DeviceUnavailable(f"RAPL not available ({self.root} does not exist)")
        zones = sorted((p for p in self.root.iterdir() if _PACKAGE_ZONE.match(p.name)), key=_zone_order)
        if not zones:
            raise DeviceUnavailable(f"RAPL not available (no intel-rapl package zones under {self.root})")
        packages: list[RaplDomain] = []
        drams: list[RaplDomain] = []
        problems: list[str] = []
        dram_problems: list[str] = []
        for zone in zones:
            if not self._name(zone).startswith(PACKAGE):
                continue  # psys and similar overlap the packages
            package = self._domain(zone, PACKAGE, self._unique(self._name(zone), packages), problems)
            if package is None:
                continue
            packages.append(package)
            for sub in self._sub_zones(zone):
                if self._name(sub) != DRAM:
                    continue  # core / uncore are inside the package
                key = self._unique(DRAM + package.key[len(PACKAGE):], drams)
                dram = self._domain(sub, DRAM, key, dram_problems)
                if dram is not None:
                    drams.append(dram)
        if not packages:
            detail = "; ".join(problems) if problems else "no package zones"
            raise DeviceUnavailable(f"RAPL energy not readable ({detail})")
        if not drams:
            where = ", ".join(p.zone for p in packages)
            self.missing[DRAM] = (
                "DRAM RAPL domain not readable (" + "; ".join(dram_problems) + ")"
                if dram_problems
                else f"no DRAM RAPL domain on this CPU (no 'dram' sub-zone under {where})"
            )
        return packages + drams

    def _name(self, zone: Path) -> str:
        try:
            return self._read(zone / "name").strip()
        except OSError:
            return zone.name

    @staticmethod
    def _unique(key: str, found: list[RaplDomain]) -> str:
        return key if key not in {d.key for d in found} else f"{key}-{len(found)}"

    def _sub_zones(self, zone: Path) -> list[Path]:
        """A package's sub-zones: nested in its directory and, on real sysfs, also linked at the top level."""
        pattern = re.compile(rf"^{re.escape(zone.name)}:\d+$")
        found: dict[str, Path] = {}
        for parent in (zone, self.root):
            try:
                entries = list(parent.iterdir())
            except OSError:
                continue
            for p in entries:
                if pattern.match(p.name) and p.is_dir():
                    found.setdefault(p.name, p)
        return sorted(found.values(), key=_zone_order)

    def _domain(self, zone: Path, kind: str, key: str, problems: list[str]) -> RaplDomain | None:
        try:
            int(self._read(zone / "energy_uj").strip())
        except PermissionError:
            problems.append(f"{zone.name}/energy_uj: {_PERMISSION_HINT}")
            return None
        except (OSError, ValueError) as exc:
            problems.append(f"{zone.name}/energy_uj: {exc}")
            return None
        try:
            max_range = int(self._read(zone / "max_energy_range_uj").strip())
        except (OSError, ValueError):
            max_range = 0
        return RaplDomain(key=key, kind=kind, zone=zone.name, path=zone, max_energy_range_uj=max_range)

    # ------------------------------------------------------------------ access
    def keys(self, kind: str | None = None) -> list[str]:
        return [d.key for d in self.domains if kind is None or d.kind == kind]

    def of_kind(self, kind: str) -> list[RaplDomain]:
        return [d for d in self.domains if d.kind == kind]

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
