"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs"): the unbiased
estimate of the squared MMD between two feature sets under the cubic polynomial kernel

    k(x, y) = (x . y / D + 1)^3

    MMD^2_u = sum_{i != j} k(a_i, a_j) / (n (n - 1)) + sum_{i != j} k(b_i, b_j) / (m (m - 1))
              - 2 sum_{i, j} k(a_i, b_j) / (n m)

Unbiased: its expectation is the population MMD^2, so it may be negative on small sets and is
0 in expectation when both sets come from one distribution. No subset averaging: the sets here
are small (a (K, method) cell of an experiment)."""

import numpy as np


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x_i, y_j) for all pairs: [N, D] x [M, D] -> [N, M]."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kernel_inception_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Unbiased MMD^2 between feature sets [N, D] and [M, D] (N, M >= 2), in float64."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need [N, D] and [M, D] feature sets, got {a.shape} and {b.shape}")
    n, m = len(a), len(b)
    if n < 2 or m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {n} and {m}")
    k_aa, k_bb = polynomial_kernel(a, a), polynomial_kernel(b, b)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (n * (n - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(within_a + within_b - 2 * polynomial_kernel(a, b).mean())
