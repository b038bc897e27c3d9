"""The study file (TOML): a grid of datasets x models x seeds, the sweep, training overrides.

```toml
datasets = ["mnist", "fashion-mnist"]   # default: ["fashion-mnist"]
seeds = [0, 1, 2]                       # default: [0]
methods = ["weight", "unit", "wanda"]   # or "all"; default: ["weight", "unit"]
sparsities = [0, 50, 90, 95]            # percent; default: the sweep's
calibration_size = 1024                 # optional, as --calibration-size
bn_recalibrate = true                   # optional, as --bn-recalibrate
shard_size = 4                          # optional: sparsities per sweep job

[train]                                 # optional: overrides every model's recipe
epochs = 3

[[models]]
model = "mlp"                           # as --model
name = "mlp-small"                      # optional: names its folders (default: the model)
options = { hidden = [256, 128] }       # as --model-opt hidden=256,128
train = { epochs = 5 }                  # optional: overrides for this model only
```

Every error names the file, the line and the key: ``study.toml:12: unknown key 'hiden' in
[[models]] 2 ...``.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from prunelab.cli.parse import model_config, parse_methods
from prunelab.data import DATASETS
from prunelab.models import MODELS
from prunelab.pruning import lookup
from prunelab.study.grid import Study, StudyModel
from prunelab.study.multiseed import check_seeds
from prunelab.study.sweep import DEFAULT_SPARSITIES, SweepConfig
from prunelab.train import TrainConfig

__all__ = ["load_study", "parse_study"]

_TOP = ("datasets", "seeds", "methods", "sparsities", "calibration_size", "bn_recalibrate",
        "shard_size", "train", "models")
_MODEL = ("model", "name", "options", "train")
_TRAIN = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "seed")
_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?")

KeyPath = tuple[str | int, ...]


class _Source:
    """The study file's text, to say on which line a key is."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.lines = path, text.splitlines()

    def _block(self, table: str, index: int | None) -> tuple[int, int] | None:
        """Lines [start, end) of ``[table]`` or of the ``index``-th ``[[table]]``."""
        seen, start = -1, None
        for i, line in enumerate(self.lines):
            m = _HEADER.match(line)
            if not m:
                continue
            name = m.group(1)
            if start is not None and not name.startswith(f"{table}."):
                return start, i
            if name == table and (index is None or (seen := seen + 1) == index):
                start = i
        return (start, len(self.lines)) if start is not None else None

    def line(self, keys: KeyPath) -> int | None:
        """1-based line of the last key of ``keys`` (or of its nearest enclosing key)."""
        top, rest = keys[0], keys[1:]
        index = rest[0] if rest and isinstance(rest[0], int) else None
        names = [k for k in rest if isinstance(k, str)]
        block = self._block(str(top), index)
        start, end = block if block else (0, len(self.lines))
        first_header = next((i for i, line in enumerate(self.lines) if _HEADER.match(line)),
                            len(self.lines))
        if block is None:
            end = first_header  # a top-level key (or an inline table of it)
            names = [str(top), *names]
        for name in reversed(names):
            key = re.compile(rf'(^|[{{,]\s*)("{re.escape(name)}"|{re.escape(name)})\s*=')
            for i in range(start, end):
                if key.search(self.lines[i].split("#", 1)[0]):
                    return i + 1
        return start + 1 if block else None

    def error(self, keys: KeyPath, message: str) -> ValueError:
        line = self.line(keys)
        return ValueError(f"{self.path}{f':{line}' if line else ''}: {message}")


def _where(keys: KeyPath) -> str:
    """``("models", 1, "options")`` -> ``[[models]] 2, options``."""
    if len(keys) > 1 and isinstance(keys[1], int):
        return f"[[{keys[0]}]] {keys[1] + 1}" + "".join(f", {k}" for k in keys[2:])
    return f"[{'.'.join(map(str, keys))}]" if keys else "the top level"


def _known(src: _Source, table: dict[str, Any], keys: KeyPath, known: tuple[str, ...]) -> None:
    for key in table:
        if key not in known:
            raise src.error((*keys, key), f"unknown key {key!r} in {_where(keys)}; known: "
                                          f"{', '.join(known)}")


def _typed(src: _Source, keys: KeyPath, value: Any, kind: type | tuple[type, ...],
           what: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise src.error(keys, f"{keys[-1]} takes {what}, got {value!r}")
    return value


def _list(src: _Source, raw: dict[str, Any], key: str, kind: type, what: str,
          default: tuple[Any, ...]) -> tuple[Any, ...]:
    value = raw.get(key, list(default))
    if not isinstance(value, list):
        value = [value]
    return tuple(_typed(src, (key,), v, kind, f"a list of {what}") for v in value)


def _checked(src: _Source, keys: KeyPath, build: Callable[[], Any]) -> Any:
    """``build()``, its ValueError/TypeError as an error at ``keys``'s line."""
    try:
        return build()
    except (ValueError, TypeError) as e:
        raise src.error(keys, str(e)) from None


def _option_text(value: Any) -> str:
    """A TOML value as ``--model-opt`` would take it: lists comma-separated."""
    if isinstance(value, list):
        return ",".join(map(_option_text, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _train(src: _Source, recipe: TrainConfig, table: Any, keys: KeyPath) -> TrainConfig:
    table = _typed(src, keys, table, dict, "a table of training settings")
    _known(src, table, keys, _TRAIN)
    for key, value in table.items():
        recipe = _checked(src, (*keys, key),
                          lambda r=recipe, k=key, v=value: replace(r, **{k: v}))
    return recipe


def _model(src: _Source, raw: Any, i: int, overrides: dict[str, Any]) -> StudyModel:
    keys: KeyPath = ("models", i)
    raw = _typed(src, keys, raw, dict, "tables ([[models]])")
    _known(src, raw, keys, _MODEL)
    family = _typed(src, (*keys, "model"), raw.get("model"), str, f"one of {sorted(MODELS)}")
    if family not in MODELS:
        raise src.error((*keys, "model"), f"unknown model {family!r}; choose from "
                                          f"{sorted(MODELS)}")
    options = _typed(src, (*keys, "options"), raw.get("options", {}), dict, "a table")
    texts = {key.replace("-", "_"): _option_text(value) for key, value in options.items()}
    config_type = MODELS[family].config_type
    for key in options:  # one at a time first: an error names its key
        name = key.replace("-", "_")
        _checked(src, (*keys, "options", key),
                 lambda n=name: model_config(config_type, {n: texts[n]}))
    config = _checked(src, (*keys, "options"), lambda: model_config(config_type, texts))
    recipe = _train(src, MODELS[family].recipe, overrides, ("train",))
    recipe = _train(src, recipe, raw.get("train", {}), (*keys, "train"))
    name = raw.get("name", family)
    return _checked(src, (*keys, "name"), lambda: StudyModel(name, family, config, recipe))


def parse_study(text: str, path: Path = Path("study.toml")) -> Study:
    """The study described by ``text`` (the contents of ``path``)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    src = _Source(path, text)
    _known(src, raw, (), _TOP)
    overrides = _typed(src, ("train",), raw.get("train", {}), dict, "a table")
    models_raw = _typed(src, ("models",), raw.get("models", [{"model": "mlp"}]), list,
                        "tables ([[models]])")
    models = tuple(_model(src, m, i, overrides) for i, m in enumerate(models_raw))
    for i, model in enumerate(models):
        if model.name in [m.name for m in models[:i]]:
            raise src.error(("models", i, "name"), f"two models are named {model.name!r}; "
                                                   f"give one a name = \"...\" of its own")
    datasets = _list(src, raw, "datasets", str, "dataset names", ("fashion-mnist",))
    seeds = _list(src, raw, "seeds", int, "integers", (0,))
    percents = _list(src, raw, "sparsities", (int, float), "percents",
                     tuple(100 * k for k in DEFAULT_SPARSITIES))
    for k in percents:
        if not 0 <= k <= 100:
            raise src.error(("sparsities",), f"sparsities are percents in [0, 100], got {k}")
    methods = _methods(src, raw)
    calibration, bn, shard = (raw.get(k) for k in ("calibration_size", "bn_recalibrate",
                                                   "shard_size"))
    for key, value, kind, what in (("calibration_size", calibration, int, "an integer"),
                                   ("bn_recalibrate", bn, bool, "true or false"),
                                   ("shard_size", shard, int, "an integer")):
        if value is not None:
            _typed(src, (key,), value, kind, what)
    for method in methods:
        _checked(src, ("methods",), lambda m=method: lookup(m))
    if calibration is not None:
        _checked(src, ("calibration_size",), lambda: SweepConfig(calibration_size=calibration))
    for key, values in (("datasets", datasets), ("seeds", seeds), ("methods", methods),
                        ("sparsities", percents)):
        if len(set(values)) != len(values):
            raise src.error((key,), f"repeated value in {key} {list(values)}")
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise src.error(("datasets",), f"unknown dataset {unknown[0]!r}; choose from "
                                       f"{sorted(DATASETS)}")
    _checked(src, ("seeds",), lambda: check_seeds(seeds))
    sweep = _checked(src, ("sparsities",), lambda: SweepConfig(
        methods, tuple(round(k / 100, 8) for k in percents), calibration, bn))
    return _checked(src, ("shard_size",), lambda: Study(datasets, models, seeds, sweep, shard))


def _methods(src: _Source, raw: dict[str, Any]) -> tuple[str, ...]:
    value = raw.get("methods", ["weight", "unit"])
    if value == "all":  # every method runs on every model
        return parse_methods("all")
    return _list(src, raw, "methods", str, "method names (or \"all\")", ())


def load_study(path: Path) -> Study:
    """The study in the TOML file ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the study file {path} "
                         f"({getattr(e, 'strerror', None) or e})") from None
    return parse_study(text, path)
