"""Registers the baselines and the calibration-aware methods (imported by ``prunelab.pruning``).

Every calibration-aware method reads ``context.calibration`` (N training images), processes the
layers in network order so each sees the already pruned network's inputs, and never changes the
model. See each module for the method, the paper it follows and its cost.
"""

from __future__ import annotations

from prunelab.pruning import PruningMethod, register
from prunelab.pruning.allocation import energy_allocation, magnitude_allocation
from prunelab.pruning.baselines import global_unit, global_weight, random_unit, random_weight
from prunelab.pruning.kron import kron_compute
from prunelab.pruning.obs import sparsegpt_compute
from prunelab.pruning.patterns import nm_method
from prunelab.pruning.refit import (
    layer_rule,
    magnitude_score,
    refit_compute,
    sqrt_activation_score,
)
from prunelab.pruning.select import best_of
from prunelab.pruning.structured import (
    chain_or_graph,
    graph_unit_compute,
    obs_allocation_any,
    obs_units,
    unit_refit_any,
)
from prunelab.pruning.units import (
    UNIT_RELU_ROUNDS,
    activation_choice,
    obs_allocation,
    obs_choice,
    obs_chooser,
    unit_compute,
)
from prunelab.pruning.wanda import wanda_compute, wanda_scores

__all__: list[str] = []

# Any other model than an MLP: channels chosen by group OBS, every later layer refit as well.
_GRAPH_OBS = graph_unit_compute(obs_units, compensate=True)
_GRAPH_OBS_ALLOCATED = graph_unit_compute(obs_units, obs_allocation_any, compensate=True)

for _method in (
    PruningMethod("global-weight", "weight", global_weight,
                  "one |w| threshold across all pruned layers (overall sparsity k, per-layer "
                  "sparsities differ)", overall_sparsity=True),
    PruningMethod("random-weight", "weight", random_weight,
                  "per layer, round(k * n) weights zeroed at random (sanity floor)"),
    PruningMethod("global-unit", "unit", global_unit,
                  "one incoming-L2-norm threshold on units across all pruned layers "
                  "(overall k of the units)", overall_sparsity=True),
    PruningMethod("random-unit", "unit", random_unit,
                  "per layer, round(k * units) units removed at random (sanity floor)"),
    PruningMethod("wanda", "weight", wanda_compute(),
                  "Wanda (Sun et al. 2023): per row, zero the lowest |w| * ||x||; no update",
                  needs_calibration=True),
    PruningMethod("sparsegpt", "weight", sparsegpt_compute(),
                  "SparseGPT (Frantar & Alistarh 2023): OBS saliency with sequential weight "
                  "updates", needs_calibration=True),
    PruningMethod("refit-magnitude", "weight", refit_compute(magnitude_score, layer_rule),
                  "per-layer |w| mask, then a least-squares refit of every row to the dense "
                  "layer's outputs", needs_calibration=True),
    PruningMethod("refit-wanda", "weight", refit_compute(wanda_scores),
                  "Wanda's per-row mask, then a least-squares refit of every row",
                  needs_calibration=True),
    PruningMethod("refit-gradual", "weight",
                  refit_compute(sqrt_activation_score, layer_rule, steps=3, refit_output=True),
                  "per-layer |w| * sqrt(||x||) mask reached in 3 steps (75 % first), least-squares "
                  "refit after each; output layer refit to the dense logits",
                  needs_calibration=True, calibration_size=8192),
    PruningMethod("refit-global", "weight",
                  refit_compute(sqrt_activation_score, layer_rule, steps=3,
                                allocate=magnitude_allocation, refit_output=True),
                  "refit-gradual with per-layer sparsities from one global |w| threshold "
                  "(overall k; data-free allocation, any model)", needs_calibration=True,
                  overall_sparsity=True),
    PruningMethod("refit-kron", "weight", kron_compute(magnitude_allocation),
                  "refit-global with masks and least-squares refits weighted by each layer's "
                  "effect on the dense logits (Kronecker-factored Gauss-Newton; rows coupled); "
                  "per-layer sparsities from one global |w| threshold (overall k)",
                  needs_calibration=True, overall_sparsity=True),
    PruningMethod("refit-allocated", "weight",
                  refit_compute(wanda_scores, layer_rule, allocate=energy_allocation,
                                refit_output=True),
                  "per-layer sparsities from the relative output energy (overall k), "
                  "|w| * ||x|| mask, least-squares refit; output layer refit",
                  needs_calibration=True, overall_sparsity=True),
    PruningMethod("unit-act-refit", "unit",
                  chain_or_graph(unit_compute(activation_choice), unit_refit_any),
                  "units with the lowest ||activation|| * ||outgoing weights|| removed; the "
                  "layers reading them refit by least squares", needs_calibration=True, heads=True),
    PruningMethod("unit-obs", "unit",
                  chain_or_graph(unit_compute(obs_choice), _GRAPH_OBS),
                  "units removed greedily by structured OBS (a channel: all the columns it "
                  "feeds), the layers reading them refit by least squares",
                  needs_calibration=True, heads=True),
    PruningMethod("unit-obs-selected", "unit",
                  chain_or_graph(best_of({f"batch {b}": unit_compute(obs_chooser(b))
                                          for b in (0.01, 0.02, 0.03, 0.05)}),
                                 _GRAPH_OBS),
                  "unit-obs with 1, 2, 3 and 5 % of the units per OBS step; keeps the variant "
                  "agreeing most with the dense predictions on the calibration images (other "
                  "models than an MLP: unit-obs, one unit per step)",
                  needs_calibration=True, heads=True),
    PruningMethod("unit-obs-allocated", "unit",
                  chain_or_graph(unit_compute(obs_choice, obs_allocation,
                                              relu_rounds=UNIT_RELU_ROUNDS),
                                 _GRAPH_OBS_ALLOCATED),
                  "unit-obs with per-layer unit counts from the OBS error curves (k of all "
                  "pruned units overall); on an MLP a ReLU-aware refit of the next layer",
                  needs_calibration=True, heads=True, overall_sparsity=True),
):
    register(_method)

for _name in ("magnitude-2:4", "wanda-2:4", "sparsegpt-2:4", "refit-2:4"):
    register(nm_method(_name))
