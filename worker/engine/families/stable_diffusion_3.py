"""Stable Diffusion 3 / 3.5: 16-channel VAE with shift and scale, two CLIP text encoders with
projection (pooled embeddings) and an optional T5, and a transformer predicting the
rectified-flow velocity v = n - x0 (inversion.md section 6)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from latentmix.service.core.model_card import FLOW_PREDICTION, ModelCard
from latentmix.worker.engine.checks import check_latents, check_size, prompts_per_row
from latentmix.worker.engine.families.base import (
    Conditioning,
    cached_encodings,
    guided,
    pooled_rows,
)
from latentmix.worker.engine.images import prepare_images, to_pil_images

if TYPE_CHECKING:
    from latentmix.worker.engine.models import LoadedModel


class StableDiffusion3:
    """The `ModelFamily` of `StableDiffusion3Pipeline` checkpoints (SD 3 medium, SD 3.5)."""

    name = "stable-diffusion-3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    default_guidance = 4.5  # the paper's SD 3.5 setting (inversion.md section 6)
    attention_interpolation = False  # a transformer: worker/engine/attention/ knows UNets
    pooled_text_embedding = True

    def load_pipeline(
        self, source: str, dtype: torch.dtype, *, t5: bool = True, variant: str | None = None
    ) -> Any:
        """The pipeline with its `FlowMatchEulerDiscreteScheduler`; without the T5 encoder
        (most of SD 3's memory) when `t5` is False or the checkpoint has none.

        A pipeline saved without T5 must be loaded with `text_encoder_3=None,
        tokenizer_3=None` passed explicitly (inversion.md section 6, the reload trap)."""
        from diffusers import DiffusionPipeline, StableDiffusion3Pipeline

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            index = DiffusionPipeline.load_config(source)
        has_t5 = (index.get("text_encoder_3") or [None])[0] is not None
        without_t5 = {} if t5 and has_t5 else {"text_encoder_3": None, "tokenizer_3": None}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            return StableDiffusion3Pipeline.from_pretrained(
                source, torch_dtype=dtype, variant=variant, **without_t5
            )

    def native_size(self, pipe: Any) -> int:
        return int(pipe.transformer.config.sample_size) * int(pipe.vae_scale_factor)

    def card(self, model: LoadedModel) -> ModelCard:
        pipe = model.pipe
        processors = getattr(pipe.transformer, "attn_processors", {})
        return ModelCard(
            model=model.name,
            family=self.name,
            latent_channels=int(pipe.transformer.config.in_channels),
            vae_scale_factor=int(pipe.vae_scale_factor),
            size_multiple=int(pipe.vae_scale_factor) * int(pipe.transformer.config.patch_size),
            default_size=model.default_size,
            default_guidance=self.default_guidance,
            prediction_type=FLOW_PREDICTION,
            inversion_methods=(),  # the engine adds the methods the card's capabilities fit
            attention_interpolation=self.attention_interpolation,
            pooled_text_embedding=self.pooled_text_embedding,
            scheduler=type(pipe.scheduler).__name__,
            attention=type(next(iter(processors.values()), None)).__name__,
            device=str(model.device),
            dtype=str(model.dtype).removeprefix("torch."),
            max_batch_size=model.max_batch_size,
            vae_batch_size=model.vae_batch_size,
            inversion_batch_size=model.inversion_batch_size,
            compiled=model.compiled,
            t5=getattr(pipe, "text_encoder_3", None) is not None,
        )

    @torch.inference_mode()
    def encode_images(
        self, model: LoadedModel, images: Sequence[Image.Image], size: int
    ) -> torch.Tensor:
        """VAE latents x0 = (latent_dist.mean - shift_factor) * scaling_factor, float32 CPU,
        `model.vae_batch_size` images at a time."""
        check_size(model, size)
        pixels = prepare_images(images, size)
        vae = model.pipe.vae
        latents = []
        for start in range(0, len(pixels), model.vae_batch_size):
            batch = pixels[start : start + model.vae_batch_size].to(model.device, model.dtype)
            mean = vae.encode(batch).latent_dist.mean.float()
            latents.append(((mean - vae.config.shift_factor) * vae.config.scaling_factor).cpu())
        return torch.cat(latents)

    @torch.inference_mode()
    def decode_latents(self, model: LoadedModel, x0: torch.Tensor) -> list[Image.Image]:
        """VAE-decode clean latents x0 (x0 / scaling_factor + shift_factor) to RGB images."""
        check_latents(model, x0)
        vae = model.pipe.vae
        images: list[Image.Image] = []
        for start in range(0, len(x0), model.vae_batch_size):
            batch = x0[start : start + model.vae_batch_size].to(model.device, torch.float32)
            batch = (batch / vae.config.scaling_factor + vae.config.shift_factor).to(model.dtype)
            images.extend(to_pil_images(vae.decode(batch).sample))
        return images

    @torch.inference_mode()
    def encode_prompts(self, model: LoadedModel, prompts: Sequence[str]) -> Conditioning:
        """Per row: the joint sequence (both CLIPs' penultimate states, padded to T5's width,
        then T5's states, zeros without T5) and the pooled CLIP embeddings; plus the empty
        prompt's for guidance. Each distinct prompt is encoded once per model and cached."""
        prompts = [prompts] if isinstance(prompts, str) else prompts_per_row(prompts, len(prompts))
        if not prompts:
            raise ValueError("prompts must not be empty")
        table = cached_encodings(
            model, prompts, lambda texts: pooled_rows(*_encode_texts(model, texts))
        )
        return Conditioning(
            cond=torch.cat([table[p][0] for p in prompts]),
            uncond=table[""][0],
            pooled=torch.cat([table[p][1] for p in prompts]),
            uncond_pooled=table[""][1],
        )

    @torch.inference_mode()
    def predict(
        self,
        model: LoadedModel,
        x: torch.Tensor,
        timestep: float,
        conditioning: Conditioning,
        guidance_scale: float,
        guidance_rescale: float = 0.0,
    ) -> torch.Tensor:
        """The velocity v^ = v_u + g (v_c - v_u) at the transformer's timestep
        T = 1000 sigma, float32, as one doubled batch; g == 1 needs only the conditional
        pass (inversion.md section 6)."""
        if conditioning.pooled is None or conditioning.uncond_pooled is None:
            raise ValueError("SD 3 conditioning needs pooled embeddings (encode_prompts)")
        transformer = model.pipe.transformer
        x_in = x.to(model.dtype)
        cond = conditioning.cond.to(model.device, model.dtype)
        pooled = conditioning.pooled.to(model.device, model.dtype)
        if guidance_scale != 1.0:
            rows = len(x)
            uncond = conditioning.uncond.to(model.device, model.dtype).expand(rows, -1, -1)
            uncond_pooled = conditioning.uncond_pooled.to(model.device, model.dtype)
            cond = torch.cat([uncond, cond])
            pooled = torch.cat([uncond_pooled.expand(rows, -1), pooled])
            x_in = torch.cat([x_in, x_in])
        t = torch.tensor(timestep, dtype=torch.float32, device=model.device).expand(len(x_in))
        out = transformer(
            hidden_states=x_in,
            timestep=t,
            encoder_hidden_states=cond,
            pooled_projections=pooled,
            return_dict=False,
        )[0].float()
        if guidance_scale == 1.0:
            return out
        return guided(*out.chunk(2), guidance_scale, guidance_rescale)

    def to_noise(
        self, model: LoadedModel, output: torch.Tensor, x: torch.Tensor, timestep: float
    ) -> torch.Tensor:
        """The noise a velocity implies: x = (1 - s) x0 + s n and v = n - x0 give
        n = x + (1 - s) v, with s = T / 1000."""
        sigma = float(timestep) / float(model.pipe.scheduler.config.num_train_timesteps)
        return x + (1.0 - sigma) * output


def _encode_texts(model: LoadedModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    embeds, _, pooled, _ = model.pipe.encode_prompt(
        texts, None, None, model.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return embeds, pooled
