"""``report.html``: one self-contained file with interactive charts (Vega-Lite via altair),
the tables, the analysis, the inference-speed section when the run was benchmarked
(``prunelab bench``: its tables, and its plot inlined as a PNG), configuration and environment.

Everything is inlined, Vega/Vega-Lite/vega-embed included (from ``vl-convert``), so the file
opens without network access. Click a legend entry to highlight a method; hover for values.
Each chart container gets ``data-rendered="yes"`` once drawn, or ``"error"`` with the message
shown in its place, so a browser check (and a reader) can tell.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

import altair as alt
import vl_convert

from prunelab.files import atomic_write
from prunelab.report.speed import bench_blocks
from prunelab.report.summary import (
    analysis,
    comparisons_table,
    figures_table,
    intro,
    paired_comparisons,
    results_table,
    title_of,
)
from prunelab.study.aggregate import Summary, clipped_interval

__all__ = ["charts", "render_html", "write_html"]

REPORT_HTML = "report.html"
_SIZE = {"width": 560, "height": 330}


def _curve_data(summary: Summary) -> list[dict[str, Any]]:
    """One point per method and k; ``<y>_low``/``<y>_high``: the interval cut at the valid
    range (accuracy in percent), only where there is one."""
    out = []
    for r in summary.rows:
        d = {"method": r["method"], "k": r["sparsity_pct"], "n": r["n"],
             "params": r.get("params_remaining"),
             "accuracy": 100 * r["accuracy_mean"], "loss": r["loss_mean"]}
        for y, scale in (("accuracy", 100), ("loss", 1)):
            if (band := clipped_interval(r, y)) is not None:
                d |= {f"{y}_low": scale * band[0], f"{y}_high": scale * band[1]}
        out.append(d)
    return out


def _y_scale(data: list[dict[str, Any]], y: str, log_y: bool) -> alt.Scale:
    if not log_y:  # bands are cut at the valid range, and nice() rounds to 0 and 100 at most
        return alt.Scale(zero=False)
    # A log axis cannot reach 0: it starts at the lowest positive value (lower still when a
    # band reaches 0, so that band visibly runs off the bottom) and clamps what lies below.
    low = min((d[f] for d in data for f in (y, f"{y}_low") if d.get(f, 0) > 0), default=None)
    if low is None:  # nothing positive to show on a log axis
        return alt.Scale(type="log")
    reaches_zero = any(d.get(f"{y}_low", 1) <= 0 for d in data)
    return alt.Scale(type="log", domainMin=low / 2 if reaches_zero else low, clamp=True,
                     nice=False)


def _tooltip(y: str, with_ci: bool) -> list[alt.Tooltip]:
    where = [alt.Tooltip("method:N"), alt.Tooltip("k:Q", title="k (%)")]
    size = [alt.Tooltip("params:Q", format=",.0f")]
    if not with_ci:  # one seed: the value itself
        return [*where, alt.Tooltip(f"{y}:Q", format=".4f"), *size]
    return [*where, alt.Tooltip(f"{y}:Q", format=".4f", title=f"{y} (mean)"),
            alt.Tooltip(f"{y}_low:Q", format=".4f", title="95 % CI low"),
            alt.Tooltip(f"{y}_high:Q", format=".4f", title="95 % CI high"),
            alt.Tooltip("n:Q", title="seeds"), *size]


def _curve_chart(data: list[dict[str, Any]], x: alt.X, y: str, title: str,
                 y_title: str, log_y: bool = False) -> alt.Chart | alt.LayerChart:
    pick = alt.selection_point(fields=["method"], bind="legend")
    scale = _y_scale(data, y, log_y)
    with_ci = [d for d in data if f"{y}_low" in d]
    line = alt.Chart(alt.Data(values=data)).mark_line(point=True).encode(
        x=x, y=alt.Y(f"{y}:Q", title=y_title, scale=scale), color=alt.Color("method:N"),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.15)),
        tooltip=_tooltip(y, bool(with_ci))).add_params(pick)
    if not with_ci:  # one seed: no interval, no band (an empty band makes Vega warn)
        return line.properties(title=title, **_SIZE)
    band = alt.Chart(alt.Data(values=with_ci)).mark_area().encode(
        x=x, y=alt.Y(f"{y}_low:Q", scale=scale), y2=f"{y}_high:Q",
        color=alt.Color("method:N", legend=None),  # the legend shows the lines' symbols
        opacity=alt.condition(pick, alt.value(0.2), alt.value(0.03)))
    # A shared legend would be dropped altogether for the band's legend=None: keep the
    # line's own legend (the colour scale itself stays shared).
    return alt.layer(band, line).resolve_legend(color="independent").properties(
        title=title, **_SIZE)


def _comparison_chart(summary: Summary) -> alt.LayerChart | None:
    data = [{"pair": f"{c['a']} − {c['b']}", "k": c["sparsity_pct"], "n": c["diff_n"],
             "diff": 100 * c["diff_mean"], "low": 100 * c["diff_ci_low"],
             "high": 100 * c["diff_ci_high"], "verdict": c["verdict"]}
            for c in summary.comparisons
            if not isinstance(c["sparsity_pct"], str) and c["diff_ci_low"] is not None]
    if not data:
        return None
    pick = alt.selection_point(fields=["pair"], bind="legend")
    base = alt.Chart(alt.Data(values=data)).encode(
        x=alt.X("k:Q", title="sparsity k (%)"), color=alt.Color("pair:N"),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.15)))
    bars = base.mark_errorbar(ticks=True).encode(y=alt.Y("low:Q", title="a − b (points)"),
                                                 y2="high:Q")
    points = base.mark_point(filled=True).encode(
        y="diff:Q", tooltip=["pair:N", "k:Q", alt.Tooltip("diff:Q", format="+.2f"),
                             alt.Tooltip("low:Q", format="+.2f"),
                             alt.Tooltip("high:Q", format="+.2f"), "n:Q", "verdict:N"]
    ).add_params(pick)
    zero = alt.Chart(alt.Data(values=[{"y": 0}])).mark_rule(color="grey").encode(y="y:Q")
    return alt.layer(zero, bars, points).properties(
        title="Paired accuracy difference with 95 % CI", **_SIZE)


def charts(summary: Summary) -> dict[str, dict[str, Any]]:
    """Vega-Lite specs by chart id."""
    data = _curve_data(summary)
    k = alt.X("k:Q", title="sparsity k (% pruned per hidden layer)")
    params = alt.X("params:Q", title="parameters that can still change the output",
                   scale=alt.Scale(type="log"))
    out = {
        "accuracy_vs_sparsity": _curve_chart(data, k, "accuracy", "Test accuracy vs sparsity",
                                             "test accuracy (%)"),
        "loss_vs_sparsity": _curve_chart(data, k, "loss", "Test loss vs sparsity",
                                         "test cross-entropy", log_y=True),
        "accuracy_vs_params": _curve_chart([d for d in data if d["params"]], params, "accuracy",
                                           "Test accuracy vs remaining parameters",
                                           "test accuracy (%)"),
    }
    if (comparison := _comparison_chart(summary)) is not None:
        out["paired_differences"] = comparison
    return {name: chart.to_dict() for name, chart in out.items()}


def _table(table: tuple[list[str], list[list[str]]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in table[1])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _inline(markdown: str) -> str:
    text = html.escape(markdown.removeprefix("- "))
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"<em>\1</em>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _speed(run_dir: Path | None) -> str:
    """The inference-speed section (``report.speed.bench_blocks``) as HTML; "" without a
    benchmark. The plot is inlined (base64 PNG) so that the page stays one file."""
    if run_dir is None:
        return ""
    parts = []
    for kind, content in bench_blocks(run_dir):
        if kind == "h2":
            parts.append(f"<h2>{html.escape(content)}</h2>")
        elif kind == "p":
            parts.append(f"<p>{_inline(content)}</p>")
        elif kind == "table":
            parts.append(_table((content[0], content[1])))
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in content) + "</ul>")
        else:  # img
            data = base64.b64encode((Path(run_dir) / content[1]).read_bytes()).decode()
            parts.append(f'<img alt="{html.escape(content[0])}" style="max-width: 100%" '
                         f'src="data:image/png;base64,{data}">')
    return "\n".join(parts)


def _script_json(obj: Any) -> str:
    # "</" would end the <script> element early.
    return json.dumps(obj).replace("</", "<\\/")


def _vega_bundle() -> str:
    """vega + vega-lite + vega-embed as one script, matching altair's Vega-Lite version."""
    vl_version = "_".join(alt.SCHEMA_VERSION.split(".")[:2])  # "v6.4.1" -> "v6_4"
    return vl_convert.javascript_bundle(vl_version=vl_version)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1250px; margin: 2em auto; padding: 0 1em;
       color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.chart[data-rendered="error"] {{ color: #b00; }}
pre {{ background: #f6f6f6; padding: 0.8em; overflow-x: auto; }}
</style>
<script>
// vega, vega-lite and vega-embed, inlined so that the page needs no network.
{bundle}
</script>
</head>
<body>
<h1>{title}</h1>
<p>{intro} Click a legend entry to highlight one method (shift-click for several); hover a
point for its values.</p>
<h2>Results</h2>
<div class="charts">{chart_divs}</div>
{results_table}
<h2>Summary figures</h2>
<p>AUC: area under accuracy vs sparsity over the measured k (trapezoid, sparsity as a fraction).
Largest k within 1 point: the largest measured k whose accuracy is at least the same model's
dense accuracy minus 1 point.</p>
{figures_table}
{comparisons}
<h2>Analysis</h2>
<ul>{analysis}</ul>
{speed}
<h2>Configuration</h2>
<pre>{config}</pre>
<h2>Environment</h2>
<pre>{environment}</pre>
<script>
const specs = {specs};
for (const [id, spec] of Object.entries(specs)) {{
  const el = document.getElementById(id);
  vegaEmbed(el, spec, {{renderer: "svg", actions: {{export: true, source: false,
                                                    compiled: false, editor: false}}}})
    .then(() => {{ el.dataset.rendered = "yes"; }})
    .catch((err) => {{
      el.dataset.rendered = "error";
      el.textContent = "chart failed to render: " + err;
      console.error(err);
    }});
}}
</script>
</body>
</html>
"""


def _comparisons(summary: Summary) -> str:
    """The paired-comparisons section; none without pairs that share two seeds or more."""
    if not paired_comparisons(summary):
        return ""
    return ("<h2>Paired comparisons</h2>\n<p>Difference a − b in test accuracy, seed by seed; "
            "<em>a &gt; b</em> when the whole 95 % interval is above 0 (pairs that share fewer "
            f"than two seeds are left out).</p>\n{_table(comparisons_table(summary))}")


def render_html(summary: Summary, title: str | None = None,
                run_dir: Path | None = None) -> str:
    """The complete, self-contained HTML page (with ``run_dir``'s inference-speed section when
    it holds a benchmark)."""
    specs = charts(summary)
    title = title or title_of(summary)
    environment = {**(summary.meta.get("environment") or {}), "altair": alt.__version__,
                   "vega-lite": alt.SCHEMA_VERSION}
    config = {k: v for k, v in summary.meta.items() if k != "environment"}
    return _PAGE.format(
        title=html.escape(title),
        intro=_inline(intro(summary)),
        bundle=_vega_bundle(),
        chart_divs="".join(f'<div class="chart" id="{name}"></div>' for name in specs),
        results_table=_table(results_table(summary)),
        figures_table=_table(figures_table(summary)),
        comparisons=_comparisons(summary),
        analysis="".join(f"<li>{_inline(line)}</li>" for line in analysis(summary)),
        speed=_speed(run_dir),
        config=html.escape(json.dumps(config, indent=2)),
        environment=html.escape(json.dumps(environment, indent=2)),
        specs=_script_json(specs),
    )


def write_html(summary: Summary, run_dir: Path, title: str | None = None) -> Path:
    """Write ``report.html`` into ``run_dir`` atomically."""
    path = Path(run_dir) / REPORT_HTML
    atomic_write(path, render_html(summary, title, run_dir))
    return path
