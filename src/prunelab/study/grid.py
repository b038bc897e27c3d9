"""A study: a grid of datasets x models x seeds, each model swept with the same methods and
sparsities, in one folder.

``STUDY_DIR/<dataset>/<model>/seed<k>/`` is an ordinary run folder per trained model, and
``STUDY_DIR/<dataset>/<model>/`` the multi-seed folder over its seeds (what ``prunelab run
--seeds`` makes); the driver (``driver.run_grid``) trains and sweeps them as jobs. The reports
across the grid are ``prunelab.report.grid``'s.

>>> from prunelab.models import MLPConfig
>>> study = Study(("mnist",), (StudyModel("mlp", "mlp", MLPConfig(hidden=(8,))),), (0, 1))
>>> [str(job.run_dir) for job in study.jobs(Path("out"))]
['out/mnist/mlp/seed0', 'out/mnist/mlp/seed1']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prunelab.data import DATASETS
from prunelab.models import MODELS
from prunelab.study.driver import JOBS_JSON, GridRun, GridSettings, RunJob
from prunelab.study.executors import Executor
from prunelab.study.multiseed import check_seeds, seed_dir
from prunelab.study.runfolder import RunConfig
from prunelab.study.sweep import SweepConfig
from prunelab.train import TrainConfig

__all__ = ["STUDY_FILE", "Study", "StudyModel", "study_run"]

STUDY_FILE = "study.toml"
"""The study file, copied into the study folder (what produced it)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class StudyModel:
    """One model of the grid."""

    name: str
    """Names its folders (letters, digits, ``.``, ``_``, ``-``); unique in the study."""
    family: str
    """A key of ``prunelab.models.MODELS``."""
    config: Any
    """Its options: an instance of ``MODELS[family].config_type``."""
    train: TrainConfig | None = None
    """Its training recipe (the seed is the grid's); None: the family's own."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"model name {self.name!r} cannot name a folder; use letters, "
                             f"digits, '.', '_' and '-'")
        if self.family not in MODELS:
            raise ValueError(f"unknown model {self.family!r}; choose from {sorted(MODELS)}")
        if self.train is None:
            object.__setattr__(self, "train", MODELS[self.family].recipe)

    def run_config(self, dataset: str, seed: int) -> RunConfig:
        return RunConfig(dataset, self.config, replace(self.train, seed=seed), self.family)


@dataclass(frozen=True)
class Study:
    """A grid of datasets x models x seeds, swept with ``sweep``."""

    datasets: tuple[str, ...]
    """Keys of ``prunelab.data.DATASETS``."""
    models: tuple[StudyModel, ...]
    """The models, each trained on every dataset with every seed."""
    seeds: tuple[int, ...]
    """Training seeds (each also seeds its sweep)."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """Methods and sparsities every trained model is swept with."""
    shard_size: int | None = None
    """Sparsities per sweep job; None: all of a method's in one job."""

    def __post_init__(self) -> None:
        for name, values in (("datasets", self.datasets), ("models", self.models)):
            if not values:
                raise ValueError(f"a study needs at least one of {name}")
        unknown = [d for d in self.datasets if d not in DATASETS]
        if unknown:
            raise ValueError(f"unknown dataset {unknown[0]!r}; choose from {sorted(DATASETS)}")
        names = [m.name for m in self.models]
        for what, values in (("dataset", self.datasets), ("model name", names)):
            if len(set(values)) != len(values):
                raise ValueError(f"repeated {what} in {list(values)}")
        check_seeds(self.seeds)
        GridSettings(shard_size=self.shard_size)  # checks it

    def group_dir(self, out: Path, dataset: str, model: StudyModel) -> Path:
        """The multi-seed folder of one (dataset, model)."""
        return Path(out) / dataset / model.name

    def jobs(self, out: Path) -> list[RunJob]:
        """One job per dataset, model and seed, in that order."""
        return [RunJob(seed_dir(self.group_dir(out, d, m), s), m.run_config(d, s), self.sweep,
                       f"{d}/{m.name} seed {s}")
                for d in self.datasets for m in self.models for s in self.seeds]


def study_run(study: Study, out: Path, executor: Executor, data_dir: Path | None = None,
              device: str = "cpu") -> GridRun:
    """The jobs of ``study`` in the folder ``out`` on ``executor`` (``jobs.json`` records the
    jobs that ran); ``.run()`` runs those not done yet. The reports are
    ``prunelab.report.grid.write_study_reports``'s."""
    settings = GridSettings(data_dir, device, study.shard_size)
    return GridRun(study.jobs(out), executor, settings, Path(out) / JOBS_JSON)
