"""The latent engine, usable on its own: load a model, invert images into noise latents
(DDIM today; `inversion/` holds the methods, `families/` the model families), mix latents,
generate images.

    from latentmix.worker.engine import load_model, invert, mix, generate, InversionSettings

Attributes load lazily, so `service.mix_methods` (names and weight rules) can be
imported by the torch-free API without pulling in torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "mix": "latentmix.worker.engine.mixing",
    "MIX_METHODS": "latentmix.service.core.mix_methods",
    "DEFAULT_METHOD": "latentmix.service.core.mix_methods",
    "load_model": "latentmix.worker.engine.models",
    "LoadedModel": "latentmix.worker.engine.models",
    "ModelLoadError": "latentmix.worker.engine.models",
    "invert": "latentmix.worker.engine.diffusion",
    "generate": "latentmix.worker.engine.diffusion",
    "sample": "latentmix.worker.engine.diffusion",
    "encode_images": "latentmix.worker.engine.diffusion",
    "decode_latents": "latentmix.worker.engine.diffusion",
    "encode_prompts": "latentmix.worker.engine.diffusion",
    "InversionSettings": "latentmix.service.core.contract",
    "Inverted": "latentmix.worker.engine.results",
    "ModelCard": "latentmix.service.core.model_card",
    "Conditioning": "latentmix.worker.engine.families.base",
    "INVERSION_METHODS": "latentmix.worker.engine.inversion",
    "get_inversion": "latentmix.worker.engine.inversion",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'latentmix.worker.engine' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
