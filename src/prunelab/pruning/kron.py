"""Output-aware refits: each layer's least-squares error weighted by how much it moves the logits.

``refit-global`` fits every output unit of a layer on its own (``||X_p w - X_d w_dense||^2`` per
row), as if every output mattered equally. Here the error ``E = W X_p - W_dense X_d`` of a layer
is measured through the dense network that follows it: to second order the squared change of
the logits is ``tr(G_out E G_in E^T)`` (Gauss-Newton, Kronecker-factored as in K-FAC, Martens &
Grosse 2015), with ``G_in`` the layer's input Gram matrix and ``G_out = E[J^T J]`` (out, out),
``J`` the Jacobian of the dense logits with respect to the layer's outputs (a conv's channels,
summed over positions). No labels and no training loss: the target is the dense network.

For a mask M the best weights solve ``(G_out (x) G_in)[M, M] w = (G_out W_dense C)[M]`` -- rows
no longer separate -- solved by conjugate gradients (Jacobi-preconditioned) started from the
per-row refit (the exact answer when ``G_out`` is diagonal). Masks follow the
OBS saliency of that Hessian, ``w_ij^2 / ([G_out^-1]_ii [G_in^-1]_jj)``, reached in a few steps
with a refit after each (as ``refit_layer``). Per-layer sparsities come from an allocation
(``refit-kron``: ``magnitude_allocation``, as ``refit-global``).

Cost: one forward and backward pass per logit over the calibration images for ``G_out`` (all
layers at once); per step, a per-row refit and at most ``CG_ITERATIONS`` products
``G_out V G_in``. The output layer is refit per row to the dense logits (``G_out = I``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from prunelab.pruning import PruneContext
from prunelab.pruning.calibrated import (
    CONV_IMAGES,
    LayerInputs,
    damped,
    keep_count,
    masked_lstsq,
    model_inputs,
    sequential,
    spd_inverse,
    sweep_cached,
    topk_mask,
)
from prunelab.pruning.capture import CALIBRATION_BATCH
from prunelab.pruning.refit import REFIT_DAMPING, Allocation, schedule
from prunelab.pruning.targets import prunable_modules

__all__ = [
    "OUTPUT_DAMPING",
    "kron_compute",
    "kron_layer",
    "kron_lstsq",
    "output_grams",
]

OUTPUT_DAMPING = 1e-2
"""Ridge added to ``G_out`` (fraction of its mean diagonal): a layer's outputs the logits ignore
on the calibration set still cost a little, so the refit never drifts along them."""

CG_TOLERANCE = 1e-12
"""Squared preconditioned residual, relative to the right-hand side's, at which conjugate
gradients stops (about 1e-6 in norm)."""

OUTPUT_IMAGES = CONV_IMAGES
"""Calibration images the output Gram matrices are computed on (one backward pass per logit)."""

CG_ITERATIONS = 100
"""Most conjugate-gradient iterations per refit (on LeNet-5 at 90 %: 87.54 % test accuracy
after 30, 88.13 % after 100)."""

CG_FLOPS = 4e10
"""Floating-point work one refit's iterations may take (each costs ``2 out in (out + in)``):
a big layer gets fewer than ``CG_ITERATIONS`` (the seed MLP's 1000 x 1000 layers 10, LeNet-5's
and the zoo ResNet's layers all 100), so that a sweep of the seed MLP stays within minutes
(152 s per k with 100 everywhere)."""


def cg_iterations(rows: int, cols: int) -> int:
    """Conjugate-gradient iterations for a (rows, cols) layer: ``CG_ITERATIONS`` within the
    ``CG_FLOPS`` budget, at least 5."""
    per_iteration = 2.0 * rows * cols * (rows + cols)
    return int(max(5, min(CG_ITERATIONS, CG_FLOPS // per_iteration)))

Grams = dict[str, torch.Tensor]


def _rows(out: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """A layer's output gradients as rows (samples x positions, out): channels last."""
    if isinstance(module, nn.Conv2d):
        return out.movedim(1, -1).reshape(-1, out.shape[1])
    return out.reshape(-1, out.shape[-1])


def output_grams(model: nn.Module, names: list[str], x: torch.Tensor,
                 batch_size: int = CALIBRATION_BATCH) -> Grams:
    """{name: (out, out) float64 ``sum_{n,p} g g^T / N``} with ``g`` the gradient of one logit
    with respect to the layer's output at sample n, position p, summed over the logits: the
    output factor of the Gauss-Newton matrix of ``||f(x) - f_dense(x)||^2 / 2``.

    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> output_grams(net, ["0", "2"], torch.rand(5, 3))["2"]  # the logits' own: identity
    tensor([[1., 0.],
            [0., 1.]], dtype=torch.float64)
    """
    net = copy.deepcopy(model).eval().requires_grad_(False)
    modules = dict(net.named_modules())
    sums: Grams = {}
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable:
        def hook(_module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
            outputs[name] = out
        return hook

    handles = [modules[n].register_forward_hook(keep(n)) for n in names]
    try:
        with torch.enable_grad():
            for batch in x.split(batch_size):
                logits = net(batch.requires_grad_(True))
                logits = logits.reshape(-1, logits.shape[-1])
                for o in range(logits.shape[-1]):
                    grads = torch.autograd.grad(logits[:, o].sum(), [outputs[n] for n in names],
                                                retain_graph=o + 1 < logits.shape[-1],
                                                allow_unused=True)
                    for n, g in zip(names, grads, strict=True):
                        if g is None:
                            continue
                        rows = _rows(g, modules[n]).double()
                        sums[n] = sums.get(n, 0.0) + rows.T @ rows
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] / len(x) if n in sums else
            torch.eye(_out_features(modules[n]), dtype=torch.float64, device=x.device)
            for n in names}


def _cached_output_grams(model: nn.Module, dense: nn.Module, names: list[str],
                         x: torch.Tensor) -> Grams:
    # computed once per sweep (the ResNet's take 5 s)
    grams = sweep_cached("output-grams", model, names, x, lambda: output_grams(dense, names, x))
    return {n: g.clone() for n, g in grams.items()}


def _out_features(module: nn.Module) -> int:
    return module.weight.shape[0]


def kron_lstsq(gin: torch.Tensor, gout: torch.Tensor, rhs: torch.Tensor, mask: torch.Tensor,
               start: torch.Tensor | None = None) -> torch.Tensor:
    """argmin over W (out, in), zero outside ``mask``, of ``tr(G_out W G_in W^T) / 2 -
    tr(G_out W rhs^T)``: with ``rhs = W_dense C`` the output-weighted least-squares refit.

    Both Gram matrices must be positive definite (damped). Conjugate gradients on the masked
    entries, from ``start`` (default: the per-row refit).
    """
    gin, gout, rhs = gin.double(), gout.double(), rhs.double()
    maskf = mask.to(rhs.dtype)
    b = (gout @ rhs) * maskf
    if not mask.any():
        return torch.zeros_like(rhs)
    # Jacobi preconditioner: the diagonal of G_out (x) G_in (zero off the mask).
    inv_diag = maskf / torch.outer(gout.diagonal(), gin.diagonal()).clamp_min(1e-300)
    w = masked_lstsq(gin, rhs, mask) if start is None else start.double() * maskf
    r = b - (gout @ w @ gin) * maskf
    z = r * inv_diag
    p, rz = z, float((r * z).sum())
    stop = CG_TOLERANCE * float((b * b * inv_diag).sum())
    for _ in range(cg_iterations(*rhs.shape)):
        if rz <= stop:
            break
        q = (gout @ p @ gin) * maskf
        alpha = rz / float((p * q).sum())
        w, r = w + alpha * p, r - alpha * q
        z = r * inv_diag
        rz, old = float((r * z).sum()), rz
        p = z + (rz / old) * p
    return w


def kron_layer(inp: LayerInputs, gout: torch.Tensor, sparsity: float,
               steps: int = 3) -> torch.Tensor:
    """New weight (out, in): OBS-saliency masks in ``steps`` nested rounds, each followed by
    ``kron_lstsq`` (see module doc). A ``gout`` that does not match the rows (a grouped conv's
    group) is replaced by the identity: the per-row refit."""
    w = inp.weight.double()
    if gout.shape != (len(w), len(w)):
        gout = torch.eye(len(w), dtype=torch.float64, device=w.device)
    gin, gout = damped(inp.gram, REFIT_DAMPING), damped(gout, OUTPUT_DAMPING)
    rhs = inp.dense_weight.double() @ inp.cross
    curvature = torch.outer(spd_inverse(gout).diagonal(), spd_inverse(gin).diagonal())
    mask = torch.ones_like(w, dtype=torch.bool)
    w = None
    for k in schedule(sparsity, steps):
        current = masked_lstsq(gin, rhs, mask) if w is None else w
        scores = torch.where(mask, current**2 / curvature, -torch.inf)
        mask = topk_mask(scores, keep_count(scores.numel(), k), per_row=False) & mask
        w = kron_lstsq(gin, gout, rhs, mask)
    return w


def kron_compute(allocate: Allocation, steps: int = 3):
    """A registry ``compute``: per-layer sparsities from ``allocate``, ``kron_layer`` on every
    named layer in network order, then the output layer refit to the dense logits."""

    def compute(model: nn.Module, names: list[str], sparsity: float,
                context: PruneContext) -> dict[str, torch.Tensor]:
        dense = copy.deepcopy(model).eval()
        x = model_inputs(dense, context)[:OUTPUT_IMAGES]
        gouts = _cached_output_grams(model, dense, names, x)
        ks = allocate(model, names, sparsity, context)
        todo = list(names)
        output = prunable_modules(model)[-1][0]
        if output not in todo:
            todo.append(output)
            ks[output] = 0.0
            gouts[output] = torch.eye(_out_features(dict(model.named_modules())[output]),
                                      dtype=torch.float64, device=x.device)
        return sequential(model, todo, context,
                          lambda inp: kron_layer(inp, gouts[inp.name], ks[inp.name], steps))

    return compute
