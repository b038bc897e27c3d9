"""Multi-seed run folders: ``RUN_DIR/seed<k>/`` are ordinary single-seed run folders and
``RUN_DIR`` holds the aggregate (``summary.csv``, ``summary.json``, plots with bands, reports).

A single-seed run folder is treated as a run with one seed, so every reader works on both.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from prunelab.files import atomic_write
from prunelab.study.aggregate import MEAN_COLUMNS, Summary, summarize
from prunelab.study.runfolder import RESULTS_JSON, Results, load_results

__all__ = [
    "SUMMARY_CSV",
    "SUMMARY_JSON",
    "check_seeds",
    "default_run_dir",
    "load_seed_results",
    "load_summary",
    "run_meta",
    "seed_dir",
    "seed_dirs",
    "summarize_run",
    "test_set_of",
    "write_summary",
]

SUMMARY_CSV, SUMMARY_JSON = "summary.csv", "summary.json"
_SEED_DIR = re.compile(r"seed(\d+)")
_ESTIMATE = ("mean", "std", "ci_low", "ci_high", "n")
SUMMARY_COLUMNS = ("method", "granularity", "sparsity_pct", "n",
                   *(f"{q}_{s}" for q in ("accuracy", "loss") for s in _ESTIMATE),
                   *MEAN_COLUMNS)


def check_seeds(seeds: tuple[int, ...]) -> tuple[int, ...]:
    """Seeds must be distinct non-negative integers, at least one."""
    if not seeds:
        raise ValueError("no seeds given; pass e.g. --seeds 0,1,2,3,4")
    bad = [s for s in seeds if not isinstance(s, int) or isinstance(s, bool) or s < 0]
    if bad:
        raise ValueError(f"seeds must be non-negative integers, got {bad}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"repeated seed in {list(seeds)}")
    return tuple(seeds)


def default_run_dir(dataset: str, seeds: tuple[int, ...], family: str = "mlp") -> Path:
    """``runs/<dataset>-seed<k>`` for one seed, ``runs/<dataset>-<n>seeds`` for several; a
    model family other than the seed's ``mlp`` adds its name: ``runs/<dataset>-<family>-...``."""
    stem = dataset if family == "mlp" else f"{dataset}-{family}"
    if len(seeds) == 1:
        return Path("runs") / f"{stem}-seed{seeds[0]}"
    return Path("runs") / f"{stem}-{len(seeds)}seeds"


def seed_dir(run_dir: Path, seed: int) -> Path:
    """The single-seed run folder of ``seed`` inside a multi-seed ``run_dir``."""
    return Path(run_dir) / f"seed{seed}"


def seed_dirs(run_dir: Path) -> dict[int, Path]:
    """``seed<k>/`` subfolders of ``run_dir`` by seed (empty for a single-seed folder)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return {}
    found = {int(m.group(1)): p for p in run_dir.iterdir()
             if p.is_dir() and (m := _SEED_DIR.fullmatch(p.name))}
    return dict(sorted(found.items()))


def load_seed_results(run_dir: Path, seeds: tuple[int, ...] | None = None) -> dict[int, Results]:
    """Saved results by seed: each ``seed<k>/`` with results (those of ``seeds`` only, when
    given), or the folder itself."""
    run_dir = Path(run_dir)
    dirs = {s: d for s, d in seed_dirs(run_dir).items() if seeds is None or s in seeds}
    if not dirs:
        results = load_results(run_dir)
        return {int(results.meta.get("run", {}).get("train", {}).get("seed", 0)): results}
    done = {s: load_results(d) for s, d in dirs.items() if (d / RESULTS_JSON).is_file()}
    if not done:
        raise FileNotFoundError(f"no seed folder of {run_dir} holds sweep results "
                                f"(run `prunelab sweep {run_dir}` first)")
    return done


def test_set_of(results: Results) -> dict[str, Any]:
    """What identifies the test set the results were measured on."""
    if "test_set" in results.meta:
        return results.meta["test_set"]
    older = {"dataset": results.meta.get("run", {}).get("dataset")}  # results without a hash
    return older | ({"size": results.meta["test_size"]} if "test_size" in results.meta else {})


def _without_seed(run: dict[str, Any]) -> dict[str, Any]:
    return {**run, "train": {k: v for k, v in run.get("train", {}).items() if k != "seed"}}


def run_meta(results: dict[int, Results]) -> dict[str, Any]:
    """Shared meta of one run's seeds; the seeds must differ only in their seed."""
    first = next(iter(results.values()))
    base = _without_seed(first.meta.get("run", {}))
    for seed, res in results.items():
        if _without_seed(res.meta.get("run", {})) != base:
            raise ValueError(f"seed {seed} was trained with another configuration than the "
                             f"other seeds: {res.meta.get('run')} vs {base}")
        if test_set_of(res) != test_set_of(first):
            raise ValueError(f"seed {seed} was evaluated on another test set: "
                             f"{test_set_of(res)} vs {test_set_of(first)}")
    return {"run": base, "sweep": first.meta.get("sweep"), "test_set": test_set_of(first),
            "environment": first.meta.get("environment"), "seeds": sorted(results)}


def summarize_run(run_dir: Path, seeds: tuple[int, ...] | None = None) -> Summary:
    """Summary of a single- or multi-seed run folder (over ``seeds`` only, when given)."""
    results = load_seed_results(run_dir, seeds)
    return summarize({Path(run_dir).resolve().name: results}, run_meta(results))


def write_summary(run_dir: Path, summary: Summary) -> None:
    """``summary.json`` (everything) and ``summary.csv`` (per method and k), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary.rows)
    atomic_write(Path(run_dir) / SUMMARY_JSON, json.dumps(summary.to_dict(), indent=1) + "\n")
    atomic_write(Path(run_dir) / SUMMARY_CSV, buf.getvalue())


def load_summary(run_dir: Path) -> Summary:
    """The summary saved in ``run_dir``."""
    path = Path(run_dir) / SUMMARY_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no {SUMMARY_JSON} (run `prunelab report`)")
    try:
        return Summary.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not a prunelab summary ({e})") from None
