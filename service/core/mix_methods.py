"""Mixing-method names and the weight rules, without torch.

The FastAPI process imports this module to validate requests before a job is
queued, so it must never import torch or numpy. The numeric tolerances named below
(CANCEL_RTOL, SLERP_PARALLEL_EPS) live with the arithmetic in the worker. The arithmetic lives in
`latentmix.worker.engine.mixing.mix`, which calls `check_weights` too: one set of rules.

Methods (Landolsi & Kahl, "Addressing degeneracies in latent interpolation for
diffusion models"; formulas in shared/method.md, section 2):

- ``lerp``: linear interpolation (Eq. 1).
- ``slerp``: spherical interpolation of exactly two latents (Eq. 3).
- ``fix/*``: rescale to the nominal norm sqrt(d) (Eq. 2).
- ``nin/*``: rescale to the interpolated input norms (Eq. 4).
- suffix ``/0``, ``/m``, ``/chm``: mean adjustment (Sec. 5). The mean part
  (none, global mean, per-channel spatial mean) is interpolated linearly and
  only the residual is norm-adjusted, so a common bias is not amplified
  (Sec. 4.2, Eq. 9). ``fix`` and ``nin`` are accepted as ``fix/0``, ``nin/0``.

Edge cases, as decided here:

- Weights not summing to 1: each row is divided by its sum (scale-free), so
  ``[2, 6, 2]`` means ``[0.2, 0.6, 0.2]`` for every method, ``lerp`` included.
- Negative, non-finite (NaN, inf) or non-numeric weights: rejected
  (ValueError naming the row and entry).
- A row whose weights are all zero, or whose sum overflows: rejected
  (ValueError naming the row).
- A row whose length differs from the number of latents K: rejected.
- ``slerp`` with K != 2: rejected. Its weights are read as ``(1 - t, t)``
  after normalisation.
- ``slerp`` with (near-)parallel latents (angle < SLERP_PARALLEL_EPS rad,
  identical latents included): the theta -> 0 limit of Eq. 3, which is lerp;
  no NaN. The angle is taken over the whole flattened latent with a
  cancellation-free formula, ``2 * atan2(||u1 - u2||, ||u1 + u2||)``.
- ``slerp`` with (near-)opposite latents (pi - angle < SLERP_PARALLEL_EPS):
  rejected, the great-circle path is not defined. A zero latent: rejected.
- ``fix``/``nin`` when the weighted sum cancels, i.e.
  ``||sum_k w_k e_k|| <= CANCEL_RTOL * sum_k w_k ||e_k||`` (e_k: the latent,
  or its residual after mean removal): rejected with "weighted latents cancel
  out", rather than returning NaN or an arbitrary direction. One exception:
  for ``nin`` with every weighted residual exactly zero (e.g. K = 1 and a
  latent that is constant per channel under ``/chm``) the target norm is 0
  too and the residual part is 0, which is exact.
- ``lerp`` never normalises, so it has no cancellation case (it may return 0).
- K = 1: allowed for every method but ``slerp``; ``lerp``/``nin/*`` return the
  input, ``fix/0`` returns it rescaled to norm sqrt(d).
- Latents of different shapes: ``mix`` takes one stacked ``[K, C, H, W]``
  tensor, so stacking them fails before ``mix`` runs (a shape error is the
  caller's to report). Latents from different models cannot be told apart
  from their values: the caller must check the stored model ids agree.
- Latents that are not floating point or contain NaN/inf: rejected by ``mix``.
- Arithmetic is float64 whatever the input dtype; the output has the input's
  dtype (the paper itself used fp32 for interpolation, see its appendix).
"""

import math
import numbers
from collections.abc import Sequence

MIX_METHODS: tuple[str, ...] = (
    "lerp",
    "slerp",
    "fix/0",
    "fix/m",
    "fix/chm",
    "nin/0",
    "nin/m",
    "nin/chm",
)
DEFAULT_METHOD = "nin/chm"

METHOD_ALIASES = {"fix": "fix/0", "nin": "nin/0"}


def canonical_method(name: str) -> str:
    """Return the canonical method name (`fix` -> `fix/0`, `nin` -> `nin/0`)."""
    if isinstance(name, str):
        name = METHOD_ALIASES.get(name, name)
        if name in MIX_METHODS:
            return name
    allowed = ", ".join(MIX_METHODS)
    raise ValueError(
        f"unknown mixing method {name!r}; expected one of: {allowed} "
        "(aliases: fix = fix/0, nin = nin/0)"
    )


def check_weights(rows: Sequence[Sequence[float]], k: int, method: str) -> None:
    """Raise ValueError unless `rows` (N rows of K weights) are valid for `method`.

    Valid: K >= 1, at least one row, every row has K finite numbers >= 0 with a
    positive finite sum; for slerp K == 2. Rows need not sum to 1 (`mix`
    normalises them).
    """
    method = canonical_method(method)
    if k < 1:
        raise ValueError(f"need at least one latent to mix, got K = {k}")
    if method == "slerp" and k != 2:
        raise ValueError(f"slerp mixes exactly 2 latents, got K = {k}")
    if isinstance(rows, str) or not isinstance(rows, Sequence) or len(rows) == 0:
        raise ValueError("weights must be a non-empty list of rows")
    for i, row in enumerate(rows):
        _check_row(i, row, k)


def _check_row(i: int, row: Sequence[float], k: int) -> None:
    if isinstance(row, str) or not isinstance(row, Sequence):
        raise ValueError(f"weights row {i} is not a list of numbers")
    if len(row) != k:
        raise ValueError(f"weights row {i} has {len(row)} entries, expected K = {k}")
    for j, w in enumerate(row):
        if isinstance(w, bool) or not isinstance(w, numbers.Real):
            raise ValueError(f"weights row {i}, entry {j} is not a number: {w!r}")
        if not math.isfinite(w):
            raise ValueError(f"weights row {i}, entry {j} is not finite: {w!r}")
        if w < 0:
            raise ValueError(f"weights row {i}, entry {j} is negative: {w!r}")
    total = sum(float(w) for w in row)
    if total == 0:
        raise ValueError(f"weights row {i} is all zero; at least one weight must be > 0")
    if not math.isfinite(total):
        raise ValueError(f"weights row {i} sums to {total}; use smaller weights")
