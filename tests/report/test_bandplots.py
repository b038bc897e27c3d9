"""Band plots (matplotlib) of a summary: bands and axes stay within what accuracy and loss can
be, however wide the intervals over seeds; one seed draws no band."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from prunelab.report.bandplots import draw_summary
from prunelab.report.plots import CHARTS, PLOTS  # selects the headless Agg backend
from prunelab.study.multiseed import summarize_run

from ..seedfakes import write_fake_run


def _drawn(summary, name: str) -> tuple[np.ndarray, tuple[float, float], list[str]]:
    """The bands' y coordinates, the y limits and the texts of one chart."""
    chart = CHARTS[name]
    fig, ax = plt.subplots()
    try:
        draw_summary(ax, summary, chart)
        ax.set(**chart.axes)
        fig.canvas.draw()
        paths = [p for c in ax.collections for p in c.get_paths()]
        ys = np.concatenate([p.vertices[:, 1] for p in paths]) if paths else np.array([])
        return ys, ax.get_ylim(), [t.get_text() for t in ax.texts]
    finally:
        plt.close(fig)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Three seeds far apart: raw intervals pass 100 % and 0 % accuracy and a loss of 0."""
    return summarize_run(write_fake_run(tmp_path_factory.mktemp("wide") / "run", wide=True))


@pytest.mark.parametrize("name", PLOTS)
def test_bands_and_axes_stay_within_the_valid_range(wide, name):
    ys, (low, high), texts = _drawn(wide, name)
    assert ys.size, "no band drawn"
    if CHARTS[name].y == "accuracy":
        assert ys.min() == 0 and ys.max() == 100, (ys.min(), ys.max())  # cut, not dropped
        assert 0 <= low and high <= 100, (low, high)
    else:  # loss on a log axis: a band cut at 0 runs to the bottom, which is above 0
        assert ys.min() > 0, ys.min()
        assert 0 < low <= ys.min() * (1 + 1e-9), (low, ys.min())
    assert any("bands: 95 % CI" in t for t in texts), texts


def test_one_seed_draws_no_band(tmp_path):
    summary = summarize_run(write_fake_run(tmp_path / "run", seeds=(0,)))
    for name in PLOTS:
        ys, _, texts = _drawn(summary, name)
        assert ys.size == 0, name
        assert texts == ["one trained model per curve: no confidence bands"], texts
