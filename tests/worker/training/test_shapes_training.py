"""The training CLI's quick mode (a few steps of each stage on 64 images) still runs end to
end and writes a pipeline that loads as a StableDiffusionPipeline. The full training is not
run in CI."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latentmix.worker.engine.shapes import world
from latentmix.worker.training import shapes as training

ROOT = Path(__file__).resolve().parents[3]


def train_quick(out: Path, *args: str) -> str:
    """The training CLI in quick mode, in its own process; its standard output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "latentmix.worker.training.shapes",
            "--quick",
            "--out",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("shapes-quick")
    return out, train_quick(out)


def test_quick_training_prints_each_stage_s_final_loss(quick_run: tuple[Path, str]):
    _, stdout = quick_run
    for stage in ("classifier", "vae", "unet", "decoder"):
        assert f"{stage}: final loss " in stdout
    assert "scaling factor" in stdout and "closest pair" in stdout


def test_quick_training_writes_a_loadable_float16_pipeline(quick_run: tuple[Path, str]):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    out, stdout = quick_run
    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline")
    stored = load_file(out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    assert {tensor.dtype for tensor in stored.values()} == {torch.float16}
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.scheduler.config.prediction_type == "epsilon"
    factor = pipe.vae.config.scaling_factor
    assert f"scaling factor {factor:.5f}" in stdout  # the one computed from the data
    assert (out / "classifier.safetensors").is_file()


def test_training_the_unet_again_on_the_saved_parts_gives_the_same_unet(
    quick_run: tuple[Path, str], tmp_path: Path
):
    from safetensors.torch import load_file

    full, _ = quick_run
    shutil.copytree(full, tmp_path, dirs_exist_ok=True)
    train_quick(tmp_path, "--stages", "unet")

    weights = Path("pipeline", "unet", "diffusion_pytorch_model.safetensors")
    again, first = load_file(tmp_path / weights), load_file(full / weights)
    assert again.keys() == first.keys()
    assert all(torch.equal(again[name], first[name]) for name in first)


def test_every_word_of_the_world_is_one_token():
    tokenizer = training.build_tokenizer_for_world()
    for word in world.vocabulary():
        assert len(tokenizer.tokenize(word)) == 1, word
    ids = tokenizer(world.caption("triangle", "magenta", "white")).input_ids
    assert len(ids) == 7 + 2 <= training.MAX_TOKENS


def test_the_scaling_factor_gives_unit_variance_latents():
    generator = torch.Generator().manual_seed(123)  # not the sampling seed: independent noise
    means = 3 * torch.randn((64, 4, 8, 8), generator=generator)
    stds = torch.full_like(means, 0.5)
    factor = training.latent_scaling_factor(means, stds, seed=0)
    expected = 1 / (3**2 + 0.5**2) ** 0.5  # independent mean and posterior noise
    assert factor == pytest.approx(expected, rel=0.05)


def test_the_learning_rate_warms_up_then_decays_to_the_floor():
    rates = [training.learning_rate(s, 110, 10, 1.0, 0.1) for s in range(111)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[10] == pytest.approx(1.0) and rates[60] == pytest.approx(0.55)
    assert rates[110] == pytest.approx(0.1)


def test_an_unknown_stage_is_refused_by_name(capsys: pytest.CaptureFixture[str]):
    assert training.main(["--stages", "vae,denoiser", "--out", "/nonexistent"]) == 2
    assert "denoiser" in capsys.readouterr().err


def test_min_snr_weights_are_min_snr_gamma_over_snr_on_sd15_s_schedule():
    from diffusers import DDPMScheduler

    from latentmix.worker.engine.testing.random_models import SD15_SCHEDULER_CONFIG

    config = {k: v for k, v in SD15_SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"}
    scheduler = DDPMScheduler(**config)
    timesteps = torch.tensor([0, 100, 500, 999])
    # Independent reference: SD's scaled_linear betas, alpha_bar as their cumulative product.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    expected = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr

    weights = training.min_snr_weight(scheduler, timesteps, 5.0)

    torch.testing.assert_close(weights.double(), expected, rtol=1e-4, atol=0)
    assert weights[0] < 0.01 and weights[-1] == pytest.approx(1.0)  # clean steps down-weighted
    assert torch.equal(training.min_snr_weight(scheduler, timesteps, 0.0), torch.ones(4))


def test_the_unet_s_larger_world_starts_with_the_vae_s_drawings():
    small, large = training.make_dataset(8, seed=3), training.make_dataset(12, seed=3)
    assert torch.equal(large.images[:8], small.images)
    assert large.long_caption[:8] == small.long_caption


def test_offset_noise_adds_a_per_channel_constant_of_the_given_std():
    generator = torch.Generator().manual_seed(0)
    noise = training.offset_noise(torch.Size((4096, 4, 16, 16)), 0.1, generator)
    channel_means = noise.mean(dim=(2, 3))
    # A channel's spatial mean: the offset's variance 0.1^2 plus plain noise's 1 / (16 * 16).
    assert float(channel_means.std()) == pytest.approx((0.1**2 + 1 / 256) ** 0.5, rel=0.03)
    within = noise - noise.mean(dim=(2, 3), keepdim=True)
    assert float(within.std()) == pytest.approx(1.0, rel=0.01)  # the pixels' noise is unchanged
    plain = training.offset_noise(torch.Size((4096, 4, 16, 16)), 0.0, generator)
    assert float(plain.mean(dim=(2, 3)).std()) == pytest.approx(1 / 16, rel=0.03)
