"""Rendering a morph's frames: text conditions interpolated along the path, and generation
with or without attention interpolation (attention/). Frames without either are generated
exactly as /mix generates (`diffusion.generate`), so they are the same images."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from latentmix.worker.engine.attention import (
    KeyframeAttention,
    KeyframeAttentionCache,
    keyframe_attention,
    sample_with_attention,
)
from latentmix.worker.engine.attention.keyframes import active_timesteps
from latentmix.worker.engine.diffusion import decode_latents, encode_prompts, generate
from latentmix.worker.engine.families.base import Conditioning
from latentmix.worker.engine.models import LoadedModel
from latentmix.worker.engine.results import ProgressFn


@dataclass(frozen=True)
class Keyframes:
    """The keyframes a morph (or an attention-mixed /mix) interpolates: their noise
    latents [K, C, h, w], prompts, and the keys their attention is cached by."""

    latents: torch.Tensor
    prompts: Sequence[str]
    keys: Sequence[Hashable]  # e.g. (latent id, prompt)


def frame_conditioning(
    model: LoadedModel,
    keyframe_prompts: Sequence[str],
    frame_prompts: Sequence[str | None],
    weights: Sequence[Sequence[float]],
) -> Conditioning:
    """Row i: the embedding of `frame_prompts[i]`, or, where it is None, the keyframes'
    prompt embeddings mixed linearly with `weights[i]` (AID's text interpolation), in
    float32 and then the model's dtype. Rows with a prompt are exactly what
    `encode_prompts` gives for it."""
    needed = [p for p in frame_prompts if p is not None]
    if any(p is None for p in frame_prompts):
        needed += list(keyframe_prompts)
    distinct = list(dict.fromkeys(needed))
    table = encode_prompts(model, distinct)
    row_of = {prompt: i for i, prompt in enumerate(distinct)}
    keyframe_rows = [row_of.get(p) for p in keyframe_prompts]

    def mixed(tensor: torch.Tensor, prompt: str | None, row: Sequence[float]) -> torch.Tensor:
        if prompt is not None:
            return tensor[row_of[prompt]]
        terms = [w * tensor[k].float() for w, k in zip(row, keyframe_rows, strict=True) if w]
        return sum(terms).to(tensor.dtype)

    def rows(tensor: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [mixed(tensor, p, w) for p, w in zip(frame_prompts, weights, strict=True)]
        )

    return Conditioning(
        cond=rows(table.cond),
        uncond=table.uncond,
        pooled=None if table.pooled is None else rows(table.pooled),
        uncond_pooled=table.uncond_pooled,
    )


def render_frames(
    model: LoadedModel,
    latents: torch.Tensor,
    conditioning: Conditioning,
    *,
    steps: int,
    guidance_scale: float,
    attention: str = "none",
    row_weights: Sequence[Sequence[float] | None] = (),
    keyframes: Keyframes | None = None,
    attention_steps: float = 0.5,
    cache: KeyframeAttentionCache | None = None,
    progress: ProgressFn | None = None,
    on_references: Callable[[list[KeyframeAttention]], None] | None = None,
) -> list[Image.Image]:
    """Images of mixed `latents`. With an attention mode, row i interpolates its attention
    with the keyframes' by `row_weights[i]` (None: a keyframe, its own attention);
    `on_references` sees the keyframes' attention (e.g. to report its size)."""
    if attention == "none" or all(w is None for w in row_weights):
        return generate(
            model,
            latents,
            conditioning,
            steps=steps,
            guidance_scale=guidance_scale,
            progress=progress,
        )
    if keyframes is None:
        raise ValueError(f"attention {attention!r} needs the keyframes")
    timesteps = active_timesteps(model, steps, attention_steps)
    references = keyframe_attention(
        model,
        keyframes.latents,
        encode_prompts(model, list(keyframes.prompts)),
        keyframes.keys,
        steps=steps,
        guidance_scale=guidance_scale,
        timesteps=timesteps,
        cache=cache if cache is not None else KeyframeAttentionCache(0),
    )
    if on_references is not None:
        on_references(references)
    x0 = sample_with_attention(
        model,
        latents,
        conditioning,
        row_weights,
        references,
        mode=attention,
        steps=steps,
        guidance_scale=guidance_scale,
        timesteps=timesteps,
        progress=progress,
    )
    return decode_latents(model, x0)
