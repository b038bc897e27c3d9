"""Training killed mid-way (SIGKILL) and run again continues from its last checkpoint and ends
with the very bits of an uninterrupted training."""

import json

import pytest
import torch

from prunelab import data as data_mod
from prunelab.data import Dataset
from prunelab.models import MLPConfig, build_model
from prunelab.study.checkpoint import CHECKPOINT_DIR, read_checkpoint, write_checkpoint
from prunelab.study.runfolder import RunConfig
from prunelab.train import TrainConfig, train

from .. import procs
from ..conftest import assert_one_line_error, invoke, make_dataset_dir

TRAIN = ["train", "--epochs", "4", "--hidden", "32,16", "--batch-size", "64", "--device", "cpu"]


@pytest.fixture
def spec(tmp_path):
    return make_dataset_dir(tmp_path / "data", "fashion-mnist")


def test_killed_training_resumes_bitwise(spec, tmp_path, monkeypatch):
    data = ["--data-dir", tmp_path / "data"]
    monkeypatch.setitem(data_mod.DATASETS, "fashion-mnist", spec)
    whole = invoke(*TRAIN, *data, "--out", tmp_path / "whole")  # in this process: saves a start
    assert whole.exit_code == 0, whole.output
    run = tmp_path / "killed"
    state = run / CHECKPOINT_DIR / "state.json"
    proc = procs.start(spec, *TRAIN, *data, "--out", run, delay=0.3)
    procs.kill_when(proc, state.is_file)
    assert not (run / "model.safetensors").exists()  # killed before the end
    done = json.loads(state.read_text())["epoch"]
    assert 1 <= done < 4

    again = invoke(*TRAIN, *data, "--out", run)  # the same command, here in this process
    assert again.exit_code == 0, again.output
    assert f"resuming the training in {run} after epoch {done} of 4" in again.output
    assert (run / "model.safetensors").read_bytes() == \
        (tmp_path / "whole" / "model.safetensors").read_bytes()
    metrics = [[{k: v for k, v in h.items() if k != "seconds"}
                for h in json.loads((d / "history.json").read_text())]
               for d in (run, tmp_path / "whole")]
    assert metrics[0] == metrics[1] and len(metrics[0]) == 4
    assert not (run / CHECKPOINT_DIR).exists()


def _tiny(n: int = 96) -> Dataset:
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)
    return Dataset("fashion-mnist", x, y, x[:32], y[:32])


@pytest.mark.parametrize("recipe", [
    TrainConfig(epochs=3, batch_size=32),
    TrainConfig(epochs=3, batch_size=32, optimizer="adamw", weight_decay=0.05,
                schedule="onecycle", lr=3e-3),
])
def test_checkpoint_round_trip_continues_bitwise(tmp_path, recipe, one_thread):
    """Optimiser moments, the one-cycle schedule (lr and beta1) and the shuffle generator all
    come back from the files: a resumed run matches an uninterrupted one bit for bit."""
    config = RunConfig(model=MLPConfig(hidden=(16,)), train=recipe)
    data = _tiny()

    def fresh():
        return build_model("mlp", config.model, torch.Generator().manual_seed(0))

    whole = fresh()
    train(whole, data, recipe)
    first = fresh()
    train(first, data, recipe,
          on_epoch=lambda s: s.epoch == 1 and write_checkpoint(tmp_path, config, s))
    state = read_checkpoint(tmp_path, config)
    assert state is not None and state.epoch == 1
    torch.manual_seed(1234)  # the global RNG comes back from the checkpoint too
    resumed = fresh()
    history = train(resumed, data, recipe, resume=state)
    assert len(history) == 3 and history[0] == state.history[0]
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_checkpoint_of_another_configuration_is_discarded(tmp_path, tiny_data_dir):
    """A checkpoint left by a different command (here 3 epochs, not 2) is not resumed: the
    training starts afresh and the stale checkpoint is deleted."""
    other = RunConfig(model=MLPConfig(hidden=(32, 16)), train=TrainConfig(epochs=3, batch_size=64))
    model = build_model("mlp", other.model, torch.Generator().manual_seed(0))
    train(model, _tiny(), other.train,
          on_epoch=lambda s: s.epoch == 1 and write_checkpoint(tmp_path / "r", other, s))
    assert (tmp_path / "r" / CHECKPOINT_DIR / "state.json").is_file()
    result = invoke(*TRAIN[:2], "2", *TRAIN[3:], "--data-dir", tiny_data_dir,
                    "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "resuming" not in result.output
    assert len(json.loads((tmp_path / "r" / "history.json").read_text())) == 2
    assert not (tmp_path / "r" / CHECKPOINT_DIR).exists()


def test_unreadable_checkpoint_is_a_one_line_error(tmp_path, tiny_data_dir):
    folder = tmp_path / "r" / CHECKPOINT_DIR
    folder.mkdir(parents=True)
    (folder / "state.json").write_text('{"format": "prunelab-train-checkpoint", "version": 1}')
    result = invoke(*TRAIN, "--data-dir", tiny_data_dir, "--out", tmp_path / "r")
    assert_one_line_error(result, "state.json", "not a usable training checkpoint")
    assert not (tmp_path / "r" / "model.safetensors").exists()
