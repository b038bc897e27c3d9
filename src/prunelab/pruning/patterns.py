"""N:M variants of the weight methods, built from a base name and a validated pattern.

``magnitude-N:M`` (|W|), ``wanda-N:M`` (|W| * ||x||), ``sparsegpt-N:M`` (OBS saliency with
updates) and ``refit-N:M`` (Wanda's N:M mask, then the least-squares refit). Granularity "n:m";
fixed sparsity 1 - N/M (``prunelab.pruning.nm``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunelab.pruning import ComputeFn, PruneContext, PruningMethod
from prunelab.pruning.nm import nm_mask, parse_nm
from prunelab.pruning.obs import sparsegpt_compute
from prunelab.pruning.refit import refit_compute
from prunelab.pruning.targets import as_matrix
from prunelab.pruning.wanda import MaskRule, wanda_compute, wanda_scores

__all__ = ["NM_BASES", "nm_method", "nm_rule"]


def nm_rule(n: int, m: int) -> MaskRule:
    """A mask rule keeping ``n`` of every ``m`` consecutive inputs (the sparsity is ignored)."""
    return lambda scores, sparsity: nm_mask(scores, n, m)


def _magnitude(n: int, m: int) -> ComputeFn:
    def compute(model: nn.Module, names: list[str], sparsity: float,
                context: PruneContext) -> dict[str, torch.Tensor]:
        modules = dict(model.named_modules())
        out = {}
        for name in names:
            w = modules[name].weight.detach()  # groups of M along a row of the (out, fan_in) view
            out[name] = w * nm_mask(as_matrix(w).abs(), n, m).reshape(w.shape)
        return out

    return compute


NM_BASES: dict[str, tuple[Callable[[int, int], ComputeFn], bool, str]] = {
    "magnitude": (_magnitude, False, "N:M by |w| per group of M inputs"),
    "wanda": (lambda n, m: wanda_compute(nm_rule(n, m)), True,
              "N:M by Wanda's |w| * ||x|| per group of M inputs"),
    "sparsegpt": (lambda n, m: sparsegpt_compute((n, m)), True,
                  "SparseGPT choosing N of every M inputs, with OBS weight updates"),
    "refit": (lambda n, m: refit_compute(wanda_scores, nm_rule(n, m)), True,
              "Wanda's N:M mask, then a least-squares refit of every row"),
}
"""Base name -> (builder(n, m), needs calibration, description)."""


def nm_method(name: str) -> PruningMethod | None:
    """The method for ``<base>-N:M`` (ValueError for N >= M); None if ``name`` is not one."""
    parsed = parse_nm(name)
    if parsed is None or parsed[0] not in NM_BASES:
        return None
    base, n, m = parsed
    build, calibrated, what = NM_BASES[base]
    return PruningMethod(name, "n:m", build(n, m), f"{what} (keeps {n} of every {m})",
                         needs_calibration=calibrated, fixed_sparsity=1 - n / m)
