"""One report across runs: datasets, seeds, methods, architectures side by side.

Every run must have been evaluated on the same test set; curves are labelled ``run/method``
and compared pairwise over the seeds the runs share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunelab.study.aggregate import Summary, summarize
from prunelab.study.multiseed import load_seed_results, run_meta

__all__ = ["compare_runs", "same_test_set"]


def same_test_set(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two test-set descriptions agree on every field both record."""
    shared = set(a) & set(b)
    return bool(shared) and all(a[k] == b[k] for k in shared)


def _labels(run_dirs: list[Path]) -> list[str]:
    names = [Path(d).resolve().name for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{i + 1}:{name}" for i, name in enumerate(names)]


def compare_runs(run_dirs: list[Path]) -> Summary:
    """Summary of several single- or multi-seed run folders measured on the same test set."""
    if len(run_dirs) < 2:
        raise ValueError(f"compare needs at least two run folders, got {len(run_dirs)}")
    if len({Path(d).resolve() for d in run_dirs}) != len(run_dirs):
        raise ValueError("the same run folder is given twice")
    groups, metas = {}, {}
    for label, run_dir in zip(_labels(run_dirs), run_dirs, strict=True):
        groups[label] = load_seed_results(run_dir)
        metas[label] = run_meta(groups[label])
    first_label, first = next(iter(metas.items()))
    for label, meta in metas.items():
        if not same_test_set(meta["test_set"], first["test_set"]):
            raise ValueError(f"runs use different test sets: {first_label} "
                             f"{_describe(first['test_set'])} vs {label} "
                             f"{_describe(meta['test_set'])}; compare runs on the same test set")
    meta = {"runs": {label: {k: v for k, v in m.items() if k != "environment"}
                     for label, m in metas.items()},
            "test_set": first["test_set"], "environment": first.get("environment")}
    return summarize(groups, meta)


def _describe(test_set: dict[str, Any]) -> str:
    size = f", {test_set['size']} images" if "size" in test_set else ""
    return f"({test_set.get('dataset')}{size})"
