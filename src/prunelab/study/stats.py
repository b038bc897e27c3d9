"""Statistics over seeds: mean, spread and Student-t confidence intervals; paired differences; AUC.

Every figure reported for several seeds is an ``Estimate``: with ``n`` seeds the interval is
``mean ± t(0.975, n - 1) · std / √n`` (sample std, ``ddof=1``). One seed has no interval (NaN).

>>> e = estimate([0.80, 0.82, 0.81])
>>> round(e.mean, 4), e.n
(0.81, 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

__all__ = ["CONFIDENCE", "Estimate", "auc", "estimate", "paired_difference"]

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A quantity measured once per seed, summarised."""

    mean: float
    """Mean over seeds."""
    std: float
    """Sample standard deviation (ddof=1); NaN for one seed."""
    ci_low: float
    """Lower end of the two-sided Student-t confidence interval of the mean; NaN for one seed."""
    ci_high: float
    """Upper end of that interval."""
    n: int
    """Number of seeds."""

    @property
    def half_width(self) -> float:
        """Half the interval's width (NaN for one seed)."""
        return (self.ci_high - self.ci_low) / 2

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-safe: NaN becomes None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items()}


def estimate(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean, std and t-interval of ``values`` (one per seed)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"need a non-empty 1-D sequence of values, got shape {x.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if len(x) == 1:
        nan = float("nan")
        return Estimate(mean, nan, nan, nan, 1)
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, len(x) - 1)) * std / math.sqrt(len(x))
    return Estimate(mean, std, mean - half, mean + half, len(x))


def paired_difference(a: Sequence[float], b: Sequence[float],
                      confidence: float = CONFIDENCE) -> Estimate:
    """Estimate of ``a - b`` from values paired by seed (same seeds, same order)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    return estimate(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), confidence)


def auc(sparsity: Sequence[float], accuracy: Sequence[float]) -> float:
    """Area under accuracy vs sparsity (fractions), trapezoid rule over the measured points.

    With points spanning [0, 1] the area is in [0, 1] (1 = perfect at every sparsity); a
    curve measured on a narrower range covers only that range.
    """
    s, a = np.asarray(sparsity, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    if s.shape != a.shape or s.ndim != 1 or len(s) < 2:
        raise ValueError("auc needs two equal-length 1-D sequences of at least two points")
    if np.any((s < 0) | (s > 1)):
        raise ValueError(f"sparsities must be fractions in [0, 1], got {s.tolist()}")
    order = np.argsort(s)
    return float(np.trapezoid(a[order], s[order]))
