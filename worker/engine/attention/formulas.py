"""AID's attention interpolation rules, generalised to K inputs (shared/morph.md). Pure
tensor math on one attention layer's heads: q [h, n, d], keys and values [h, m, d].

With weights w_k over the inputs k (sum 1) and the frame's own keys/values K_self, V_self:
- outer: sum_k w_k Attn(Q, K_k, V_k)                       (AID-O)
- inner: Attn(Q, sum_k w_k K_k, sum_k w_k V_k)             (AID-I)
- fused: sum_k w_k Attn(Q, [K_self; K_k], [V_self; V_k])  (AID's fused rule, N-way)
with Attn(Q, K, V) = softmax(Q K^T / sqrt(d)) V. Inputs of weight 0 are left out (their
term is 0), so one-hot weights give exactly the single-input rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

MODES = ("inner", "outer", "fused")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V, as Diffusers' AttnProcessor2_0 computes it."""
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)


def interpolated_attention(
    mode: str,
    q: torch.Tensor,
    k_self: torch.Tensor,
    v_self: torch.Tensor,
    references: Sequence[tuple[torch.Tensor, torch.Tensor]],
    weights: Sequence[float],
) -> torch.Tensor:
    """One frame's attention output under `mode`, given the inputs' (K_k, V_k)."""
    if mode not in MODES:
        raise ValueError(f"unknown attention mode {mode!r}; allowed: {', '.join(MODES)}")
    if len(references) != len(weights):
        raise ValueError(f"{len(references)} references for {len(weights)} weights")
    terms = [(w, k, v) for w, (k, v) in zip(weights, references, strict=True) if w != 0]
    if not terms:
        raise ValueError("attention interpolation needs a non-zero weight")
    if mode == "inner":
        k = sum(w * k for w, k, _ in terms)
        v = sum(w * v for w, _, v in terms)
        return attend(q, k, v)
    if mode == "outer":
        return sum(w * attend(q, k, v) for w, k, v in terms)
    return sum(
        w * attend(q, torch.cat([k_self, k], dim=-2), torch.cat([v_self, v], dim=-2))
        for w, k, v in terms
    )
