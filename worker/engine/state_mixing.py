"""Mixing an inversion method's auxiliary state with the same weights as the latents.

State tensors that are latents themselves (EDICT's second latent, BDIA's previous one:
`InversionMethod.latent_state`) are mixed with the latents' mixing method; the others
(null-text's per-step unconditional embeddings) linearly, phi_i^mix = sum_k w_k phi_i^(k)
(the mixing paper's appendix B). Pure tensor math.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from latentmix.worker.engine.mixing import Weights, mix
from latentmix.worker.engine.results import Inverted


def mix_states(
    states: Sequence[dict[str, torch.Tensor]],
    weights: Weights,
    method: str,
    latent_state: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Each state tensor of K inputs ([K, ...] once stacked) mixed with `weights` [N, K]
    -> [N, ...]; ValueError when the inputs do not hold the same tensors."""
    names = set(states[0]) if states else set()
    if any(set(state) != names for state in states):
        raise ValueError(
            f"inputs hold different state tensors: {sorted({tuple(sorted(s)) for s in states})}"
        )
    mixed = {}
    for name in sorted(names):
        stack = torch.stack([state[name] for state in states])
        mixed[name] = mix(stack, weights, method if name in latent_state else "lerp")
    return mixed


def mix_inverted(
    inverted: Inverted, weights: Weights, method: str, latent_state: Sequence[str]
) -> Inverted:
    """The K rows of `inverted` mixed with `weights` [N, K]: the latents with `method`, their
    state as `mix_states` mixes it; to be sampled with the inputs' method and settings."""
    states = [
        {name: value[k] for name, value in inverted.aux.items()} for k in range(len(inverted))
    ]
    return Inverted(
        latent=mix(inverted.latent, weights, method),
        aux=mix_states(states, weights, method, latent_state) if inverted.aux else {},
        method=inverted.method,
        settings=inverted.settings,
    )
