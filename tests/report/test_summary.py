"""report.md of a summary: one seed reads as one trained model (no intervals, no paired
comparisons); several seeds show mean ± CI and only the comparisons that have an interval."""

from prunelab.report.summary import render_summary_report
from prunelab.study.compare import compare_runs
from prunelab.study.multiseed import summarize_run

from ..seedfakes import write_fake_run


def test_one_seed_of_a_multi_seed_run_reads_as_one_run(tmp_path):
    run = write_fake_run(tmp_path / "run", seeds=(0, 1, 2))
    text = render_summary_report(summarize_run(run, seeds=(0,)))
    assert text.startswith("# prunelab report: fashion-mnist · MLP 784-32-16-10 · seed 0\n")
    assert "Every figure comes from one trained model (seed 0)" in text
    assert "## Paired comparisons" not in text and "n/a" not in text
    assert "±" not in text and "k range over seeds" not in text and "(seeds:" not in text
    assert "- Dense accuracy (seed 0): 90.00 %." in text


def test_several_seeds_show_intervals_and_comparisons(tmp_path):
    text = render_summary_report(summarize_run(write_fake_run(tmp_path / "run")))
    assert text.startswith("# prunelab report: fashion-mnist · MLP 784-32-16-10 · seeds 0, 1, 2\n")
    assert "mean over seeds ± the half-width" in text and "one trained model" not in text
    assert "## Paired comparisons" in text and "| weight | unit | 50      | 3   |" in text
    assert "- Dense accuracy (over 3 seeds): 91.00 ± 2.48 %." in text


def test_comparison_keeps_only_pairs_that_share_two_seeds(tmp_path):
    three = write_fake_run(tmp_path / "three")
    one = write_fake_run(tmp_path / "one", seeds=(0,))
    text = render_summary_report(compare_runs([three, one]))
    table = text.split("## Paired comparisons", 1)[1].split("## Analysis", 1)[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows and all(int(r[3]) == 3 for r in rows), rows  # only three/weight vs three/unit
    assert "n/a" not in text and "Runs with one seed show that model's values" in text


def test_comparison_of_single_seed_runs_has_no_comparisons(tmp_path):
    runs = [write_fake_run(tmp_path / name, seeds=(0,)) for name in ("a", "b")]
    text = render_summary_report(compare_runs(runs))
    assert "one trained model per run (seed 0)" in text
    assert "## Paired comparisons" not in text and "n/a" not in text and "±" not in text
    assert "- Dense accuracy of a (one seed): 90.00 %." in text
