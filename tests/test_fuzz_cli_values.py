"""Command-line value parsing against arbitrary text: a checked value, or one ValueError line
naming the option; through the real CLI, exit code 1, one ``Error:`` line, nothing written."""

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from prunelab.cli.parse import (
    MAX_SEED,
    parse_batch_sizes,
    parse_hidden,
    parse_methods,
    parse_model_options,
    parse_percents,
    parse_seeds,
)
from prunelab.models import LeNet5Config, ResNetConfig, ViTConfig
from prunelab.study.sweep import SweepConfig

from .conftest import assert_one_line_error, invoke
from .fuzzing import fuzz

# Lists of number-like pieces: digits (ASCII and not), signs, exponents, nan, huge values.
PIECE = st.sampled_from(["0", "1", "50", "99.5", "100", "101", "-3", "1e2", "nan", "inf",
                         "-0", "²", "١٢", "0x10", "1_0", "", " ", "a", str(2**64),
                         str(MAX_SEED), "9" * 40, "1.5", "--1", "+5"]) | st.text(max_size=4)
LISTS = st.lists(PIECE, max_size=5).map(",".join) | st.text(max_size=12)


def _error(fn, text, needle):
    """``fn(text)``'s value, or None after checking its error is one line naming ``needle``."""
    try:
        return fn(text)
    except ValueError as e:
        assert "\n" not in str(e) and needle in str(e), str(e)
        return None


@fuzz(1000)
@given(text=LISTS)
@example(text="²")
def test_sparsities(text):
    values = _error(parse_percents, text, "--sparsities")
    if values is not None:
        assert values and all(0 <= v <= 1 for v in values)
        _error(lambda v: SweepConfig(("weight",), v), values, "sparsit")


@fuzz(1000)
@given(text=LISTS)
@example(text="²")
@example(text=str(2**64))
def test_seeds(text):
    seeds = _error(parse_seeds, text, "seed")
    if seeds is not None:
        assert all(isinstance(s, int) and 0 <= s <= MAX_SEED for s in seeds)
        assert len(set(seeds)) == len(seeds)


@fuzz(1000)
@given(text=LISTS)
@example(text="²")
def test_hidden_and_batch_sizes(text):
    hidden = _error(parse_hidden, text, "--hidden")
    assert hidden is None or all(isinstance(h, int) and h > 0 for h in hidden)
    sizes = _error(parse_batch_sizes, text, "batch")
    assert sizes is None or all(isinstance(b, int) and b > 0 for b in sizes)


@fuzz(500)
@given(key=st.sampled_from(["widths", "depth", "pool", "bias", "padding", "heads", "x"]),
       value=LISTS, config=st.sampled_from([ResNetConfig, ViTConfig, LeNet5Config]))
def test_model_options(key, value, config):
    from prunelab.cli.parse import model_config

    try:
        built = model_config(config, parse_model_options([f"{key}={value}"]))
    except (ValueError, TypeError) as e:
        assert "\n" not in str(e) and ("model" in str(e) or key in str(e)), str(e)
    else:
        assert isinstance(built, config)


@fuzz(400)
@given(text=LISTS | st.lists(st.sampled_from(["weight", "unit", "wanda-2:4", "wanda-0:4",
                                              "wanda-9:4", f"wanda-{2**70}:4", "all"]),
                             max_size=3).map(",".join))
def test_methods(text):
    try:
        SweepConfig(parse_methods(text), (0.5,))
    except ValueError as e:
        assert "\n" not in str(e), str(e)


@fuzz(40)
@given(option=st.sampled_from(["--sparsities", "--seeds", "--hidden"]), text=LISTS)
def test_bad_values_through_the_cli(tmp_path, option, text):
    parse = {"--sparsities": parse_percents, "--seeds": parse_seeds, "--hidden": parse_hidden}
    try:
        parse[option](text)
        return  # a valid value: nothing to check here (it would start a training)
    except ValueError:
        pass
    result = invoke("run", "--epochs", "1", "--out", tmp_path / "r", option, text)
    assert_one_line_error(result, "Error:")
    assert result.exit_code == 1 and not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, needle", [
    (["--batch-size", "0"], "batch_size must be a positive integer"),
    (["--seed", str(2**64)], "seed must be an integer in [0, 2**64)"),
    (["--lr", "nan"], "lr must be positive"),
    (["--epochs", "-1"], "epochs must be a positive integer"),
])
def test_bad_training_values(tmp_path, args, needle):
    result = invoke("train", "--out", tmp_path / "r", *args)
    assert_one_line_error(result, needle)
    assert not (tmp_path / "r").exists()
