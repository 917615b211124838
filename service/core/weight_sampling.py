"""Seeded mixing-weight samplers for data augmentation (numpy only: the API imports it).

- ``few`` (the default): Dirichlet(alpha) weights over a random subset of 2 to k inputs
  (k = FEW_MAX_INPUTS unless given; the subset size uniform in that range, capped at the
  number of inputs). Whatever the class size, each mix has an effective K of at most k: the
  range where the paper's Fig. 7 shows quality holding, and the regime of Diff-II, which
  mixes pairs of inversions of one class.
- ``dirichlet``: rows drawn from Dirichlet(alpha, ..., alpha) over ALL K inputs; alpha = 1 is
  uniform on the simplex, small alpha concentrates on few inputs, large alpha on the centroid.
  Over a large class each row is close to the centroid of the class (effective K ~ K/2):
  the degenerate regime of the paper (Sec. 4) unless that is what is wanted.
- ``subset``: the uniform centroid of a random k-subset of the inputs (the paper's
  experiment: centroids of K examples of a class, Sec. 6).

The same (scheme, parameters, K, count, seed) always gives the same rows, so a seeded
request reproduces its weights and, through content-addressed ids, its images.
"""

from typing import Literal

import numpy as np

Scheme = Literal["few", "dirichlet", "subset"]
SCHEMES: tuple[str, ...] = ("few", "dirichlet", "subset")
DEFAULT_SCHEME: Scheme = "few"
FEW_MIN_INPUTS = 2
FEW_MAX_INPUTS = 4


def sample_weights(
    k: int,
    count: int,
    scheme: Scheme,
    seed: int,
    *,
    alpha: float = 1.0,
    subset_size: int | None = None,
) -> list[list[float]]:
    """`count` weight rows over `k` inputs, each row summing to 1. `subset_size` is the
    subset's size for ``subset`` (default all), its largest size for ``few`` (default
    FEW_MAX_INPUTS)."""
    if k < 1 or count < 1:
        raise ValueError(f"need k >= 1 and count >= 1, got k = {k}, count = {count}")
    rng = np.random.default_rng(seed)
    if scheme in ("few", "dirichlet") and not alpha > 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    if scheme == "dirichlet":
        rows = rng.dirichlet(np.full(k, alpha), size=count)
    elif scheme == "few":
        largest = FEW_MAX_INPUTS if subset_size is None else subset_size
        if largest < 1:
            raise ValueError(f"few: k (the most inputs per mix) must be >= 1, got {largest}")
        rows = _few(rng, k, count, alpha, min(FEW_MIN_INPUTS, largest), largest)
    elif scheme == "subset":
        size = k if subset_size is None else subset_size
        if not 1 <= size <= k:
            raise ValueError(f"subset k must be in [1, {k}] (the number of latents), got {size}")
        rows = np.zeros((count, k))
        np.put_along_axis(rows, _subsets(rng, k, count, size), 1.0 / size, axis=1)
    else:
        raise ValueError(f"unknown sampling scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    return rows.tolist()


def _few(
    rng: np.random.Generator, k: int, count: int, alpha: float, smallest: int, largest: int
) -> np.ndarray:
    """Each row: a subset of size uniform in [smallest, largest] (capped at k), Dirichlet
    weights over it."""
    sizes = rng.integers(min(smallest, k), min(largest, k) + 1, size=count)
    order = _subsets(rng, k, count, k)
    rows = np.zeros((count, k))
    for row, (size, chosen) in enumerate(zip(sizes, order, strict=True)):
        rows[row, chosen[:size]] = rng.dirichlet(np.full(size, alpha))
    return rows


def _subsets(rng: np.random.Generator, k: int, count: int, size: int) -> np.ndarray:
    """A random permutation of range(k) per row; its first `size` entries are the subset."""
    return np.argsort(rng.random((count, k)), axis=1)[:, :size]
