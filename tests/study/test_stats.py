import math

import numpy as np
import pytest
from scipy import stats as sps

from prunelab.study.stats import auc, estimate, paired_difference

VALUES = [0.871, 0.884, 0.879, 0.862, 0.890]


def test_estimate_matches_numpy_and_scipy():
    e = estimate(VALUES)
    low, high = sps.t.interval(0.95, len(VALUES) - 1, loc=np.mean(VALUES), scale=sps.sem(VALUES))
    assert e.n == 5
    assert e.mean == pytest.approx(np.mean(VALUES), abs=1e-15)
    assert e.std == pytest.approx(np.std(VALUES, ddof=1), rel=1e-12)
    assert (e.ci_low, e.ci_high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))


def test_estimate_known_numbers():
    # mean 2, sample std 1, n = 3: half-width t(0.975, 2) / sqrt(3) = 4.302653 / 1.732051
    e = estimate([1.0, 2.0, 3.0])
    assert e.std == pytest.approx(1.0)
    assert e.half_width == pytest.approx(2.4841377, rel=1e-6)


def test_one_seed_has_no_interval_and_serialises_as_null():
    e = estimate([0.5])
    assert e.mean == 0.5 and e.n == 1 and math.isnan(e.ci_low) and math.isnan(e.std)
    assert e.to_dict() == {"mean": 0.5, "std": None, "ci_low": None, "ci_high": None, "n": 1}


def test_paired_difference_matches_scipy_ttest_rel():
    a = [0.80, 0.82, 0.81, 0.79, 0.83]
    b = [0.78, 0.81, 0.78, 0.78, 0.80]
    d = paired_difference(a, b)
    ci = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert d.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert (d.ci_low, d.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert d.ci_low > 0  # a beats b at 95 %, although the unpaired intervals overlap
    ea, eb = estimate(a), estimate(b)
    assert ea.ci_low < eb.ci_high


def test_auc_known_curves():
    assert auc([0, 1], [1, 0]) == pytest.approx(0.5)
    s = np.linspace(0, 1, 201)
    assert auc(s, 1 - s**2) == pytest.approx(2 / 3, abs=1e-4)  # integral of 1 - s^2
    assert auc([0.5, 0, 1], [0.5, 1, 0]) == pytest.approx(0.5)  # order does not matter


@pytest.mark.parametrize("call", [
    lambda: estimate([]),
    lambda: paired_difference([1, 2], [1]),
    lambda: auc([0, 50], [1, 0.5]),  # percents, not fractions
    lambda: auc([0], [1]),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()
