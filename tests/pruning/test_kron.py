"""Output-weighted refits (``pruning.kron``) against closed-form references on tiny problems."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelab.models.mlp import MLPConfig, build_mlp
from prunelab.pruning import PruneContext, apply_weights, prune
from prunelab.pruning.calibrated import masked_lstsq
from prunelab.pruning.kron import kron_lstsq, output_grams

pytestmark = pytest.mark.usefixtures("one_thread")


def _spd(n: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(n, n + 3, generator=g, dtype=torch.float64)
    return a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64)


def test_kron_lstsq_solves_the_masked_kronecker_system() -> None:
    g = torch.Generator().manual_seed(0)
    gin, gout = _spd(7, g), _spd(4, g)
    rhs = torch.randn(4, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 7, generator=g) < 0.5
    mask[0, 0] = True
    got = kron_lstsq(gin, gout, rhs, mask)
    # Brute force: (G_out (x) G_in) on the kept entries, row-major like vec(W).
    keep = mask.flatten()
    h = torch.kron(gout, gin)[keep][:, keep]
    b = (gout @ rhs).flatten()[keep]
    want = torch.zeros(28, dtype=torch.float64)
    want[keep] = torch.linalg.solve(h, b)
    torch.testing.assert_close(got, want.reshape(4, 7), rtol=1e-4, atol=1e-6)  # CG tolerance


def test_kron_lstsq_with_a_diagonal_output_gram_is_the_per_row_refit() -> None:
    g = torch.Generator().manual_seed(1)
    gin = _spd(9, g)
    rhs = torch.randn(5, 9, generator=g, dtype=torch.float64)
    mask = torch.rand(5, 9, generator=g) < 0.4
    gout = torch.diag(torch.rand(5, generator=g, dtype=torch.float64) + 0.5)
    torch.testing.assert_close(kron_lstsq(gin, gout, rhs, mask), masked_lstsq(gin, rhs, mask))


def test_output_grams_equal_the_jacobians_of_the_logits() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5),
                        nn.ReLU(), nn.Linear(5, 4)).eval()
    x = torch.randn(6, 1, 6, 6)
    grams = output_grams(net, ["0", "3"], x, batch_size=4)
    want_conv = torch.zeros(3, 3, dtype=torch.float64)
    want_fc = torch.zeros(5, 5, dtype=torch.float64)
    for xi in x:
        h = net[0](xi[None])
        jac = torch.autograd.functional.jacobian(net[1:], h)[0].double()  # (4, 1, 3, 4, 4)
        per_pos = jac[:, 0].reshape(4, 3, 16)  # (logits, channels, positions)
        want_conv += torch.einsum("ocp,odp->cd", per_pos, per_pos)
        z = net[:4](xi[None])
        jac = torch.autograd.functional.jacobian(net[4:], z)[0, :, 0].double()
        want_fc += jac.T @ jac
    torch.testing.assert_close(grams["0"], want_conv / 6)
    torch.testing.assert_close(grams["3"], want_fc / 6)


def test_refit_kron_hits_the_overall_sparsity_and_beats_refit_global() -> None:
    net = build_mlp(MLPConfig(input_size=24, hidden=(32, 16), num_classes=4),
                    torch.Generator().manual_seed(0)).eval()
    x = torch.randn(300, 24, generator=torch.Generator().manual_seed(1))
    context = PruneContext(calibration=x)
    with torch.no_grad():
        dense = net(x)
    errors = {}
    for method in ("refit-global", "refit-kron"):
        weights = prune(net, method, 0.85, context=context)
        pruned = ("layers.0", "layers.1")
        total = sum(weights[n].numel() for n in pruned)
        assert sum(int((weights[n] == 0).sum()) for n in pruned) >= round(0.85 * total)
        with torch.no_grad():
            errors[method] = float((apply_weights(net, weights)(x) - dense).pow(2).mean())
    assert errors["refit-kron"] < errors["refit-global"]


def test_output_grams_are_reused_only_for_the_same_model_and_images(monkeypatch) -> None:
    """A sweep prunes one model at every k: G_out is computed once; new weights or new images
    compute it again."""
    from prunelab.pruning import calibrated, kron

    monkeypatch.setattr(calibrated, "_SWEEP_CACHE", {})  # nothing left by earlier tests
    calls = []
    real = kron.output_grams
    monkeypatch.setattr(kron, "output_grams", lambda *a, **k: calls.append(1) or real(*a, **k))
    net = build_mlp(MLPConfig(input_size=12, hidden=(10,), num_classes=3),
                    torch.Generator().manual_seed(0)).eval()
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(1))
    first = prune(net, "refit-kron", 0.5, context=PruneContext(calibration=x))
    prune(net, "refit-kron", 0.7, context=PruneContext(calibration=x))
    assert len(calls) == 1
    again = prune(net, "refit-kron", 0.5, context=PruneContext(calibration=x))
    torch.testing.assert_close(again, first)  # the cached matrices give the same weights
    prune(net, "refit-kron", 0.5, context=PruneContext(calibration=x + 1))
    assert len(calls) == 2
    with torch.no_grad():
        net.layers[0].weight.mul_(2)
    prune(net, "refit-kron", 0.5, context=PruneContext(calibration=x + 1))
    assert len(calls) == 3
