"""Structural removal for any graph: a pruned model made physically smaller, proven equal.

``compact_graph(model, example_inputs)`` returns a copy of ``model`` (the same classes, resized
modules) from which every output channel / unit / attention head that pruning zeroed is gone,
with everything that only fed it. Torch-Pruning's ``DependencyGraph`` does the tracing and the
slicing: it knows which layers a channel couples (a residual add ties the stem, every block's
last conv and the shortcuts together; a flatten maps one conv channel to many Linear columns;
BatchNorm is sliced with its running statistics). What it cannot know is which channels are
*dead*; that is decided here, exactly:

- a channel group (one index of a coupled group) is a candidate when every layer writing it has
  that output row's weights at zero (its bias, if any, makes it a constant);
- the group's other members must map a constant to a constant: BatchNorm (its shift makes the
  constant nonzero), ReLU/GELU, pooling, adds -- anything else holding weights (LayerNorm, which
  mixes channels; a position embedding; an unknown module) keeps the channel, since removing it
  would change what the others compute;
- every layer reading the channel must then read zeros: its weight columns are zero (the
  calibration-aware unit methods zero them), or the value it receives is 0 (ReLU of a negative
  BatchNorm shift), or the value is a constant c that folds exactly into its bias: a Linear, or a
  conv without padding (``bias += c * sum of the channel's weights``). A constant that reaches a
  zero-padded conv is not a bias (the border sees the padding instead), so such a channel stays
  and ``CompactionReport.kept`` says why.

Attention heads of prunelab's ``vit`` (``models.vit.Attention``) are removed by
``_compact_heads``: a head whose output-projection columns are all zero contributes nothing; one
whose value rows are zero outputs v's bias for every token (the attention weights sum to 1),
which folds into the projection's bias. Either way its q, k, v rows and projection columns go
and the head count drops.

After slicing, the result is checked against the masked model on the example inputs and on a
random batch of their shape; a difference beyond ``TOLERANCE`` raises (it would be a bug).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from prunelab.models.vit import Attention
from prunelab.pruning.capture import forward_order
from prunelab.pruning.coupling import out_channel_pruner, trace
from prunelab.pruning.targets import prunable_modules

__all__ = ["TOLERANCE", "CompactionReport", "compact_graph", "max_difference"]

TOLERANCE = 1e-4
"""Largest difference allowed between compacted and masked outputs, relative to the largest
output magnitude (at least 1). Removing exact zeros changes only the order and blocking of
float32 sums: measured differences are ~1e-6 relative on the zoo (see tests)."""

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass
class CompactionReport:
    """What ``compact_graph`` removed and what it had to leave."""

    channels: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per layer whose output channels were cut: (before, after)."""
    heads: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per attention module with heads removed: (before, after)."""
    kept: dict[str, tuple[int, str]] = field(default_factory=dict)
    """Per layer: zeroed channels left in, and why."""
    folded: int = 0
    """Constant channels folded into their readers' biases."""


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| relative to max(1, max |b|)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1.0))


def compact_graph(model: nn.Module, example_inputs: torch.Tensor,
                  check: bool = True) -> tuple[nn.Module, CompactionReport]:
    """(a physically smaller copy of ``model``, what was removed); ``model`` is unchanged.

    ``example_inputs`` is a batch the model accepts (a few samples: the tracing and the checks
    run on it). See the module docstring for what is removed and the guarantee.
    """
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() == 0 or \
            len(example_inputs) == 0:
        raise ValueError("example_inputs must be a non-empty batch tensor of model inputs")
    masked = copy.deepcopy(model).eval()
    _check_example(masked, example_inputs)
    net = copy.deepcopy(masked)
    report = CompactionReport()
    with torch.no_grad():
        _compact_heads(net, report)
    if not any(bool(_zero_rows(m).any()) for _, m in prunable_modules(net)):
        return net, report  # no layer has a dead output: nothing to trace
    graph = trace(net, example_inputs)
    names = {m: n for n, m in net.named_modules()}
    output = prunable_modules(net)[-1][1] if prunable_modules(net) else None
    skip = {m for a in net.modules() if isinstance(a, Attention)
            for m in (a.q, a.k, a.v)}  # heads: _compact_heads
    done: set[nn.Module] = set()
    modules = dict(net.named_modules())
    for name in forward_order(net, [n for n, _ in prunable_modules(net)], example_inputs[:1]):
        layer = modules[name]
        if (layer is output or layer in skip or layer in done
                or layer not in graph.module2node):  # the forward pass never reached it
            continue
        zero, dead, writers, reason = _dead_channels(net, graph, layer, example_inputs, report)
        done |= writers
        before = layer.weight.shape[0]
        if bool((zero & ~dead).any()):
            report.kept[name] = (int((zero & ~dead).sum()), reason)
        idxs = dead.nonzero().flatten().tolist()
        if len(idxs) == before:  # a layer keeps one channel (zeros): shapes stay valid
            idxs = idxs[1:]
        if idxs:
            graph.get_pruning_group(layer, out_channel_pruner(layer), idxs=idxs).prune()
            for w in writers:
                report.channels[names[w]] = (before, w.weight.shape[0])
    net.zero_grad(set_to_none=True)
    if check:
        _check_equal(masked, net, example_inputs)
    return net, report


def _check_example(model: nn.Module, example: torch.Tensor) -> None:
    try:
        with torch.no_grad():
            model(example[:1])
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"example_inputs of shape {tuple(example.shape)} do not fit "
                         f"{type(model).__name__}: {first}") from None


def _kind(dep) -> tuple[str, nn.Module | None]:
    """('write' | 'read' | 'bn' | 'op' | 'other', module) for one member of a group."""
    module = dep.target.module
    if dep.target.type == tp.ops.OPTYPE.PARAMETER:
        return "other", None
    if not isinstance(module, nn.Module) or isinstance(module, tp.ops.DummyMHA):
        return "op", None
    out = getattr(dep.handler, "__name__", "") == "prune_out_channels"
    if isinstance(module, _LAYERS):
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            return "other", module
        return ("write" if out else "read"), module
    if isinstance(module, _BN):
        return "bn", module
    if isinstance(module, tp.ops._ElementWiseOp) or not any(True for _ in module.parameters()):
        return "op", module
    return "other", module


def _dead_channels(net: nn.Module, graph: tp.DependencyGraph, root: nn.Module,
                   example: torch.Tensor, report: CompactionReport):
    """For ``root``'s coupled group: (bool (out,) channels every writer zeroed, bool (out,)
    those that can go, the layers writing the group, why zeroed ones must stay)."""
    n = root.weight.shape[0]
    zero = _zero_rows(root)
    candidates = zero.nonzero().flatten().tolist()
    members = {j: [(*_kind(dep), [int(i) for i in idxs]) for dep, idxs in
                   graph.get_pruning_group(root, out_channel_pruner(root), idxs=[j])]
               for j in (candidates or [0])}  # one channel is enough to learn the writers
    first = next(iter(members.values()))
    writers = {m for kind, m, _ in first if kind == "write"} | {root}
    for j in candidates:
        for kind, m, idxs in members[j]:
            if kind == "write":
                zero[j] &= bool(_zero_rows(m)[idxs].all())
    none = torch.zeros(n, dtype=torch.bool, device=zero.device)
    if not zero.any():
        return zero, none, writers, ""
    others = sorted({_label(m) for kind, m, _ in first if kind == "other"})
    if others:
        return zero, none, writers, f"coupled with {', '.join(others)}"
    readers = {m for kind, m, _ in first if kind == "read"}
    inputs = _reader_inputs(net, readers, example)
    dead = zero.clone()
    for j in zero.nonzero().flatten().tolist():
        for kind, m, idxs in members[j]:
            if kind == "read" and not _reads_nothing(m, idxs, inputs[m], report):
                dead[j] = False
    return zero, dead, writers, ("a nonzero constant (a bias or BatchNorm shift) reaches a "
                                 "zero-padded conv")


def _label(module: nn.Module | None) -> str:
    if module is None:
        return "a free parameter (e.g. a position embedding)"
    if isinstance(module, nn.Conv2d):
        return "a grouped Conv2d"
    return type(module).__name__


def _zero_rows(layer: nn.Module) -> torch.Tensor:
    """Bool (out,): output rows of ``layer`` whose weights are all zero (whatever the bias:
    the channel is then a constant, which its readers must ignore or absorb)."""
    w = layer.weight.detach()
    return (w.reshape(w.shape[0], -1) == 0).all(1)


def _probe(example: torch.Tensor, seed: int) -> torch.Tensor:
    """A uniform random batch shaped like ``example`` (on its device), or ``example`` itself
    when it holds no floats; the same numbers on every device."""
    if not example.is_floating_point():
        return example
    return torch.rand(example.shape, generator=torch.Generator().manual_seed(seed),
                      dtype=example.dtype).to(example.device)


def _reader_inputs(net: nn.Module, readers: set[nn.Module],
                   example: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """What each reader receives on the example batch and on a random batch of its shape."""
    got: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in readers}
    handles = [m.register_forward_pre_hook(lambda mod, a: got[mod].append(a[0].detach()))
               for m in readers]
    probe = _probe(example, seed=0)
    try:
        with torch.no_grad():
            net(example)
            net(probe)
    finally:
        for h in handles:
            h.remove()
    return {m: torch.cat([t.reshape(-1, *t.shape[1:]) for t in v]) for m, v in got.items()}


def _reads_nothing(reader: nn.Module, idxs: list[int], x: torch.Tensor,
                   report: CompactionReport) -> bool:
    """Whether ``reader``'s input columns ``idxs`` contribute nothing; folds a constant into
    its bias where that is exact (a Linear, a conv without padding)."""
    w = reader.weight.detach()
    if bool((w[:, idxs] == 0).all()):
        return True
    vals = x[:, idxs] if isinstance(reader, nn.Conv2d) else x[..., idxs]
    if isinstance(reader, nn.Conv2d):
        vals = vals.transpose(0, 1).reshape(len(idxs), -1)  # (channels, everything)
    else:
        vals = vals.reshape(-1, len(idxs)).T
    if bool((vals == 0).all()):
        return True
    const = vals[:, :1]
    if not bool((vals == const).all()):
        return False
    exact = isinstance(reader, nn.Linear) or all(p == 0 for p in reader.padding)
    if not exact:
        return False
    with torch.no_grad():
        cols = w[:, idxs].reshape(w.shape[0], len(idxs), -1).sum(2)  # (out, channels)
        shift = cols @ const.flatten().to(w.dtype)
        if reader.bias is None:
            reader.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
        reader.bias += shift
        reader.weight[:, idxs] = 0
    report.folded += len(idxs)
    return True


def _compact_heads(net: nn.Module, report: CompactionReport) -> None:
    """Remove the dead heads of every ``models.vit.Attention`` (module docstring)."""
    names = {m: n for n, m in net.named_modules()}
    for attn in [m for m in net.modules() if isinstance(m, Attention)]:
        d = attn.q.out_features // attn.heads
        live, folded = [], []
        for h in range(attn.heads):
            rows = slice(h * d, (h + 1) * d)
            v_zero = bool((attn.v.weight[rows] == 0).all())
            out_zero = bool((attn.proj.weight[:, rows] == 0).all())
            if not (v_zero or out_zero):
                live.append(h)
            elif not out_zero and attn.v.bias is not None:
                folded.append(h)  # its values are v's bias for every token: a constant
        if len(live) == attn.heads:
            continue
        live = live or [0]  # one head stays (shapes stay valid), as it was
        for h in (h for h in folded if h not in live):  # attention weights sum to 1
            rows = slice(h * d, (h + 1) * d)
            shift = attn.proj.weight[:, rows] @ attn.v.bias[rows]
            if attn.proj.bias is None:
                attn.proj.bias = nn.Parameter(torch.zeros_like(shift))
            attn.proj.bias += shift
            report.folded += d
        rows = torch.cat([torch.arange(h * d, (h + 1) * d, device=attn.q.weight.device)
                          for h in live])
        for lin in (attn.q, attn.k, attn.v):
            _slice_linear(lin, rows=rows)
        _slice_linear(attn.proj, cols=rows)
        report.heads[names[attn]] = (attn.heads, len(live))
        attn.heads = len(live)


def _slice_linear(lin: nn.Linear, rows: torch.Tensor | None = None,
                  cols: torch.Tensor | None = None) -> None:
    w = lin.weight.detach()
    if rows is not None:
        w = w[rows]
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.detach()[rows].clone())
        lin.out_features = len(rows)
    if cols is not None:
        w = w[:, cols]
        lin.in_features = len(cols)
    lin.weight = nn.Parameter(w.clone())


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """No TensorFloat-32 inside: CUDA convolutions use it by default, which rounds their
    inputs to 10-bit mantissas and moves a compacted ResNet's logits by 1e-4 to 3e-4 relative
    from the masked ones (measured on an H200), past ``TOLERANCE``; the check is about the
    removal, not the device's precision. Nothing changes on a CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _check_equal(masked: nn.Module, net: nn.Module, example: torch.Tensor) -> None:
    probe = _probe(example, seed=1)
    with torch.no_grad(), full_float32():
        for x in (example, probe):
            diff = max_difference(net(x), masked(x))
            if diff > TOLERANCE:
                raise RuntimeError(f"compaction changed the outputs by {diff:.2e} (relative); "
                                   "please report this model")
