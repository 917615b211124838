"""Morphs through the real service (the session's stack: Redis, S3, a worker, the API)."""

import io
import subprocess
import sys

import av
import pytest
from helpers import png_bytes
from PIL import Image

from latentmix.client import JobStatus, LatentMixClient

pytestmark = pytest.mark.e2e

FAST = {"steps": 4, "guidance_scale": 1.0}
FAST_INVERSION = {"inversion_steps": 4, "guidance_scale": 1.0}


@pytest.fixture
def lm(service_url):
    with LatentMixClient(service_url) as client:
        yield client


def test_a_beta_morph_of_two_inverted_images_streams_its_frames_and_animates(lm, tmp_path):
    keyframes = lm.invert([png_bytes(21), png_bytes(22)], prompt="a photo", **FAST_INVERSION)
    job = lm.morph(keyframes, 9, spacing="beta", alpha=2.0, beta=2.0, seed=4, **FAST)
    assert len(job.planned) == 9

    streamed = list(lm.iter_images(job))  # as each batch finishes (batches of 2)
    done = lm.wait(job)
    assert done.status is JobStatus.succeeded
    assert done.progress.done == done.progress.total > 0  # keyframes are not rendered
    assert [image.id for image in streamed] == [p.id for p in job.planned]
    frames = done.result["images"]
    coefficients = [frame["provenance"]["coefficient"] for frame in frames]
    assert coefficients[0] == 0.0 and coefficients[-1] == 1.0
    assert coefficients == sorted(coefficients)
    assert frames[4]["provenance"]["coefficient"] == pytest.approx(0.5)  # Beta(2, 2) median
    assert [f["provenance"]["keyframe"] for f in frames] == [0] + [None] * 7 + [1]
    metrics = done.result["metrics"]
    assert metrics["distance"] == "rgb-rmse" and len(metrics["distances"]) == 8
    assert 0.0 <= metrics["smoothness"] <= 1.0
    assert done.result["attention_mb_per_keyframe"] is None

    webp = Image.open(io.BytesIO(lm.animation(done, "webp", fps=6)))
    assert (webp.n_frames, webp.size) == (9, (64, 64))
    with av.open(io.BytesIO(lm.animation(done, "mp4"))) as video:
        assert len(list(video.decode(video=0))) == 9
    grid = Image.open(io.BytesIO(lm.grid(done)))
    assert grid.size == (8 * 128, 2 * 128)


def test_a_linear_morph_frame_is_the_mix_of_the_same_weights_bit_for_bit(lm):
    keyframes = lm.invert([png_bytes(23), png_bytes(24)], prompt="a fox", **FAST_INVERSION)
    morph = lm.wait(lm.morph(keyframes, 5, **FAST))
    frame = morph.images[1]
    mix = lm.wait(lm.mix(keyframes, [frame.provenance.weights], **FAST, prompt="a fox"))
    assert mix.images[0].id == frame.id  # the same content id: the same image
    assert lm.image_bytes(mix.images[0]) == lm.image_bytes(frame)


def test_an_attention_morph_with_prompt_interpolation_and_a_loop(lm):
    keyframes = lm.invert(
        [png_bytes(25), png_bytes(26)], prompt=["a cat", "a dog"], **FAST_INVERSION
    )
    done = lm.wait(lm.morph(keyframes, 6, path="loop", attention="fused", **FAST))
    frames = done.result["images"]
    assert len(frames) == 6
    assert [f["provenance"]["attention"] for f in frames] == ["none"] + ["fused"] * 2 + ["none"] + [
        "fused"
    ] * 2
    assert frames[1]["provenance"]["prompt"] is None  # interpolated text embeddings
    assert frames[3]["provenance"]["prompt"] == "a dog"
    assert done.result["attention_mb_per_keyframe"] > 0


def test_perceptual_spacing_runs_a_second_pass_and_says_so(lm):
    keyframes = lm.invert([png_bytes(27), png_bytes(28)], prompt="a photo", **FAST_INVERSION)
    done = lm.wait(lm.morph(keyframes, 5, spacing="perceptual", **FAST))
    assert done.result["passes"] == 2
    (segment,) = done.result["coefficients"]
    assert segment[0] == 0.0 and segment[-1] == 1.0 and len(segment) == 5


def test_the_morph_command_writes_an_animation(service_url, tmp_path):
    images = []
    for seed in (29, 30, 31):
        path = tmp_path / f"{seed}.png"
        path.write_bytes(png_bytes(seed))
        images.append(str(path))
    out = tmp_path / "morph.mp4"
    command = [
        sys.executable,
        "-m",
        "latentmix.service.cli",
        "morph",
        *images,
        "--frames",
        "7",
        "--spacing",
        "beta",
        "--attention",
        "fused",
        "--out",
        str(out),
        "--steps",
        "4",
        "--inversion-steps",
        "4",
        "--guidance-scale",
        "1",
        "--url",
        service_url,
        "--frames-dir",
        str(tmp_path / "frames"),
        "--no-progress",
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    with av.open(str(out)) as video:
        assert len(list(video.decode(video=0))) == 7
    names = sorted(path.name for path in (tmp_path / "frames").glob("*.png"))
    assert names == [f"frame-{index:03}.png" for index in range(7)]  # in the animation's order
    assert "smoothness" in finished.stdout


def test_a_mix_interpolates_attention_n_way_with_its_inputs(lm):
    latents = lm.invert([png_bytes(s) for s in (32, 33, 34)], prompt="a fox", **FAST_INVERSION)
    rows = [[1, 1, 1], [0, 1, 0]]
    plain = lm.wait(lm.mix(latents, rows, **FAST))
    fused = lm.wait(lm.mix(latents, rows, attention="fused", **FAST))
    centroid, single = fused.images
    assert fused.result["images"][0]["provenance"]["attention"] == "fused"
    assert centroid.id != plain.images[0].id
    assert lm.image_bytes(centroid) != lm.image_bytes(plain.images[0])
    # One input alone is its own generation: the plain image.
    assert single.id == plain.images[1].id
    assert fused.result["images"][1]["provenance"]["attention"] is None
