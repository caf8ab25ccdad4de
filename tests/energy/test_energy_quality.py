"""Every quality warning, and silence for a clean window."""

from __future__ import annotations

from llem.energy.meters import EnergyWindow
from llem.energy.quality import counter_polled_diff_pct, quality_warnings


def _w(
    duration: float = 30.0, total: float | None = 1000.0, res: float | None = 0.1, polled: float | None = None
) -> EnergyWindow:
    return EnergyWindow(
        source="nvml", duration_s=duration, total_j=total, per_device={"gpu0": total}, samples=300,
        resolution_s=res, polled_total_j=polled,
    )


def _q(w: EnergyWindow, **kw: object) -> list[str]:
    args: dict = {"tolerance_pct": 10.0, "samples": 300, "throttled": False, "persistence_mode": {"gpu0": True}}
    args.update(kw)
    return quality_warnings(w, **args)


def test_clean_window_has_no_warnings() -> None:
    assert _q(_w(polled=1050.0)) == []


def test_short_window() -> None:
    (msg,) = _q(_w(duration=0.5))
    assert "0.500 s" in msg and "0.100 s" in msg and "10x" in msg
    assert _q(_w(duration=1.0)) == []  # exactly 10x is enough
    assert _q(_w(duration=0.01, res=None)) == []  # no resolution known (null meter)


def test_too_few_samples() -> None:
    (msg,) = _q(_w(), samples=4)
    assert "only 4 telemetry samples" in msg and "10" in msg
    assert _q(_w(), samples=3, min_samples=3) == []
    assert _q(_w(), samples=None) == []


def test_counter_vs_polled_disagreement() -> None:
    (msg,) = _q(_w(total=1000.0, polled=850.0))
    assert "1000.0 J" in msg and "850.0 J" in msg and "15.0%" in msg and "10%" in msg
    (msg,) = _q(_w(total=1000.0), polled_total_j=1200.0)  # explicit figure
    assert "20.0%" in msg
    assert _q(_w(total=1000.0, polled=850.0), tolerance_pct=20.0) == []
    assert _q(_w(total=None, polled=850.0)) == []
    assert counter_polled_diff_pct(0.0, 5.0) is None


def test_thermal_throttling() -> None:
    (msg,) = _q(_w(), throttled=True)
    assert "thermal throttling" in msg


def test_persistence_mode_off() -> None:
    msgs = _q(_w(), persistence_mode={"gpu0": True, "gpu1": False, "gpu2": None})
    assert len(msgs) == 1 and "gpu1" in msgs[0] and "nvidia-smi -pm 1" in msgs[0]


def test_all_at_once() -> None:
    msgs = _q(_w(duration=0.2, polled=500.0), samples=2, throttled=True, persistence_mode={"gpu0": False})
    assert len(msgs) == 5
