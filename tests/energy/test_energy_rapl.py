"""RAPL discovery (package and DRAM domains), wrap-around and permission handling on a fake powercap tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llem.energy.devices import DeviceUnavailable
from llem.energy.devices.rapl import DRAM, PACKAGE, RaplDomains, delta_uj
from llem.energy.meters import RaplMeter

from tests.energy.fake_powercap import MAX, make_zone, server_tree, set_energy
from tests.fakes.fake_pynvml import FakeClock


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "powercap"
    make_zone(root, "intel-rapl:0", "package-0", 1_000)
    make_zone(root, "intel-rapl:0:0", "core", 500)  # inside package-0: must not be summed
    make_zone(root, "intel-rapl:1", "package-1", 2_000)
    make_zone(root, "intel-rapl:2", "psys", 9_000)  # overlaps the packages
    make_zone(root, "intel-rapl-mmio:0", "package-0", 1_000)  # duplicate interface
    return root


def test_discovers_package_zones_only(tree: Path) -> None:
    rapl = RaplDomains(tree)
    assert rapl.keys() == ["package-0", "package-1"]
    assert [d.zone for d in rapl.domains] == ["intel-rapl:0", "intel-rapl:1"]
    assert rapl.domains[0].max_energy_range_uj == MAX
    assert rapl.read_all_uj() == {"package-0": 1_000, "package-1": 2_000}
    assert "no 'dram' sub-zone" in rapl.missing[DRAM]


def test_discovers_dram_sub_zones_as_separate_domains(tmp_path: Path) -> None:
    server_tree(tmp_path)
    rapl = RaplDomains(tmp_path)
    assert rapl.keys(PACKAGE) == ["package-0", "package-1"]
    assert rapl.keys(DRAM) == ["dram-0", "dram-1"]
    assert [d.zone for d in rapl.of_kind(DRAM)] == ["intel-rapl:0:2", "intel-rapl:1:0"]
    assert rapl.read_all_uj() == {"package-0": 1_000, "package-1": 2_000, "dram-0": 3_000, "dram-1": 4_000}
    assert rapl.missing == {}


def test_sub_zones_linked_at_the_top_level_are_found_once(tmp_path: Path) -> None:
    zones = server_tree(tmp_path)
    (tmp_path / "intel-rapl:0:2").symlink_to(zones["dram-0"])  # as /sys/class/powercap lists them
    (tmp_path / "intel-rapl:0:0").symlink_to(zones["core-0"])
    assert RaplDomains(tmp_path).keys(DRAM) == ["dram-0", "dram-1"]


def test_unreadable_dram_is_explained_and_package_still_read(tmp_path: Path) -> None:
    server_tree(tmp_path)

    def reader(path: Path) -> str:
        if path.name == "energy_uj" and path.parent.name.count(":") == 2:
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()

    rapl = RaplDomains(tmp_path, reader=reader)
    assert rapl.keys() == ["package-0", "package-1"]
    assert "permission denied" in rapl.missing[DRAM] and "intel-rapl:0:2" in rapl.missing[DRAM]


def test_delta_uj() -> None:
    assert delta_uj(100, 350, 1000) == 250
    assert delta_uj(990, 10, 1000) == 20
    assert delta_uj(MAX - 328_850, 671_150, MAX) == 1_000_000
    with pytest.raises(ValueError):
        delta_uj(10, 5, 0)


def test_meter_handles_wrap_around(tree: Path) -> None:
    clock = FakeClock()
    meter = RaplMeter(RaplDomains(tree), clock=clock, wrap_guard_s=None)
    set_energy(tree / "intel-rapl:0", MAX - 328_850)
    set_energy(tree / "intel-rapl:1", 2_000)
    meter.begin_window("run")
    clock.advance(0.5)
    set_energy(tree / "intel-rapl:0", 671_150)  # wrapped: 1 J in total
    set_energy(tree / "intel-rapl:1", 3_002_000)  # 3 J
    w = meter.end_window("run")
    assert w.source == "rapl"
    assert w.per_device == {"package-0": pytest.approx(1.0), "package-1": pytest.approx(3.0)}
    assert w.total_j == pytest.approx(4.0)
    assert w.duration_s == pytest.approx(0.5)
    meter.close()


def test_meter_reads_package_and_dram_separately_with_wrap(tmp_path: Path) -> None:
    zones = server_tree(tmp_path)
    clock = FakeClock()
    meter = RaplMeter(RaplDomains(tmp_path), clock=clock, wrap_guard_s=None)
    set_energy(zones["dram-0"], MAX - 500_000)
    meter.begin_window("run")
    clock.advance(2.0)
    set_energy(zones["package-0"], 1_000 + 40_000_000)  # 40 J
    set_energy(zones["package-1"], 2_000 + 30_000_000)  # 30 J
    set_energy(zones["dram-0"], 1_500_000)  # wrapped: 2 J
    set_energy(zones["dram-1"], 4_000 + 5_000_000)  # 5 J
    set_energy(zones["core-0"], 999_999_999)  # inside the package: ignored
    set_energy(zones["psys"], 999_999_999)  # overlaps: ignored
    w = meter.end_window("run")
    meter.close()
    assert w.per_device == {
        "package-0": pytest.approx(40.0), "package-1": pytest.approx(30.0),
        "dram-0": pytest.approx(2.0), "dram-1": pytest.approx(5.0),
    }
    assert w.total_j == pytest.approx(77.0)


def test_guard_reads_catch_repeated_wraps(tmp_path: Path) -> None:
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", 900, max_range=1000)
    meter = RaplMeter(RaplDomains(tmp_path), clock=FakeClock(), wrap_guard_s=None)
    meter.begin_window("run")
    set_energy(zone, 100)  # first wrap: +200
    meter.refresh()  # what the guard thread does periodically
    set_energy(zone, 50)  # second wrap: +950
    w = meter.end_window("run")
    assert w.total_j == pytest.approx(1150e-6)


def test_guard_thread_runs_and_stops(tree: Path) -> None:
    meter = RaplMeter(RaplDomains(tree), wrap_guard_s=0.005)
    meter.begin_window("run")
    w = meter.end_window("run")
    meter.close()
    assert w.total_j == pytest.approx(0.0)


def test_read_failure_mid_window_gives_none(tree: Path) -> None:
    meter = RaplMeter(RaplDomains(tree), clock=FakeClock(), wrap_guard_s=None)
    meter.begin_window("run")
    (tree / "intel-rapl:1" / "energy_uj").unlink()
    meter.refresh()
    set_energy(tree / "intel-rapl:1", 5_000)  # back, but continuity is lost
    w = meter.end_window("run")
    assert w.per_device["package-0"] == pytest.approx(0.0)
    assert w.per_device["package-1"] is None
    assert w.total_j is None
    assert "package-1" in (w.unavailable_reason or "")


def test_missing_tree(tmp_path: Path) -> None:
    with pytest.raises(DeviceUnavailable, match="does not exist"):
        RaplDomains(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeviceUnavailable, match="no intel-rapl package zones"):
        RaplDomains(tmp_path / "empty")


def test_permission_denied_is_explained(tree: Path) -> None:
    def reader(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()

    with pytest.raises(DeviceUnavailable) as info:
        RaplDomains(tree, reader=reader)
    assert "permission denied" in info.value.reason
    assert "intel-rapl:0" in info.value.reason and "intel-rapl:1" in info.value.reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_on_real_files(tree: Path) -> None:  # pragma: no cover - not root in CI only
    for zone in ("intel-rapl:0", "intel-rapl:1"):
        (tree / zone / "energy_uj").chmod(0)
    with pytest.raises(DeviceUnavailable, match="permission denied"):
        RaplDomains(tree)


def test_amd_zone_names(tmp_path: Path) -> None:
    make_zone(tmp_path, "amd-rapl:0", "package-0", 10)
    assert RaplDomains(tmp_path).keys() == ["package-0"]


def test_backwards_counter_without_range_is_not_energy(tmp_path: Path) -> None:
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", 900, max_range=0)
    meter = RaplMeter(RaplDomains(tmp_path), clock=FakeClock(), wrap_guard_s=None)
    meter.begin_window("run")
    set_energy(zone, 100)
    w = meter.end_window("run")
    assert w.total_j is None and "max_energy_range_uj" in (w.unavailable_reason or "")
