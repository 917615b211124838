"""What the engine hands back: inverted latents, and the progress callback it reports to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

ProgressFn = Callable[[int, int], None]
"""Called with (done, total) denoiser steps after each step; raising from it stops the run."""


@dataclass(frozen=True, kw_only=True)
class Inverted:
    """Images inverted into the latents generation starts from.

    `latent` is what gets stored and mixed. `aux` holds whatever else a method needs to
    regenerate exactly, one row per latent (EDICT's second latent, null-text inversion's
    per-step embeddings); DDIM needs nothing there. `settings` is what the run used, as
    stored in the latent's record.
    """

    latent: torch.Tensor  # float32, CPU, [B, C, size / f, size / f]
    aux: dict[str, torch.Tensor] = field(default_factory=dict)  # each [B, ...]
    method: str  # the name in inversion.INVERSION_METHODS that made it, and samples it
    settings: dict[str, Any] = field(default_factory=dict)
    # The round trip's error per row when measured (`invert(measure=True)`): latent_rmse,
    # pixel_psnr_db (inf when identical), pixel_max_error; each [B]
    reconstruction: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.latent.shape[0]

    def rows(self, start: int, stop: int) -> Inverted:
        """Rows start..stop of the latent and of every aux tensor; same method and settings."""
        return Inverted(
            latent=self.latent[start:stop],
            aux={name: value[start:stop] for name, value in self.aux.items()},
            method=self.method,
            settings=self.settings,
            reconstruction={name: v[start:stop] for name, v in self.reconstruction.items()},
        )
