"""Diffusers attention processors that store a keyframe's keys and values, or interpolate a
frame's attention with its keyframes' (formulas.py), on every self- (`attn1`) and cross-
(`attn2`) attention layer of a UNet, at the session's active timesteps, on the conditional
rows only. Everything else is the layer's own processor, untouched."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from latentmix.worker.engine.attention.formulas import interpolated_attention

# A layer's stored keys and values: (layer name, timestep) for self-attention, (layer name,
# None) for cross-attention (the prompt's keys do not change with the step).
LayerKey = tuple[str, int | None]
KeysValues = tuple[torch.Tensor, torch.Tensor]  # [m, C] each, before the split into heads


@dataclass
class AttentionSession:
    """What the processors of one sampling run share: `store` records each conditional row's
    keys and values into `records`; an interpolation mode (inner, outer, fused) mixes row i
    with `references` by `row_weights[i]` (None: the row keeps its own attention)."""

    mode: str
    active: frozenset[int]  # the timesteps that interpolate (AID: the first half)
    guided: bool  # classifier-free guidance: the batch is [uncond; cond]
    row_weights: Sequence[Sequence[float] | None] = ()
    references: Sequence[dict[LayerKey, KeysValues]] = ()
    records: list[dict[LayerKey, KeysValues]] = field(default_factory=list)
    timestep: int | None = None

    def conditional_rows(self, batch: int) -> range:
        return range(batch // 2, batch) if self.guided else range(batch)


class LayerProcessor:
    """Wraps one layer's processor (Diffusers calls it as `processor(attn, hidden_states,
    encoder_hidden_states, attention_mask, temb)`)."""

    def __init__(self, name: str, session: AttentionSession, original: Any) -> None:
        self.name = name
        self.session = session
        self.original = original

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        out = self.original(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
        )
        session = self.session
        if session.timestep not in session.active:
            return out
        check_layer(self.name, attn, hidden_states, attention_mask)
        cross = encoder_hidden_states is not None
        source = encoder_hidden_states if cross else hidden_states
        key = (self.name, None if cross else session.timestep)
        rows = session.conditional_rows(hidden_states.shape[0])
        if session.mode == "store":
            self._store(attn, source, rows, key)
            return out
        for index, weights in zip(rows, session.row_weights, strict=True):
            if weights is not None:
                out[index] = self._interpolate(attn, hidden_states, source, index, weights, key)
        return out

    def _store(self, attn: Any, source: torch.Tensor, rows: range, key: LayerKey) -> None:
        records = self.session.records
        while len(records) < len(rows):
            records.append({})
        selected = source[rows.start : rows.stop]
        keys, values = attn.to_k(selected), attn.to_v(selected)
        for i in range(len(rows)):
            records[i][key] = (keys[i].clone(), values[i].clone())

    def _interpolate(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        source: torch.Tensor,
        index: int,
        weights: Sequence[float],
        key: LayerKey,
    ) -> torch.Tensor:
        """Row `index`'s output: its query against its own and its keyframes' keys and
        values, by the session's rule; then the layer's output projection."""
        heads = attn.heads
        q = split_heads(attn.to_q(hidden_states[index]), heads)
        k_self = split_heads(attn.to_k(source[index]), heads)
        v_self = split_heads(attn.to_v(source[index]), heads)
        used = [
            (w, reference[key])
            for w, reference in zip(weights, self.session.references, strict=True)
            if w != 0
        ]
        references = [(split_heads(k, heads), split_heads(v, heads)) for _, (k, v) in used]
        mixed = interpolated_attention(
            self.session.mode, q, k_self, v_self, references, [w for w, _ in used]
        )
        merged = mixed.transpose(0, 1).reshape(q.shape[1], -1).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](merged))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[m, heads * d] -> [heads, m, d], as AttnProcessor2_0 splits a batch row."""
    return x.view(x.shape[0], heads, -1).transpose(0, 1)


def check_layer(name: str, attn: Any, hidden_states: torch.Tensor, mask: Any) -> None:
    """The layer is a plain transformer-block attention (what SD's UNet has): anything the
    interpolation does not reproduce is refused by name rather than computed wrong."""
    unsupported = [
        label
        for label, present in (
            ("spatial_norm", attn.spatial_norm is not None),
            ("group_norm", attn.group_norm is not None),
            ("norm_cross", bool(attn.norm_cross)),
            ("norm_q/norm_k", attn.norm_q is not None or attn.norm_k is not None),
            ("residual_connection", bool(attn.residual_connection)),
            ("rescale_output_factor", attn.rescale_output_factor != 1.0),
            ("attention_mask", mask is not None),
            ("4-d hidden states", hidden_states.ndim != 3),
        )
        if present
    ]
    if unsupported:
        raise ValueError(f"attention layer {name} has {unsupported}: not interpolated")


@contextmanager
def installed(unet: Any, session: AttentionSession) -> Iterator[None]:
    """The session's processors on every attention layer of `unet` (the session follows the
    UNet's timestep), the original ones back afterwards."""
    originals = unet.attn_processors

    def follow_timestep(_module: Any, args: tuple, kwargs: dict) -> None:
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        session.timestep = int(timestep)

    unet.set_attn_processor(
        {name: LayerProcessor(name, session, processor) for name, processor in originals.items()}
    )
    hook = unet.register_forward_pre_hook(follow_timestep, with_kwargs=True)
    try:
        yield
    finally:
        hook.remove()
        unet.set_attn_processor(originals)
