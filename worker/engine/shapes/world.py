"""The synthetic shapes world: deterministic 64 px images of one shape on a plain background,
each with its caption ("a red circle on a white background"). Pure numpy, no I/O.

Sample `i` of seed `s` is drawn from its own generator (`numpy.random.default_rng([s, i])`),
so any sample can be made alone, in any order, on any machine. Shapes are drawn at
`SUPERSAMPLE` x the resolution and averaged down, for smooth edges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SIZE = 64  # pixels per side
SUPERSAMPLE = 4
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
# RGB in [0, 1]; far apart from each other and from every background.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.05, 0.05),
    "green": (0.0, 0.6, 0.0),
    "blue": (0.05, 0.2, 0.95),
    "yellow": (1.0, 0.85, 0.0),
    "magenta": (0.85, 0.0, 0.85),
    "cyan": (0.0, 0.85, 0.85),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)
RADIUS_RANGE = (9.0, 22.0)  # circumradius in pixels
STAR_INNER_RATIO = 0.45  # inner over outer radius of the five-pointed star
SQUARE_HALF_SIDE = 0.8  # half side over radius: a square about as large as the circle


@dataclass(frozen=True)
class Sample:
    """One drawing: what is in it and where, and its pixels ([64, 64, 3] float32 in [0, 1])."""

    shape: str
    colour: str
    background: str
    centre: tuple[float, float]  # (x, y) in pixels, y down
    radius: float
    image: np.ndarray

    @property
    def caption(self) -> str:
        return caption(self.shape, self.colour, self.background)

    @property
    def short_caption(self) -> str:
        return caption(self.shape, self.colour)


def caption(shape: str, colour: str, background: str | None = None) -> str:
    """ "a red circle", or "a red circle on a white background"."""
    text = f"a {colour} {shape}"
    return text if background is None else f"{text} on a {background} background"


def all_captions() -> list[str]:
    """Every caption the world uses: short ones first, then with each background."""
    short = [caption(s, c) for s in SHAPES for c in COLOUR_NAMES]
    long = [caption(s, c, b) for s in SHAPES for c in COLOUR_NAMES for b in BACKGROUND_NAMES]
    return short + long


def vocabulary() -> tuple[str, ...]:
    """The words of every caption, in order of first use (the tokenizer's whole-word tokens)."""
    words: list[str] = []
    for text in all_captions():
        words += [w for w in text.split() if w not in words]
    return tuple(words)


def sample(index: int, seed: int = 0) -> Sample:
    """Sample `index` of the world with `seed`: shape, colour and background uniform, radius
    uniform in RADIUS_RANGE, centre uniform where the whole shape fits with a 1 px margin."""
    rng = np.random.default_rng([seed, index])
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    background = BACKGROUND_NAMES[rng.integers(len(BACKGROUND_NAMES))]
    radius = float(rng.uniform(*RADIUS_RANGE))
    low, high = radius + 1.0, SIZE - radius - 1.0
    centre = (float(rng.uniform(low, high)), float(rng.uniform(low, high)))
    image = draw(shape, colour, background, centre, radius)
    return Sample(shape, colour, background, centre, radius, image)


def samples(indices: Sequence[int], seed: int = 0) -> list[Sample]:
    return [sample(int(i), seed) for i in indices]


def draw(
    shape: str, colour: str, background: str, centre: tuple[float, float], radius: float
) -> np.ndarray:
    """The [SIZE, SIZE, 3] float32 image of `shape` in `colour` on `background`."""
    coverage = shape_coverage(shape, centre, radius)[..., None]
    fg = np.asarray(COLOURS[colour], dtype=np.float32)
    bg = np.asarray(BACKGROUNDS[background], dtype=np.float32)
    return (bg * (1 - coverage) + fg * coverage).astype(np.float32)


def shape_coverage(shape: str, centre: tuple[float, float], radius: float) -> np.ndarray:
    """Fraction of each pixel the shape covers, [SIZE, SIZE] in [0, 1] (supersampled; only
    the pixels of the shape's bounding box are tested)."""
    coverage = np.zeros((SIZE, SIZE), dtype=np.float32)
    lo = [max(0, math.floor(c - radius) - 1) for c in centre]
    hi = [min(SIZE, math.ceil(c + radius) + 1) for c in centre]
    (x0, y0), (x1, y1) = lo, hi
    sub = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE  # sub-pixel centres in a pixel
    xs = (np.arange(x0, x1)[:, None] + sub).ravel()
    ys = (np.arange(y0, y1)[:, None] + sub).ravel()
    x, y = np.meshgrid(xs, ys)  # y grows downwards, as in the image
    inside = _inside(shape, x - centre[0], y - centre[1], radius)
    box = inside.reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE).mean(axis=(1, 3))
    coverage[y0:y1, x0:x1] = box
    return coverage


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        half = SQUARE_HALF_SIDE * radius
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape in ("triangle", "star"):
        return _inside_polygon(polygon(shape, radius), dx, dy)
    raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")


def polygon(shape: str, radius: float) -> np.ndarray:
    """Vertices [V, 2] (x, y down) around (0, 0) of the upright triangle or star: the first
    vertex points straight up (negative y)."""
    if shape == "triangle":
        radii, count = [radius], 3
    elif shape == "star":
        radii, count = [radius, STAR_INNER_RATIO * radius], 10
    else:
        raise ValueError(f"{shape!r} is not drawn as a polygon; polygons: triangle, star")
    angles = -math.pi / 2 + 2 * math.pi * np.arange(count) / count
    r = np.resize(np.asarray(radii), count)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


def _inside_polygon(vertices: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd rule: a horizontal ray from the point crosses the boundary an odd number of
    times."""
    inside = np.zeros(x.shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        if y1 == y2:
            continue
        spans = (y1 > y) != (y2 > y)
        crossing_x = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= spans & (x < crossing_x)
    return inside
