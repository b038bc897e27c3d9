"""Latency measurement, and the automatic choice of a backend per layer.

Timings are taken round-robin: each repeat runs every candidate once, so a burst of load from
other processes hits all of them alike and their ratios stay fair. A timing is the median of
the repeats after a warm-up.

>>> import torch
>>> from prunelab.models.mlp import MLPConfig, build_mlp
>>> net = build_mlp(MLPConfig(hidden=(32,)), torch.Generator().manual_seed(0))
>>> choice = auto_backend(net, batch_size=8, repeats=3)
>>> len(choice.plan) == 2 or choice.plan == ("masked",)
True
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.inference.compact import CompactMLP, compact, with_plan
from prunelab.inference.layers import LAYER_BACKENDS, DenseLayer

__all__ = ["AutoChoice", "auto_backend", "check_batch_size", "load_warning", "time_calls"]

log = logging.getLogger(__name__)


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` if it is a positive integer, else a ``ValueError`` naming it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    return batch_size


@torch.no_grad()
def time_calls(calls: Sequence[Callable[[], object]], warmup: int = 2, repeats: int = 10,
               budget_s: float = float("inf"), best: bool = False,
               settle: bool = True, burst: int = 1) -> list[float]:
    """Median (or with ``best`` the minimum) seconds of each call, timed round-robin after
    ``warmup`` rounds. Stops early (after at least 3 rounds) once ``budget_s`` s have passed.

    With ``settle``, each timed call comes right after an untimed call of the same function,
    so it finds the caches as repeated inference with that model leaves them rather than as
    the previous candidate left them (measured: a compacted net timed right after the dense
    one took 1.40 ms instead of 1.18 ms at batch 1024, refilling its cache).

    ``burst`` timed calls follow in a row in each round: the threads of the previous
    candidate's runtime (torch's OpenMP pool spins for a while after each call) and its
    cache footprint then weigh on the first of them only, as in a service that runs one
    model (measured: the 99 %-weight-pruned MLP at batch 64 took 0.092 ms right after a
    torch call, 0.075 ms after one of its own).
    """
    if repeats < 1 or warmup < 0 or burst < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, burst >= 1; got {repeats}, "
                         f"{warmup}, {burst}")
    for _ in range(warmup):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    start = time.perf_counter()
    for r in range(repeats):
        for i, call in enumerate(calls):
            if settle:
                call()
            for _ in range(burst):
                t0 = time.perf_counter()
                call()
                times[i].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return [min(t) if best else sorted(t)[len(t) // 2] for t in times]


def load_warning() -> str | None:
    """A warning when other processes load the CPU (1-minute load average vs cores)."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cores:
        return (f"machine busy: load average {load:.2f} on {cores} cores; "
                "latencies are noisy, compare ratios taken in the same run")
    return None


@dataclass(frozen=True)
class AutoChoice:
    """The network ``auto_backend`` chose, with its plan."""

    module: nn.Module
    """A ``CompactMLP`` running ``plan``, or the given model itself when nothing beats it."""
    plan: tuple[str, ...]
    """A backend per layer of the compacted network, or ``("masked",)`` for the model as is."""


def _candidates(layer: DenseLayer) -> list[DenseLayer]:
    w, b = layer.dense_weight(), None if layer.bias is None else layer.bias.flatten()
    return [cls(w, b, layer.relu) for cls in LAYER_BACKENDS.values()]


def _best_layer(layer: DenseLayer, batch: int, repeats: int, gen: torch.Generator) -> DenseLayer:
    h = torch.rand(layer.shape[1], batch, generator=gen)  # (in, batch), ReLU-like >= 0
    options = _candidates(layer)
    # The minimum, not the median: a choice should follow the cost of the code, and on a busy
    # machine the median also measures other processes.
    times = time_calls([lambda m=m: m(h) for m in options], warmup=1, repeats=repeats,
                       budget_s=0.5, best=True)
    return options[min(range(len(options)), key=times.__getitem__)]


def auto_backend(model: nn.Module, batch_size: int, repeats: int = 7,
                 seed: int = 0, inputs: torch.Tensor | None = None) -> AutoChoice:
    """The fastest way found to run ``model`` (a pruned MLP) at ``batch_size`` on this machine.

    Compacts ``model`` and times every layer backend per layer on random inputs of the size it
    will see, keeping the fastest of each. Layers interact (caches, threads), so the whole
    network is then timed as planned, all dense, all ``csr-numba`` and as ``model`` unchanged,
    on ``inputs`` ((batch_size, features); default uniform noise), and the fastest is
    returned: never slower than the masked network as measured.
    """
    batch_size = check_batch_size(batch_size)
    gen = torch.Generator().manual_seed(seed)
    base = compact(model)
    batch = min(batch_size, base.chunk or batch_size)  # what each layer sees per call
    layers = [_best_layer(layer, batch, repeats, gen) for layer in base.layers]
    options: dict[tuple[str, ...], nn.Module] = {("masked",): model, base.plan: base}
    planned = CompactMLP(base.input_size, base.input_index, layers, base.chunk)
    options.setdefault(planned.plan, planned)
    all_numba = ("csr-numba",) * len(layers)
    if all_numba not in options:  # built (and its chain packed) only when not planned already
        options[all_numba] = with_plan(base, "csr-numba")
    x = torch.rand(batch_size, base.input_size, generator=gen) if inputs is None else inputs
    times = time_calls([lambda m=m: m(x) for m in options.values()], warmup=1,
                       repeats=max(3, repeats // 2), budget_s=2.0, best=True, burst=3)
    log.info("auto: %s", {"/".join(p): f"{1e3 * t:.3f} ms" for p, t in zip(options, times,
                                                                             strict=True)})
    plan = list(options)[min(range(len(times)), key=times.__getitem__)]
    return AutoChoice(options[plan], plan)
