"""Negative-prompt inversion (Miyake et al.; inversion.md section 1).

Null-text inversion's fast variant: the unconditional embedding is replaced by the
conditional one at every step, phi_i := c. The guided estimate is then
eps^ = eps(x, t, c) + g (eps(x, t, c) - eps(x, t, c)) = eps(x, t, c) for every g, so the
method is DDIM inversion and DDIM sampling at guidance 1, whatever guidance is asked for.
It runs exactly that: one conditional pass per step (half the cost of guided DDIM). The
guidance asked for is still recorded; the state is one latent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from latentmix.service.core import inversion_methods as specs
from latentmix.worker.engine.families.base import Conditioning
from latentmix.worker.engine.inversion import ddim
from latentmix.worker.engine.inversion.base import InversionMethod
from latentmix.worker.engine.results import Inverted, ProgressFn

if TYPE_CHECKING:
    from latentmix.worker.engine.models import LoadedModel

# eps^ with the unconditional embedding replaced by the conditional one, for any guidance
EFFECTIVE_GUIDANCE = 1.0


def invert(
    model: LoadedModel,
    x0: torch.Tensor,
    conditioning: Conditioning,
    steps: int,
    guidance_scale: float,
    progress: ProgressFn | None = None,
    options: Mapping[str, Any] | None = None,
) -> Inverted:
    """DDIM inversion with phi_i = c, i.e. at guidance 1."""
    inverted = ddim.invert(model, x0, conditioning, steps, EFFECTIVE_GUIDANCE, progress, options)
    return Inverted(latent=inverted.latent, method=NEGATIVE_PROMPT.name, settings=inverted.settings)


def sample(
    model: LoadedModel,
    inverted: Inverted,
    conditioning: Conditioning,
    steps: int,
    guidance_scale: float,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """DDIM sampling with phi_i = c, i.e. at guidance 1."""
    return ddim.sample(model, inverted, conditioning, steps, EFFECTIVE_GUIDANCE, progress)


NEGATIVE_PROMPT = InversionMethod(
    specs.NEGATIVE_PROMPT, check=ddim.check, invert=invert, sample=sample
)
