"""What the engine needs from a model family: the `ModelFamily` protocol and the
`Conditioning` it encodes prompts into. A family describes a loaded model with a
`ModelCard` (service/core/model_card.py, the type the worker publishes).

A family knows its pipeline (VAE, text encoders, denoiser, prediction type); the inversion
methods (`worker/engine/inversion/`) know the sampler. Stable Diffusion 1.x/2.x is the one
family of `stable_diffusion.py`, SD 3 / 3.5 (rectified flow) of `stable_diffusion_3.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from PIL import Image

from latentmix.service.core.model_card import ModelCard

if TYPE_CHECKING:
    from latentmix.worker.engine.models import LoadedModel


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning per batch row, plus the empty prompt's for guidance.

    `pooled` and `extra` leave room for families that need more than one sequence of
    embeddings (SD 3: pooled CLIP embeddings; SDXL: extra time ids); each of their tensors
    has one row per latent and is sliced with the rows.
    """

    cond: torch.Tensor  # [B, L, D], one row per latent
    uncond: torch.Tensor  # [1, L, D], embedding of ""
    pooled: torch.Tensor | None = None  # [B, P]
    uncond_pooled: torch.Tensor | None = None  # [1, P], pooled embedding of ""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # each [B, ...]

    def __len__(self) -> int:
        return self.cond.shape[0]

    @staticmethod
    def concat(parts: Sequence[Conditioning]) -> Conditioning:
        """The parts' rows one after another (e.g. several jobs' rows in one call); the
        unconditional embedding is the same for all of them."""
        first = parts[0]
        return Conditioning(
            cond=torch.cat([part.cond for part in parts]),
            uncond=first.uncond,
            pooled=None if first.pooled is None else torch.cat([part.pooled for part in parts]),
            uncond_pooled=first.uncond_pooled,
            extra={name: torch.cat([part.extra[name] for part in parts]) for name in first.extra},
        )

    def rows(self, start: int, stop: int) -> Conditioning:
        return Conditioning(
            cond=self.cond[start:stop],
            uncond=self.uncond,
            pooled=None if self.pooled is None else self.pooled[start:stop],
            uncond_pooled=self.uncond_pooled,
            extra={name: value[start:stop] for name, value in self.extra.items()},
        )


def cached_encodings(
    model: LoadedModel, prompts: Sequence[str], encode: Callable[[list[str]], Sequence[Any]]
) -> dict[str, Any]:
    """Each distinct prompt of `prompts`, and "" (guidance's unconditional), by prompt: from
    the model's prompt cache, else encoded by `encode(texts)` (one entry per text) in batches
    of `max_batch_size` and cached. A worker runs its text encoders once per prompt, not once
    per job or per row."""
    cache = model.prompt_cache
    table = {p: cache.get(p) for p in dict.fromkeys([*prompts, ""])}
    missing = [p for p, entry in table.items() if entry is None]
    for start in range(0, len(missing), model.max_batch_size):
        texts = missing[start : start + model.max_batch_size]
        for text, entry in zip(texts, encode(texts), strict=True):
            table[text] = entry
            cache.put(text, entry)
    return table


def pooled_rows(
    embeds: torch.Tensor, pooled: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per text of a batch: its (states, pooled embedding), each with a batch axis of one (the
    cache entries of families with a pooled text embedding: SDXL, SD 3)."""
    return [(embeds[i : i + 1].clone(), pooled[i : i + 1].clone()) for i in range(len(embeds))]


def guided(
    unconditional: torch.Tensor,
    conditional: torch.Tensor,
    guidance_scale: float,
    guidance_rescale: float = 0.0,
) -> torch.Tensor:
    """Classifier-free guidance, out_u + g (out_c - out_u) (method.md section 1), then, for
    phi = `guidance_rescale` > 0, rescaled to the conditional output's standard deviation per
    row and blended by phi (Lin et al., "Common diffusion noise schedules ...", eq. 15-16:
    diffusers' own `rescale_noise_cfg`)."""
    out = unconditional + guidance_scale * (conditional - unconditional)
    if guidance_rescale == 0.0:
        return out
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    return rescale_noise_cfg(out, conditional, guidance_rescale=guidance_rescale)


class ModelFamily(Protocol):
    """One kind of pipeline (Stable Diffusion 1.x/2.x, SD 3, ...), stateless: every method
    takes the `LoadedModel` it works on."""

    name: str  # e.g. "stable-diffusion"
    pipeline_classes: tuple[str, ...]  # diffusers pipeline class names this family loads
    default_guidance: float
    attention_interpolation: bool  # worker/engine/attention/ can interpolate its attention
    pooled_text_embedding: bool  # its text conditioning has a pooled embedding (SDXL, SD 3)

    def load_pipeline(
        self, source: str, dtype: torch.dtype, *, t5: bool = True, variant: str | None = None
    ) -> Any:
        """The pipeline from a hub id or local directory, with the family's sampler; `t5`
        False leaves out a T5 text encoder where the family has one (SD 3); `variant` names
        the weight files to load (e.g. "fp16": `*.fp16.safetensors`), None the default ones."""
        ...

    def native_size(self, pipe: Any) -> int:
        """The image side in pixels the model was trained at."""
        ...

    def card(self, model: LoadedModel) -> ModelCard:
        """The loaded model's card with no inversion methods: the engine adds those whose
        needs the card meets (`LoadedModel.card`)."""
        ...

    def encode_images(
        self, model: LoadedModel, images: Sequence[Image.Image], size: int
    ) -> torch.Tensor:
        """Clean latents x0, float32 CPU [B, C, size / f, size / f]."""
        ...

    def decode_latents(self, model: LoadedModel, x0: torch.Tensor) -> list[Image.Image]: ...

    def encode_prompts(self, model: LoadedModel, prompts: Sequence[str]) -> Conditioning: ...

    def predict(
        self,
        model: LoadedModel,
        x: torch.Tensor,
        timestep: int,
        conditioning: Conditioning,
        guidance_scale: float,
        guidance_rescale: float = 0.0,
    ) -> torch.Tensor:
        """The denoiser's output at `timestep` with classifier-free guidance, float32 (a
        flow family's timestep is 1000 sigma, a float), rescaled by `guidance_rescale`
        (`guided`)."""
        ...

    def to_noise(
        self, model: LoadedModel, output: torch.Tensor, x: torch.Tensor, timestep: int
    ) -> torch.Tensor:
        """`predict`'s output as the noise estimate eps a DDIM-type sampler steps with."""
        ...
