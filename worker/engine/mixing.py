"""Latent mixing: K noise latents + weights -> mixed latent(s). Pure tensor math.

Equation numbers refer to Landolsi & Kahl, "Addressing degeneracies in latent
interpolation for diffusion models" (formulas restored in shared/method.md,
section 2). Method names and the edge-case rules are documented in
`latentmix.service.core.mix_methods`.
"""

import math
from collections.abc import Sequence

import torch

from latentmix.service.core.mix_methods import DEFAULT_METHOD, canonical_method, check_weights

# fix/nin refuse to normalise a weighted sum this much shorter than its terms.
CANCEL_RTOL = 1e-6
# slerp angles (radians) this close to 0 use the lerp limit; this close to pi are refused.
SLERP_PARALLEL_EPS = 1e-6

Weights = torch.Tensor | Sequence[float] | Sequence[Sequence[float]]


def mix(latents: torch.Tensor, weights: Weights, method: str = DEFAULT_METHOD) -> torch.Tensor:
    """Mix `latents` [K, C, H, W] with `weights` [K] -> [C, H, W], or [N, K] -> [N, C, H, W].

    Each weight row is normalised to sum 1. Arithmetic is float64; the result has
    the dtype of `latents`. Raises ValueError on a bad method, shape or weight.
    """
    # 1. Validate everything before computing (names the bad value).
    method = canonical_method(method)
    _check_latents(latents)
    rows, batched = _weight_rows(weights)
    k, c, h, w = latents.shape
    check_weights(rows, k, method)

    # 2. Weights as float64 [N, K], each row summing to 1; latents flattened to [K, d].
    wts = torch.tensor(rows, dtype=torch.float64, device=latents.device)
    wts = wts / wts.sum(dim=1, keepdim=True)
    z = latents.to(torch.float64)

    # 3. Mix.
    if method == "lerp":
        flat = _lerp(wts, z.reshape(k, -1))
    elif method == "slerp":
        flat = _slerp(wts[:, 1], z[0].reshape(-1), z[1].reshape(-1))
    else:
        norm_kind, mean_kind = method.split("/")
        flat = _mean_adjusted(wts, z, norm_kind, mean_kind)

    # 4. Back to the input layout and dtype.
    out = flat.reshape(-1, c, h, w).to(latents.dtype)
    return out if batched else out[0]


def _check_latents(latents: torch.Tensor) -> None:
    if not isinstance(latents, torch.Tensor):
        raise ValueError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
    if latents.dim() != 4:
        raise ValueError(
            f"latents must be a stacked [K, C, H, W] tensor, got shape {tuple(latents.shape)}"
        )
    if not latents.is_floating_point():
        raise ValueError(f"latents must be floating point, got {latents.dtype}")
    if not bool(torch.isfinite(latents).all()):
        raise ValueError("latents contain NaN or inf")


def _weight_rows(weights: Weights) -> tuple[list[list[float]], bool]:
    """Weights as a list of rows, and whether they came batched ([N, K])."""
    if hasattr(weights, "tolist"):  # torch tensor or numpy array
        weights = weights.tolist()
    if isinstance(weights, str) or not isinstance(weights, Sequence) or len(weights) == 0:
        raise ValueError("weights must be a non-empty [K] or [N, K] list or tensor")
    nested = [isinstance(x, Sequence) and not isinstance(x, str) for x in weights]
    if not any(nested):
        return [list(weights)], False
    if all(nested) and not any(
        isinstance(x, Sequence) and not isinstance(x, str) for row in weights for x in row
    ):
        return [list(row) for row in weights], True
    raise ValueError("weights must have shape [K] or [N, K]")


def _lerp(wts: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Eq. 1: sum_k w_k z_k for each weight row; [N, K] x [K, d] -> [N, d]."""
    return wts @ flat


def _slerp(t: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Eq. 3 on the whole flattened latents, weights (1 - t, t); t [N] -> [N, d]."""
    n1, n2 = torch.linalg.vector_norm(z1), torch.linalg.vector_norm(z2)
    if n1 == 0 or n2 == 0:
        raise ValueError("slerp needs non-zero latents: the angle to a zero latent is undefined")
    u1, u2 = z1 / n1, z2 / n2
    # theta = arccos(<u1, u2>), computed without the cancellation arccos has near 0 and pi.
    theta = 2 * torch.atan2(torch.linalg.vector_norm(u1 - u2), torch.linalg.vector_norm(u1 + u2))
    if theta < SLERP_PARALLEL_EPS:
        # theta -> 0 limit of sin(a theta) / sin(theta) is a: plain lerp.
        c1, c2 = 1 - t, t
    elif math.pi - theta < SLERP_PARALLEL_EPS:
        raise ValueError("slerp is undefined for opposite latents (angle ~ pi)")
    else:
        c1 = torch.sin((1 - t) * theta) / torch.sin(theta)
        c2 = torch.sin(t * theta) / torch.sin(theta)
    return c1[:, None] * z1 + c2[:, None] * z2


def _mean_adjusted(
    wts: torch.Tensor, z: torch.Tensor, norm_kind: str, mean_kind: str
) -> torch.Tensor:
    """Sec. 5: z = sum_k w_k mu_k + N(e_1..e_K; w), with e_k = z_k - mu_k; -> [N, d]."""
    k = z.shape[0]
    mu = _means(z, mean_kind)
    mixed_mean = _lerp(wts, mu.reshape(k, -1))
    residuals = (z - mu).reshape(k, -1)
    return mixed_mean + _normalise_to(wts, residuals, norm_kind, mean_kind)


def _means(z: torch.Tensor, mean_kind: str) -> torch.Tensor:
    """Deterministic parts mu_k, broadcast to z's shape [K, C, H, W]."""
    if mean_kind == "0":
        return torch.zeros_like(z)
    dims = (1, 2, 3) if mean_kind == "m" else (2, 3)  # "chm": per channel over H x W
    return z.mean(dim=dims, keepdim=True).expand_as(z)


def _normalise_to(
    wts: torch.Tensor, residuals: torch.Tensor, norm_kind: str, mean_kind: str
) -> torch.Tensor:
    """l = sum_k w_k e_k rescaled to sqrt(d) (fix, Eq. 2) or sum_k w_k ||e_k|| (nin, Eq. 4)."""
    mixed = _lerp(wts, residuals)
    mixed_norm = torch.linalg.vector_norm(mixed, dim=1)
    interpolated_norm = wts @ torch.linalg.vector_norm(residuals, dim=1)
    if norm_kind == "fix":
        target = torch.full_like(mixed_norm, math.sqrt(residuals.shape[1]))
        degenerate = mixed_norm <= CANCEL_RTOL * interpolated_norm
    else:
        target = interpolated_norm
        # All weighted residuals exactly zero: target 0 and mixed 0, an exact answer.
        degenerate = (mixed_norm <= CANCEL_RTOL * interpolated_norm) & (interpolated_norm > 0)
    if bool(degenerate.any()):
        i = int(degenerate.nonzero()[0, 0])
        part = "latents" if mean_kind == "0" else f"residuals after '/{mean_kind}' mean removal"
        raise ValueError(
            f"weighted latents cancel out in weights row {i}: ||sum_k w_k e_k|| = "
            f"{float(mixed_norm[i]):.3g} vs sum_k w_k ||e_k|| = {float(interpolated_norm[i]):.3g} "
            f"(e_k: {part}); {norm_kind} cannot rescale a (near-)zero vector"
        )
    scale = target / mixed_norm.clamp_min(torch.finfo(torch.float64).tiny)
    return mixed * scale[:, None]
