import json

import numpy as np
import pytest
from scipy import stats as sps

from prunelab.report.writer import write_all
from prunelab.study.compare import compare_runs
from prunelab.study.multiseed import load_summary, summarize_run

from ..seedfakes import write_fake_run


@pytest.fixture
def summary(tmp_path):
    return summarize_run(write_fake_run(tmp_path / "run"))


def _row(summary, method, k):
    return next(r for r in summary.rows if r["method"] == method and r["sparsity_pct"] == k)


def test_mean_and_interval_per_method_and_k(summary):
    unit50 = [0.90 + s / 100 - 0.05 - s / 100 for s in (0, 1, 2)]  # 0.85 for every seed
    r = _row(summary, "unit", 50.0)
    assert r["n"] == 3 and r["accuracy_mean"] == pytest.approx(0.85)
    assert r["accuracy_std"] == pytest.approx(np.std(unit50, ddof=1), abs=1e-12)
    w = _row(summary, "weight", 90.0)
    accs = [0.80, 0.81, 0.82]
    low, high = sps.t.interval(0.95, 2, loc=np.mean(accs), scale=sps.sem(accs))
    assert (w["accuracy_ci_low"], w["accuracy_ci_high"]) == (pytest.approx(low),
                                                             pytest.approx(high))
    assert summary.seeds == [0, 1, 2]
    assert summary.dense[0]["accuracy_mean"] == pytest.approx(0.91)


def test_summary_figures(summary):
    figures = {m["method"]: m for m in summary.methods}
    # weight: within 1 point up to k = 50 for every seed; unit only at k = 0.
    assert figures["weight"]["k_within_1pt_mean"] == 50
    assert figures["weight"]["k_within_1pt_min"] == figures["weight"]["k_within_1pt_max"] == 50
    assert figures["unit"]["k_within_1pt_mean"] == 0
    # AUC of seed 0's weight curve by hand: trapezoids over [0, .5] and [.5, .9].
    auc0 = 0.5 * (0.90 + 0.89) / 2 + 0.4 * (0.89 + 0.80) / 2
    assert figures["weight"]["auc_mean"] == pytest.approx(auc0 + 0.01 * 0.9)


def test_paired_comparisons(summary):
    by_k = {c["sparsity_pct"]: c for c in summary.comparisons}
    assert set(by_k) == {50.0, 90.0, "AUC"}  # k = 0 is identical by construction
    # weight - unit at k = 50: 0.04 + seed / 100 per seed -> paired t-interval
    diffs = [0.04, 0.05, 0.06]
    ci = sps.ttest_1samp(diffs, 0).confidence_interval(0.95)
    c = by_k[50.0]
    assert (c["a"], c["b"], c["diff_n"]) == ("weight", "unit", 3)
    assert c["diff_mean"] == pytest.approx(0.05)
    assert (c["diff_ci_low"], c["diff_ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert c["verdict"] == "weight > unit"
    # k = 90: the gap is exactly 30 points for every seed: zero spread, still "a > b".
    assert by_k[90.0]["diff_mean"] == pytest.approx(0.30)
    assert by_k[90.0]["verdict"] == "weight > unit"


def test_write_all_roundtrip(tmp_path, summary):
    md, _ = write_all(summary, tmp_path / "out")
    loaded = load_summary(tmp_path / "out")
    assert loaded.rows == json.loads(json.dumps(summary.rows))
    text = md.read_text()
    assert "| weight " in text and "weight > unit" in text
    assert f"{100 * _row(summary, 'weight', 90.0)['accuracy_mean']:.2f} ± " in text
    for name in ("accuracy_vs_sparsity", "loss_vs_sparsity", "accuracy_vs_params"):
        assert (tmp_path / "out" / "plots" / f"{name}.png").stat().st_size > 1000
    csv_head = (tmp_path / "out" / "summary.csv").read_text().splitlines()[0]
    assert csv_head.startswith("method,granularity,sparsity_pct,n,accuracy_mean,accuracy_std,")


def test_compare_runs_labels_and_test_set_check(tmp_path):
    a = write_fake_run(tmp_path / "small", hidden=(32, 16))
    b = write_fake_run(tmp_path / "wide", hidden=(64, 32))
    summary = compare_runs([a, b])
    assert {m["method"] for m in summary.methods} == {"small/weight", "small/unit",
                                                      "wide/weight", "wide/unit"}
    assert len(summary.dense) == 2
    other = write_fake_run(tmp_path / "mnist", dataset="mnist")
    with pytest.raises(ValueError, match="different test sets"):
        compare_runs([a, other])


def test_summary_over_chosen_seeds(tmp_path):
    run = write_fake_run(tmp_path / "run", seeds=(0, 1, 2))
    summary = summarize_run(run, seeds=(0, 2))
    assert summary.seeds == [0, 2]
    assert summary.dense[0]["accuracy_mean"] == pytest.approx(0.91)  # (0.90 + 0.92) / 2
