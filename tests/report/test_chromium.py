"""report.html rendered by a real browser (Debian's headless Chromium): tables show, images decode."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "needs /usr/bin/chromium (install it with scripts/deps/chromium.sh as root)", allow_module_level=True
    )

# Appended to a copy of the report: after load, records what the browser made of it.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const out = {
    images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length,
    data_uris: imgs.filter(i => i.src.startsWith('data:image/png;base64,')).length,
    tables: document.querySelectorAll('table').length,
    rows: document.querySelectorAll('tbody tr').length,
    visible_tables: [...document.querySelectorAll('table')].filter(t => t.offsetHeight > 0).length,
  };
  const pre = document.createElement('pre');
  pre.id = 'llem-probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_dom_has_tables_and_decoded_inline_images(report_dir: Path, tmp_path: Path) -> None:
    page = (report_dir / "report.html").read_text()
    plain = _chromium(tmp_path, "--dump-dom", (report_dir / "report.html").as_uri())
    assert plain.returncode == 0, plain.stderr[-2000:]
    dom = plain.stdout
    assert dom.count("<table") == 4 and "Statistics by configuration" in dom and "Completed jobs" in dom
    assert "Jobs that did not complete" in dom
    assert len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', dom)) == 2

    probed = tmp_path / "report-probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    run = _chromium(tmp_path, "--dump-dom", probed.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    found = re.search(r'<pre id="llem-probe">(.*?)</pre>', run.stdout)
    assert found, "the probe did not run"
    probe = json.loads(found.group(1))
    # rows: 4 job statuses (completed, failed, pending, total) + 2 configurations + 6 jobs
    assert probe == {"images": 2, "decoded": 2, "data_uris": 2, "tables": 4, "rows": 4 + 2 + 6 + 1, "visible_tables": 4}


def test_screenshot_is_not_blank(report_dir: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    run = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", (report_dir / "report.html").as_uri())
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text, table borders and plot colours
        # matplotlib's default blue (#1f77b4) appears only if a plot image was painted
        assert any(abs(r - 0x1F) < 12 and abs(g - 0x77) < 12 and abs(b - 0xB4) < 12 for _, (r, g, b) in colours)
