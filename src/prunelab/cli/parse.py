"""Parsing of command-line values: text in, checked library values out.

The command line takes percents and comma-separated lists; the library takes fractions and tuples.
"""

from __future__ import annotations

from prunelab.inference.timing import check_batch_size
from prunelab.pruning import METHODS
from prunelab.study.multiseed import check_seeds

__all__ = ["parse_batch_sizes", "parse_hidden", "parse_methods", "parse_percents", "parse_seeds"]


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"1000,1000,500,200"`` -> (1000, 1000, 500, 200); positive integers only."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--hidden must be comma-separated positive integers, got {text!r}")
    return tuple(int(p) for p in parts)


def parse_percents(text: str) -> tuple[float, ...]:
    """``"0,25,99"`` (percent) -> (0.0, 0.25, 0.99) (fractions); each in [0, 100]."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"--sparsities takes percents in [0, 100], got {part!r}") from None
        if not 0 <= value <= 100:
            raise ValueError(f"--sparsities takes percents in [0, 100], got {part}")
        values.append(value / 100)
    return tuple(values)


def parse_methods(text: str) -> tuple[str, ...]:
    """``"weight,unit"`` or ``"all"`` -> method names (checked by ``SweepConfig``)."""
    if text.strip() == "all":
        return tuple(METHODS)
    return tuple(p.strip() for p in text.split(",") if p.strip())


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); distinct non-negative integers, at least one."""
    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise ValueError("--seeds is empty; give comma-separated seeds such as 0,1,2,3,4")
    for part in parts:
        if not part.lstrip("-").isdigit():
            raise ValueError(f"--seeds takes comma-separated non-negative integers, got {part!r}")
    return check_seeds(tuple(int(p) for p in parts))


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,64,1024"`` -> (1, 64, 1024); positive integers only."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.lstrip("-").isdigit() for p in parts):
        raise ValueError(f"--batch-sizes must be comma-separated positive integers, got {text!r}")
    sizes = tuple(int(p) for p in parts)
    return tuple(check_batch_size(b) for b in sizes)
