"""The distance between consecutive morph frames that perceptual spacing evens out and the
morph metrics average. One small function, named in every result that uses it, so that a
perceptual metric (LPIPS, from the metrics module) can replace it.

`rgb-rmse`: the root mean square difference of the decoded frames' RGB values in [0, 1]. It
is not LPIPS: it measures pixels, not perception (AID and DiffMorpher use LPIPS)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from PIL import Image

DISTANCE_NAME = "rgb-rmse"


def frame_distance(a: Image.Image, b: Image.Image) -> float:
    """RMS difference of two same-size RGB images, values scaled to [0, 1]."""
    if a.size != b.size:
        raise ValueError(f"frames of different sizes: {a.size} and {b.size}")
    x = np.asarray(a.convert("RGB"), dtype=np.float64) / 255.0
    y = np.asarray(b.convert("RGB"), dtype=np.float64) / 255.0
    return float(np.sqrt(np.mean((x - y) ** 2)))


def consecutive_distances(frames: Sequence[Image.Image]) -> list[float]:
    return [frame_distance(a, b) for a, b in itertools.pairwise(frames)]
