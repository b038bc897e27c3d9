"""Inference layers that run a Linear layer's weight in one of several backends.

Every layer takes and returns *feature-major* activations, ``h`` of shape (features, batch),
so a network converts once at its input and once at its output. A sparse weight then reads
contiguous rows of ``h`` for each nonzero, and the ReLU is applied in place (or fused).

``LAYER_BACKENDS`` maps a backend name to the class that builds it from a dense weight:

- ``dense``: ``torch.mm`` with the (compacted) dense weight;
- ``csr-torch``: torch CSR with int32 indices, ``torch.mm(W_csr, h)``;
- ``csr-numba``: prunelab's own numba kernels (``prunelab.inference.kernels``), ReLU fused: CSR in
  tiles of 64 samples for batches, by input column (skipping zero inputs) for a single sample.

>>> import torch
>>> w = torch.tensor([[0.0, 2.0], [-1.0, 0.0]])
>>> h = torch.tensor([[1.0], [3.0]])  # (in=2, batch=1)
>>> [LAYER_BACKENDS[b](w, None, relu=True)(h).flatten().tolist() for b in LAYER_BACKENDS]
[[6.0, 0.0], [6.0, 0.0], [6.0, 0.0]]
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LAYER_BACKENDS", "TORCH_CSR_CHUNK", "CSRNumbaLayer", "CSRTorchLayer", "DenseLayer",
    "check_backend",
]

TORCH_CSR_CHUNK = 1024
"""Samples per ``torch.mm`` call of a torch CSR layer."""

FUSED_MIN_BATCH = 512
"""From this many samples a dense batch-major layer runs as oneDNN's linear with the ReLU fused
(where torch has it). Measured, compacted unit-pruned nets at 2 threads: 90 % units 20.7x ->
21.1x vs dense at batch 1024 and 23.5x -> 26.9x at 10,000; below 512 samples it was slower."""

FUSED_MIN_WEIGHTS = 50_000
"""...and only for layers with at least this many weights. Measured at batch 1024, 2 threads:
100x784 in 873 us fused against 909 us with ``F.linear``, but 50x100 in 85 us against 75 us
and 20x50 in 34 us against 23 us (the 90 %-unit-pruned net: 1.245 -> 1.218 ms)."""


def _has_fused_linear() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                                 "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_FUSED_LINEAR = _has_fused_linear()


class DenseLayer(nn.Module):
    """``relu(W @ h + b)`` with a dense (out, in) weight."""

    backend = "dense"
    batch_major = True
    """``forward_rows`` runs natively on (batch, in) activations, without transposing them."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().reshape(-1, 1))
        self.relu = relu

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the weight."""
        return tuple(self.weight.shape)

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense (out, in) tensor."""
        return self.weight

    def _matmul(self, h: torch.Tensor) -> torch.Tensor:
        return torch.mm(self.weight, h)  # (out, in) @ (in, batch)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self._matmul(h)
        if self.bias is not None:
            y += self.bias
        return torch.relu_(y) if self.relu else y

    def forward_rows(self, h: torch.Tensor) -> torch.Tensor:
        """The same layer on batch-major activations: (batch, in) -> (batch, out)."""
        bias = None if self.bias is None else self.bias.reshape(-1)
        if (_FUSED_LINEAR and h.shape[0] >= FUSED_MIN_BATCH and h.dtype == torch.float32
                and h.device.type == "cpu" and self.weight.numel() >= FUSED_MIN_WEIGHTS):
            return torch.ops.mkldnn._linear_pointwise(h.contiguous(), self.weight, bias,
                                                      "relu" if self.relu else "none", [], "")
        y = F.linear(h, self.weight, bias)
        return torch.relu_(y) if self.relu else y


def _csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
                shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class CSRTorchLayer(DenseLayer):
    """Like ``DenseLayer`` with the weight in torch's CSR format (int32 indices)."""

    backend = "csr-torch"
    batch_major = False  # torch's CSR product wants the activations feature-major

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> None:
        super().__init__(weight, bias, relu)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            csr = self.weight.to_sparse_csr()
        self.csr = _csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(),
                               tuple(csr.shape))
        del self.weight  # the CSR copy is all the layer needs
        self._shape = tuple(csr.shape)

    def __getstate__(self) -> dict:
        # torch cannot copy or pickle a sparse CSR tensor itself: keep its three arrays.
        state = self.__dict__.copy()
        csr = state.pop("csr")
        state["_csr_parts"] = (csr.crow_indices().clone(), csr.col_indices().clone(),
                               csr.values().clone())
        return state

    def __setstate__(self, state: dict) -> None:
        parts = state.pop("_csr_parts")
        super().__setstate__(state)
        self.csr = _csr_tensor(*parts, self._shape)

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def dense_weight(self) -> torch.Tensor:
        return self.csr.to_dense()

    def forward_rows(self, h: torch.Tensor) -> torch.Tensor:
        return self.forward(h.t().contiguous()).t()

    def _matmul(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[1] <= TORCH_CSR_CHUNK:
            return torch.mm(self.csr, h)
        # torch's CSR product slows down on wide inputs; ~2x faster in 1024-sample slices.
        return torch.cat([torch.mm(self.csr, part.contiguous())
                          for part in h.split(TORCH_CSR_CHUNK, dim=1)], dim=1)


class CSRNumbaLayer(DenseLayer):
    """Like ``DenseLayer`` with the weight as CSR arrays run by ``prunelab.inference.kernels``:
    batches by ``chain_matmul`` (bias and ReLU fused), single samples by input columns."""

    backend = "csr-numba"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> None:
        super().__init__(weight, bias, relu)
        # Imported here: numba takes ~0.4 s to import, which plain `import prunelab` should not pay.
        from prunelab.inference import kernels

        self._shape = tuple(self.weight.shape)
        # The layer as a one-layer chain (the CSR arrays, bias and ReLU) for batches.
        self.chain = kernels.pack_csr_chain(
            [kernels.csr_arrays(self.weight.numpy())],
            [None if bias is None else self.bias.flatten().numpy()],
            np.arange(self._shape[1]), relu_last=relu)
        self.csc = kernels.csc_arrays(self.weight.numpy())  # for single samples
        del self.weight

    @property
    def csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, indices, data) of the weight's nonzeros, by output row."""
        return self.chain[0], self.chain[1], self.chain[2]

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def dense_weight(self) -> torch.Tensor:
        w = np.zeros(self._shape, dtype=np.float32)
        indptr, indices, data = self.csr
        w[np.repeat(np.arange(self._shape[0]), np.diff(indptr)), indices] = data
        return torch.from_numpy(w)

    def _single(self, x: np.ndarray) -> torch.Tensor:
        # One sample (in,) by input columns; the ReLU goes into the kernel only without a bias.
        from prunelab.inference import kernels  # imported by __init__ already; not kept (pickling)

        fused = self.bias is None
        y = torch.from_numpy(kernels.csc_matvec(*self.csc, x, self._shape[0], self.relu and fused))
        if not fused:
            y += self.bias.flatten()
            if self.relu:
                torch.relu_(y)
        return y

    def _batch(self, h: torch.Tensor, by_feature: bool) -> torch.Tensor:
        from prunelab.inference import kernels

        return torch.from_numpy(kernels.chain_matmul(self.chain, h.detach().numpy(), by_feature))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[1] == 1:
            return self._single(h.detach().reshape(-1).contiguous().numpy()).reshape(-1, 1)
        return self._batch(h, by_feature=True)

    def forward_rows(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[0] == 1:
            return self._single(h.detach().reshape(-1).contiguous().numpy()).reshape(1, -1)
        return self._batch(h, by_feature=False)


LAYER_BACKENDS: dict[str, type[DenseLayer]] = {
    cls.backend: cls for cls in (DenseLayer, CSRTorchLayer, CSRNumbaLayer)
}


def check_backend(name: str) -> str:
    """``name`` if it is a key of ``LAYER_BACKENDS``, else a ``ValueError`` listing them."""
    if name not in LAYER_BACKENDS:
        raise ValueError(f"unknown layer backend {name!r}; choose from {sorted(LAYER_BACKENDS)}")
    return name
