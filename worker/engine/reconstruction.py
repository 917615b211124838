"""How well inverted latents regenerate their images: the round-trip error every inverted
latent records (its latent RMSE and the pixel PSNR of the decoded round trip).

Pure tensor math plus the model's decoder; `diffusion.invert(measure=True)` calls it with
the clean latents it inverted and the regenerated ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

PIXEL_MAX = 255.0


def latent_rmse(regenerated: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per row: sqrt(mean((x0^ - x0)^2)), float64 [B]."""
    difference = (regenerated.double() - clean.double()).flatten(1)
    return difference.pow(2).mean(1).sqrt()


def pixel_errors(
    regenerated: Sequence[Image.Image], clean: Sequence[Image.Image]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: PSNR in dB of 8-bit pictures, 10 log10(255^2 / MSE) (inf when identical),
    and the largest difference of one pixel value."""
    psnrs, largest = [], []
    for ours, theirs in zip(regenerated, clean, strict=True):
        difference = np.asarray(ours, np.float64) - np.asarray(theirs, np.float64)
        mse = float(np.mean(difference**2))
        psnrs.append(math.inf if mse == 0 else 10 * math.log10(PIXEL_MAX**2 / mse))
        largest.append(float(np.abs(difference).max()))
    return torch.tensor(psnrs, dtype=torch.float64), torch.tensor(largest, dtype=torch.float64)
