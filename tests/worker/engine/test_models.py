"""Model loading: the built-in tiny model and load errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from latentmix.worker.engine.models import (
    ModelLoadError,
    default_batch_sizes,
    load_model,
    repository_files,
    weights_variant,
)
from latentmix.worker.engine.testing import random_models
from latentmix.worker.engine.testing.random_models import SD15_RANDOM, build_tiny_model

WEIGHT_FILES = (
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
)


def test_tiny_model_has_stable_diffusion_structure(tiny_model):
    pipe = tiny_model.pipe
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert pipe.unet.config.in_channels == pipe.unet.config.out_channels == 4
    assert isinstance(pipe.vae, AutoencoderKL)
    assert pipe.vae.config.latent_channels == 4
    assert pipe.vae_scale_factor == tiny_model.vae_scale_factor == 8
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert isinstance(pipe.tokenizer, CLIPTokenizer)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    for key, value in random_models.SD15_SCHEDULER_CONFIG.items():
        assert pipe.scheduler.config[key] == value, key
    assert tiny_model.default_size == 64
    assert tiny_model.device == torch.device("cpu")
    assert tiny_model.dtype == torch.float32
    assert tiny_model.max_batch_size == 4


def test_tiny_vae_maps_64_pixels_to_an_8x8_latent(tiny_model):
    pixels = torch.zeros(1, 3, 64, 64)
    with torch.inference_mode():
        latent = tiny_model.pipe.vae.encode(pixels).latent_dist.mean
    assert latent.shape == (1, 4, 8, 8)


def test_tiny_tokenizer_vocabulary_is_byte_level_and_closed_under_merges():
    vocab, merges = random_models.tiny_vocab_and_merges()
    byte_symbols = list(random_models.bytes_to_unicode().values())
    assert len(set(byte_symbols)) == 256
    for symbol in byte_symbols:
        assert symbol in vocab and symbol + "</w>" in vocab
    for left, right in merges:
        assert left in vocab and right in vocab and left + right in vocab
    assert {"<|startoftext|>", "<|endoftext|>"} <= vocab.keys()
    assert sorted(vocab.values()) == list(range(len(vocab)))


def test_tiny_tokenizer_pads_prompts_to_77_tokens(tiny_model):
    tokenizer = tiny_model.pipe.tokenizer
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:3]) == ["a</w>", "photo</w>"]


def test_tiny_model_is_small_and_saved_as_safetensors(tiny_model_dir, tiny_model):
    total = sum(f.stat().st_size for f in tiny_model_dir.rglob("*") if f.is_file())
    assert total < 10_000_000
    for name in WEIGHT_FILES:
        assert (tiny_model_dir / name).is_file()


def test_second_load_reuses_the_cached_tiny_model(tiny_model_dir, tiny_model, monkeypatch):
    index = tiny_model_dir / "model_index.json"
    mtime = index.stat().st_mtime_ns

    def fail(path: Path) -> Path:
        raise AssertionError("the tiny model was rebuilt")

    monkeypatch.setattr(random_models, "build_tiny_model", fail)
    again = load_model("tiny", device="cpu", cache_dir=tiny_model_dir.parent)
    assert index.stat().st_mtime_ns == mtime
    assert torch.equal(again.pipe.unet.conv_out.weight, tiny_model.pipe.unet.conv_out.weight)


def test_tiny_build_is_deterministic_and_leaves_no_temporary_files(tmp_path, tiny_model_dir):
    target = build_tiny_model(tmp_path / "tiny")
    for name in WEIGHT_FILES:
        ours, reference = load_file(target / name), load_file(tiny_model_dir / name)
        assert ours.keys() == reference.keys()
        assert all(torch.equal(ours[k], reference[k]) for k in ours), name
    # A second build into an existing model (a worker that lost the race) keeps the first.
    mtime = (target / "model_index.json").stat().st_mtime_ns
    assert build_tiny_model(tmp_path / "tiny") == target
    assert (target / "model_index.json").stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_load_model_with_missing_local_directory_names_the_env_var(tmp_path):
    with pytest.raises(ModelLoadError, match="LATENTMIX_MODEL") as info:
        load_model(str(tmp_path / "no-such-model"), device="cpu")
    assert "does not exist" in str(info.value)


def test_load_model_with_uncached_hub_id_offline_names_the_env_var(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="LATENTMIX_MODEL") as info:
        load_model("latentmix-tests/not-a-cached-model", device="cpu")
    assert "HF_HUB_OFFLINE=1" in str(info.value)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("device", "tpu-9"),
        ("dtype", "float8"),
        ("max_batch_size", 0),
        ("vae_batch_size", 0),
        ("prompt_cache_size", -1),
    ],
)
def test_load_model_rejects_bad_options_naming_them(tiny_model_dir, option, value):
    with pytest.raises(ValueError, match=str(value)):
        load_model("tiny", cache_dir=tiny_model_dir.parent, **{option: value})


def test_describe_is_json_friendly(tiny_model):
    description = tiny_model.describe()
    assert description["model"] == "tiny"
    assert description["dtype"] == "float32"
    assert description["scheduler"] == "DDIMScheduler"
    assert description["attention"] == "AttnProcessor2_0"  # scaled-dot-product attention
    assert description["vae_batch_size"] == 4
    assert description["compiled"] is False


# --- speed settings -----------------------------------------------------------------------


def test_cpu_batch_sizes_default_to_four_images_and_sixteen_when_inverting():
    assert default_batch_sizes(torch.device("cpu")) == (4, 4, 16)


def test_batch_sizes_and_prompt_cache_follow_the_options(tiny_model_dir):
    model = load_model(
        "tiny",
        device="cpu",
        cache_dir=tiny_model_dir.parent,
        max_batch_size=8,
        vae_batch_size=2,
        inversion_batch_size=5,
        prompt_cache_size=3,
    )
    assert (model.max_batch_size, model.vae_batch_size, model.inversion_batch_size) == (8, 2, 5)
    assert model.describe()["inversion_batch_size"] == 5
    assert model.prompt_cache.capacity == 3 and len(model.prompt_cache) == 0


def test_compile_wraps_the_unet_in_place(tiny_model_dir):
    model = load_model("tiny", device="cpu", cache_dir=tiny_model_dir.parent, compile=True)
    # nn.Module.compile: same module and config, compiled call installed (compiles lazily).
    assert isinstance(model.pipe.unet, UNet2DConditionModel)
    assert model.pipe.unet._compiled_call_impl is not None
    assert model.compiled and model.describe()["compiled"] is True


# --- the SD-1.5-sized random model --------------------------------------------------------


def _sd15_components_on_meta(tmp_path):
    """The three networks of sd15-random without memory or init time (meta tensors)."""
    tokenizer = random_models.build_tokenizer(tmp_path / "tokenizer")
    with torch.device("meta"):
        return (
            random_models.build_unet(SD15_RANDOM),
            random_models.build_vae(SD15_RANDOM),
            random_models.build_text_encoder(SD15_RANDOM, tokenizer),
        )


def test_sd15_random_has_stable_diffusion_1_5_parameter_counts(tmp_path):
    unet, vae, text_encoder = _sd15_components_on_meta(tmp_path)
    # The published sizes of SD 1.5's UNet, VAE and CLIP ViT-L/14 text tower.
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert sum(p.numel() for p in text_encoder.parameters()) == 123_060_480


def test_sd15_random_networks_fit_together(tmp_path):
    unet, vae, text_encoder = _sd15_components_on_meta(tmp_path)
    assert unet.config.block_out_channels == (320, 640, 1280, 1280)
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size == 768
    assert unet.config.attention_head_dim == 8 and unet.config.layers_per_block == 2
    assert unet.config.sample_size * 8 == vae.config.sample_size == 512
    assert vae.config.block_out_channels == (128, 256, 512, 512)
    assert text_encoder.config.num_hidden_layers == 12
    with torch.inference_mode():
        latent = vae.encode(torch.zeros(1, 3, 64, 64, device="meta")).latent_dist.mean
        text = torch.zeros(1, 77, 768, device="meta")
        eps = unet(latent, 10, encoder_hidden_states=text).sample
        pixels = vae.decode(eps).sample
    assert latent.shape == eps.shape == (1, 4, 8, 8)
    assert pixels.shape == (1, 3, 64, 64)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("LATENTMIX_BIG_TESTS") != "1",
    reason="builds 1.07 billion parameters (about a minute, 4.5 GB); set LATENTMIX_BIG_TESTS=1",
)
def test_sd15_random_loads_and_inverts_an_image():
    from latentmix.worker.engine.diffusion import InversionSettings, invert

    model = load_model("sd15-random", device="cpu")
    assert model.default_size == 512 and model.describe()["model"] == "sd15-random"
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    result = invert(model, [image], "a photo", InversionSettings(steps=1, size=64))
    assert result.latent.shape == (1, 4, 8, 8)
    assert torch.isfinite(result.latent).all()


def test_tiny_lives_in_a_folder_of_its_own_inside_the_models_dir(tmp_path, tiny_model_dir):
    # The worker passes `$LATENTMIX_DATA_DIR/models`, which may already hold other things
    # (an earlier bug built the model into the folder itself and failed when it was not empty).
    models = tmp_path / "models"
    (models / "other").mkdir(parents=True)
    shutil.copytree(tiny_model_dir, models / "tiny")

    model = load_model("tiny", device="cpu", cache_dir=models)

    assert model.name == "tiny"
    assert sorted(p.name for p in models.iterdir()) == ["other", "tiny"]


# --- half-precision weight files (the decision; loading them needs CUDA) -------------------

SD15_FILES = [
    "model_index.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "text_encoder/model.fp16.safetensors",
]
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize(
    ("device", "dtype", "files", "expected"),
    [
        (CUDA, torch.float16, SD15_FILES, "fp16"),
        (CUDA, torch.float16, [f for f in SD15_FILES if ".fp16." not in f], None),
        (CUDA, torch.bfloat16, SD15_FILES, None),
        (CUDA, torch.float32, SD15_FILES, None),
        (CPU, torch.float16, SD15_FILES, None),
        (CUDA, torch.float16, ["unet/diffusion_pytorch_model.fp16.bin"], "fp16"),
        (CUDA, torch.float16, ["fp16.md", "notes/fp16.safetensors.txt"], None),
    ],
    ids=["cuda-fp16", "no-fp16-files", "bf16", "fp32", "cpu", "bin", "not-weights"],
)
def test_fp16_weight_files_are_loaded_on_cuda_in_fp16_when_the_repository_has_them(
    device, dtype, files, expected
):
    asked: list[str] = []
    listing = lambda source: asked.append(source) or files  # noqa: E731

    assert weights_variant("org/model", device, dtype, listing) == expected
    assert asked == (["org/model"] if device.type == "cuda" and dtype == torch.float16 else [])


def test_repository_files_of_a_local_directory_and_an_uncached_hub_id_offline(
    tmp_path, monkeypatch
):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    (tmp_path / "model_index.json").write_text("{}")
    assert sorted(repository_files(str(tmp_path))) == [
        "model_index.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    ]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert repository_files("latentmix-tests/no-such-model") == []  # the default files, then
