"""report.html opened in a real browser (headless Chromium, the Debian `chromium` package): every table
and image renders, the console stays clean, the page fits a 1280-pixel window; report.png is saved beside it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_report import sweep  # noqa: F401  (the fixture: a reported two-method sweep)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = 1280
# Runs before the page's own content: records console errors and failed loads, then, once the page has
# loaded, writes what it measured into the DOM, which --dump-dom prints.
PROBE = """<script>
window.problems = [];
const originalError = console.error;
console.error = (...args) => { window.problems.push(args.join(" ")); originalError(...args); };
window.addEventListener("error", e => window.problems.push("error: " + (e.message || e.target.src || e.target.href)), true);
window.addEventListener("load", () => {
  const images = [...document.images];
  const checks = {
    images: images.length,
    broken: images.filter(img => !img.complete || img.naturalWidth === 0).map(img => img.alt),
    tables: [...document.querySelectorAll("table")].map(t => t.rows.length),
    scrollWidth: document.documentElement.scrollWidth,
    problems: window.problems,
  };
  const out = document.createElement("pre");
  out.id = "browser-checks";
  out.textContent = JSON.stringify(checks);
  document.body.appendChild(out);
});
</script>"""

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install -y chromium")


def chromium(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={WINDOW},900",
                           "--virtual-time-budget=10000", *arguments],
                          capture_output=True, text=True, timeout=120)


def browser_checks(html: str, folder: Path) -> dict:
    """What PROBE measured after Chromium loaded `html` (saved in `folder`; the report embeds its images)."""
    probed = folder / "probed.html"
    probed.write_text(html.replace("<head>", "<head>\n" + PROBE, 1))
    dom = chromium("--dump-dom", probed.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="browser-checks">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:]
    return json.loads(found[1].replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">"))


def test_the_report_renders_in_chromium_within_1280_pixels(sweep, tmp_path):  # noqa: F811
    page = sweep / "report.html"
    checks = browser_checks(page.read_text(), tmp_path)
    assert checks["images"] == page.read_text().count("<img ") >= 3
    assert checks["broken"] == []
    assert len(checks["tables"]) >= 2 and min(checks["tables"]) > 1  # a header and at least one row each
    assert checks["problems"] == []
    assert checks["scrollWidth"] <= WINDOW

    screenshot = page.with_name("report.png")
    shot = chromium(f"--screenshot={screenshot}", page.as_uri())
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.stat().st_size > 10_000


def test_the_probe_sees_a_wide_page_a_broken_image_and_a_console_error(sweep, tmp_path):  # noqa: F811
    """The checks above can fail: the same report with a 1600-pixel table row, an image that does not
    exist and a script error is caught on all three counts."""
    html = (sweep / "report.html").read_text().replace(
        "</body>", '<table><tr><td style="min-width:1600px">wide</td></tr></table>'
        '<img src="missing.png" alt="missing"><script>console.error("boom")</script></body>', 1)
    checks = browser_checks(html, tmp_path)
    assert checks["scrollWidth"] > WINDOW
    assert checks["broken"] == ["missing"]
    assert any("boom" in problem for problem in checks["problems"])
