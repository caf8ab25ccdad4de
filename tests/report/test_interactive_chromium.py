"""The interactive frontier plots in a real headless Chromium: 1,000 points, offline, drawn fast, with hover data."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("plotly", reason="interactive plots need plotly, one of llem's dependencies")

from llem.report.collect import Campaign  # noqa: E402
from llem.report.render import CampaignReport, render_html  # noqa: E402
from llem.report.stats import group_stats  # noqa: E402
from tests.report.frames import hand_frame  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("needs /usr/bin/chromium (install it with scripts/deps/chromium.sh as root)", allow_module_level=True)

POINTS = 1000

# Around the interactive section: the clock for drawing its plots.
MARK = "<script>window.llemDrawStart = performance.now();</script>"
END = "<script>window.llemDrawEnd = performance.now();</script>"
# After load: how long drawing took, what Plotly drew, and the hover data it holds.
PROBE = """<script>
window.addEventListener('load', () => {
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  const first = plots[0];
  const traces = first ? first.data.filter(t => t.mode === 'markers') : [];
  const out = {
    ms: window.llemDrawEnd - window.llemDrawStart,
    page_ms: performance.now(),
    plots: plots.length,
    drawn_points: first ? first.querySelectorAll('.scatterlayer .point').length : 0,
    traces: traces.map(t => t.name),
    hover: traces.length ? traces[0].hovertemplate : null,
    first_custom: traces.length ? traces[0].customdata[0] : null,
    scripts_with_src: [...document.scripts].filter(s => s.src).length,
  };
  const pre = document.createElement('pre');
  pre.id = 'llem-probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _thousand_configurations() -> pd.DataFrame:
    template = hand_frame().iloc[[0]]
    rng = np.random.default_rng(7)
    frame = pd.concat([template] * POINTS, ignore_index=True)
    frame["job_num"] = range(POINTS)
    frame["config_hash"] = [f"c{i:015d}" for i in range(POINTS)]
    frame["batch_size"] = range(POINTS)
    frame["backend"] = pd.array(["pytorch", "vllm"] * (POINTS // 2), dtype="string")
    latency = rng.gamma(2.0, 40.0, POINTS)
    frame["ttft_ms_p50"] = latency
    frame["energy_per_output_token_j"] = 1.0 / (1.0 + latency) + rng.exponential(0.01, POINTS)
    for other in ("ttft_ms_p99", "itl_ms_p99", "e2e_ms_p99", "throughput_tokens_per_s"):
        frame[other] = np.nan  # one frontier, one plot of 1,000 points
    return frame


def test_thousand_points_render_offline_under_two_seconds(tmp_path: Path) -> None:
    frame = _thousand_configurations()
    campaign = Campaign(sweep_dir=tmp_path, name="thousand", rows=[], param_keys=["batch_size"], counts={}, total=0)
    report = CampaignReport(campaign, frame, group_stats(frame), [], 0.1)
    page = render_html([report], "llem report: thousand")
    assert not re.search(r'<script[^>]+src="http', page)
    path = tmp_path / "report.html"
    section = "<h3>Energy frontiers (interactive)</h3>"
    assert page.count(section) == 1
    page = page.replace(section, MARK + section).replace("<h3>Plots</h3>", END + "<h3>Plots</h3>")
    path.write_text(page.replace("</body>", PROBE + "</body>"))
    run = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    found = re.search(r'<pre id="llem-probe">(.*?)</pre>', run.stdout)
    assert found, "the probe did not run"
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["scripts_with_src"] == 0  # everything inline: opens offline
    assert probe["plots"] >= 1 and probe["traces"] == ["pytorch", "vllm"]  # one legend entry per backend
    assert probe["drawn_points"] == POINTS
    # drawing the 1,000 points (parsing plotly.js and laying out the tables are the page's other costs)
    assert probe["ms"] < 2000, f"drawing took {probe['ms']:.0f} ms (whole page {probe['page_ms']:.0f} ms)"
    assert "%{customdata[0]}" in probe["hover"] and "Energy/token" in probe["hover"]
    label, runs, position = probe["first_custom"]
    assert label.startswith("pytorch · batch_size=") and runs == 1 and position in ("on the frontier", "dominated")
