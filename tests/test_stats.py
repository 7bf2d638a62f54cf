"""Intervals and paired tests of utils/stats.py against hand-worked numbers."""
import math

import numpy as np
import pytest

from utils.stats import mcnemar_exact, paired_bootstrap, wilson_interval


def test_wilson_interval_hand_worked():
    # p = 0.8, n = 100, z = 1.959964: centre (0.8 + z^2/200) / (1 + z^2/100) = 0.819207 / 1.038415 = 0.788902,
    # half-width z sqrt(0.0016 + z^2/40000) / 1.038415 = 1.959964 * 0.0411836 / 1.038415 = 0.077731.
    low, high = wilson_interval([1] * 80 + [0] * 20)
    assert (low, high) == (pytest.approx(0.711171, abs=1e-6), pytest.approx(0.866633, abs=1e-6))
    # All 10 right: [10 / (10 + z^2), 1] = [0.722467, 1].
    assert wilson_interval([1] * 10) == (pytest.approx(0.722467, abs=1e-6), pytest.approx(1.0))


def test_mcnemar_exact_hand_worked():
    # 1 image right only under the first, 7 only under the second: p = 2 (C(8,0) + C(8,1)) / 2^8 = 18/256.
    first = [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    second = [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    p, b, c = mcnemar_exact(first, second)
    assert (b, c) == (1, 7) and p == pytest.approx(18 / 256)
    assert mcnemar_exact([1, 0], [1, 0]) == (1.0, 0, 0)
    assert mcnemar_exact([1, 1, 1], [0, 0, 0])[0] == pytest.approx(2 / 8)  # 3 vs 0: 2 * (1/8)


def test_paired_bootstrap_hand_worked():
    # Per-image differences (0, 1): a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so
    # with 1000 resamples the 2.5 % and 97.5 % points are 0 and 1.
    assert paired_bootstrap([1, 1], [1, 0]) == (0.5, 0.0, 1.0)
    # Every image gained: the interval is a point.
    assert paired_bootstrap([1, 1, 1, 1], [0, 0, 0, 0]) == (1.0, 1.0, 1.0)
    # Seeded: the same numbers on every call.
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 2, 500), rng.integers(0, 2, 500)
    assert paired_bootstrap(a, b) == paired_bootstrap(a, b)


def test_paired_bootstrap_width_matches_the_normal_approximation():
    """On many images the bootstrap interval of a mean difference is about +-1.96 standard errors."""
    rng = np.random.default_rng(0)
    a = rng.random(4000) < 0.8
    b = np.where(rng.random(4000) < 0.9, a, ~a)  # agrees with a on 90 % of the images
    diff, low, high = paired_bootstrap(a, b)
    d = a.astype(float) - b.astype(float)
    se = d.std(ddof=1) / math.sqrt(d.size)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert low < diff < high
