"""Degeneracy diagnostics of a mix, from its inputs and weights alone. Pure numpy, no torch.

The API computes them for `POST /mix` with `dry_run` (no UNet, not even the mix), the mix
task for every mixed latent it makes. Nothing here forms the mixed latent: every statistic
of it follows from the inputs' Gram matrix G_jk = <z_j, z_k> and their channel means, which
cost one pass over the K latents and then O(K^2) per weight row. The worker's mixing
(`latentmix.worker.engine.mixing.mix`, torch) stays the one implementation of the mix;
tests/service/test_diagnostics.py checks these figures against the latents it returns.

Why (Landolsi & Kahl, Sec. 4.2, Eq. 9; shared/method.md section 2): latents z_k = e_k + b
with a common bias b. The weighted sum shrinks the noise e by about 1/sqrt(K_eff),
K_eff = 1 / sum_k w_k^2, but not b; `fix/0` and `nin/0` then rescale the sum back to a
typical norm and so amplify b by about sqrt(K_eff). `lerp` keeps b but loses norm. `/chm`
interpolates the channel means linearly: amplification 1.

How the mixed latent's figures follow (d = C x S, S = H x W; mu_k the mean part removed by
the suffix, `/0`: none, `/m`: global mean, `/chm`: channel means; e_k = z_k - mu_k):

- residual Gram R = G - S cm cm^T (`/chm`), G - d gm gm^T (`/m`), G (`/0`);
- l = sum_k w_k e_k has ||l||^2 = w^T R w; the norm method rescales it by
  s = target / ||l|| with target sqrt(d) (`fix`) or sum_k w_k ||e_k|| (`nin`);
- mixed channel means = w cm_mu + s (w cm - w cm_mu), cm_mu the mean part's channel means;
- ||mixed||^2 = S ||w cm_mu||^2 + target^2 (the mean part is constant where the residual
  sums to zero, so the two are orthogonal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from latentmix.service.core.mix_methods import canonical_method

# Defaults of the warning thresholds (settings LATENTMIX_DIAGNOSTICS_*; docs/configuration.md).
DEFAULT_MAX_AMPLIFICATION = 2.0  # channel means amplified more than this: Eq. 9 at K_eff >= 4
DEFAULT_MIN_NORM_RATIO = 0.8  # norm below this fraction of the inputs' interpolated norm
# Effective K above which a method's mixes lose quality (Fig. 7 and Sec. 6): lerp and the
# unadjusted or globally adjusted norms drop "long before the degeneration is visible" (on
# `shapes`, fix/0 centroids are tinted from K = 4 on, shared/shapes.md); the channel-mean
# adjusted methods hold much longer but still drop "as K grows sufficiently large" (on
# `shapes`, nin/chm centroids of a 120-drawing class collapse to one blob, issue 28).
DEGRADING_K_EFF = {"chm": 16.0, "other": 4.0}
# Channel means this small against the noise are not a bias: no amplification is reported.
_NO_BIAS = 1e-12
_CHUNK_ELEMENTS = 2**22  # float64 values converted at a time (32 MiB)


class MixDiagnostics(BaseModel):
    """The degeneracy figures of one mixed latent (Landolsi & Kahl, Sec. 4.2, Eq. 9)."""

    norm: float = Field(description="||z|| of the mixed latent")
    nominal_norm: float = Field(description="sqrt(d), the typical norm of a N(0, I) latent")
    interpolated_norm: float = Field(description="sum_k w_k ||z_k||, the inputs' norms mixed")
    norm_ratio: float = Field(description="norm / interpolated_norm")
    channel_means: list[float] = Field(description="per-channel means of the mixed latent")
    expected_channel_means: list[float] = Field(description="sum_k w_k (channel means of z_k)")
    bias_amplification: float | None = Field(
        description="||channel_means|| / ||expected_channel_means||; Eq. 9 predicts "
        "~sqrt(k_eff) for /0 methods, 1 for /chm; null when the inputs have no bias"
    )
    k_eff: float = Field(description="effective number of inputs, 1 / sum_k w_k^2")
    warnings: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Thresholds:
    """When a mix earns a warning (settings diagnostics_max_amplification, ..._min_norm_ratio)."""

    max_amplification: float = DEFAULT_MAX_AMPLIFICATION
    min_norm_ratio: float = DEFAULT_MIN_NORM_RATIO

    @classmethod
    def of(cls, settings) -> Thresholds:
        """The thresholds a `Settings` names."""
        return cls(settings.diagnostics_max_amplification, settings.diagnostics_min_norm_ratio)


@dataclass(frozen=True)
class InputStatistics:
    """What the diagnostics need of the K inputs: computed once for all weight rows."""

    gram: np.ndarray  # [K, K] <z_j, z_k>, float64
    channel_means: np.ndarray  # [K, C]
    spatial: int  # S = H x W

    @classmethod
    def of(cls, latents: np.ndarray) -> InputStatistics:
        """Statistics of stacked latents [K, C, H, W], in float64, a slice of positions at a
        time (no float64 copy of the whole stack)."""
        if latents.ndim != 4:
            raise ValueError(f"latents must be stacked [K, C, H, W], got shape {latents.shape}")
        k, c = latents.shape[:2]
        flat = latents.reshape(k, c, -1)
        spatial = flat.shape[2]
        step = max(1, _CHUNK_ELEMENTS // (k * c))
        gram = np.zeros((k, k))
        sums = np.zeros((k, c))
        for start in range(0, spatial, step):
            part = flat[:, :, start : start + step].astype(np.float64)
            rows = part.reshape(k, -1)
            gram += rows @ rows.T  # BLAS
            sums += part.sum(axis=2)
        return cls(gram=gram, channel_means=sums / spatial, spatial=spatial)

    @property
    def dimension(self) -> int:
        return self.channel_means.shape[1] * self.spatial


def diagnose(
    stats: InputStatistics,
    rows: Sequence[Sequence[float]],
    method: str,
    thresholds: Thresholds = Thresholds(),
) -> list[MixDiagnostics]:
    """The diagnostics of each weight row (rows already validated by `check_weights`)."""
    method = canonical_method(method)
    weights = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    weights = weights / weights.sum(axis=1, keepdims=True)
    if method == "lerp":
        norms, means = _linear(stats, weights)
    elif method == "slerp":
        norms, means = _linear(stats, _slerp_coefficients(stats.gram, weights[:, 1]))
    else:
        norms, means = _mean_adjusted(stats, weights, *method.split("/"))
    interpolated = weights @ np.sqrt(np.clip(np.diag(stats.gram), 0, None))
    expected = weights @ stats.channel_means
    k_eff = 1 / np.sum(weights**2, axis=1)
    return [
        _diagnostics(stats, *values, method, thresholds)
        for values in zip(norms, means, interpolated, expected, k_eff, strict=True)
    ]


def _diagnostics(
    stats: InputStatistics,
    norm: float,
    means: np.ndarray,
    interpolated: float,
    expected: np.ndarray,
    k_eff: float,
    method: str,
    thresholds: Thresholds,
) -> MixDiagnostics:
    expected_size = float(np.linalg.norm(expected))
    amplification = (
        float(np.linalg.norm(means)) / expected_size
        if expected_size > _NO_BIAS * math.sqrt(stats.dimension)
        else None
    )
    diagnostics = MixDiagnostics(
        norm=float(norm),
        nominal_norm=math.sqrt(stats.dimension),
        interpolated_norm=float(interpolated),
        norm_ratio=float(norm / interpolated) if interpolated > 0 else 1.0,
        channel_means=means.tolist(),
        expected_channel_means=expected.tolist(),
        bias_amplification=amplification,
        k_eff=float(k_eff),
    )
    return diagnostics.model_copy(update={"warnings": _warnings(diagnostics, method, thresholds)})


def _quadratic(weights: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """w^T M w for each row w of `weights` [N, K]; rounding below 0 read as 0."""
    return np.clip(np.einsum("nk,nk->n", weights @ matrix, weights), 0, None)


def _linear(stats: InputStatistics, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 1 (and slerp with its coefficients): norms and channel means of sum_k c_k z_k."""
    return np.sqrt(_quadratic(c, stats.gram)), c @ stats.channel_means


def _slerp_coefficients(gram: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Eq. 3's coefficients of z_1, z_2 for each t [N] -> [N, 2] (mixing.py's limit:
    theta ~ 0 is lerp)."""
    n1, n2 = math.sqrt(gram[0, 0]), math.sqrt(gram[1, 1])
    cosine = min(max(gram[0, 1] / (n1 * n2), -1.0), 1.0) if n1 and n2 else 1.0
    theta = math.acos(cosine)
    if math.sin(theta) < 1e-6:
        return np.stack([1 - t, t], axis=1)
    return np.stack([np.sin((1 - t) * theta), np.sin(t * theta)], axis=1) / math.sin(theta)


def _mean_adjusted(
    stats: InputStatistics, weights: np.ndarray, norm_kind: str, mean_kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sec. 5: norms and channel means of sum_k w_k mu_k + N(e_1..e_K; w) for each row."""
    cm = stats.channel_means
    if mean_kind == "0":
        mean_part = np.zeros_like(cm)
    elif mean_kind == "m":
        mean_part = np.repeat(cm.mean(axis=1, keepdims=True), cm.shape[1], axis=1)
    else:  # chm
        mean_part = cm
    residual_gram = stats.gram - stats.spatial * (mean_part @ mean_part.T)
    mixed_residual = np.sqrt(_quadratic(weights, residual_gram))
    if norm_kind == "fix":
        target = np.full(len(weights), math.sqrt(stats.dimension))
    else:
        target = weights @ np.sqrt(np.clip(np.diag(residual_gram), 0, None))
    scale = np.divide(target, mixed_residual, out=np.zeros_like(target), where=mixed_residual > 0)
    mixed_mean = weights @ mean_part
    means = mixed_mean + scale[:, None] * (weights @ cm - mixed_mean)
    norms = np.sqrt(stats.spatial * np.sum(mixed_mean**2, axis=1) + target**2)
    return norms, means


def degrading_k_eff(method: str) -> float | None:
    """The effective K above which the paper measures `method`'s quality dropping; None for
    slerp (two inputs)."""
    method = canonical_method(method)
    if method == "slerp":
        return None
    return DEGRADING_K_EFF["chm" if method.endswith("/chm") else "other"]


def _warnings(diagnostics: MixDiagnostics, method: str, thresholds: Thresholds) -> list[str]:
    warnings = []
    degrading = degrading_k_eff(method)
    if degrading is not None and diagnostics.k_eff > degrading:
        warnings.append(
            f"K_eff = {diagnostics.k_eff:.1f} inputs: above {degrading:g}, where the paper "
            f"measures {method}'s quality dropping (Fig. 7); mix fewer inputs per image "
            "(sample scheme 'few')"
        )
    amplification = diagnostics.bias_amplification
    if amplification is not None and amplification > thresholds.max_amplification:
        warnings.append(
            f"channel means amplified {amplification:.1f}x (Eq. 9; K_eff = "
            f"{diagnostics.k_eff:.1f}); use nin/chm or fix/chm"
        )
    # fix/nin set the norm by design; lerp (and slerp) lose it (Sec. 3).
    if method in ("lerp", "slerp") and diagnostics.norm_ratio < thresholds.min_norm_ratio:
        warnings.append(
            f"norm is {diagnostics.norm_ratio:.2f} of the inputs' interpolated norm "
            f"({diagnostics.norm:.4g} vs {diagnostics.interpolated_norm:.4g}); "
            "use nin/chm or fix/chm"
        )
    return warnings
