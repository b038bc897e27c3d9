"""Pieces the image models share: image-shaped input and initialisation from a generator.

Every zoo model is built on the meta device, allocated, then filled by per-module-type init
rules that draw only from the passed ``torch.Generator``: the global RNG is never touched, and a
module type without a rule is an error rather than a silently default-initialised layer.

>>> import torch
>>> as_images(torch.zeros(3, 784)).shape
torch.Size([3, 1, 28, 28])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["IMAGE_SHAPE", "InitRule", "as_images", "check_positive_int", "init_batch_norm",
           "init_layer_norm", "materialise"]

IMAGE_SHAPE = (1, 28, 28)
"""(channels, height, width) of one Fashion-MNIST / MNIST image."""

InitRule = Callable[[Any, torch.Generator | None], None]
"""Fills one module's own parameters and buffers in place, drawing from the generator."""

M = TypeVar("M", bound=nn.Module)


def as_images(x: torch.Tensor) -> torch.Tensor:
    """(N, 784) or (N, 1, 28, 28) -> (N, 1, 28, 28); any other shape is a ValueError."""
    if x.dim() == 2 and x.shape[1] == IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]:
        return x.reshape(-1, *IMAGE_SHAPE)  # -1, not len(x): an ONNX batch axis stays dynamic
    if x.dim() == 4 and tuple(x.shape[1:]) == IMAGE_SHAPE:
        return x
    raise ValueError(f"expected input of shape (N, 784) or (N, 1, 28, 28), got {tuple(x.shape)}")


def check_positive_int(field: str, value: object) -> None:
    """ValueError naming ``field`` unless ``value`` is a positive ``int`` (``bool`` is not)."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")


def _owns_tensors(module: nn.Module) -> bool:
    """Whether ``module`` itself (not its children) holds parameters or buffers."""
    return any(True for _ in module.parameters(recurse=False)) or any(
        True for _ in module.buffers(recurse=False))


def materialise(
    factory: Callable[[], M],
    rules: Mapping[type[nn.Module], InitRule],
    generator: torch.Generator | None,
) -> M:
    """``factory()`` built without drawing random numbers, then initialised by ``rules``.

    Modules are visited in registration order, so the same generator state gives the same
    weights. ``generator=None`` draws from the global RNG instead.

    >>> norm = materialise(lambda: nn.LayerNorm(3), {nn.LayerNorm: init_layer_norm}, None)
    >>> norm.weight.tolist(), norm.bias.tolist()
    ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    """
    with torch.device("meta"):
        net = factory()
    net.to_empty(device="cpu")
    with torch.no_grad():
        for name, module in net.named_modules():
            if not _owns_tensors(module):
                continue
            rule = rules.get(type(module))
            if rule is None:
                raise TypeError(f"no init rule for {type(module).__name__} at {name or 'root'!r}; "
                                f"rules cover {sorted(t.__name__ for t in rules)}")
            rule(module, generator)
    return net


def init_batch_norm(module: nn.BatchNorm2d, generator: torch.Generator | None) -> None:
    """Identity affine (gain 1, shift 0) and fresh running statistics; draws nothing."""
    nn.init.ones_(module.weight)
    nn.init.zeros_(module.bias)
    module.reset_running_stats()


def init_layer_norm(module: nn.LayerNorm, generator: torch.Generator | None) -> None:
    """Identity affine (gain 1, shift 0); draws nothing."""
    nn.init.ones_(module.weight)
    nn.init.zeros_(module.bias)
