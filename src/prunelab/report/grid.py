"""Reports of a study folder (``prunelab.study.grid``), from its saved results only.

- every run folder ``<dataset>/<model>/seed<k>/``: its plots and ``report.md``;
- every ``<dataset>/<model>/``: the summary over seeds, plots with bands, ``report.md``/``.html``
  (as ``prunelab run --seeds``);
- every ``<dataset>/`` with several models: the comparison of its models (as ``prunelab
  compare``), curves labelled ``model/method``;
- the study folder: ``summary.csv`` (every (dataset, model)'s summary rows, with those two
  columns first) and ``report.md``, one section per dataset with a table per model and method.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tabulate import tabulate

from prunelab.files import atomic_write
from prunelab.report.markdown import model_name
from prunelab.report.plots import PLOTS
from prunelab.report.summary import fmt
from prunelab.report.writer import write_all, write_run_reports, write_seed_report
from prunelab.study.aggregate import Summary
from prunelab.study.compare import compare_runs
from prunelab.study.grid import Study
from prunelab.study.multiseed import SUMMARY_COLUMNS, seed_dir, summarize_run
from prunelab.study.runfolder import RESULTS_JSON

__all__ = ["write_study_reports"]

REPORT, SUMMARY_CSV = "report.md", "summary.csv"


def _group_reports(study: Study, out: Path, dataset: str) -> dict[str, Summary]:
    """Reports of each model's run folders on ``dataset``; its summary over seeds by name."""
    summaries = {}
    for model in study.models:
        group = study.group_dir(out, dataset, model)
        for seed in study.seeds:
            if (seed_dir(group, seed) / RESULTS_JSON).is_file():
                write_seed_report(seed_dir(group, seed))
        write_run_reports(group, study.seeds)
        summaries[model.name] = summarize_run(group, study.seeds)
    return summaries


def _table(summaries: dict[str, Summary]) -> str:
    headers = ["model", "method", "dense acc. (%)", "AUC (acc. vs sparsity, %)",
               "largest k within 1 pt of dense (%)"]
    body = [[name, m["method"], fmt(s.dense[0], "accuracy", 100), fmt(m, "auc", 100),
             fmt(m, "k_within_1pt", 1, 1)]
            for name, s in summaries.items() for m in s.methods]
    return tabulate(body, headers, tablefmt="github", disable_numparse=True)


def _section(dataset: str, summaries: dict[str, Summary]) -> list[str]:
    names = list(summaries)
    where = dataset if len(names) > 1 else f"{dataset}/{names[0]}"
    links = [f"[{n}]({dataset}/{n}/report.md)" for n in names]
    if len(names) > 1:
        links.insert(0, f"[all models compared]({dataset}/report.md)")
    return [f"## {dataset}", "",
            *(f"- **{n}**: {model_name(s.meta['run'])}, {s.meta['run']['train']['epochs']} "
              f"epoch(s)" + (f"; seeds {', '.join(map(str, s.seeds))}" if s.seeds else "")
              for n, s in summaries.items()),
            "", _table(summaries), "",
            *(f"![{p}]({where}/plots/{p}.png)" for p in PLOTS[:1]), "",
            "Reports: " + " · ".join(links), ""]


def _summary_csv(tables: dict[str, dict[str, Summary]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=("dataset", "model", *SUMMARY_COLUMNS),
                            extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for dataset, summaries in tables.items():
        for name, summary in summaries.items():
            writer.writerows({"dataset": dataset, "model": name, **row} for row in summary.rows)
    return buf.getvalue()


def write_study_reports(study: Study, out: Path) -> Path:
    """Every report of the study folder ``out``; returns its ``report.md``."""
    out = Path(out)
    tables = {}
    for dataset in study.datasets:
        tables[dataset] = _group_reports(study, out, dataset)
        if len(study.models) > 1:
            groups = [study.group_dir(out, dataset, m) for m in study.models]
            write_all(compare_runs(groups), out / dataset)
    sweep = study.sweep
    text = [f"# prunelab study: {out.resolve().name}", "",
            f"{len(study.datasets)} dataset(s) x {len(study.models)} model(s) x "
            f"{len(study.seeds)} seed(s), each swept with {', '.join(sweep.methods)} at "
            f"{', '.join(f'{100 * k:g}' for k in sweep.sparsities)} % (study file: "
            f"[study.toml](study.toml); jobs that ran: [jobs.json](jobs.json)). Figures are "
            f"means over seeds ± the half-width of their 95 % interval; all of them per "
            f"(dataset, model) in [{SUMMARY_CSV}]({SUMMARY_CSV}).", ""]
    for dataset, summaries in tables.items():
        text += _section(dataset, summaries)
    atomic_write(out / SUMMARY_CSV, _summary_csv(tables))
    atomic_write(out / REPORT, "\n".join(text))
    return out / REPORT
