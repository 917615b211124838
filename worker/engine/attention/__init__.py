"""Attention interpolation (AID, shared/morph.md): each frame's self- and cross-attention
also attends to its keyframes' keys and values, during the first steps, on the conditional
pass. `formulas.py` holds the rules (pure tensors), `processors.py` the Diffusers attention
processors that apply them, `keyframes.py` the keyframes' reference passes and their cache."""

from latentmix.worker.engine.attention.formulas import interpolated_attention
from latentmix.worker.engine.attention.keyframes import (
    KeyframeAttention,
    KeyframeAttentionCache,
    keyframe_attention,
    sample_with_attention,
)

__all__ = [
    "KeyframeAttention",
    "KeyframeAttentionCache",
    "interpolated_attention",
    "keyframe_attention",
    "sample_with_attention",
]
