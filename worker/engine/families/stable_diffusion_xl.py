"""Stable Diffusion XL: the SD VAE and eps-predicting UNet, conditioned on two CLIP text
encoders (their penultimate states side by side), the second one's pooled embedding, and
the added time ids (original size, crop corner, target size) of the UNet's "text_time"
embedding."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from latentmix.worker.engine.checks import prompts_per_row
from latentmix.worker.engine.families.base import (
    Conditioning,
    cached_encodings,
    guided,
    pooled_rows,
)
from latentmix.worker.engine.families.stable_diffusion import StableDiffusion

if TYPE_CHECKING:
    from latentmix.worker.engine.models import LoadedModel

TIME_IDS = "time_ids"  # Conditioning.extra key: [B, 6] added time ids


class StableDiffusionXL(StableDiffusion):
    """The `ModelFamily` of `StableDiffusionXLPipeline` checkpoints (SDXL base 1.0).

    Images, latents, the card and the eps conversion are Stable Diffusion's; the text
    conditioning and the UNet call differ."""

    name = "stable-diffusion-xl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    default_guidance = 5.0  # StableDiffusionXLPipeline's default
    attention_interpolation = False  # its UNet's attention layers are not processors.py's
    pooled_text_embedding = True  # text_encoder_2's

    def load_pipeline(
        self, source: str, dtype: torch.dtype, *, t5: bool = True, variant: str | None = None
    ) -> Any:
        """The pipeline with a `DDIMScheduler` from its scheduler's config. A VAE that asks
        for it (`force_upcast`: SDXL's overflows in float16) is loaded in float32."""
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline

        dtypes: torch.dtype | dict[str, torch.dtype] = dtype
        if dtype != torch.float32:
            vae_config = AutoencoderKL.load_config(source, subfolder="vae")
            if vae_config.get("force_upcast", False):
                dtypes = {"default": dtype, "vae": torch.float32}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = StableDiffusionXLPipeline.from_pretrained(
                source, torch_dtype=dtypes, variant=variant, add_watermarker=False
            )
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        return pipe

    @torch.inference_mode()
    def encode_prompts(self, model: LoadedModel, prompts: Sequence[str]) -> Conditioning:
        """Per row: the joint sequence [B, 77, D1 + D2] and text_encoder_2's pooled [B, P];
        the unconditional pair is zeros when the pipeline says so
        (`force_zeros_for_empty_prompt`, SDXL base), else the empty prompt's, as
        StableDiffusionXLPipeline does without a negative prompt. Each distinct prompt is
        encoded once per model and cached. The time ids depend on the image size: `predict`
        derives them from the latent unless `extra` carries them."""
        prompts = [prompts] if isinstance(prompts, str) else prompts_per_row(prompts, len(prompts))
        if not prompts:
            raise ValueError("prompts must not be empty")
        table = cached_encodings(
            model, prompts, lambda texts: pooled_rows(*_encode_texts(model, texts))
        )
        uncond, uncond_pooled = table[""]
        if model.pipe.config.get("force_zeros_for_empty_prompt", False):
            uncond, uncond_pooled = torch.zeros_like(uncond), torch.zeros_like(uncond_pooled)
        return Conditioning(
            cond=torch.cat([table[p][0] for p in prompts]),
            uncond=uncond,
            pooled=torch.cat([table[p][1] for p in prompts]),
            uncond_pooled=uncond_pooled,
        )

    @torch.inference_mode()
    def predict(
        self,
        model: LoadedModel,
        x: torch.Tensor,
        timestep: int,
        conditioning: Conditioning,
        guidance_scale: float,
        guidance_rescale: float = 0.0,
    ) -> torch.Tensor:
        """The UNet's eps at `timestep`, float32, with classifier-free guidance
        out = out_u + g (out_c - out_u) as one doubled batch (g == 1: conditional only),
        rescaled by `guidance_rescale` (`guided`); the pooled embeddings and time
        ids go in through `added_cond_kwargs`."""
        if conditioning.pooled is None or conditioning.uncond_pooled is None:
            raise ValueError("SDXL conditioning needs pooled embeddings (encode_prompts)")
        rows = len(x)
        device, dtype = model.device, model.dtype
        time_ids = conditioning.extra.get(TIME_IDS)
        if time_ids is None:
            time_ids = self.time_ids(model, x).expand(rows, -1)
        x_in, time_ids = x.to(dtype), time_ids.to(device, dtype)
        text = conditioning.cond.to(device, dtype)
        pooled = conditioning.pooled.to(device, dtype)
        if guidance_scale != 1.0:
            uncond = conditioning.uncond.to(device, dtype).expand(rows, -1, -1)
            uncond_pooled = conditioning.uncond_pooled.to(device, dtype).expand(rows, -1)
            text, pooled = torch.cat([uncond, text]), torch.cat([uncond_pooled, pooled])
            x_in, time_ids = torch.cat([x_in, x_in]), torch.cat([time_ids, time_ids])
        out = model.pipe.unet(
            x_in,
            torch.tensor(timestep, device=device),
            encoder_hidden_states=text,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
            return_dict=False,
        )[0].float()
        if guidance_scale == 1.0:
            return out
        return guided(*out.chunk(2), guidance_scale, guidance_rescale)

    def time_ids(self, model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
        """SDXL's added time ids for latents `x` [1, 6]: original size, crop top-left (0, 0)
        and target size, both the image's (StableDiffusionXLPipeline's defaults)."""
        height, width = (side * model.vae_scale_factor for side in x.shape[-2:])
        return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)


def _encode_texts(model: LoadedModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    embeds, _, pooled, _ = model.pipe.encode_prompt(
        texts, device=model.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return embeds, pooled
