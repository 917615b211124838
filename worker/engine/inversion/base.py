"""The record each inversion method registers: its spec (name, what it needs of a model,
options, state) and its three entry points."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from latentmix.service.core.inversion_methods import InversionMethodSpec
from latentmix.service.core.model_card import Needs
from latentmix.worker.engine.families.base import Conditioning
from latentmix.worker.engine.results import Inverted, ProgressFn

if TYPE_CHECKING:
    from latentmix.worker.engine.models import LoadedModel

CheckFn = Callable[["LoadedModel", int], None]
Options = Mapping[str, Any]  # the method's options (its spec's fields), by name
InvertFn = Callable[
    ["LoadedModel", torch.Tensor, Conditioning, int, float, ProgressFn | None, Options], Inverted
]
SampleFn = Callable[
    ["LoadedModel", Inverted, Conditioning, int, float, ProgressFn | None], torch.Tensor
]


@dataclass(frozen=True)
class InversionMethod:
    """An inversion method and the sampler that regenerates from what it produced.

    `spec` is what both processes know of it (service/core/inversion_methods.py: name,
    needs, options, state). `invert(model, x0, conditioning, steps, guidance_scale,
    progress, options)` maps clean latents to an `Inverted` whose settings hold the method's
    own entries (e.g. DDIM's start_timestep, and any option its sampler needs again, such as
    EDICT's mix); `sample(model, inverted, conditioning, steps, guidance_scale, progress)` maps
    it back to clean latents. `check(model, steps)` raises ValueError, before any compute,
    when the method cannot run the model or the step count. `options` (its spec's fields, by
    name) are checked by `spec.parse`.
    """

    spec: InversionMethodSpec
    check: CheckFn
    invert: InvertFn
    sample: SampleFn

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def needs(self) -> Needs:
        return self.spec.needs

    @property
    def options(self) -> tuple[str, ...]:
        return self.spec.option_names

    @property
    def latent_state(self) -> tuple[str, ...]:
        """Aux tensors that are latents themselves (mixed like the latent; others linearly)."""
        return self.spec.latent_state

    @property
    def exact(self) -> bool:
        return self.spec.exact


def row_chunks(model: LoadedModel, rows: int, *, inverting: bool) -> list[tuple[int, int]]:
    """(start, stop) of each batch of at most `model.inversion_batch_size` rows when
    inverting, `model.max_batch_size` when sampling."""
    chunk = model.inversion_batch_size if inverting else model.max_batch_size
    return [(start, min(start + chunk, rows)) for start in range(0, rows, chunk)]


def step_counter(progress: ProgressFn | None, total: int) -> Callable[[], None]:
    """A callable that reports one more denoiser step of `total` to `progress`."""
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return step
