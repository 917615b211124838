"""AID's sequence metrics over the distances between consecutive frames (shared/morph.md).
Pure math: smoothness = 1 - Gini coefficient (higher: steps of more even size),
consistency = mean distance (lower: smaller steps)."""

from __future__ import annotations

from collections.abc import Sequence


def gini(values: Sequence[float]) -> float:
    """Gini coefficient sum_i sum_j |x_i - x_j| / (2 n^2 mean); 0 for equal values, and for
    all zeros (nothing to be unequal)."""
    n = len(values)
    if n == 0:
        raise ValueError("the Gini coefficient of no values is undefined")
    if any(v < 0 for v in values):
        raise ValueError(f"distances must be >= 0, got {list(values)}")
    mean = sum(values) / n
    if mean == 0:
        return 0.0
    pairs = sum(abs(a - b) for a in values for b in values)
    return pairs / (2 * n * n * mean)


def smoothness(distances: Sequence[float]) -> float:
    return 1.0 - gini(distances)


def consistency(distances: Sequence[float]) -> float:
    return sum(distances) / len(distances)
