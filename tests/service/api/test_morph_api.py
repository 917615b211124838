"""POST /morph in-process (real Redis, local store, no worker): what it plans and what it
refuses before queueing; animations of a job whose frames are stored."""

import io
import uuid

import av
import numpy as np
import pytest
from helpers import TINY_CARD, assert_problem, upload_latent, upload_random_latents
from PIL import Image
from redis import Redis
from rq.job import JobStatus as RQStatus
from rq.results import Result

from latentmix.service.core.contract import MixResult
from latentmix.service.core.jobs import fetch_job, get_queue
from latentmix.service.core.latents import image_key
from latentmix.service.core.model_cards import publish_card


@pytest.fixture
def keyframes(client):
    return upload_random_latents(client, 3, seed=5)


def test_a_morph_answers_with_its_frames_in_path_order(client, keyframes):
    response = client.post(
        "/morph",
        json={"keyframes": keyframes, "frames": 7, "spacing": "beta", "prompts": "a fox"},
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["type"] == "morph"
    planned = job["planned"]
    assert len(planned) == 7
    assert planned[0]["weights"] == [1.0, 0.0, 0.0]
    assert planned[3]["weights"] == [0.0, 1.0, 0.0]
    assert planned[-1]["weights"] == [0.0, 0.0, 1.0]
    # Beta(6, 3) puts the inner frames past the middle of each segment.
    assert planned[1]["weights"][1] > 1 / 3


def test_perceptual_spacing_plans_no_frames_ahead(client, keyframes):
    response = client.post(
        "/morph", json={"keyframes": keyframes[:2], "frames": 5, "spacing": "perceptual"}
    )
    assert response.status_code == 202
    assert response.json()["planned"] is None


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({"frames": 5, "keyframes": "one"}, "keyframes: List should have at least 2 items"),
        ({"frames": 2}, "at least the number of keyframes (3)"),
        ({"frames": 10_000}, "the limit is 240 (LATENTMIX_MAX_MORPH_FRAMES)"),
        ({"frames": 1}, "frames: Input should be greater than or equal to 2"),
        ({"frames": 5, "spacing": "cosine"}, "unknown spacing 'cosine'"),
        ({"frames": 5, "attention": "cross"}, "unknown attention 'cross'"),
        ({"frames": 5, "path": "zigzag"}, "unknown path 'zigzag'"),
        ({"frames": 5, "spacing": "beta", "alpha": 0}, "alpha: Input should be greater than 0"),
        ({"frames": 5, "spacing": "beta", "beta": -2}, "beta: Input should be greater than 0"),
        ({"frames": 5, "method": "slerp"}, "slerp"),
        ({"frames": 5, "prompts": ["a", "b"]}, "2 prompts for 3 keyframes"),
        ({"frames": 5, "attention_steps": 2}, "attention_steps"),
    ],
)
def test_bad_morphs_are_refused_before_queueing(client, keyframes, body, phrase):
    if body.get("keyframes") == "one":
        body = body | {"keyframes": keyframes[:1]}
    queued = len(get_queue(client.app.state.redis, "tiny"))
    assert_problem(client.post("/morph", json={"keyframes": keyframes} | body), 422, phrase)
    assert len(get_queue(client.app.state.redis, "tiny")) == queued


def test_attention_on_a_model_without_support_is_refused_naming_it(client, settings):
    card = TINY_CARD.model_copy(
        update={
            "model": "tiny-sd3",
            "family": "stable-diffusion-3",
            "attention_interpolation": False,
        }
    )
    with Redis.from_url(settings.redis_url) as redis:
        publish_card(redis, card, worker="sd3-worker", ttl_s=60)
    ids = [
        upload_latent(client, np.full((4, 8, 8), v, np.float32), model="tiny-sd3").json()[
            "latents"
        ][0]["id"]
        for v in (1.0, 2.0)
    ]
    body = {"keyframes": ids, "frames": 4, "attention": "fused"}
    assert_problem(
        client.post("/morph", json=body),
        422,
        "model 'tiny-sd3' (family 'stable-diffusion-3') cannot interpolate attention",
    )
    assert client.post("/morph", json=body | {"attention": "none"}).status_code == 202
    mix = {"latents": ids, "attention": "inner"}
    assert_problem(client.post("/mix", json=mix), 422, "cannot interpolate attention")


def test_a_mix_with_an_unknown_attention_mode_is_refused(client, keyframes):
    body = {"latents": keyframes, "attention": "sideways"}
    assert_problem(client.post("/mix", json=body), 422, "unknown attention 'sideways'")


def test_unknown_keyframes_are_404(client, keyframes):
    missing = "0" * 32
    assert_problem(
        client.post("/morph", json={"keyframes": [keyframes[0], missing], "frames": 3}),
        404,
        missing,
    )


# --- animations --------------------------------------------------------------------------


def finished_job(client, count: int, size=(24, 16)) -> str:
    """A succeeded job whose `count` images are stored (as a worker leaves them)."""
    redis, storage = client.app.state.redis, client.app.state.storage
    images = []
    for i in range(count):
        image_id = f"{i + 1:032x}"
        picture = Image.new("RGB", size, (20 * i, 100, 255 - 20 * i))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        storage.put(image_key(image_id), buffer.getvalue(), "image/png")
        images.append(
            {
                "id": image_id,
                "latent": image_id,
                "provenance": {
                    "inputs": ["a" * 32],
                    "method": "lerp",
                    "prompt": "",
                    "seed": None,
                    "steps": 1,
                    "guidance_scale": 1.0,
                    "weights": [1.0],
                },
            }
        )
    job = get_queue(redis, "tiny").enqueue(
        "latentmix.worker.tasks.mix.mix_latents", {}, job_id=uuid.uuid4().hex
    )
    result = MixResult(
        latents=[i["id"] for i in images],
        images=images,
        method="lerp",
        prompt="",
        seed=None,
        steps=1,
        guidance_scale=1.0,
    )
    job = fetch_job(redis, job.id)
    job.set_status(RQStatus.FINISHED)
    Result.create(job, Result.Type.SUCCESSFUL, ttl=60, return_value=result.model_dump(mode="json"))
    return job.id


@pytest.mark.parametrize("fmt", ["webp", "gif"])
def test_webp_and_gif_animations_have_every_frame_at_the_frames_size(client, fmt):
    job_id = finished_job(client, 5)
    response = client.get(f"/jobs/{job_id}/animation.{fmt}", params={"fps": 10})
    assert response.status_code == 200
    assert response.headers["content-type"] == f"image/{fmt}"
    animation = Image.open(io.BytesIO(response.content))
    assert (animation.n_frames, animation.size) == (5, (24, 16))
    bounced = client.get(f"/jobs/{job_id}/animation.{fmt}", params={"bounce": True})
    assert Image.open(io.BytesIO(bounced.content)).n_frames == 8  # 0..4, then 3..1


def test_mp4_animation_decodes_with_pyav_to_every_frame(client):
    job_id = finished_job(client, 6, size=(24, 16))
    response = client.get(f"/jobs/{job_id}/animation.mp4", params={"fps": 12})
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(response.content)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert stream.codec_context.name == "h264"
    assert len(frames) == 6
    assert (frames[0].width, frames[0].height) == (24, 16)


def test_an_animation_is_built_once_and_then_served_from_storage(client):
    job_id = finished_job(client, 3)
    first = client.get(f"/jobs/{job_id}/animation.gif")
    client.app.state.storage.delete(image_key(f"{1:032x}"))  # the frames are not read again
    second = client.get(f"/jobs/{job_id}/animation.gif")
    assert second.status_code == 200 and second.content == first.content


def test_animations_of_unfinished_or_unknown_jobs_are_refused(client, keyframes):
    queued = client.post("/morph", json={"keyframes": keyframes[:2], "frames": 3}).json()
    assert_problem(client.get(f"/jobs/{queued['id']}/animation.webp"), 409, "queued")
    assert_problem(client.get(f"/jobs/{'0' * 32}/animation.gif"), 404, "not found")
    assert client.get(f"/jobs/{queued['id']}/animation.avi").status_code == 422
