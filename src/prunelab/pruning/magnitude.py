"""The original challenge's two methods, with its exact percentile semantics.

In the challenge's in x out view a unit is a column; in torch's out x in ``weight`` it is a row.
A conv's weight (out, in/groups, kh, kw) counts as the matrix (out, in/groups * kh * kw): a unit
is an output channel, ranked by the L2 norm of all its incoming weights.
"""

from __future__ import annotations

import math

import torch

__all__ = ["per_unit", "percentile", "unit_mask", "unit_pruning", "weight_mask", "weight_pruning"]


def percentile(values: torch.Tensor, q: float) -> float:
    """``numpy.percentile(values, 100 * q)`` with linear interpolation, computed in float64."""
    v = values.detach().flatten().double().sort().values
    if len(v) == 0:
        raise ValueError("percentile of an empty tensor")
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))


def weight_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask keeping weights with ``|w| >= t``, t the ``sparsity`` percentile of ``|W|``."""
    magnitude = weight.abs()
    return magnitude.double() >= percentile(magnitude, sparsity)


def unit_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask (out,) keeping units whose incoming L2 norm is ``>= t`` (the percentile)."""
    norms = weight.double().flatten(1).norm(dim=1)  # (out,): one per unit's incoming weights
    return norms >= percentile(norms, sparsity)


def weight_pruning(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``weight`` with the ``sparsity`` fraction of smallest-magnitude entries zeroed."""
    return weight * weight_mask(weight, sparsity)


def unit_pruning(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``weight`` with the rows (units) of smallest incoming L2 norm zeroed."""
    return weight * per_unit(unit_mask(weight, sparsity), weight)


def per_unit(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(out,) values shaped to broadcast over ``weight``'s rows: (out, 1) or (out, 1, 1, 1)."""
    return values.reshape(-1, *([1] * (weight.dim() - 1)))
