"""Turning a pruned network into a smaller or sparse one, and running it fast.

- ``compact``: dead units, their weights and unread inputs removed (``CompactMLP``);
- ``layers``: per-layer backends (dense, torch CSR, numba CSR);
- ``kernels``: numba kernels (the fused whole-network sparse chain);
- ``timing``: timing calls and the auto backend that picks the fastest plan;
- ``export``: save/load model files (safetensors + JSON) and ONNX export.
"""
