"""``report.html``: one self-contained file with interactive charts (Vega-Lite via altair),
the tables, the analysis, configuration and environment.

Everything is inlined, Vega/Vega-Lite/vega-embed included (from ``vl-convert``), so the file
opens without network access. Click a legend entry to highlight a method; hover for values.
Each chart container gets ``data-rendered="yes"`` once drawn, or ``"error"`` with the message
shown in its place, so a browser check (and a reader) can tell.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import altair as alt
import vl_convert

from prunelab.files import atomic_write
from prunelab.report.summary import (
    analysis,
    comparisons_table,
    figures_table,
    results_table,
    title_of,
)
from prunelab.study.aggregate import Summary

__all__ = ["charts", "render_html", "write_html"]

REPORT_HTML = "report.html"
_SIZE = {"width": 560, "height": 330}


def _curve_data(summary: Summary) -> list[dict[str, Any]]:
    out = []
    for r in summary.rows:
        d = {"method": r["method"], "k": r["sparsity_pct"], "n": r["n"],
             "params": r.get("params_remaining"),
             "accuracy": 100 * r["accuracy_mean"], "loss": r["loss_mean"]}
        if r["accuracy_ci_low"] is not None:
            d |= {"accuracy_low": 100 * r["accuracy_ci_low"],
                  "accuracy_high": 100 * r["accuracy_ci_high"],
                  "loss_low": r["loss_ci_low"], "loss_high": r["loss_ci_high"]}
        out.append(d)
    return out


def _curve_chart(data: list[dict[str, Any]], x: alt.X, y: str, title: str,
                 y_title: str, log_y: bool = False) -> alt.Chart | alt.LayerChart:
    pick = alt.selection_point(fields=["method"], bind="legend")
    opacity = alt.condition(pick, alt.value(1.0), alt.value(0.15))
    scale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    base = alt.Chart(alt.Data(values=data))
    tooltip = [alt.Tooltip("method:N"), alt.Tooltip("k:Q", title="k (%)"),
               alt.Tooltip(f"{y}:Q", format=".4f", title=f"{y} (mean)"),
               alt.Tooltip(f"{y}_low:Q", format=".4f", title="95 % CI low"),
               alt.Tooltip(f"{y}_high:Q", format=".4f", title="95 % CI high"),
               alt.Tooltip("n:Q", title="seeds"), alt.Tooltip("params:Q", format=",.0f")]
    line = base.mark_line(point=True).encode(
        x=x, y=alt.Y(f"{y}:Q", title=y_title, scale=scale), color=alt.Color("method:N"),
        opacity=opacity, tooltip=tooltip).add_params(pick)
    with_ci = [d for d in data if f"{y}_low" in d]
    if not with_ci:  # one seed: no interval, no band (an empty band makes Vega warn)
        return line.properties(title=title, **_SIZE)
    band = alt.Chart(alt.Data(values=with_ci)).mark_area().encode(
        x=x, y=alt.Y(f"{y}_low:Q", scale=scale), y2=f"{y}_high:Q",
        color=alt.Color("method:N", legend=None),  # the legend shows the lines' symbols
        opacity=alt.condition(pick, alt.value(0.2), alt.value(0.03)))
    return alt.layer(band, line).properties(title=title, **_SIZE)


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
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


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
<p>Every figure is the mean over seeds ± the half-width of its 95 % Student-t confidence
interval; bands on the charts are those intervals. Click a legend entry to highlight one
method (shift-click for several); hover a point for its values.</p>
<h2>Results</h2>
<div class="charts">{chart_divs}</div>
{results_table}
<h2>Summary figures</h2>
<p>AUC: area under accuracy vs sparsity over the measured k (trapezoid, sparsity as a fraction).
Largest k within 1 point: the largest measured k whose accuracy is at least the same model's
dense accuracy minus 1 point.</p>
{figures_table}
<h2>Paired comparisons</h2>
<p>Difference a − b in test accuracy, seed by seed; <em>a &gt; b</em> when the whole 95 %
interval is above 0.</p>
{comparisons_table}
<h2>Analysis</h2>
<ul>{analysis}</ul>
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


def render_html(summary: Summary, title: str | None = None) -> str:
    """The complete, self-contained HTML page."""
    specs = charts(summary)
    title = title or title_of(summary)
    environment = {**(summary.meta.get("environment") or {}), "altair": alt.__version__,
                   "vega-lite": alt.SCHEMA_VERSION}
    config = {k: v for k, v in summary.meta.items() if k != "environment"}
    return _PAGE.format(
        title=html.escape(title),
        bundle=_vega_bundle(),
        chart_divs="".join(f'<div class="chart" id="{name}"></div>' for name in specs),
        results_table=_table(results_table(summary)),
        figures_table=_table(figures_table(summary)),
        comparisons_table=_table(comparisons_table(summary)),
        analysis="".join(f"<li>{_inline(line)}</li>" for line in analysis(summary)),
        config=html.escape(json.dumps(config, indent=2)),
        environment=html.escape(json.dumps(environment, indent=2)),
        specs=_script_json(specs),
    )


def write_html(summary: Summary, run_dir: Path, title: str | None = None) -> Path:
    """Write ``report.html`` into ``run_dir`` atomically."""
    path = Path(run_dir) / REPORT_HTML
    atomic_write(path, render_html(summary, title))
    return path
