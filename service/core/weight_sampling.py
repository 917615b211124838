"""Seeded mixing-weight samplers for data augmentation (numpy only: the API imports it).

- ``dirichlet``: rows drawn from Dirichlet(alpha, ..., alpha) over the K inputs; alpha = 1 is
  uniform on the simplex, small alpha concentrates on few inputs, large alpha on the centroid.
- ``subset``: the uniform centroid of a random k-subset of the inputs (the paper's
  experiment: centroids of K examples of a class, Sec. 6).

The same (scheme, parameters, K, count, seed) always gives the same rows, so a seeded
request reproduces its weights and, through content-addressed ids, its images.
"""

from typing import Literal

import numpy as np

Scheme = Literal["dirichlet", "subset"]


def sample_weights(
    k: int,
    count: int,
    scheme: Scheme,
    seed: int,
    *,
    alpha: float = 1.0,
    subset_size: int | None = None,
) -> list[list[float]]:
    """`count` weight rows over `k` inputs, each row summing to 1."""
    if k < 1 or count < 1:
        raise ValueError(f"need k >= 1 and count >= 1, got k = {k}, count = {count}")
    rng = np.random.default_rng(seed)
    if scheme == "dirichlet":
        if not alpha > 0:
            raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
        rows = rng.dirichlet(np.full(k, alpha), size=count)
    elif scheme == "subset":
        size = k if subset_size is None else subset_size
        if not 1 <= size <= k:
            raise ValueError(f"subset k must be in [1, {k}] (the number of latents), got {size}")
        # A random permutation per row; its first `size` entries are the subset.
        chosen = np.argsort(rng.random((count, k)), axis=1)[:, :size]
        rows = np.zeros((count, k))
        np.put_along_axis(rows, chosen, 1.0 / size, axis=1)
    else:
        raise ValueError(f"unknown sampling scheme {scheme!r}; use 'dirichlet' or 'subset'")
    return rows.tolist()
