"""Keyframes' reference passes and sampling with attention interpolation.

AID re-denoises both endpoints with every frame (about 3x a plain frame). Here each
keyframe's own denoising runs once: its keys and values at every attention layer and active
step are kept (`KeyframeAttention`), in a cache bounded in bytes and keyed by what they
depend on (latent, prompt, steps, guidance, active timesteps), so a morph costs one extra
pass per keyframe, and a second morph of the same keyframes none.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from latentmix.worker.engine.attention.processors import (
    AttentionSession,
    KeysValues,
    LayerKey,
    installed,
)
from latentmix.worker.engine.diffusion import sample
from latentmix.worker.engine.families.base import Conditioning
from latentmix.worker.engine.inversion.ddim import ddim_schedule
from latentmix.worker.engine.models import LoadedModel
from latentmix.worker.engine.results import ProgressFn


@dataclass(frozen=True)
class KeyframeAttention:
    """One keyframe's keys and values per attention layer and active step."""

    layers: dict[LayerKey, KeysValues]

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers.values())


class KeyframeAttentionCache:
    """Keyframes' attention by key, least recently used dropped first beyond `capacity_bytes`
    (an entry larger than the whole capacity is not kept)."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[Hashable, KeyframeAttention] = OrderedDict()
        self.nbytes = 0

    def get(self, key: Hashable) -> KeyframeAttention | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, entry: KeyframeAttention) -> None:
        if entry.nbytes > self.capacity_bytes or key in self._entries:
            return
        self._entries[key] = entry
        self.nbytes += entry.nbytes
        while self.nbytes > self.capacity_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.nbytes -= dropped.nbytes

    def __len__(self) -> int:
        return len(self._entries)


def active_timesteps(model: LoadedModel, steps: int, fraction: float) -> frozenset[int]:
    """The first floor(fraction * steps) sampling timesteps (AID's warmup_ratio)."""
    timesteps = ddim_schedule(model, steps).timesteps
    return frozenset(timesteps[: math.floor(fraction * steps + 1e-9)])


def keyframe_attention(
    model: LoadedModel,
    latents: torch.Tensor,
    conditioning: Conditioning,
    keys: Sequence[Hashable],
    *,
    steps: int,
    guidance_scale: float,
    timesteps: frozenset[int],
    cache: KeyframeAttentionCache,
) -> list[KeyframeAttention]:
    """Each keyframe's attention: from `cache`, or from its reference pass (the keyframe's
    own denoising with its own prompt), run for the missing ones only."""
    model.card.check_attention_interpolation()
    found = {i: cache.get((key, steps, guidance_scale, timesteps)) for i, key in enumerate(keys)}
    missing = [i for i, entry in found.items() if entry is None]
    for start in range(0, len(missing), model.max_batch_size):
        chunk = missing[start : start + model.max_batch_size]
        session = AttentionSession("store", timesteps, guided=guidance_scale != 1.0)
        with installed(model.pipe.unet, session):
            sample(
                model,
                latents[chunk],
                select_rows(conditioning, chunk),
                steps=steps,
                guidance_scale=guidance_scale,
            )
        for i, layers in zip(chunk, session.records, strict=True):
            found[i] = KeyframeAttention(layers)
            cache.put((keys[i], steps, guidance_scale, timesteps), found[i])
    return [found[i] for i in range(len(keys))]


def sample_with_attention(
    model: LoadedModel,
    latents: torch.Tensor,
    conditioning: Conditioning,
    row_weights: Sequence[Sequence[float] | None],
    references: Sequence[KeyframeAttention],
    *,
    mode: str,
    steps: int,
    guidance_scale: float,
    timesteps: frozenset[int],
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Clean latents of `latents`, row i's attention interpolated with the keyframes'
    `references` by `row_weights[i]` (None: its own attention; a keyframe itself)."""
    model.card.check_attention_interpolation()
    if len(row_weights) != len(latents):
        raise ValueError(f"{len(row_weights)} weight rows for {len(latents)} latents")
    layers = [reference.layers for reference in references]
    results = []
    for start in range(0, len(latents), model.max_batch_size):
        stop = min(start + model.max_batch_size, len(latents))
        session = AttentionSession(
            mode,
            timesteps,
            guided=guidance_scale != 1.0,
            row_weights=row_weights[start:stop],
            references=layers,
        )
        with installed(model.pipe.unet, session):
            results.append(
                sample(
                    model,
                    latents[start:stop],
                    conditioning.rows(start, stop),
                    steps=steps,
                    guidance_scale=guidance_scale,
                    progress=progress,
                )
            )
    return torch.cat(results)


def select_rows(conditioning: Conditioning, rows: Sequence[int]) -> Conditioning:
    """The conditioning of `rows` (any indices, in that order)."""
    index = torch.tensor(list(rows), dtype=torch.long)
    return Conditioning(
        cond=conditioning.cond[index.to(conditioning.cond.device)],
        uncond=conditioning.uncond,
        pooled=None if conditioning.pooled is None else conditioning.pooled[index],
        uncond_pooled=conditioning.uncond_pooled,
        extra={name: value[index] for name, value in conditioning.extra.items()},
    )
