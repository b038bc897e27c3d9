"""Several seeds' sweep results -> one summary: mean ± CI per method and k, summary figures,
paired comparisons between methods. Reads saved results only; never touches a model.

A *curve* is one method's results on one trained model (one seed). Curves are grouped by a
label: the method name for one run, ``run/method`` when runs are compared (``compare.py``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from prunelab.study.runfolder import Results
from prunelab.study.stats import Estimate, auc, estimate, paired_difference

__all__ = [
    "VALID_RANGE",
    "Curve",
    "Summary",
    "clipped_interval",
    "curves_from_results",
    "flat",
    "summarize",
    "verdict",
]

# Result columns averaged over seeds without an interval (they barely vary, or not at all).
MEAN_COLUMNS = ("zero_fraction", "effective_sparsity", "params_remaining", "params_total",
                "macs_per_sample", "seconds")
WITHIN = 0.01  # "within 1 point of dense": accuracy >= dense - 0.01
VALID_RANGE = {"accuracy": (0.0, 1.0), "loss": (0.0, math.inf)}
"""Values each measured quantity can take (accuracy as a fraction, cross-entropy)."""


@dataclass(frozen=True)
class Curve:
    """One method's sweep on one trained model."""

    seed: int
    """Training seed of the model."""
    dense: dict[str, float]
    """The unpruned model's accuracy and loss."""
    rows: dict[float, dict[str, Any]]
    """Result rows by ``sparsity_pct``, sorted."""


@dataclass(frozen=True)
class Summary:
    """Everything the multi-seed report shows, as plain JSON-able dicts (``summary.json``)."""

    seeds: list[int]
    """Seeds that contributed."""
    dense: list[dict[str, Any]]
    """Per group (``label``: run name): dense accuracy/loss estimates (``accuracy_mean``...)."""
    rows: list[dict[str, Any]]
    """Per method and k: ``accuracy_*``/``loss_*`` estimates, means of ``MEAN_COLUMNS``."""
    methods: list[dict[str, Any]]
    """Per method: ``auc_*`` and ``k_within_1pt_*`` estimates, their per-seed min/max."""
    comparisons: list[dict[str, Any]]
    """Per method pair and k (or ``"AUC"``): paired difference ``a - b`` with its interval."""
    per_seed: list[dict[str, Any]]
    """One row per method, k and seed: accuracy and loss (for per-seed lines)."""
    meta: dict[str, Any]
    """Run configuration (without the seed), sweep, environment, test set."""

    @property
    def max_n(self) -> int:
        """The most seeds behind any run's curves: below 2 there is no interval anywhere."""
        return max((d["n"] for d in self.dense), default=0)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Summary:
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            raise ValueError("not a prunelab summary") from None


def flat(prefix: str, e: Estimate) -> dict[str, Any]:
    """``accuracy``, Estimate -> ``{"accuracy_mean": ..., "accuracy_ci_low": ..., ...}``."""
    return {f"{prefix}_{k}": v for k, v in e.to_dict().items()}


def clipped_interval(row: dict[str, Any], quantity: str) -> tuple[float, float] | None:
    """The confidence interval of ``quantity`` in ``row`` cut at ``VALID_RANGE``, for drawing
    (a t-interval over few seeds can pass 100 % accuracy or a loss of 0); None for one seed.

    >>> clipped_interval({"accuracy_ci_low": 0.9, "accuracy_ci_high": 1.04}, "accuracy")
    (0.9, 1.0)
    """
    low, high = row.get(f"{quantity}_ci_low"), row.get(f"{quantity}_ci_high")
    if low is None or high is None:
        return None
    floor, ceiling = VALID_RANGE[quantity]
    return max(low, floor), min(high, ceiling)


def curves_from_results(results: dict[int, Results], prefix: str = "") -> dict[str, list[Curve]]:
    """Per label (``prefix + method``), one curve per seed."""
    out: dict[str, list[Curve]] = {}
    for seed, res in sorted(results.items()):
        by_method: dict[str, dict[float, dict]] = {}
        for row in res.rows:
            by_method.setdefault(row["method"], {})[row["sparsity_pct"]] = row
        for method, rows in by_method.items():
            out.setdefault(prefix + method, []).append(
                Curve(seed, res.dense, dict(sorted(rows.items()))))
    return out


def _rows(label: str, curves: list[Curve]) -> list[dict[str, Any]]:
    ks = sorted({k for c in curves for k in c.rows})
    out = []
    for k in ks:
        rows = [c.rows[k] for c in curves if k in c.rows]
        row = {"method": label, "granularity": rows[0].get("granularity", ""),
               "sparsity_pct": k, "n": len(rows),
               **flat("accuracy", estimate([r["accuracy"] for r in rows])),
               **flat("loss", estimate([r["loss"] for r in rows]))}
        row.update({c: float(sum(r[c] for r in rows) / len(rows)) for c in MEAN_COLUMNS
                    if all(c in r for r in rows)})
        out.append(row)
    return out


def _largest_k_within(curve: Curve) -> float:
    """Largest measured k whose accuracy is within 1 point of this model's dense accuracy."""
    ok = [k for k, r in curve.rows.items() if r["accuracy"] >= curve.dense["accuracy"] - WITHIN]
    return max(ok) if ok else math.nan


def _auc(curve: Curve) -> float:
    ks = list(curve.rows)
    return auc([k / 100 for k in ks], [curve.rows[k]["accuracy"] for k in ks])


def _method_figures(label: str, curves: list[Curve]) -> dict[str, Any]:
    out: dict[str, Any] = {"method": label}
    for name, fn in (("auc", _auc), ("k_within_1pt", _largest_k_within)):
        values = [v for v in (fn(c) for c in curves if len(c.rows) >= 2) if not math.isnan(v)]
        if values:
            out.update(flat(name, estimate(values)), **{f"{name}_min": min(values),
                                                       f"{name}_max": max(values)})
    return out


def _paired(a: str, b: str, ca: list[Curve], cb: list[Curve]) -> list[dict[str, Any]]:
    by_seed_b = {c.seed: c for c in cb}
    pairs = [(c, by_seed_b[c.seed]) for c in ca if c.seed in by_seed_b]
    if not pairs:
        return []
    out = []
    ks = sorted({k for x, y in pairs for k in x.rows if k in y.rows and k > 0})
    for k in ks:
        ps = [(x.rows[k]["accuracy"], y.rows[k]["accuracy"]) for x, y in pairs
              if k in x.rows and k in y.rows]
        out.append({"a": a, "b": b, "sparsity_pct": k,
                    **flat("diff", paired_difference([p[0] for p in ps], [p[1] for p in ps]))})
    full = [(x, y) for x, y in pairs if len(x.rows) >= 2 and len(y.rows) >= 2]
    if full:
        out.append({"a": a, "b": b, "sparsity_pct": "AUC",
                    **flat("diff", paired_difference([_auc(x) for x, _ in full],
                                                     [_auc(y) for _, y in full]))})
    for row in out:
        row["verdict"] = verdict(row, a, b)
    return out


def verdict(row: dict[str, Any], a: str, b: str) -> str:
    """``"a > b"`` when the whole interval of a - b is above 0, ``"a < b"`` below, else ``~``."""
    low, high = row["diff_ci_low"], row["diff_ci_high"]
    if low is None or high is None:
        return "n/a (1 seed)"
    if low > 0:
        return f"{a} > {b}"
    if high < 0:
        return f"{a} < {b}"
    return "no significant difference"


def _dense(label: str, dense_by_seed: dict[int, dict[str, float]]) -> dict[str, Any]:
    values = list(dense_by_seed.values())
    return {"label": label, "n": len(values),
            **flat("accuracy", estimate([d["accuracy"] for d in values])),
            **flat("loss", estimate([d["loss"] for d in values]))}


def summarize(groups: dict[str, dict[int, Results]], meta: dict[str, Any]) -> Summary:
    """Summary of one or more runs (``groups``: run label -> seed -> results).

    With one group, methods keep their names; with several, they become ``label/method``.
    """
    if not groups or not all(groups.values()):
        raise ValueError("no sweep results to summarise")
    prefix = len(groups) > 1
    curves: dict[str, list[Curve]] = {}
    for label, results in groups.items():
        curves.update(curves_from_results(results, f"{label}/" if prefix else ""))
    rows = [r for label, cs in curves.items() for r in _rows(label, cs)]
    comparisons = [row for a, b in itertools.combinations(curves, 2)
                   for row in _paired(a, b, curves[a], curves[b])]
    per_seed = [{"method": label, "seed": c.seed, "sparsity_pct": k,
                 "accuracy": r["accuracy"], "loss": r["loss"]}
                for label, cs in curves.items() for c in cs for k, r in c.rows.items()]
    seeds = sorted({s for results in groups.values() for s in results})
    return Summary(
        seeds=seeds,
        dense=[_dense(label, {s: r.dense for s, r in results.items()})
               for label, results in groups.items()],
        rows=rows,
        methods=[_method_figures(label, cs) for label, cs in curves.items()],
        comparisons=comparisons,
        per_seed=per_seed,
        meta=meta,
    )
