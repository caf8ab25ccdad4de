"""Build a fake /sys/class/powercap tree: package zones, their sub-zones, psys and the MMIO duplicate."""

from __future__ import annotations

from pathlib import Path

MAX = 262_143_328_850


def make_zone(root: Path, zone: str, name: str, energy: int, max_range: int = MAX) -> Path:
    """A zone directory; a sub-zone 'intel-rapl:0:2' is nested in 'intel-rapl:0' as on real sysfs."""
    parts = zone.split(":")
    d = root / ":".join(parts[:2]) / zone if len(parts) == 3 else root / zone
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return d


def set_energy(zone: Path, value: int) -> None:
    (zone / "energy_uj").write_text(f"{value}\n")


def server_tree(root: Path) -> dict[str, Path]:
    """Two sockets, each with core and dram sub-zones, plus psys and an MMIO duplicate of package 0."""
    return {
        "package-0": make_zone(root, "intel-rapl:0", "package-0", 1_000),
        "core-0": make_zone(root, "intel-rapl:0:0", "core", 500),  # inside package-0: never summed
        "dram-0": make_zone(root, "intel-rapl:0:2", "dram", 3_000),  # separate counter
        "package-1": make_zone(root, "intel-rapl:1", "package-1", 2_000),
        "dram-1": make_zone(root, "intel-rapl:1:0", "dram", 4_000),
        "psys": make_zone(root, "intel-rapl:2", "psys", 9_000),  # overlaps the packages
        "mmio": make_zone(root, "intel-rapl-mmio:0", "package-0", 1_000),  # duplicate interface
    }
