"""The record each inversion method registers: its name, the families it works with, and
its three entry points."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from latentmix.worker.engine.families.base import Conditioning
from latentmix.worker.engine.results import Inverted, ProgressFn

if TYPE_CHECKING:
    from latentmix.worker.engine.models import LoadedModel

CheckFn = Callable[["LoadedModel", int], None]
InvertFn = Callable[
    ["LoadedModel", torch.Tensor, Conditioning, int, float, ProgressFn | None], Inverted
]
SampleFn = Callable[
    ["LoadedModel", Inverted, Conditioning, int, float, ProgressFn | None], torch.Tensor
]


@dataclass(frozen=True)
class InversionMethod:
    """An inversion method and the sampler that regenerates from what it produced.

    `invert(model, x0, conditioning, steps, guidance_scale, progress)` maps clean latents to
    an `Inverted` whose settings hold the method's own entries (e.g. DDIM's start_timestep);
    `sample(model, inverted, conditioning, steps, guidance_scale, progress)` maps it back to
    clean latents. `check(model, steps)` raises ValueError, before any compute, when the
    method cannot run the model or the step count.
    """

    name: str
    families: tuple[str, ...]  # the `ModelFamily.name`s it works with
    check: CheckFn
    invert: InvertFn
    sample: SampleFn
