"""Whole-network latency of every backend, for each pruning method and sparsity of a run.

``run_bench`` prunes the run's model with each method at each sparsity and times the forward
pass of each backend in ``NETWORK_BACKENDS`` at each batch size, round-robin with the dense
model, so ``speedup_vs_dense`` is a ratio taken in the same run. ``bench.csv`` and
``bench.json`` are rewritten atomically after every (method, sparsity).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.data import Dataset, load_dataset
from prunelab.inference.compact import CompactMLP, compact
from prunelab.inference.export import (
    export_onnx,
    onnxruntime_available,
    onnxruntime_session,
    run_onnx,
)
from prunelab.inference.sparse import auto_sparsify
from prunelab.inference.structural import compact_graph
from prunelab.inference.timing import auto_backend, check_batch_size, load_warning, time_calls
from prunelab.models.base import IMAGE_SHAPE
from prunelab.models.mlp import MLP, linear_layers
from prunelab.pruning import METHODS, check_sparsity
from prunelab.pruning.sparsity import measure_sparsity
from prunelab.pruning.targets import prunable_modules
from prunelab.study.runfolder import BENCH_CSV, environment_info, load_run, write_bench
from prunelab.study.sweep import (
    SweepConfig,
    bn_inputs_for,
    bn_recalibrates,
    prune_contexts,
    pruned_model,
)

__all__ = [
    "DENSE_RUNTIMES",
    "NETWORK_BACKENDS",
    "ONNX_BACKENDS",
    "OnnxModule",
    "Subject",
    "BenchConfig",
    "bench_pruned",
    "bench_run_folder",
    "pruned_from_run",
    "run_bench",
    "weight_bytes",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subject:
    """What a backend is built from."""

    dense: nn.Module
    pruned: nn.Module
    example: torch.Tensor
    """A few inputs of the model's shape (tracing, ONNX export, per-layer timing)."""
    inputs: torch.Tensor | None = None
    """Real inputs (the test set) to time on; random ones without. The sparse kernels skip
    zero inputs (background pixels, ReLU outputs), so uniform noise, with none, would time
    them slower than they run on images (weight-pruned 95 %, batch 1: 0.11 against 0.07 ms)."""

    @property
    def mlp(self) -> bool:
        return isinstance(self.pruned, MLP)

    @cached_property
    def onnx_compacted(self) -> nn.Module:
        """ONNX Runtime on the compacted model (exported once, shared by the backends)."""
        return OnnxModule(self.compacted, self.example)

    @cached_property
    def onnx_pruned(self) -> nn.Module:
        """ONNX Runtime on the pruned model as it is: the dense model's graph, so never
        slower than ONNX Runtime on the dense model beyond timing noise."""
        return self.onnx_dense if self.unpruned else OnnxModule(self.pruned, self.example)

    @cached_property
    def onnx_dense(self) -> nn.Module:
        """ONNX Runtime on the unpruned model (the ``onnx-dense`` runtime)."""
        return OnnxModule(self.dense, self.example)

    @cached_property
    def unpruned(self) -> bool:
        """Whether pruning left every parameter and buffer as the dense model has it (k = 0):
        then the dense runtimes run the pruned model too."""
        mine, theirs = self.pruned.state_dict(), self.dense.state_dict()
        return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k])
                                                    for k in mine)

    @cached_property
    def compacted(self) -> nn.Module:
        """The pruned model compacted (built once, shared by the backends that need it)."""
        return compact(self.pruned) if self.mlp else compact_graph(self.pruned,
                                                                   self.example)[0]


Builder = Callable[[Subject, int], tuple[nn.Module, str]]


class OnnxModule(nn.Module):
    """A network run by ONNX Runtime (``session.intra_op.allow_spinning=0``, torch's thread
    count), called like the torch module it was exported from."""

    def __init__(self, net: nn.Module, example: torch.Tensor) -> None:
        super().__init__()
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(net, Path(tmp) / "net.onnx", example_inputs=example)
            self.session = onnxruntime_session(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_onnx(self.session, x)


def _sparse(s: Subject, batch: int, backend: str) -> tuple[nn.Module, str]:
    if s.mlp:
        return compact(s.pruned, backend), backend
    net, plan = auto_sparsify(s.compacted, s.example, batch, backend)
    return net, _plan_text(plan)


def _plan_text(plan: dict[str, str]) -> str:
    return ", ".join(f"{n}: {b}" for n, b in plan.items()) or "dense layers"


def _dense_kernels(s: Subject, batch: int) -> tuple[nn.Module, str]:
    net, plan = auto_sparsify(s.dense, s.example, batch)
    return net, "unpruned model, fused convs; " + _plan_text(plan)


NETWORK_BACKENDS: dict[str, Builder] = {
    "dense": lambda s, batch: (s.dense, "unpruned model"),
    "dense-kernels": _dense_kernels,
    "masked": lambda s, batch: (s.pruned, "zeroed weights, dense arithmetic"),
    "compacted": lambda s, batch: (s.compacted, "dense"),
    "sparse": lambda s, batch: _sparse(s, batch, "csr-numba"),
    "sparse-torch": lambda s, batch: _sparse(s, batch, "csr-torch"),
    "onnx-dense": lambda s, batch: (s.onnx_dense, "ONNX Runtime, unpruned"),
    "onnx-compacted": lambda s, batch: (s.onnx_compacted, "ONNX Runtime, compacted"),
    "auto": lambda s, batch: _auto(s, batch),
}
"""Whole-network backends: name -> (subject, batch) -> (module, plan). ``sparse`` on a model
other than an MLP runs the compacted model with its convs fused with their BatchNorm, ReLU and
residual add, and its layers on prunelab's sparse or direct kernels where that measurably wins
(``inference.sparse.auto_sparsify``); ``dense-kernels`` does the same to the unpruned model
(a conv net only: an MLP has nothing to fuse), so that it counts among the dense runtimes."""
BATCH_DEPENDENT = frozenset({"auto", "sparse", "sparse-torch", "dense-kernels"})
"""Backends whose module depends on the batch size (the others are built once)."""
CONV_ONLY = frozenset({"dense-kernels"})
"""Backends left out for an MLP, where they would run the dense model as ``dense`` does."""
ONNX_BACKENDS = frozenset({"onnx-dense", "onnx-compacted"})
"""Backends that need ONNX Runtime (the ``onnx`` extra); left out, with a warning, without."""
BURST_MAX_BATCH = 1024
"""Larger batches take long enough per call to be timed one call per backend and round."""
DENSE_RUNTIMES = ("dense", "dense-kernels", "onnx-dense")
"""The unpruned model in each runtime: the fastest of them is the baseline of
``speedup_vs_best_dense``."""


def _auto(s: Subject, batch: int) -> tuple[nn.Module, str]:
    """The fastest at ``batch``, timed on the subject's inputs, of: prunelab's own choice
    (per-layer backends of the compacted MLP, or the compacted model with its convs fused and
    its layers on sparse or direct kernels),
    the pruned model as it is (torch), and ONNX Runtime on the compacted and on the pruned
    model. The last two run the dense model's graph, so auto is never slower than the fastest
    dense runtime beyond timing noise, even where compaction or sparsity buys nothing. Where
    pruning changed nothing (k = 0) the pruned model *is* the dense one, and the options are
    the dense runtimes' own modules: ``bench_pruned`` then gives auto that runtime's time, and
    settles on the fastest dense runtime as its own, longer timing measured them, where that
    beat auto's pick (``_auto_settles_on_fastest_dense``)."""
    x = _inputs(s, batch, torch.Generator().manual_seed(batch))
    if s.mlp:
        choice = auto_backend(s.pruned, batch, inputs=x)
        own, plan = choice.module, "/".join(choice.plan)
    else:
        own, plan = _sparse(s, batch, "csr-numba")
    options = [(own, plan), (s.dense, "unpruned model") if s.unpruned else (s.pruned, "masked")]
    if onnxruntime_available():
        options += [(s.onnx_compacted, "ONNX Runtime, compacted"),
                    (s.onnx_pruned, "ONNX Runtime, masked")]
    # The minimum of bursts, as auto_backend chooses: a choice should follow the cost of the
    # code, not a burst of load (a median of single calls picked csr-numba at 2.18 ms over
    # ONNX Runtime's 1.67 ms once, weight-pruned 50 %, batch 64).
    times = time_calls([lambda m=m: m(x) for m, _ in options], 1, 7, 5.0, best=True, burst=3)
    return options[min(range(len(options)), key=times.__getitem__)]


def _inputs(s: Subject, batch: int, gen: torch.Generator) -> torch.Tensor:
    """``batch`` inputs to time on: the subject's real inputs, repeated if there are fewer,
    else uniform noise of the example's shape."""
    if s.inputs is not None and len(s.inputs):
        return s.inputs[torch.arange(batch) % len(s.inputs)].contiguous()
    return torch.rand(batch, *s.example.shape[1:], generator=gen)


@dataclass(frozen=True)
class BenchConfig:
    """What to time, and how."""

    batch_sizes: tuple[int, ...] = (1, 64, 1024, 10000)
    """Samples per forward pass."""
    backends: tuple[str, ...] = tuple(NETWORK_BACKENDS)
    """Keys of ``NETWORK_BACKENDS``; ``dense`` is always timed (it is the reference)."""
    warmup: int = 2
    """Untimed rounds before timing."""
    repeats: int = 15
    """Timed rounds; the median is reported."""
    budget_s: float = 10.0
    """Stop repeating (after 3 rounds) once one batch size has taken this long."""
    burst: int = 5
    """Timed calls in a row per backend and round, at batches up to ``BURST_MAX_BATCH``
    (``inference.timing.time_calls``): each backend is timed as it runs when it runs alone."""
    seed: int = 0
    """Seeds the random inputs and randomised pruning methods."""

    def __post_init__(self) -> None:
        sizes = tuple(check_batch_size(b) for b in self.batch_sizes)
        if not sizes:
            raise ValueError("no batch sizes given")
        unknown = [b for b in self.backends if b not in NETWORK_BACKENDS]
        if unknown or not self.backends:
            raise ValueError(f"unknown backend(s) {unknown}; choose from {list(NETWORK_BACKENDS)}")
        backends = ("dense", *(b for b in self.backends if b != "dense"))
        object.__setattr__(self, "batch_sizes", sizes)
        object.__setattr__(self, "backends", backends)
        if self.repeats < 1 or self.warmup < 0 or self.budget_s <= 0 or self.burst < 1:
            raise ValueError(f"need repeats >= 1, warmup >= 0, budget_s > 0, burst >= 1; got "
                             f"{self.repeats}, {self.warmup}, {self.budget_s}, {self.burst}")


@torch.no_grad()
def _max_diff(module: nn.Module, reference: torch.Tensor, x: torch.Tensor) -> float:
    return float((module(x) - reference).abs().max())


def _example(model: nn.Module, check_x: torch.Tensor | None) -> torch.Tensor:
    if check_x is not None:
        return check_x[:8]
    features = linear_layers(model)[0][1].in_features if isinstance(model, MLP) else \
        math.prod(IMAGE_SHAPE)
    return torch.rand(8, features, generator=torch.Generator().manual_seed(0))


def weight_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of the prunable layers' weights stored dense, in float32; bytes of the smallest of
    dense or CSR per layer: 4-byte values and column indices per nonzero, a 4-byte pointer per
    row). Their ratio bounds the speed-up where reading the weights is the cost (batch 1)."""
    if isinstance(model, CompactMLP):
        weights = [layer.dense_weight() for layer in model.layers]
    else:
        weights = [m.weight.detach() for _, m in prunable_modules(model)]
    dense = small = 0
    for w in weights:
        rows, nnz = w.shape[0], int((w != 0).sum())
        dense += 4 * w.numel()
        small += min(4 * w.numel(), 8 * nnz + 4 * (rows + 1))
    return dense, small


def bench_pruned(dense: nn.Module, pruned: nn.Module, config: BenchConfig,
                 check_x: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Rows (without method/sparsity) timing each backend of ``pruned`` at each batch size.

    ``check_x``: inputs on which each backend's outputs are compared with ``pruned``'s, and
    on which it is timed (uniform noise without).
    """
    subject = Subject(dense.eval(), pruned.eval(), _example(dense, check_x), check_x)
    with torch.no_grad():
        live = measure_sparsity(pruned, example=subject.example).macs_per_sample
        flop_ratio = measure_sparsity(dense, example=subject.example).macs_per_sample / live \
            if live else float("inf")
        dense_bytes, _ = weight_bytes(dense)  # against the compacted net: what must be read
        bytes_ratio = dense_bytes / max(weight_bytes(subject.compacted)[1], 1)
        reference = pruned(check_x) if check_x is not None else None
        dense_reference = dense(check_x) if check_x is not None else None
    backends = config.backends
    if not onnxruntime_available() and ONNX_BACKENDS & set(backends):
        log.warning("ONNX Runtime is not installed (pip install 'prunelab[onnx]'): its rows "
                    "are left out")
        backends = tuple(b for b in backends if b not in ONNX_BACKENDS)
    if subject.mlp:
        backends = tuple(b for b in backends if b not in CONV_ONLY)
    gen = torch.Generator().manual_seed(config.seed)
    built: dict[str, tuple[nn.Module, str, float | str]] = {}
    rows = []
    for batch in config.batch_sizes:
        with torch.no_grad():
            for name in backends:
                if name in built and name not in BATCH_DEPENDENT:
                    continue  # built and checked once for all batch sizes
                module, plan = NETWORK_BACKENDS[name](subject, batch)
                diff = ("" if reference is None or name == "dense" else
                        _max_diff(module, dense_reference if name in DENSE_RUNTIMES
                                  else reference, check_x))
                built[name] = (module, plan, diff)
            x = _inputs(subject, batch, gen)
            times = time_calls([lambda m=built[b][0], x=x: m(x) for b in backends],
                               config.warmup, config.repeats, config.budget_s,
                               burst=config.burst if batch <= BURST_MAX_BATCH else 1)
        times = _same_runtime_same_time(backends, built, times)
        if subject.unpruned and "auto" in backends:
            times = _auto_settles_on_fastest_dense(backends, built, times)
        best_dense = min(t for b, t in zip(backends, times, strict=True) if b in DENSE_RUNTIMES)
        for name, t in zip(backends, times, strict=True):
            _, plan, diff = built[name]
            runtime = _runs_as(name, backends, built)
            if runtime:
                plan = f"{plan} (the {runtime} runtime itself)"
            rows.append({
                "batch_size": batch, "backend": name, "latency_ms": 1e3 * t,
                "speedup_vs_dense": times[0] / t, "speedup_vs_best_dense": best_dense / t,
                "flop_ratio": flop_ratio, "bytes_ratio": bytes_ratio, "plan": plan,
                "max_abs_diff": diff, "repeats": config.repeats,
                "threads": torch.get_num_threads(),
            })
    return rows


def _runs_as(name: str, backends: tuple[str, ...],
             built: dict[str, tuple[nn.Module, str, float | str]]) -> str | None:
    """The dense runtime whose very module ``name`` (not itself a dense runtime) runs, if
    any: auto at k = 0 picks among the dense runtimes' own modules."""
    if name in DENSE_RUNTIMES:
        return None
    return next((d for d in backends if d in DENSE_RUNTIMES
                 and built[d][0] is built[name][0]), None)


def _auto_settles_on_fastest_dense(backends: tuple[str, ...],
                                   built: dict[str, tuple[nn.Module, str, float | str]],
                                   times: list[float]) -> list[float]:
    """``times`` with auto, where pruning changed nothing (k = 0), running the fastest of its
    own pick and the dense runtimes (which then run the pruned model itself) as this timing
    measured them; ``built["auto"]`` updated to match. Auto's own timing is shorter and can
    misjudge a near tie: at batch 1024 it once picked ONNX Runtime, which this timing then
    measured 16 % slower than torch (22.0 against 18.5 ms)."""
    index = {b: i for i, b in enumerate(backends)}
    fastest = min((b for b in backends if b in DENSE_RUNTIMES), key=lambda b: times[index[b]])
    if times[index[fastest]] < times[index["auto"]]:
        _, _, diff = built["auto"]
        built["auto"] = (built[fastest][0], built[fastest][1], diff)
        times = list(times)
        times[index["auto"]] = times[index[fastest]]
    return times


def _same_runtime_same_time(backends: tuple[str, ...],
                            built: dict[str, tuple[nn.Module, str, float | str]],
                            times: list[float]) -> list[float]:
    """``times`` with a backend that runs a dense runtime's very module given that runtime's
    time: two timings of one module differ only by noise (measured 0.9986x at batch 1024)."""
    index = {b: i for i, b in enumerate(backends)}
    out = list(times)
    for name in backends:
        runtime = _runs_as(name, backends, built)
        if runtime:
            out[index[name]] = times[index[runtime]]
    return out


def run_bench(run_dir: Path, model: nn.Module, methods: tuple[str, ...],
              sparsities: tuple[float, ...], config: BenchConfig,
              data: Dataset | None = None, check_x: torch.Tensor | None = None,
              on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Time every backend for each method and sparsity; write ``bench.csv`` after each."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown pruning method(s) {unknown}; choose from {sorted(METHODS)}")
    sparsities = tuple(check_sparsity(s) for s in sparsities)
    warning = load_warning()
    if warning:
        log.warning(warning)
    meta = {"config": asdict(config), "environment": environment_info(),
            "load_warning": warning}
    contexts = prune_contexts(data, methods, config.seed)
    if data is None:  # still an input to trace coupled channels with
        contexts = {m: replace(c, example=_example(model, check_x)[:1])
                    for m, c in contexts.items()}
    rows: list[dict[str, Any]] = []
    for method in methods:
        for sparsity in sparsities:
            bn_inputs = (bn_inputs_for(model, data, SweepConfig(), config.seed)
                         if sparsity > 0 and bn_recalibrates(model, SweepConfig()) else None)
            pruned = pruned_model(model, method, sparsity, None, contexts[method], bn_inputs)
            for row in bench_pruned(model, pruned, config, check_x):
                row = {"method": method, "sparsity_pct": round(100 * sparsity, 6), **row}
                rows.append(row)
                if on_row:
                    on_row(row)
            write_bench(Path(run_dir), rows, meta)
    return rows


def pruned_from_run(run_dir: Path, method: str, sparsity: float, data: Dataset | None = None,
                    calibration_size: int | None = None,
                    seed: int | None = None) -> tuple[nn.Module, nn.Module]:
    """(trained model, its copy pruned by ``method`` at ``sparsity``) from ``run_dir``.

    By default with the run's seed and the method's calibration size, as ``prunelab sweep``
    prunes it (BatchNorm statistics re-estimated for a model that has BatchNorm): the model is
    the one whose accuracy ``results.csv`` reports.
    """
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose from {sorted(METHODS)}")
    run = load_run(Path(run_dir))
    config = SweepConfig((method,), (sparsity,), calibration_size)
    recalibrate = sparsity > 0 and bn_recalibrates(run.model, config)
    if METHODS[method].needs_calibration or recalibrate:
        data = data or load_dataset(run.config.dataset)
    seed = run.config.train.seed if seed is None else seed
    context = prune_contexts(data, (method,), seed, calibration_size)[method]
    bn_inputs = bn_inputs_for(run.model, data, config, seed) if recalibrate else None
    return run.model, pruned_model(run.model, method, sparsity, None, context, bn_inputs)


def bench_run_folder(run_dir: Path, methods: tuple[str, ...], sparsities: tuple[float, ...],
                     config: BenchConfig, data_dir: Path | None = None, check: bool = True,
                     on_row: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """``run_bench`` on the model of ``run_dir``; with ``check``, outputs are compared with the
    masked network's on its test set. Returns the path of ``bench.csv``.
    """
    run = load_run(Path(run_dir))
    needs = any(METHODS[m].needs_calibration for m in methods if m in METHODS) or \
        bn_recalibrates(run.model, SweepConfig())
    data = load_dataset(run.config.dataset, data_dir) if check or needs else None
    run_bench(Path(run_dir), run.model, methods, sparsities, config, data,
              data.test_x if check else None, on_row)
    return Path(run_dir) / BENCH_CSV
