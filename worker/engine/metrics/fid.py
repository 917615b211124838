"""Fréchet distance between two feature sets (Heusel et al. 2017, "GANs trained by a two
time-scale update rule...", the FID; the paper's Section 6 quality measure).

    FID = ||m1 - m2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))

with m, S the mean and covariance (ddof 1, as pytorch-fid) of each set. tr((S1 S2)^(1/2)) is
computed as the sum of the square roots of the eigenvalues of the symmetric PSD matrix
S1^(1/2) S2 S1^(1/2) (same spectrum as S1 S2), so a set against itself gives 0 to rounding
and singular covariances (fewer samples than dimensions) need no regularising offset.
"""

import numpy as np


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between feature sets [N, D] and [M, D] (N, M >= 2), in float64."""
    a, b = _checked(features_a), _checked(features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _psd_sqrt(np.atleast_2d(cov_a))
    cross = np.linalg.eigvalsh(root_a @ np.atleast_2d(cov_b) @ root_a)
    trace_root = np.sqrt(np.clip(cross, 0, None)).sum()
    distance = (
        np.sum((mean_a - mean_b) ** 2) + np.trace(np.atleast_2d(cov_a + cov_b)) - 2 * trace_root
    )
    return max(float(distance), 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a PSD matrix (negative rounding eigenvalues as 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _checked(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need a [N, D] feature set with N >= 2, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or inf")
    return features
