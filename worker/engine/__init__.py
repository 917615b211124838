"""The latent engine, usable on its own: load a model, invert images into DDIM noise
latents, mix latents, generate images.

    from worker.engine import load_model, invert, mix, generate, InversionSettings

Attributes load lazily, so `worker.engine.methods` (names and weight rules) can be
imported by the torch-free API without pulling in torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "mix": "worker.engine.mixing",
    "MIX_METHODS": "worker.engine.methods",
    "DEFAULT_METHOD": "worker.engine.methods",
    "load_model": "worker.engine.models",
    "LoadedModel": "worker.engine.models",
    "ModelLoadError": "worker.engine.models",
    "invert": "worker.engine.diffusion",
    "generate": "worker.engine.diffusion",
    "sample": "worker.engine.diffusion",
    "encode_images": "worker.engine.diffusion",
    "decode_latents": "worker.engine.diffusion",
    "InversionSettings": "worker.engine.diffusion",
    "InversionResult": "worker.engine.diffusion",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'worker.engine' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
