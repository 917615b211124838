"""Pixels in and out of the engine, the same for every model family."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def prepare_images(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Resize the shorter side to `size`, center-crop to size x size, RGB in [-1, 1].

    Returns float32 [B, 3, size, size].
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8:
        raise ValueError(f"size must be a positive multiple of 8 pixels, got {size!r}")
    if not images or not all(isinstance(im, Image.Image) for im in images):
        raise ValueError("images must be a non-empty list of PIL images")
    arrays = [np.asarray(_resize_center_crop(im.convert("RGB"), size)) for im in images]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return pixels / 127.5 - 1.0


def to_pil_images(pixels: torch.Tensor) -> list[Image.Image]:
    """RGB PIL images from decoded pixels [B, 3, H, W] in [-1, 1] (clamped)."""
    pixels = ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    arrays = pixels.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


def _resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))
