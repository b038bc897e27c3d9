"""report.html: what a reader sees. The Vega-Lite specs embedded in the page are drawn with
vl-convert (legends, axes) and read back (bands); the page text reads as one run for one seed.
Then the page opened in a real headless browser: it loads offline, without console messages,
and every chart is drawn. The browser check is skipped where Chromium is not installed (CI
installs it: scripts/ci-deps.sh)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import altair as alt
import pytest
import vl_convert

from prunelab.report.html import charts, write_html
from prunelab.study.multiseed import summarize_run

from ..seedfakes import write_fake_run

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p and Path(p).is_file()), None)
VL_VERSION = "_".join(alt.SCHEMA_VERSION.split(".")[:2])
CURVES = ("accuracy_vs_sparsity", "loss_vs_sparsity", "accuracy_vs_params")
LEGEND = 'class="mark-group role-legend"'  # one per legend drawn, in Vega's SVG


def _page(tmp_path: Path, seeds: tuple[int, ...], wide: bool = False) -> str:
    run = write_fake_run(tmp_path / "run", seeds=seeds, wide=wide)
    return write_html(summarize_run(run), run).read_text()


def _specs(page: str) -> dict[str, dict]:
    """The Vega-Lite specs by chart id, as the page's script hands them to vega-embed."""
    found = re.findall(r"^const specs = (.*);$", page, flags=re.MULTILINE)
    assert len(found) == 1, "no (or several) spec objects in the page"
    return json.loads(found[0])


def _svg(spec: dict) -> str:
    return vl_convert.vegalite_to_svg(spec, vl_version=VL_VERSION)


def _y_axis(svg: str) -> tuple[float, float]:
    """The y axis' domain as Vega describes it: "... with values from 0 to 100"."""
    found = re.findall(r'aria-label="Y-axis[^"]* values from (\S+) to (\S+)"', svg)
    assert len(found) == 1, found
    return float(found[0][0]), float(found[0][1])


def _band_values(spec: dict, quantity: str) -> list[float]:
    """Every ``<quantity>_low``/``_high`` value in the spec's inline data (the bands)."""
    layers = spec.get("layer", [spec])
    return [row[f"{quantity}_{end}"] for layer in layers
            for row in layer.get("data", {}).get("values", [])
            for end in ("low", "high") if f"{quantity}_{end}" in row]


def _visible_text(page: str) -> str:
    """The page without its scripts (the inlined Vega bundle and the specs)."""
    return re.sub(r"<script>.*?</script>", "", page, flags=re.DOTALL)


@pytest.mark.parametrize("seeds", [(0, 1, 2), (0,)])
def test_every_chart_has_exactly_one_colour_legend(tmp_path, seeds):
    specs = _specs(_page(tmp_path, seeds))
    assert set(CURVES) <= set(specs)
    for name, spec in specs.items():
        svg = _svg(spec)
        assert svg.count(LEGEND) == 1, f"{name}: {svg.count(LEGEND)} legends"
        title = "pair" if name == "paired_differences" else "method"
        assert f'aria-label="Symbol legend titled \'{title}\'' in svg, name


def test_bands_are_cut_at_the_valid_range_and_so_are_the_axes(tmp_path):
    # Three seeds far apart: the raw intervals pass 100 % and 0 % accuracy and 0 loss.
    specs = _specs(_page(tmp_path, (0, 1, 2), wide=True))
    for name in ("accuracy_vs_sparsity", "accuracy_vs_params"):
        values = _band_values(specs[name], "accuracy")
        assert min(values) == 0 and max(values) == 100, (name, values)  # cut, not dropped
        low, high = _y_axis(_svg(specs[name]))
        assert 0 <= low and high <= 100, (name, low, high)
    losses = _band_values(specs["loss_vs_sparsity"], "loss")
    assert min(losses) == 0, losses
    low, _ = _y_axis(_svg(specs["loss_vs_sparsity"]))
    assert 0 < low < min(v for v in losses if v > 0), low  # a log axis, below every value


def test_single_seed_page_reads_as_one_run(tmp_path):
    page = _page(tmp_path, (0,))
    text = _visible_text(page)
    title = re.findall(r"<h1>(.*)</h1>", text)
    assert title == ["prunelab report: fashion-mnist · MLP 784-32-16-10 · seed 0"], title
    # "seeds 0" only in the hint `--seeds 0,1,2,3,4`, never as the seeds shown.
    assert not re.search(r"seeds 0(?!,\d)", text) and "over seeds" not in text
    assert "one trained model" in text
    assert "Paired comparisons" not in text and "n/a" not in text
    assert "±" not in text and "95 %" not in text and "k range over seeds" not in text
    for name, spec in _specs(page).items():
        assert "95 % CI" not in json.dumps(spec), name  # no interval in the tooltips
        assert not _band_values(spec, "accuracy") and not _band_values(spec, "loss"), name


def test_multi_seed_page_shows_intervals_and_comparisons(tmp_path):
    page = _page(tmp_path, (0, 1, 2))
    text = _visible_text(page)
    assert "<h1>prunelab report: fashion-mnist · MLP 784-32-16-10 · seeds 0, 1, 2</h1>" in text
    assert "95 % Student-t confidence interval" in text and "one trained model" not in text
    assert "<h2>Paired comparisons</h2>" in text and "weight &gt; unit" in text
    assert "91.00 ± 2.48" in text and "k range over seeds" in text
    specs = _specs(page)
    assert all(_band_values(specs[name], "accuracy") for name in CURVES)


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
        assert part.count(LEGEND) == 1, f"{name}: {part.count(LEGEND)} legends"
    assert ("weight &gt; unit" in dom) == (len(seeds) > 1)
    assert ("Paired comparisons" in dom) == (len(seeds) > 1)


def test_a_benchmarked_run_has_its_speed_section_with_the_plot_inlined(tmp_path):
    import torch

    from prunelab.models.mlp import MLPConfig, build_mlp
    from prunelab.report.speed import plot_bench
    from prunelab.study.speed import BenchConfig, run_bench

    run = write_fake_run(tmp_path / "run", seeds=(0,))
    net = build_mlp(MLPConfig(hidden=(32,)), torch.Generator().manual_seed(0))
    rows = run_bench(run, net, ("weight",), (0.9,), BenchConfig(
        batch_sizes=(4,), backends=("auto",), warmup=1, repeats=1, budget_s=0.5))
    plot_bench(rows, run / "plots")
    page = write_html(summarize_run(run), run).read_text()
    assert "<h2>Inference speed</h2>" in page
    assert "<th>batch 4</th>" in page and "<td>weight</td>" in page
    assert "<em>auto</em> compacts" in page and "weight k = 90, batch 4: " in page
    assert re.search(r'<img alt="bench_speedup" [^>]*src="data:image/png;base64,iVBOR', page)
    # without a benchmark, no section
    bare = write_fake_run(tmp_path / "bare", seeds=(0,))
    assert "Inference speed" not in write_html(summarize_run(bare), bare).read_text()
