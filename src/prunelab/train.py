"""Training loop: Adam or AdamW on in-memory tensors, reshuffled each epoch from a seed.

The learning rate is constant or follows a one-cycle schedule stepped once per batch. Returns the
per-epoch history; saves nothing by itself. After every epoch ``on_epoch`` gets a ``TrainState``
(model, optimiser, schedule and every random state, as tensors plus JSON-able values) from which
``train(..., resume=state)`` continues exactly as if it had never stopped (bitwise on a CPU).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.data import Dataset
from prunelab.evaluate import evaluate

__all__ = ["OPTIMIZERS", "SCHEDULES", "EpochStats", "StateMismatch", "StepInfo", "TrainConfig",
           "TrainState", "strict_blas", "train"]

log = logging.getLogger(__name__)

def strict_blas() -> None:
    """Ask MKL for results that do not depend on the number of threads (its strict conditional
    numerical reproducibility, ``MKL_CBWR=AUTO,STRICT``; an explicit ``MKL_CBWR`` of the user's
    wins), so a seed trained by a worker with 1 thread gives the same bits as with 2.

    MKL reads the variable at its first call, so this must run before any computation: the
    study commands (train, run, sweep, study) and the grid's job functions call it first. It is
    not set on import: it costs small-batch inference (measured here, the seed MLP at batch 1:
    0.45 -> 0.60 ms per forward), which ``bench`` and ``compact`` should not pay.
    """
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,  # weight_decay is an L2 term added to the gradient
    "adamw": torch.optim.AdamW,  # weight_decay is decoupled from the gradient
}
"""Optimisers by name; each is built with ``fused=True``."""


def _one_cycle(optimiser: torch.optim.Optimizer, max_lr: float,
               total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """PyTorch's one-cycle defaults: 30 % warm-up from max_lr/25, cosine down to max_lr/2.5e5,
    Adam's beta1 cycled between 0.95 and 0.85 against the learning rate."""
    return torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=max_lr, total_steps=total_steps)


SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, float, int],
                              torch.optim.lr_scheduler.LRScheduler] | None] = {
    "constant": None,
    "onecycle": _one_cycle,
}
"""Learning-rate schedules by name: (optimiser, lr, total steps) -> a per-batch scheduler."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train: the original challenge's recipe by default."""

    epochs: int = 30
    """Passes over the training set."""
    batch_size: int = 128
    """Samples per optimiser step."""
    lr: float = 1e-3
    """Learning rate (the peak under ``schedule="onecycle"``)."""
    seed: int = 0
    """Seeds the weight init and the per-epoch shuffles."""
    optimizer: str = "adam"
    """A key of ``OPTIMIZERS``."""
    weight_decay: float = 0.0
    """Weight decay of the optimiser, applied to weights with 2+ dimensions only."""
    schedule: str = "constant"
    """A key of ``SCHEDULES``."""

    def __post_init__(self) -> None:
        for field in ("epochs", "batch_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) \
                or not 0 <= self.seed < 2**64:  # what torch.Generator.manual_seed takes
            raise ValueError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, "
                             f"got {self.schedule!r}")


@dataclass(frozen=True)
class StepInfo:
    """Progress of one optimisation step, handed to the ``on_step`` callback."""

    epoch: int
    """1-based epoch."""
    step: int
    """1-based step within the epoch."""
    steps_per_epoch: int
    """Steps in every epoch."""
    loss: float
    """Mean training loss so far this epoch."""
    accuracy: float
    """Training accuracy so far this epoch."""
    lr: float
    """Learning rate this step used."""


@dataclass(frozen=True)
class EpochStats:
    """One row of the training history."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float
    """Wall time of the epoch's optimisation steps (evaluation excluded)."""


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weights and embeddings (2+ dims); never biases or norm gains (as nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def _optimiser(
    model: nn.Module, config: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The optimiser and (unless the schedule is constant) its per-batch scheduler."""
    # Without weight decay, one group of model.parameters(): exactly the original recipe.
    params = (_param_groups(model, config.weight_decay) if config.weight_decay > 0
              else model.parameters())
    # Fused optimisers update all parameters in one kernel: on 2 CPU cores the foreach/loop
    # variants cost a noticeable share of the epoch for the 2.4M-parameter MLP.
    optimiser = OPTIMIZERS[config.optimizer](params, lr=config.lr,
                                             weight_decay=config.weight_decay, fused=True)
    make_scheduler = SCHEDULES[config.schedule]
    scheduler = None if make_scheduler is None else make_scheduler(optimiser, config.lr,
                                                                   total_steps)
    return optimiser, scheduler


class StateMismatch(ValueError):
    """A ``TrainState`` to resume from does not fit the model, optimiser or recipe."""


@dataclass(frozen=True)
class TrainState:
    """Everything needed to continue training after ``epoch``: what a checkpoint holds."""

    epoch: int
    """Epochs completed."""
    history: list[EpochStats]
    """One row per completed epoch."""
    tensors: dict[str, torch.Tensor]
    """``model.*`` weights, ``optimizer.<param>.<key>`` moments, ``rng.*`` generator states."""
    meta: dict[str, Any]
    """JSON-able rest: optimiser param groups, schedule state, Python and NumPy RNG states."""


def _capture(epoch: int, history: list[EpochStats], model: nn.Module,
             optimiser: torch.optim.Optimizer, scheduler: Any,
             gen: torch.Generator) -> TrainState:
    """A copy of the training state (on the CPU) after ``epoch`` epochs."""
    tensors = {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    plain: dict[str, dict[str, Any]] = {}
    opt = optimiser.state_dict()
    for pid, entries in opt["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().clone()
            else:
                plain.setdefault(str(pid), {})[key] = value
    mt_name, mt_keys, mt_pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.shuffle"] = gen.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(mt_keys, dtype=np.int64))
    meta = {
        "optimizer": {"param_groups": opt["param_groups"], "state": plain},
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "rng": {"python": random.getstate(),
                "numpy": [mt_name, int(mt_pos), int(has_gauss), float(gauss)]},
    }
    return TrainState(epoch, list(history), tensors, meta)


def _restore(state: TrainState, model: nn.Module, optimiser: torch.optim.Optimizer,
             scheduler: Any, gen: torch.Generator) -> None:
    """Put ``state`` back into the model, optimiser, schedule and random generators.

    Raises ValueError when it does not fit them (another model or optimiser)."""
    t, meta = state.tensors, state.meta
    try:
        model.load_state_dict({k.removeprefix("model."): v for k, v in t.items()
                               if k.startswith("model.")})
        opt_state: dict[int, dict[str, Any]] = {}
        for name, value in t.items():
            if name.startswith("optimizer."):
                _, pid, key = name.split(".", 2)
                opt_state.setdefault(int(pid), {})[key] = value
        for pid, entries in meta["optimizer"]["state"].items():
            opt_state.setdefault(int(pid), {}).update(entries)
        optimiser.load_state_dict({"state": opt_state,
                                   "param_groups": meta["optimizer"]["param_groups"]})
        if (scheduler is None) != (meta["scheduler"] is None):
            raise ValueError("the learning-rate schedule differs")
        if scheduler is not None:
            scheduler.load_state_dict(meta["scheduler"])
        gen.set_state(t["rng.shuffle"])
        torch.set_rng_state(t["rng.torch"])
        name, pos, has_gauss, gauss = meta["rng"]["numpy"]
        np.random.set_state((name, t["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss,
                             gauss))
        version, internal, gauss_next = meta["rng"]["python"]
        random.setstate((version, tuple(internal), gauss_next))
    except (RuntimeError, KeyError, TypeError, IndexError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StateMismatch(f"training state does not fit this model and recipe ({first})") \
            from None


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    device: torch.device | str = "cpu",
    on_step: Callable[[StepInfo], None] | None = None,
    resume: TrainState | None = None,
    on_epoch: Callable[[TrainState], None] | None = None,
) -> list[EpochStats]:
    """Train ``model`` in place; returns one ``EpochStats`` per epoch.

    ``resume``: a state ``on_epoch`` was given, to continue from (the model is overwritten with
    its weights). ``on_epoch``: called with the state after every epoch.
    """
    device = torch.device(device)
    model.to(device).train()
    x, y = data.train_x.to(device), data.train_y.to(device)
    gen = torch.Generator().manual_seed(config.seed)
    n = len(x)
    steps = (n + config.batch_size - 1) // config.batch_size
    optimiser, scheduler = _optimiser(model, config, config.epochs * steps)
    history: list[EpochStats] = []
    if resume is not None:
        if not 0 <= resume.epoch <= config.epochs or len(resume.history) != resume.epoch:
            raise StateMismatch(f"training state after epoch {resume.epoch} with "
                             f"{len(resume.history)} history rows does not fit "
                             f"{config.epochs} epochs")
        _restore(resume, model, optimiser, scheduler, gen)
        history = list(resume.history)
    for epoch in range(len(history) + 1, config.epochs + 1):
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        start = time.perf_counter()
        for step in range(steps):
            idx = perm[step * config.batch_size : (step + 1) * config.batch_size]
            xb, yb = x[idx], y[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            lr = optimiser.param_groups[0]["lr"]
            optimiser.step()
            if scheduler is not None:
                scheduler.step()
            with torch.no_grad():
                loss_sum += loss.detach() * len(idx)
                correct += (logits.argmax(1) == yb).sum()
            if on_step is not None:
                seen = min((step + 1) * config.batch_size, n)
                on_step(StepInfo(epoch, step + 1, steps, loss_sum.item() / seen,
                                 correct.item() / seen, float(lr)))
        seconds = time.perf_counter() - start
        test_acc, test_loss = evaluate(model, data.test_x, data.test_y)
        model.train()
        stats = EpochStats(epoch, loss_sum.item() / n, correct.item() / n, test_loss, test_acc,
                           seconds)
        log.info("epoch %d: %s", epoch, stats)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(_capture(epoch, history, model, optimiser, scheduler, gen))
    return history
