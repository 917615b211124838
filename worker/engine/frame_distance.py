"""The distance between consecutive morph frames that perceptual spacing evens out and the
morph metrics average, named in every result that uses it.

- `lpips-alex` (lpips.py): LPIPS with AlexNet, as AID and DiffMorpher measure, when the
  worker is given its weights (LATENTMIX_LPIPS_WEIGHTS);
- `rgb-rmse` otherwise: the root mean square difference of the decoded frames' RGB values
  in [0, 1]. It measures pixels, not perception."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

FALLBACK_NAME = "rgb-rmse"


@dataclass(frozen=True)
class FrameDistance:
    name: str
    consecutive: Callable[[Sequence[Image.Image]], list[float]]


def frame_distance(a: Image.Image, b: Image.Image) -> float:
    """RMS difference of two same-size RGB images, values scaled to [0, 1]."""
    if a.size != b.size:
        raise ValueError(f"frames of different sizes: {a.size} and {b.size}")
    x = np.asarray(a.convert("RGB"), dtype=np.float64) / 255.0
    y = np.asarray(b.convert("RGB"), dtype=np.float64) / 255.0
    return float(np.sqrt(np.mean((x - y) ** 2)))


def consecutive_distances(frames: Sequence[Image.Image]) -> list[float]:
    """`rgb-rmse` between each consecutive pair."""
    return [frame_distance(a, b) for a, b in itertools.pairwise(frames)]


RGB_RMSE = FrameDistance(FALLBACK_NAME, consecutive_distances)


def configured_distance(lpips_weights: str | None, device: str = "cpu") -> FrameDistance:
    """LPIPS when weights are configured (this loads them: the caller keeps the result, the
    worker on its context), else `rgb-rmse`."""
    if lpips_weights is None:
        return RGB_RMSE
    from latentmix.worker.engine.lpips import NAME, load_lpips

    return FrameDistance(NAME, load_lpips(lpips_weights, device).consecutive)
