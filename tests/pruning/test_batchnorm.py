"""BatchNorm re-estimation after pruning: exact statistics, nothing else changed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelab.pruning.batchnorm import has_batchnorm, recalibrate_batchnorm


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 2)).eval()


def test_statistics_are_the_exact_mean_and_variance_of_the_calibration_inputs() -> None:
    net, x = _net(), torch.randn(50, 1, 6, 6) * 2 + 1
    fixed = recalibrate_batchnorm(net, x)  # one batch: the exact statistics
    with torch.no_grad():
        z = net[0](x)  # (N, C, H, W) inputs of the BatchNorm
    mean = z.mean((0, 2, 3))
    var = z.var((0, 2, 3), unbiased=True)
    torch.testing.assert_close(fixed[1].running_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fixed[1].running_var, var, rtol=1e-4, atol=1e-5)
    assert not fixed.training and not fixed[1].training
    assert fixed[1].momentum == net[1].momentum == 0.1


def test_weights_and_the_input_model_are_untouched() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fixed = recalibrate_batchnorm(net, [torch.randn(8, 1, 6, 6) for _ in range(3)])
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    for key in ("0.weight", "1.weight", "1.bias", "4.weight"):
        assert torch.equal(fixed.state_dict()[key], before[key])
    assert int(fixed[1].num_batches_tracked) == 3


def test_no_batchnorm_and_empty_inputs() -> None:
    plain = nn.Sequential(nn.Linear(2, 2))
    assert not has_batchnorm(plain) and has_batchnorm(_net())
    assert recalibrate_batchnorm(plain, torch.randn(4, 2)) is not plain
    with pytest.raises(ValueError, match="no calibration inputs"):
        recalibrate_batchnorm(_net(), [])
    with pytest.raises(ValueError, match="batch_size"):
        recalibrate_batchnorm(_net(), torch.randn(4, 1, 6, 6), batch_size=0)


def test_later_batchnorms_see_inputs_normalised_with_the_new_statistics() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3),
                        nn.BatchNorm1d(3)).eval()
    x = torch.randn(400, 4) * 3
    fixed = recalibrate_batchnorm(net, x)
    with torch.no_grad():
        z = fixed[3](torch.relu(fixed[1](fixed[0](x))))  # eval mode: the new statistics
    # train mode normalised with the biased variance: N / (N - 1) from eval mode's
    torch.testing.assert_close(fixed[4].running_mean, z.mean(0), rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(fixed[4].running_var, z.var(0), rtol=1e-2, atol=1e-3)
    split = recalibrate_batchnorm(net, x, batch_size=100)  # average of 4 equal batches
    torch.testing.assert_close(split[1].running_mean, fixed[1].running_mean, rtol=1e-4, atol=1e-5)
