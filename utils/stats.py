"""Uncertainty of accuracies measured on one test split: the interval of an accuracy alone, and the
paired comparison of two settings scored on the same images.

Two settings evaluated on the same N images differ far more precisely than their accuracies' own
intervals suggest, because most images are right (or wrong) under both: only the images on which they
disagree carry the difference. So a comparison resamples *images* (a paired bootstrap of the
per-image difference) and tests the disagreements (McNemar's exact test), instead of comparing two
independent intervals.

All functions take per-image correctness as 0/1 tensors or arrays [N] and return plain floats.
"""
import math

import numpy as np

Z95 = 1.959963984540054  # the 97.5 % point of the standard normal
RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def wilson_interval(correct, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of the accuracy mean(correct) over n images (the binomial interval
    that stays inside [0, 1] and is accurate near 0 and 1, unlike p +- z sqrt(p(1-p)/n))."""
    correct = np.asarray(correct, dtype=np.float64)
    n = correct.size
    if n == 0:
        return math.nan, math.nan
    p = correct.mean()
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def paired_bootstrap(first, second, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                     level: float = 0.95) -> tuple[float, float, float]:
    """mean(first) - mean(second) over the same images, and the percentile interval (``level``) of that
    difference over ``resamples`` resamples of the images with replacement (seeded: the same numbers on
    every run). Returns (difference, low, high)."""
    diff = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    n = diff.size
    if n == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 4_000_000 // n)  # resamples drawn at once: bounded memory for large test splits
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(diff.mean()), float(low), float(high)


def mcnemar_exact(first, second) -> tuple[float, int, int]:
    """McNemar's exact test of two settings scored on the same images: b images right only under
    ``first``, c right only under ``second``; under the null hypothesis of equal accuracy each of the b + c
    disagreements goes either way with probability 1/2. Returns (two-sided p-value, b, c)."""
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    b, c = int((first & ~second).sum()), int((~first & second).sum())
    n = b + c
    if n == 0:
        return 1.0, b, c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail), b, c
