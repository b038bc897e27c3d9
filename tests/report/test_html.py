"""report.html opened in a real headless browser: it loads offline, without console messages,
and every chart is drawn. Skipped where Chromium is not installed (CI installs it:
scripts/ci-deps.sh)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from prunelab.report.html import charts, write_html
from prunelab.study.multiseed import summarize_run

from ..seedfakes import write_fake_run

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p and Path(p).is_file()), None)


def _open(page: Path, profile: Path) -> tuple[str, str]:
    """The DOM after scripts ran (virtual time lets async rendering finish) and the log."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (scripts/ci-deps.sh)")
@pytest.mark.parametrize("seeds", [(0, 1, 2), (0,)])  # one seed: no bands, no comparisons
def test_report_html_renders_in_headless_chromium(tmp_path, seeds):
    summary = summarize_run(write_fake_run(tmp_path / "run", seeds=seeds))
    page = write_html(summary, tmp_path / "run")
    source = page.read_text()
    # Self-contained: no external scripts, styles or images.
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?https?:", source)
    dom, log = _open(page, tmp_path / "profile")
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # no errors, and no Vega warnings either
    states = dict(re.findall(r'<div class="chart[^"]*" id="(\w+)" data-rendered="(\w+)"', dom))
    assert states == {name: "yes" for name in charts(summary)}, states
    assert len(states) == (4 if len(seeds) > 1 else 3)
    for name, part in zip(states, re.split(r'<div class="chart[ "]', dom)[1:], strict=True):
        assert "<svg" in part and "<path" in part, f"{name} holds no drawing"
    assert ("weight &gt; unit" in dom) == (len(seeds) > 1)
