"""Parsing of command-line values: text in, checked library values out.

The command line takes percents and comma-separated lists; the library takes fractions and tuples.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from prunelab.inference.timing import check_batch_size
from prunelab.pruning import METHODS
from prunelab.study.multiseed import check_seeds

__all__ = ["MAX_SEED", "model_config", "parse_batch_sizes", "parse_hidden", "parse_methods",
           "parse_model_options", "parse_percents", "parse_seeds"]


MAX_SEED = 2**64 - 1
"""The largest seed ``torch.Generator.manual_seed`` takes."""


def _is_int(text: str, signed: bool = False) -> bool:
    """Whether ``text`` is an integer in ASCII digits (``"²".isdigit()`` is true, yet int()
    rejects it), with an optional leading minus when ``signed``."""
    digits = text[1:] if signed and text.startswith("-") else text
    return digits.isascii() and digits.isdigit()


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"1000,1000,500,200"`` -> (1000, 1000, 500, 200); positive integers only."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(_is_int(p) and int(p) > 0 for p in parts):
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
    """``"weight,unit"`` or ``"all"`` (every registered method: each runs on every model) ->
    method names (checked by ``SweepConfig``)."""
    if text.strip() == "all":
        return tuple(METHODS)
    return tuple(p.strip() for p in text.split(",") if p.strip())


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); distinct non-negative integers, at least one."""
    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise ValueError("--seeds is empty; give comma-separated seeds such as 0,1,2,3,4")
    for part in parts:
        if not _is_int(part, signed=True):
            raise ValueError(f"--seeds takes comma-separated non-negative integers, got {part!r}")
        if int(part) > MAX_SEED:
            raise ValueError(f"--seeds takes integers up to 2**64 - 1, got {part}")
    return check_seeds(tuple(int(p) for p in parts))


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,64,1024"`` -> (1, 64, 1024); positive integers only."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(_is_int(p, signed=True) for p in parts):
        raise ValueError(f"--batch-sizes must be comma-separated positive integers, got {text!r}")
    sizes = tuple(int(p) for p in parts)
    return tuple(check_batch_size(b) for b in sizes)


def parse_model_options(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``("widths=16,32,64", "pool=mean")`` -> {"widths": "16,32,64", "pool": "mean"}."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not value.strip():
            raise ValueError(f"--model-opt takes KEY=VALUE, got {pair!r}")
        if key in options:
            raise ValueError(f"--model-opt {key} given twice")
        options[key] = value.strip()
    return options


def _typed(key: str, text: str, hint: Any) -> Any:
    """``text`` converted to the field type ``hint`` (int, float, bool, str, tuple[int, ...])."""
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return tuple(_typed(key, part.strip(), item) for part in text.split(",") if part.strip())
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # e.g. int | None
        if text.lower() == "none":
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"model option {key} takes true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    try:
        return hint(text)
    except ValueError:
        kind = {int: "an integer", float: "a number"}.get(hint, hint.__name__)
        raise ValueError(f"model option {key} takes {kind}, got {text!r}") from None


def model_config(config_type: type, options: dict[str, str]) -> Any:
    """``config_type`` built from text ``options`` (its defaults for the rest), each converted
    to its field's type; an unknown key is an error that lists the known ones."""
    hints = typing.get_type_hints(config_type)
    known = [f.name for f in dataclasses.fields(config_type)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown} for {config_type.__name__}; "
                         f"known: {', '.join(known)}")
    return config_type(**{k: _typed(k, v, hints[k]) for k, v in options.items()})
