"""Input checks shared by the families and inversion methods: run before any compute, and
each `ValueError` names the bad value and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from latentmix.worker.engine.models import LoadedModel

MAX_GUIDANCE_SCALE = 30.0


def check_guidance(guidance_scale: float) -> None:
    if not (math.isfinite(guidance_scale) and 0.0 <= guidance_scale <= MAX_GUIDANCE_SCALE):
        raise ValueError(
            f"guidance_scale must be in [0, {MAX_GUIDANCE_SCALE}], got {guidance_scale!r}"
        )


def check_size(model: LoadedModel, size: int) -> None:
    factor = model.size_multiple
    if isinstance(size, bool) or not isinstance(size, int) or size < factor or size % factor:
        raise ValueError(f"size must be a positive multiple of {factor} pixels, got {size!r}")


def check_latents(model: LoadedModel, latents: torch.Tensor) -> None:
    channels = model.latent_channels
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents)
        raise ValueError(f"latents must be a [B, {channels}, h, w] tensor, got {shape}")
    if latents.shape[0] == 0 or latents.shape[1] != channels:
        raise ValueError(
            f"latents must have shape [B>=1, {channels}, h, w] for model {model.name!r}, "
            f"got {tuple(latents.shape)}"
        )
    cells = model.size_multiple // model.vae_scale_factor  # SD 3: the transformer's patch
    if any(side % cells for side in latents.shape[2:]):
        raise ValueError(
            f"latent sides must be multiples of {cells} for model {model.name!r} (its "
            f"transformer's patch), got {tuple(latents.shape)}"
        )
    if not latents.is_floating_point() or not torch.isfinite(latents).all():
        raise ValueError("latents must be finite floating-point numbers")


def prompts_per_row(prompts: str | Sequence[str], batch_size: int) -> list[str]:
    if isinstance(prompts, str):
        return [prompts] * batch_size
    prompts = list(prompts)
    if len(prompts) != batch_size:
        raise ValueError(f"got {len(prompts)} prompts for a batch of {batch_size}; pass one each")
    if not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be strings")
    return prompts
