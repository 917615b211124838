"""A morph's plan: which frames it has, between which keyframes, at which coefficients.
Pure math, no I/O and no numpy: the API plans (and refuses) a morph before queueing it, the
worker plans the same frames from the same request.

A morph of K keyframes walks the path keyframe 1 -> 2 -> ... -> K (`chain`), or back to
keyframe 1 (`loop`). Each leg is a segment; frame i of a segment mixes its two keyframes with
weights (1 - t_i, t_i), so every frame is a /mix weight row over the K keyframes (zeros for
the keyframes it is not between). `frames` counts every frame, keyframes included; each
keyframe appears once (a loop does not repeat the first at the end).

Spacing of the t_i within a segment of n points (both keyframes included; shared/morph.md):
- linear: t_i = i / (n - 1);
- beta: t_i = F^-1(i / (n - 1)) with F the CDF of Beta(alpha, beta) (AID's Beta prior);
  t_0 = 0 and t_{n-1} = 1 exactly;
- perceptual: linear first; then, given the distances between consecutive frames, the t
  that invert the cumulative distance at equal steps (DiffMorpher's reschedule), one more
  generation pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

PATHS = ("chain", "loop")
SPACINGS = ("linear", "beta", "perceptual")
ATTENTION_MODES = ("none", "inner", "outer", "fused")
DEFAULT_BETA = (6.0, 3.0)  # AID's demo defaults for (alpha, beta)
MAX_BETA_PARAMETER = 1e4  # Beta(1e4, 1e4) already puts every frame within 1% of the middle
DEFAULT_ATTENTION_STEPS = 0.5  # AID's warmup_ratio: the first half of the steps


@dataclass(frozen=True)
class PlannedFrame:
    """One frame: the segment it lies on, its keyframes (indices) and coefficient t."""

    segment: int
    start: int  # keyframe index at t = 0
    end: int  # keyframe index at t = 1
    coefficient: float

    def weights(self, keyframes: int) -> list[float]:
        """The frame as a mix weight row over all keyframes: (1 - t) at start, t at end."""
        row = [0.0] * keyframes
        row[self.start] += 1.0 - self.coefficient
        row[self.end] += self.coefficient
        return row

    @property
    def keyframe(self) -> int | None:
        """The keyframe this frame is, if its coefficient is 0 or 1."""
        if self.coefficient == 0.0:
            return self.start
        if self.coefficient == 1.0:
            return self.end
        return None


# --- validation ---------------------------------------------------------------------------


def check_morph(
    keyframes: int,
    frames: int,
    *,
    path: str = "chain",
    spacing: str = "linear",
    alpha: float = DEFAULT_BETA[0],
    beta: float = DEFAULT_BETA[1],
    attention: str = "none",
    attention_steps: float = DEFAULT_ATTENTION_STEPS,
    max_frames: int | None = None,
) -> None:
    """ValueError naming the problem, for anything a morph cannot be planned with."""
    if keyframes < 2:
        raise ValueError(f"a morph needs at least 2 keyframes, got {keyframes}")
    if frames < keyframes:
        raise ValueError(
            f"frames ({frames}) must be at least the number of keyframes ({keyframes}): "
            "frames counts every frame, keyframes included"
        )
    if max_frames is not None and frames > max_frames:
        raise ValueError(
            f"{frames} frames in one morph; the limit is {max_frames} (LATENTMIX_MAX_MORPH_FRAMES)"
        )
    _check_choice("path", path, PATHS)
    _check_choice("spacing", spacing, SPACINGS)
    _check_choice("attention", attention, ATTENTION_MODES)
    if spacing == "beta" and not (
        0 < alpha <= MAX_BETA_PARAMETER and 0 < beta <= MAX_BETA_PARAMETER
    ):
        raise ValueError(
            f"Beta parameters must be > 0 (and at most {MAX_BETA_PARAMETER:g}), "
            f"got alpha={alpha}, beta={beta}"
        )
    if not 0.0 <= attention_steps <= 1.0:
        raise ValueError(f"attention_steps is a fraction in [0, 1], got {attention_steps}")


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


# --- the path -----------------------------------------------------------------------------


def segments(keyframes: int, path: str) -> list[tuple[int, int]]:
    """(start, end) keyframe indices of each leg of the path."""
    legs = [(k, k + 1) for k in range(keyframes - 1)]
    return [*legs, (keyframes - 1, 0)] if path == "loop" else legs


def points_per_segment(keyframes: int, frames: int, path: str) -> list[int]:
    """Points of each segment, both keyframes included: the frames between keyframes
    (`frames - keyframes`) shared as evenly as possible, earlier segments first."""
    legs = len(segments(keyframes, path))
    inner, extra = divmod(frames - keyframes, legs)
    return [2 + inner + (1 if s < extra else 0) for s in range(legs)]


def plan_frames(
    keyframes: int,
    frames: int,
    *,
    path: str = "chain",
    spacing: str = "linear",
    alpha: float = DEFAULT_BETA[0],
    beta: float = DEFAULT_BETA[1],
    coefficients: Sequence[Sequence[float]] | None = None,
) -> list[PlannedFrame]:
    """Every frame of the morph in path order. `coefficients` (one list per segment, both
    ends included) overrides the spacing: the perceptual pass's re-spaced values."""
    check_morph(keyframes, frames, path=path, spacing=spacing, alpha=alpha, beta=beta)
    legs = segments(keyframes, path)
    counts = points_per_segment(keyframes, frames, path)
    if coefficients is None:
        coefficients = [segment_coefficients(n, spacing, alpha, beta) for n in counts]
    planned: list[PlannedFrame] = []
    for index, ((start, end), values) in enumerate(zip(legs, coefficients, strict=True)):
        last_leg = index == len(legs) - 1
        # A segment's end keyframe is the next segment's first point; a loop's last end is
        # the first keyframe, already frame 0.
        keep = values if last_leg and path == "chain" else values[:-1]
        planned.extend(PlannedFrame(index, start, end, float(t)) for t in keep)
    return planned


# --- spacing ------------------------------------------------------------------------------


def segment_coefficients(
    points: int, spacing: str, alpha: float = DEFAULT_BETA[0], beta: float = DEFAULT_BETA[1]
) -> list[float]:
    """The t of `points` points from 0 to 1 (both included). `perceptual` starts linear."""
    if points < 2:
        raise ValueError(f"a segment has at least its 2 keyframes, got {points} points")
    uniform = [i / (points - 1) for i in range(points)]
    if spacing == "beta":
        inner = [beta_ppf(q, alpha, beta) for q in uniform[1:-1]]
        return [0.0, *inner, 1.0]  # AID: the endpoints are the keyframes, exactly
    return [0.0, *uniform[1:-1], 1.0]


def respace_by_distance(coefficients: Sequence[float], distances: Sequence[float]) -> list[float]:
    """DiffMorpher's reschedule: given the distances between consecutive frames generated at
    `coefficients`, the coefficients at which the cumulative distance (linear between the
    measured frames) rises in equal steps. Endpoints stay 0 and 1; the count is unchanged."""
    if len(distances) != len(coefficients) - 1:
        raise ValueError(
            f"{len(distances)} distances for {len(coefficients)} coefficients; "
            "expected one per consecutive pair"
        )
    if any(not math.isfinite(d) or d < 0 for d in distances):
        raise ValueError(f"distances must be finite and >= 0, got {list(distances)}")
    cumulative = [0.0]
    for distance in distances:
        cumulative.append(cumulative[-1] + distance)
    total = cumulative[-1]
    if total == 0:  # every frame alike: nothing to even out
        return [float(t) for t in coefficients]
    points = len(coefficients)
    respaced = [0.0]
    for i in range(1, points - 1):
        respaced.append(
            _invert_piecewise_linear(cumulative, coefficients, total * i / (points - 1))
        )
    return [*respaced, 1.0]


def _invert_piecewise_linear(ys: Sequence[float], xs: Sequence[float], y: float) -> float:
    """The x at which the increasing polyline through (xs, ys) reaches y."""
    for j in range(1, len(ys)):
        if ys[j] >= y and ys[j] > ys[j - 1]:
            share = (y - ys[j - 1]) / (ys[j] - ys[j - 1])
            return xs[j - 1] + share * (xs[j] - xs[j - 1])
    return xs[-1]


# --- the Beta distribution ----------------------------------------------------------------


def beta_ppf(q: float, a: float, b: float) -> float:
    """Inverse CDF of Beta(a, b) at q: the x with I_x(a, b) = q, by bisection to double
    precision (the CDF is increasing on [0, 1])."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a probability must be in [0, 1], got {q}")
    if q in (0.0, 1.0):
        return q
    low, high = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        if beta_cdf(mid, a, b) < q:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (Numerical Recipes 6.4: the
    continued fraction, on the side of x where it converges fast)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1.0 - x, b, a) / b


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """Lentz's evaluation of the continued fraction of I_x(a, b) (NR eq. 6.4.5)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"the incomplete beta fraction did not converge at x={x}, a={a}, b={b}")
