"""The Python client against the real service processes (tests/client/conftest.py)."""

import json

import httpx
import pytest
from helpers import png_bytes
from PIL import Image

from latentmix.client import JobFailed, JobStatus, LatentMixClient, ProblemError

pytestmark = pytest.mark.e2e

FAST = {"steps": 4, "guidance_scale": 1.0}  # guidance 1: one UNet pass per step
FAST_INVERSION = {"inversion_steps": 4, "guidance_scale": 1.0}
TINY_SIZE = 64


@pytest.fixture
def lm(service_url):
    with LatentMixClient(service_url) as client:
        yield client


def test_invert_mix_wait_and_download_round_trip(lm, tmp_path):
    path = tmp_path / "fox.png"
    path.write_bytes(png_bytes(2))
    inputs = [png_bytes(1), path, Image.new("RGB", (80, 64), (200, 40, 10))]

    latents = lm.invert(inputs, prompt="a photo of a fox", **FAST_INVERSION)

    assert [latent.status for latent in latents] == ["ready"] * 3
    assert latents[1].filename == "fox.png"
    job = lm.mix(latents, [[0.5, 0.5, 0], [0, 0.25, 0.75]], method="nin/chm", **FAST)
    assert job.status in (JobStatus.queued, JobStatus.running)
    assert [planned.weights for planned in job.planned] == [[0.5, 0.5, 0], [0, 0.25, 0.75]]
    done = lm.wait(job, progress=True)
    assert done.status is JobStatus.succeeded
    assert done.progress.done == done.progress.total > 0
    images = done.images
    assert len(images) == 2
    assert [image.id for image in images] == [planned.id for planned in job.planned]
    assert images[0].provenance.inputs == [latent.id for latent in latents]
    assert images[0].provenance.weights == pytest.approx([0.5, 0.5, 0])
    assert images[1].provenance.weights == pytest.approx([0, 0.25, 0.75])
    assert images[1].provenance.prompt == "a photo of a fox"
    assert images[1].provenance.method == "nin/chm"

    paths = lm.download(done, tmp_path / "out")

    assert paths == [tmp_path / "out" / f"{image.id}.png" for image in images]
    for saved in paths:
        with Image.open(saved) as png:
            assert png.format == "PNG" and png.size == (TINY_SIZE, TINY_SIZE)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert lm.download(done.id, tmp_path / "out") == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes  # kept, not fetched again
    assert lm.open_image(images[0]).size == (TINY_SIZE, TINY_SIZE)
    assert not list((tmp_path / "out").glob(".*"))  # no partial files left behind
    again = lm.invert(inputs, prompt="a photo of a fox", **FAST_INVERSION)
    assert [(a.id, a.cached) for a in again] == [(latent.id, True) for latent in latents]


def test_sampled_mixes_repeat_with_the_seed(lm):
    latents = lm.invert([png_bytes(i) for i in (11, 12, 13)], **FAST_INVERSION)

    first = lm.wait(lm.sample(latents, 3, seed=11, **FAST))
    again = lm.wait(lm.sample(latents, 3, seed=11, **FAST))

    assert [image.id for image in again.images] == [image.id for image in first.images]
    assert len({image.id for image in first.images}) == 3
    for image in first.images:
        assert image.provenance.seed == 11
        assert image.provenance.inputs == [latent.id for latent in latents]
        assert sum(image.provenance.weights) == pytest.approx(1.0)
    subsets = lm.wait(lm.sample(latents, 3, scheme="subset", k=2, seed=1, **FAST))
    for image in subsets.images:
        assert sorted(image.provenance.weights) == pytest.approx([0, 0.5, 0.5])


def test_images_stream_while_the_mix_job_runs(lm):
    latents = lm.invert([png_bytes(i) for i in (14, 15)], **FAST_INVERSION)
    rows = [[1.0, 0.0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75]]
    render = {"steps": 150, "guidance_scale": 1.0}
    # Two images per worker batch. An earlier job rendered the first two, so the service
    # publishes them at once while the second batch still runs.
    lm.wait(lm.mix(latents, rows[:2], **render))
    job = lm.mix(latents, rows, **render)

    statuses, images = [], []
    for image in lm.iter_images(job):
        statuses.append(lm.get_job(job).status)
        images.append(image)

    assert statuses[0] is JobStatus.running  # the first image came before the job ended
    assert len({image.id for image in images}) == 4
    assert sorted(images, key=lambda i: i.id) == sorted(lm.get_job(job).images, key=lambda i: i.id)


def test_service_errors_raise_problem_errors_with_the_details(lm):
    with pytest.raises(ProblemError) as invalid:
        lm.mix(["not-a-latent-id"])
    assert invalid.value.status == 422
    assert invalid.value.title == "Unprocessable Entity"
    assert any("latents" in error["field"] for error in invalid.value.errors)

    missing = "0" * 32
    with pytest.raises(ProblemError) as unknown:
        lm.mix([missing])
    assert unknown.value.status == 404
    assert missing in unknown.value.detail
    assert str(unknown.value).startswith("404 Not Found: ")


def test_waiting_on_a_canceled_job_raises_job_failed(lm):
    latents = lm.invert([png_bytes(21)], inversion_steps=400, guidance_scale=1.0, wait=False)
    job_id = latents[0].job

    lm.cancel(job_id)

    with pytest.raises(JobFailed) as failed:
        lm.wait(job_id, timeout=60)
    assert failed.value.job.status is JobStatus.canceled
    assert lm.wait(job_id, raise_on_failure=False).status is JobStatus.canceled


def test_unavailable_answers_are_retried_with_the_same_idempotency_key():
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            problem = {"title": "Service Unavailable", "status": 503, "detail": "queue down"}
            return httpx.Response(503, json=problem, headers={"Retry-After": "0"})
        job = {"id": "a" * 32, "type": "mix", "status": "queued", "progress": None}
        return httpx.Response(202, json=job)

    with LatentMixClient(
        "http://latentmix.test", "secret", transport=httpx.MockTransport(answer)
    ) as lm:
        job = lm.mix(["b" * 32])

    assert job.status is JobStatus.queued
    assert len(seen) == 2
    assert seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]
    assert seen[1].headers["Authorization"] == "Bearer secret"
    assert json.loads(seen[1].content) == {"latents": ["b" * 32], "method": "nin/chm"}


def test_an_error_without_problem_details_still_raises_a_problem_error():
    transport = httpx.MockTransport(lambda _: httpx.Response(502, text="bad gateway"))
    lm = LatentMixClient("http://latentmix.test", transport=transport, retries=0)
    with lm, pytest.raises(ProblemError) as error:
        lm.health()
    assert (error.value.status, error.value.title, error.value.detail) == (
        502,
        "Bad Gateway",
        "bad gateway",
    )


def test_models_lists_the_served_model_with_its_card(lm):
    (tiny,) = [model for model in lm.models() if model.name == "tiny"]
    assert tiny.default and tiny.workers >= 1
    assert tiny.card["latent_channels"] == 4 and tiny.card["inversion_methods"][0] == "ddim"
