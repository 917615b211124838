"""The record each inversion method registers: its name, what it needs of a model (checked
against the model's card), and its three entry points."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from latentmix.service.core.model_card import Needs
from latentmix.worker.engine.families.base import Conditioning
from latentmix.worker.engine.results import Inverted, ProgressFn

if TYPE_CHECKING:
    from latentmix.worker.engine.models import LoadedModel

CheckFn = Callable[["LoadedModel", int], None]
Options = Mapping[str, Any]  # the method's own InversionSettings fields, by name
CheckOptionsFn = Callable[[Options], None]
InvertFn = Callable[
    ["LoadedModel", torch.Tensor, Conditioning, int, float, ProgressFn | None, Options], Inverted
]
SampleFn = Callable[
    ["LoadedModel", Inverted, Conditioning, int, float, ProgressFn | None], torch.Tensor
]


@dataclass(frozen=True)
class InversionMethod:
    """An inversion method and the sampler that regenerates from what it produced.

    `invert(model, x0, conditioning, steps, guidance_scale, progress, options)` maps clean
    latents to an `Inverted` whose settings hold the method's own entries (e.g. DDIM's
    start_timestep, and any option its sampler needs again, such as EDICT's mix);
    `sample(model, inverted, conditioning, steps, guidance_scale, progress)` maps it back to
    clean latents. `check(model, steps)` raises ValueError, before any compute, when the
    method cannot run the model or the step count. `options` names the `InversionSettings`
    fields the method reads (handed to `invert` as a mapping); `check_options(options)`
    raises ValueError, naming the allowed values, for values it cannot invert with.
    """

    name: str
    needs: Needs  # what a model's card must offer (e.g. PREDICTS_NOISE)
    check: CheckFn
    invert: InvertFn
    sample: SampleFn
    options: tuple[str, ...] = ()
    check_options: CheckOptionsFn = lambda options: None  # no options to check
    # aux tensors that are latents themselves (mixed like the latent; others linearly)
    latent_state: tuple[str, ...] = ()
    # Exact by construction: sampling undoes inversion up to float rounding (EDICT, BDIA at
    # gamma 1), so measuring the round trip by default would spend a pass to learn nothing.
    exact: bool = False


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
