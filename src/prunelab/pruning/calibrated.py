"""Shared machinery of the calibration-aware methods: layer inputs, Gram matrices, masked refits.

Calibration-aware methods process the pruned layers in the order the forward pass reaches them,
so each layer sees the inputs the *already pruned* network gives it (X_p) next to the dense
network's inputs (X_d). A step gets them as second moments (``LayerInputs.gram``, ``cross``,
``norms``). For any model they come from forward hooks on the real model (``pruning.capture``:
a conv's input unfolded, one pass per layer over the calibration set, nothing but the Gram
matrices kept). In a model with BatchNorm the statistics of the network pruned so far are
re-estimated after each layer (``refresh_batchnorm``), so each layer is fitted to inputs
normalised as in the finished network: re-estimate them after ``apply_weights`` too
(``pruning.batchnorm.recalibrate_batchnorm``; studies do by default). For a chain of
``nn.Linear`` layers with ReLU between them (``models.mlp.MLP``)
the activations are propagated directly and also kept as rows (``x_dense``, ``x_pruned``),
which the unit methods need. Linear algebra runs in float64; Gram matrices are damped so that
dead (all-zero) inputs never make a system singular.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from prunelab.models.mlp import linear_layers
from prunelab.pruning import PruneContext
from prunelab.pruning.batchnorm import has_batchnorm, reestimate_batchnorm_
from prunelab.pruning.capture import capture_grams, forward_order, groups_of
from prunelab.pruning.sparsity import is_relu_chain
from prunelab.pruning.targets import as_matrix

__all__ = [
    "BN_REFRESH",
    "DAMPING",
    "LayerInputs",
    "chain",
    "damped",
    "hooked_pair",
    "damped_gram",
    "keep_count",
    "masked_lstsq",
    "model_inputs",
    "refit_targets",
    "refresh_batchnorm",
    "sequential",
    "spd_inverse",
    "sweep_cached",
    "topk_mask",
]

DAMPING = 0.01
"""Ridge added to Gram matrices, as a fraction of their mean diagonal (SparseGPT's ``percdamp``)."""

_CHUNK_ROWS = 64  # rows solved together: <= 64 x 500 x 500 float64 (128 MiB) for 1000 inputs


@dataclass(frozen=True)
class LayerInputs:
    """One layer's weight and what it receives over the calibration set."""

    name: str
    """Qualified module name."""
    weight: torch.Tensor
    """Current weight (out, fan_in), float64: dense, or already refit by an earlier step (a
    conv's weight seen as (out, in * kh * kw))."""
    dense_weight: torch.Tensor
    """The model's own weight (out, fan_in), float64."""
    gram: torch.Tensor
    """(fan_in, fan_in) ``X_p^T X_p / N``: inputs in the network pruned so far (undamped)."""
    cross: torch.Tensor
    """(fan_in, fan_in) ``X_d^T X_p / N``: dense-network rows against pruned-network rows."""
    norms: torch.Tensor
    """(fan_in,) ``||x_j||``: the L2 norm of each input feature of X_p over its N rows."""
    x_dense: torch.Tensor | None = None
    """(N, in) rows in the dense network, where they are kept (Linear chains only)."""
    x_pruned: torch.Tensor | None = None
    """(N, in) rows in the network pruned so far, where they are kept."""

    @classmethod
    def from_rows(cls, name: str, weight: torch.Tensor, dense_weight: torch.Tensor,
                  x_dense: torch.Tensor, x_pruned: torch.Tensor) -> LayerInputs:
        """From the rows themselves (kept too)."""
        xd, xp = x_dense.double(), x_pruned.double()
        return cls(name, weight, dense_weight, xp.T @ xp / len(xp), xd.T @ xp / len(xp),
                   xp.norm(dim=0), x_dense, x_pruned)


def chain(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The model's Linear layers, checked to form an MLP chain (each feeds the next)."""
    if not is_relu_chain(model):
        raise ValueError(f"this method needs an MLP (Linear layers with ReLU between them, "
                         f"like prunelab's mlp); a {type(model).__name__} is not one")
    layers = linear_layers(model)
    for (a, la), (b, lb) in zip(layers[:-1], layers[1:], strict=True):
        if la.out_features != lb.in_features:
            raise ValueError(f"calibration-aware methods need an MLP chain; {a} gives "
                             f"{la.out_features} features but {b} takes {lb.in_features}")
    return layers


def calibration_inputs(model: nn.Module, context: PruneContext) -> torch.Tensor:
    """``context.calibration`` as (N, in) float64, checked against the first layer."""
    x = context.calibration
    if x is None:
        raise ValueError("this method needs calibration data (PruneContext.calibration)")
    first = chain(model)[0][1]
    x = x.reshape(len(x), -1) if x.dim() > 2 else x
    if x.dim() != 2 or x.shape[1] != first.in_features or len(x) == 0:
        raise ValueError(f"calibration data must be (N, {first.in_features}) with N > 0, "
                         f"got {tuple(context.calibration.shape)}")
    return x.to(first.weight.device, torch.float64)


def forward(layer: nn.Linear, weight: torch.Tensor, x: torch.Tensor, last: bool) -> torch.Tensor:
    """The layer's output (ReLU unless ``last``) for ``weight``, in float64."""
    z = x @ weight.T  # (N, in) @ (in, out)
    if layer.bias is not None:
        z = z + layer.bias.detach().double()
    return z if last else torch.relu(z)


StepFn = Callable[[LayerInputs], torch.Tensor]


def sequential(model: nn.Module, names: list[str], context: PruneContext,
               step: StepFn) -> dict[str, torch.Tensor]:
    """Prune ``names`` in network order with ``step``, feeding each the pruned network's inputs.

    Returns {name: new weight} in each layer's own shape and dtype.
    """
    if is_relu_chain(model):
        return _sequential_chain(model, names, context, step)
    return _sequential_hooks(model, names, context, step)


_T = TypeVar("_T")

_SWEEP_CACHE: dict[str, tuple[tuple, object]] = {}
"""Per kind of quantity, the last one computed and the key it was computed for."""


def _fingerprint(t: torch.Tensor) -> tuple:
    # the values, summarised (two moments in float64): any change of a weight or an image
    # changes them, and they cost a few milliseconds
    d = t.detach().double()
    return tuple(t.shape), float(d.sum()), float((d * d).sum())


def sweep_cached(kind: str, model: nn.Module, names: list[str], x: torch.Tensor,
                 compute: Callable[[], _T]) -> _T:
    """``compute()``, or what it returned last time for the same ``kind``, model weights,
    layer ``names`` and calibration inputs ``x``: a sweep prunes the same model with the same
    images at every k, and what depends only on those (the dense network's output Gram
    matrices, its per-layer input energies) need not be recomputed at each k. One entry per
    kind; callers must not change what they get."""
    key = (tuple(_fingerprint(t) for t in model.state_dict().values()), tuple(names),
           _fingerprint(x), len(x))
    entry = _SWEEP_CACHE.get(kind)
    if entry is None or entry[0] != key:
        entry = _SWEEP_CACHE[kind] = (key, compute())
    return entry[1]  # type: ignore[return-value]


def model_inputs(model: nn.Module, context: PruneContext) -> torch.Tensor:
    """``context.calibration`` on the model's device, checked to run through ``model``."""
    x = context.calibration
    if x is None:
        raise ValueError("this method needs calibration data (PruneContext.calibration)")
    if not isinstance(x, torch.Tensor) or len(x) == 0:
        raise ValueError("calibration data must be a non-empty tensor of model inputs (N, ...)")
    param = next(model.parameters())
    x = x.to(param.device, param.dtype)
    try:
        with torch.no_grad():
            model(x[:1])
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"calibration data of shape {tuple(x.shape)} does not fit the model: "
                         f"{first}") from None
    return x


def hooked_pair(model: nn.Module, names: list[str], context: PruneContext,
                ) -> tuple[nn.Module, nn.Module, torch.Tensor, list[str]]:
    """(dense copy, copy to prune layer by layer, calibration inputs, ``names`` in forward
    order): both copies in eval mode, so BatchNorm never moves; ``model`` is untouched."""
    dense = copy.deepcopy(model).eval()
    x = model_inputs(dense, context)
    return dense, copy.deepcopy(dense), x, forward_order(dense, names, x[:1])


def _hooked_inputs(name: str, w: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor,
                   count: int) -> LayerInputs:
    return LayerInputs(name, w, w, gram, cross, (gram.diagonal().clamp_min(0) * count).sqrt())


def _sequential_hooks(model: nn.Module, names: list[str], context: PruneContext,
                      step: StepFn) -> dict[str, torch.Tensor]:
    """Any model: per layer (forward order), Gram matrices from hooks on both networks."""
    dense, pruned, x, order = hooked_pair(model, names, context)
    modules = dict(pruned.named_modules())
    out: dict[str, torch.Tensor] = {}
    for name in order:
        layer = modules[name]
        grams = capture_grams(dense, pruned, name,
                              x[:CONV_IMAGES] if isinstance(layer, nn.Conv2d) else x)
        w = as_matrix(layer.weight.detach()).double()
        if groups_of(layer) == 1:
            new = step(_hooked_inputs(name, w, grams.gram, grams.cross, grams.count))
        else:  # a grouped conv: each group's rows against that group's inputs
            new = torch.cat([step(_hooked_inputs(name, wg, g, c, grams.count)) for wg, g, c in
                             zip(w.chunk(groups_of(layer)), grams.gram, grams.cross,
                                 strict=True)])
        out[name] = new.reshape(layer.weight.shape).to(layer.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(out[name])
        refresh_batchnorm(pruned, x)
    return out


CONV_IMAGES = 1024
"""Calibration images a conv's Gram matrices are captured on by the weight methods: each image
gives a row per output position (a ResNet's smallest stage: 49), so 1024 images are >= 50,000
rows for at most 576 columns; more (2048 by default, ``refit-gradual``'s 8192, chosen for an
MLP's one row per image) only cost time. Linear layers use every calibration image. Measured on
the default ResNet (Fashion-MNIST, 70/80/90/95 % of weights): ``refit-global`` 91.55 / 90.20 /
87.12 / 81.12 with every image, 91.63 / 90.32 / 86.71 / 80.81 with 1024, in 12 instead of 17 s
per k; ``refit-gradual`` 56 -> 15 s per k at the same accuracy (90.23 -> 90.29 at 70 %)."""

BN_REFRESH = 512
"""Calibration images the statistics are re-estimated on between layers (a ResNet conv sees
hundreds of thousands of positions in them: plenty for a mean and a variance)."""


def refresh_batchnorm(pruned: nn.Module, x: torch.Tensor) -> None:
    """Re-estimate, in place, the BatchNorm statistics of the network pruned so far, so the
    next layer's captured inputs are normalised as the finished network (whose statistics a
    study re-estimates) will normalise them. Nothing happens without BatchNorm."""
    if has_batchnorm(pruned):
        reestimate_batchnorm_(pruned, x[:BN_REFRESH])


def _sequential_chain(model: nn.Module, names: list[str], context: PruneContext,
                      step: StepFn) -> dict[str, torch.Tensor]:
    """A Linear chain with ReLU between layers: activations propagated directly."""
    layers = chain(model)
    x_dense = x_pruned = calibration_inputs(model, context)
    out: dict[str, torch.Tensor] = {}
    todo = set(names)
    for name, layer in layers:
        dense = layer.weight.detach().double()
        new = dense
        if name in names:
            new = step(LayerInputs.from_rows(name, dense, dense, x_dense, x_pruned))
            out[name] = new.to(layer.weight.dtype)
            todo.discard(name)
        if not todo:
            break
        x_dense = forward(layer, dense, x_dense, False)
        x_pruned = forward(layer, new, x_pruned, False)
    return out


def spd_inverse(gram: torch.Tensor) -> torch.Tensor:
    """Inverse of a symmetric positive definite matrix through its Cholesky factor."""
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return torch.cholesky_solve(eye, torch.linalg.cholesky(gram))


def damped_gram(x: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """(in, in) float64 ``x.T @ x / N`` plus ``damping`` x its mean diagonal (never singular)."""
    x = x.double()
    return damped(x.T @ x / len(x), damping)


def damped(gram: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """A float64 copy of ``gram`` plus ``damping`` x its mean diagonal (never singular)."""
    g = gram.double().clone()
    ridge = damping * float(g.diagonal().mean()) + 1e-10
    g.diagonal().add_(ridge)
    return g


def refit_targets(weight: torch.Tensor, x_dense: torch.Tensor,
                  x_pruned: torch.Tensor) -> torch.Tensor:
    """Right-hand sides B (out, in) of ``G w = b``: fit ``x_pruned @ w`` to ``x_dense @ weight``."""
    cross = x_dense.double().T @ x_pruned.double() / len(x_dense)  # (in, in)
    return weight.double() @ cross


def keep_count(n: int, sparsity: float) -> int:
    """Entries kept out of ``n`` at ``sparsity``: ``n - round(sparsity * n)``."""
    return n - round(sparsity * n)


def topk_mask(scores: torch.Tensor, keep: int, per_row: bool = True) -> torch.Tensor:
    """Bool mask keeping the ``keep`` largest scores of each row (or of the whole matrix)."""
    flat = scores if per_row else scores.reshape(1, -1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep > 0:
        mask.scatter_(1, flat.topk(keep, dim=1).indices, True)
    return mask.reshape(scores.shape)


def _padded_indices(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row the indices where ``mask`` is True, padded: (rows, width) indices and validity."""
    counts = mask.sum(1)
    width = max(int(counts.max()), 1)
    order = mask.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return order, valid


def _solve_chunk(g: torch.Tensor, rhs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``_solve_on`` for rows of similar support size (padded to the largest)."""
    idx, valid = _padded_indices(mask)
    eye = torch.eye(idx.shape[1], dtype=g.dtype, device=g.device)
    both = valid[:, :, None] & valid[:, None, :]
    # Padding becomes an identity block with zero right-hand side, so it solves to 0.
    sub = torch.where(both, g[idx[:, :, None], idx[:, None, :]], eye)
    b = torch.where(valid, rhs.gather(1, idx), 0.0)
    chol, info = torch.linalg.cholesky_ex(sub)
    x = torch.cholesky_solve(b[:, :, None], chol)[:, :, 0] if not info.any() \
        else torch.linalg.solve(sub, b)
    return torch.zeros_like(rhs).scatter_(1, idx, torch.where(valid, x, 0.0))


def _solve_on(g: torch.Tensor, rhs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row r: x with ``x[S] = g[S,S]^-1 rhs[r,S]`` (S = mask[r]) and 0 elsewhere."""
    out = torch.zeros_like(rhs)
    order = mask.sum(1).argsort()  # rows of similar support size share a chunk: little padding
    for start in range(0, len(order), _CHUNK_ROWS):
        rows = order[start:start + _CHUNK_ROWS]
        if mask[rows].any():
            out[rows] = _solve_chunk(g, rhs[rows], mask[rows])
    return out


def masked_lstsq(gram: torch.Tensor, rhs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row r: argmin_w ``w G w^T / 2 - rhs[r] w^T`` with w zero outside ``mask[r]``.

    With ``G = X.T X`` and ``rhs = Y.T X`` this is the least-squares fit of each row's outputs
    from the kept inputs. Each row costs a solve of size min(kept, removed): small supports are
    solved directly, small removed sets through the inverse of G (the OBS form).
    """
    gram, rhs = gram.double(), rhs.double()
    if bool((mask == mask[:1]).all()):  # one support for all rows (unit pruning): one solve
        keep = mask[0]
        out = torch.zeros_like(rhs)
        sub = gram[keep][:, keep]
        out[:, keep] = torch.linalg.solve(sub, rhs[:, keep].T).T if keep.any() else 0.0
        return out
    kept = mask.sum(1)
    direct = kept <= mask.shape[1] - kept
    out = torch.zeros_like(rhs)
    out[direct] = _solve_on(gram, rhs[direct], mask[direct])
    if not direct.all():
        inv = spd_inverse(gram)
        free = rhs[~direct] @ inv  # the unconstrained optimum of those rows
        # Zeroing the removed set P: w = free - lam K[P,:], with K[P,P] lam = free[P].
        lam = _solve_on(inv, free, ~mask[~direct])
        out[~direct] = torch.where(mask[~direct], free - lam @ inv, 0.0)
    return out
