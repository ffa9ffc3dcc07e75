"""Intervals and paired differences, against textbook values and a coverage simulation."""
import math

import numpy as np
import pytest

from sparsekit.stats import describe_difference, mean_interval, paired_difference

# Student-t 0.975 quantiles from printed tables.
T975 = {1: 12.7062, 3: 3.18245, 7: 2.36462}


@pytest.mark.parametrize("values", [[1.0, 2.0], [2.0, 4.0, 4.0, 5.0], [0.3, -0.1, 0.25, 0.9, 0.0, 0.4, 0.2, -0.3]])
def test_t_interval_equals_the_formula(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T975[n - 1] * sd / math.sqrt(n)
    iv = mean_interval(values)
    assert iv.mean == pytest.approx(mean) and iv.sd == pytest.approx(sd) and iv.n == n
    assert iv.low == pytest.approx(mean - half, rel=1e-4) and iv.high == pytest.approx(mean + half, rel=1e-4)


def test_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    trials = 4000
    for _ in range(trials):
        sample = rng.normal(3.0, 2.0, size=8)
        iv = mean_interval(sample.tolist())
        hits += iv.low <= 3.0 <= iv.high
    assert 0.93 <= hits / trials <= 0.97


def test_paired_difference_counts_and_sentences():
    a = [1.0, 2.0, 3.0, 4.0]
    b = [1.5, 2.5, 3.0, 3.0]
    pd = paired_difference(a, b)
    assert pd.diff.mean == pytest.approx(np.mean(np.array(a) - np.array(b)))
    assert pd.a_lower == 2 and pd.ties == 1 and pd.n == 4
    assert pd.diff.includes_zero
    text = describe_difference(pd, "late SAD", "SR-STE", "STE", " pp")
    assert "includes zero" in text and "no difference shown at 4 seeds" in text and "lower in 2 of 4" in text
    clear = paired_difference([1.0, 1.1, 0.9, 1.2], [2.0, 2.2, 2.1, 2.0])
    assert not clear.diff.includes_zero and clear.diff.high < 0
    text = describe_difference(clear, "late SAD", "SR-STE", "STE", " pp")
    assert "SR-STE is lower than STE by" in text and "4 of 4" in text


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        mean_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="confidence"):
        mean_interval([1.0, 2.0], confidence=1.5)
    one = mean_interval([4.0])
    assert one.mean == 4.0 and math.isnan(one.low) and one.includes_zero
    assert "single seed" in describe_difference(paired_difference([1.0], [2.0]), "x", "A", "B")
