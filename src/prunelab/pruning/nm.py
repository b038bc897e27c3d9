"""N:M semi-structured sparsity: in every group of M consecutive input weights of a row (unit),
at most N are kept and the others zeroed -- the pattern sparse tensor cores accelerate (2:4).

Names follow the usual convention: ``2:4`` keeps 2 of every 4 (sparsity 1 - N/M = 50 %). A row
whose length is not a multiple of M ends in a shorter group that keeps min(N, its length).
N:M methods have a fixed sparsity 1 - N/M; the sweep runs each once, at that sparsity.
"""

from __future__ import annotations

import re

import torch

__all__ = ["NM_NAME", "check_pattern", "nm_mask", "parse_nm"]

NM_NAME = re.compile(r"^(?P<base>[a-z][a-z0-9-]*)-(?P<n>\d+):(?P<m>\d+)$")
"""``<base method>-N:M``, e.g. ``wanda-2:4``."""


def check_pattern(n: int, m: int) -> tuple[int, int]:
    """(n, m) if ``0 < n < m``, else a ``ValueError`` naming them."""
    if not (isinstance(n, int) and isinstance(m, int)) or not 0 < n < m:
        raise ValueError(f"an N:M pattern keeps N of every M weights and needs 0 < N < M, "
                         f"got {n}:{m}")
    return n, m


def parse_nm(name: str) -> tuple[str, int, int] | None:
    """``"wanda-2:4"`` -> ("wanda", 2, 4) (validated); None when ``name`` is no N:M name."""
    match = NM_NAME.match(name)
    if match is None:
        return None
    n, m = check_pattern(int(match["n"]), int(match["m"]))
    return match["base"], n, m


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask (out, in) keeping the ``n`` largest scores of every ``m`` consecutive inputs."""
    check_pattern(n, m)
    rows, cols = scores.shape
    groups = -(-cols // m)
    # Pad with -inf to whole groups; padding is never among the kept unless a group is short.
    padded = torch.full((rows, groups * m), -torch.inf, dtype=torch.float64, device=scores.device)
    padded[:, :cols] = scores.double()
    grouped = padded.reshape(rows, groups, m)
    keep = torch.zeros_like(grouped, dtype=torch.bool)
    keep.scatter_(2, grouped.topk(n, dim=2).indices, True)
    keep &= grouped > -torch.inf
    return keep.reshape(rows, groups * m)[:, :cols]
