"""Stable Diffusion 1.x / 2.x: VAE, CLIP text encoder, UNet predicting eps or v (SDXL, in
`stable_diffusion_xl.py`, reuses its images, latents, card and eps conversion)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from latentmix.service.core.model_card import ModelCard
from latentmix.worker.engine.checks import check_latents, check_size, prompts_per_row
from latentmix.worker.engine.families.base import Conditioning, cached_encodings, guided
from latentmix.worker.engine.images import prepare_images, to_pil_images

if TYPE_CHECKING:
    from latentmix.worker.engine.models import LoadedModel


class StableDiffusion:
    """The `ModelFamily` of `StableDiffusionPipeline` checkpoints (SD 1.x, SD 2.x 512/768)."""

    name = "stable-diffusion"
    pipeline_classes = ("StableDiffusionPipeline",)
    default_guidance = 7.5  # the paper's setting (method.md section 1)
    attention_interpolation = True  # worker/engine/attention/ knows its UNet's layers
    pooled_text_embedding = False

    def load_pipeline(
        self, source: str, dtype: torch.dtype, *, t5: bool = True, variant: str | None = None
    ) -> Any:
        """`t5` has nothing to leave out here: SD 1.x/2.x have one CLIP text encoder."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        with warnings.catch_warnings():
            # Newer diffusers renamed `torch_dtype` to `dtype`; the old name works everywhere.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = StableDiffusionPipeline.from_pretrained(
                source,
                torch_dtype=dtype,
                variant=variant,
                safety_checker=None,
                requires_safety_checker=False,
            )
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        return pipe

    def native_size(self, pipe: Any) -> int:
        return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)

    def card(self, model: LoadedModel) -> ModelCard:
        pipe = model.pipe
        return ModelCard(
            model=model.name,
            family=self.name,
            latent_channels=int(pipe.unet.config.in_channels),
            vae_scale_factor=int(pipe.vae_scale_factor),
            size_multiple=int(pipe.vae_scale_factor),
            default_size=model.default_size,
            default_guidance=self.default_guidance,
            prediction_type=pipe.scheduler.config.prediction_type,
            inversion_methods=(),  # the engine adds the methods the card's capabilities fit
            attention_interpolation=self.attention_interpolation,
            pooled_text_embedding=self.pooled_text_embedding,
            scheduler=type(pipe.scheduler).__name__,
            attention=type(_first_attention_processor(pipe.unet)).__name__,
            device=str(model.device),
            dtype=str(model.dtype).removeprefix("torch."),
            max_batch_size=model.max_batch_size,
            vae_batch_size=model.vae_batch_size,
            inversion_batch_size=model.inversion_batch_size,
            compiled=model.compiled,
        )

    @torch.inference_mode()
    def encode_images(
        self, model: LoadedModel, images: Sequence[Image.Image], size: int
    ) -> torch.Tensor:
        """VAE latents x0 = latent_dist.mean * scaling_factor (method.md section 1), float32 CPU.

        Encoded `model.vae_batch_size` images at a time, which bounds the VAE's memory."""
        check_size(model, size)
        pixels = prepare_images(images, size)
        vae = model.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = []
        for start in range(0, len(pixels), model.vae_batch_size):
            # vae.dtype: the model's, or float32 for a VAE kept there (SDXL's force_upcast)
            batch = pixels[start : start + model.vae_batch_size].to(model.device, vae.dtype)
            mean = vae.encode(batch).latent_dist.mean.float()
            latents.append(((mean - shift) * vae.config.scaling_factor).cpu())
        return torch.cat(latents)

    @torch.inference_mode()
    def decode_latents(self, model: LoadedModel, x0: torch.Tensor) -> list[Image.Image]:
        """VAE-decode clean latents x0 to RGB PIL images, `model.vae_batch_size` at a time."""
        check_latents(model, x0)
        vae = model.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        images: list[Image.Image] = []
        for start in range(0, len(x0), model.vae_batch_size):
            batch = x0[start : start + model.vae_batch_size].to(model.device, torch.float32)
            batch = (batch / vae.config.scaling_factor + shift).to(vae.dtype)
            images.extend(to_pil_images(vae.decode(batch).sample))
        return images

    @torch.inference_mode()
    def encode_prompts(self, model: LoadedModel, prompts: Sequence[str]) -> Conditioning:
        """CLIP text embeddings per row, plus the empty prompt's for guidance.

        Each distinct prompt is looked up in the model's prompt cache; the ones missing are
        encoded together in batches of `max_batch_size`, then cached. A worker therefore runs
        the text encoder once per prompt, not once per job or per row.
        """
        prompts = [prompts] if isinstance(prompts, str) else prompts_per_row(prompts, len(prompts))
        if not prompts:
            raise ValueError("prompts must not be empty")
        table = cached_encodings(
            model,
            prompts,
            lambda texts: [e.unsqueeze(0).clone() for e in _encode_texts(model, texts)],
        )
        return Conditioning(cond=torch.cat([table[p] for p in prompts]), uncond=table[""])

    def predict(
        self,
        model: LoadedModel,
        x: torch.Tensor,
        timestep: int,
        conditioning: Conditioning,
        guidance_scale: float,
        guidance_rescale: float = 0.0,
    ) -> torch.Tensor:
        """The UNet's output at `timestep`, float32, with classifier-free guidance.

        out = out_u + g (out_c - out_u) (method.md section 1), as one doubled batch; g == 1
        needs only the conditional pass. `guidance_rescale` phi > 0 rescales the guided
        output towards the conditional one's standard deviation (Lin et al., eq. 15-16:
        diffusers' `rescale_noise_cfg`).
        """
        unet = model.pipe.unet
        t = torch.tensor(timestep, device=model.device)
        x_in = x.to(model.dtype)
        cond = conditioning.cond.to(model.device, model.dtype)
        if guidance_scale == 1.0:
            return unet(x_in, t, encoder_hidden_states=cond, return_dict=False)[0].float()
        uncond = conditioning.uncond.to(model.device, model.dtype).expand(len(x), -1, -1)
        text = torch.cat([uncond, cond])
        out = unet(torch.cat([x_in, x_in]), t, encoder_hidden_states=text, return_dict=False)[0]
        return guided(*out.float().chunk(2), guidance_scale, guidance_rescale)

    def to_noise(
        self, model: LoadedModel, output: torch.Tensor, x: torch.Tensor, timestep: int
    ) -> torch.Tensor:
        """Convert a v-prediction (SD 2.x 768) to eps at the UNet's timestep; eps passes through.

        eps = sqrt(a_t) v + sqrt(1 - a_t) x (inversion.md section 7)."""
        if model.pipe.scheduler.config.prediction_type == "epsilon":
            return output
        a_t = float(model.pipe.scheduler.alphas_cumprod[timestep])
        return math.sqrt(a_t) * output + math.sqrt(1.0 - a_t) * x


def _encode_texts(model: LoadedModel, texts: list[str]) -> torch.Tensor:
    embeds, _ = model.pipe.encode_prompt(
        texts, model.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return embeds


def _first_attention_processor(unet: Any) -> Any:
    processors = getattr(unet, "attn_processors", {})
    return next(iter(processors.values()), None)
