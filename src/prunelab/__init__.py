"""prunelab: post-hoc pruning of trained PyTorch networks.

>>> import torch, prunelab
>>> net = prunelab.build_mlp(prunelab.MLPConfig(hidden=(64, 32)), torch.Generator().manual_seed(0))
>>> pruned = prunelab.apply_weights(net, prunelab.prune(net, "unit", 0.5))
>>> prunelab.measure_sparsity(pruned).layers[0].zero_fraction
0.5
"""

from prunelab.data import load_dataset
from prunelab.evaluate import evaluate
from prunelab.inference.compact import compact
from prunelab.inference.export import load_model, save_model
from prunelab.models import MLP, MODELS, MLPConfig, build_mlp, build_model
from prunelab.pruning import METHODS, PruneContext, apply_weights, prune
from prunelab.pruning.sparsity import measure_sparsity
from prunelab.study.runfolder import load_results, load_run
from prunelab.study.sweep import SweepConfig
from prunelab.train import TrainConfig, train

__all__ = [
    "METHODS",
    "MLP",
    "MLPConfig",
    "MODELS",
    "PruneContext",
    "SweepConfig",
    "TrainConfig",
    "apply_weights",
    "build_mlp",
    "build_model",
    "compact",
    "evaluate",
    "load_dataset",
    "load_model",
    "load_results",
    "load_run",
    "measure_sparsity",
    "prune",
    "save_model",
    "train",
]
