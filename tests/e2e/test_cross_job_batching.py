"""Cross-job batching (worker/batching.py) done for real: the service's API, real Redis, real
RQ workers with LATENTMIX_WORKER_BATCH_WAIT_MS set. Mix jobs (and inversion jobs) queued
while the worker's denoiser is busy with a slow job are taken in flight and run in one
denoiser call; each still has its own result, progress, cancellation and failure; a killed
worker fails exactly the jobs it held, and those it had no room for stay queued; two workers
on one queue never run a job twice.

The module runs its own stack (one worker at first, local store, short heartbeats) so that it
can kill and add workers."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from uuid import uuid4

import httpx
import numpy as np
import pytest
import torch
from helpers import free_port, png_bytes, service_environment, upload_random_latents, wait_for
from PIL import Image
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer
from safetensors.numpy import load

from latentmix.service.cli.stack import ServiceStack
from latentmix.service.core.config import Settings
from latentmix.service.core.contract import INVERT, MIX, plan_mix
from latentmix.service.core.jobs import enqueue, get_queue

pytestmark = pytest.mark.e2e

REDIS_DB = 9  # apart from the other modules' databases
PROMPT = "a photo of a cat"
STEPS = 10
MAX_ROWS = 8  # the workers' max_batch_size: rows of jobs rendered together, at most
IN_FLIGHT_ROWS = 2 * MAX_ROWS  # rows of jobs a worker holds before it takes another
BLOCKER_STEPS = 150  # keeps the worker busy while a test queues the jobs to batch


@pytest.fixture(scope="module")
def stack(redis_server: str, service_data_dir: Path, tmp_path_factory) -> Iterator[ServiceStack]:
    redis_url = f"{redis_server.rsplit('/', 1)[0]}/{REDIS_DB}"
    with Redis.from_url(redis_url) as redis:
        redis.flushdb()
    data_dir = tmp_path_factory.mktemp("batching")
    (service_data_dir / "models").mkdir(exist_ok=True)
    (data_dir / "models").symlink_to(service_data_dir / "models")  # tiny is built once
    settings = Settings(
        model="tiny",
        data_dir=data_dir,
        port=free_port(),
        redis_url=redis_url,
        max_batch_size=MAX_ROWS,
        worker_batch_wait_ms=50,
        worker_heartbeat_ttl_s=3,
        reaper_interval_s=1.0,
    )
    with ServiceStack(settings, env=service_environment()) as running:
        yield running


@pytest.fixture(scope="module")
def api(stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def inputs(api) -> list[str]:
    return upload_random_latents(api, 2, seed=30)


def post_mix(api, latents: list[str], weights, steps: int = STEPS) -> str:
    body = {"latents": latents, "weights": weights, "prompt": PROMPT, "steps": steps}
    body["guidance_scale"] = 1.0
    response = api.post("/mix", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def busy_worker(api, inputs: list[str], seed: float) -> str:
    """A slow job of its own settings (never batched with the tests' jobs), running."""
    job = post_mix(api, inputs, [seed, 1 - seed], steps=BLOCKER_STEPS)
    wait_until(lambda: api.get(f"/jobs/{job}").json()["status"] == "running")
    return job


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def batches(stack: ServiceStack) -> list[set[str]]:
    """The sets of job ids the workers rendered together, from their logs."""
    text = "".join(path.read_text() for path in stack.log_dir.glob("worker*.log"))
    return [set(ids.split(", ")) for ids in re.findall(r"jobs together: (.*)", text)]


def picture(api, image_id: str) -> np.ndarray:
    response = api.get(f"/images/{image_id}", follow_redirects=True)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), np.int16)


def test_batched_jobs_render_together_each_with_its_own_result_and_progress(api, stack, inputs):
    busy_worker(api, inputs, 0.01)
    weights = [[0.2, 0.8], [0.4, 0.6], [0.6, 0.4], [0.8, 0.2]]
    jobs = [post_mix(api, inputs, row) for row in weights]
    ended = [wait_for(api, job) for job in jobs]

    assert set(jobs) in batches(stack)
    from latentmix.worker.engine.diffusion import generate
    from latentmix.worker.engine.models import load_model

    model = load_model("tiny", device="cpu", cache_dir=stack.settings.data_dir / "models")
    for row, done in zip(weights, ended, strict=True):
        assert done["status"] == "succeeded", done
        assert done["progress"]["done"] == done["progress"]["total"] > 0, done
        (image,) = done["result"]["images"]
        assert image["provenance"]["weights"] == pytest.approx(row)
        # The job's picture is its own mixed latent's, as the engine renders it alone.
        stored = load(api.get(f"/latents/{image['latent']}/data").content)["latent"]
        (alone,) = generate(
            model, torch.from_numpy(stored)[None], PROMPT, steps=STEPS, guidance_scale=1.0
        )
        difference = np.abs(picture(api, image["id"]) - np.asarray(alone, np.int16))
        assert difference.max() <= 2, row


def test_canceling_one_batched_job_leaves_the_others(api, stack, inputs):
    busy_worker(api, inputs, 0.02)
    slow = 100
    first, canceled, last = (post_mix(api, inputs, [[w, 1 - w]] * 2, slow) for w in (0.3, 0.5, 0.7))
    wait_until(lambda: api.get(f"/jobs/{canceled}").json()["status"] == "running")
    assert api.post(f"/jobs/{canceled}/cancel").status_code == 202

    assert wait_for(api, canceled)["status"] == "canceled"
    for job in (first, last):
        done = wait_for(api, job)
        assert done["status"] == "succeeded", done
        assert len(done["result"]["images"]) == 2
    assert {first, canceled, last} in batches(stack)


def test_a_failing_job_fails_alone(api, stack, inputs):
    busy_worker(api, inputs, 0.03)
    good = post_mix(api, inputs, [0.25, 0.75])
    missing = "f" * 32
    request = plan_mix(
        latents=[inputs[0], missing],
        rows=[[0.5, 0.5]],
        method="nin/chm",
        prompt=PROMPT,
        steps=STEPS,
        guidance_scale=1.0,
    )
    with Redis.from_url(stack.redis_url) as redis:
        bad = enqueue(
            redis, stack.settings, job_type=MIX, model="tiny", request=request, job_id=uuid4().hex
        ).id
    also_good = post_mix(api, inputs, [0.75, 0.25])

    failed = wait_for(api, bad)
    assert failed["status"] == "failed" and missing in failed["error"], failed
    for job in (good, also_good):
        assert wait_for(api, job)["status"] == "succeeded"
    assert {good, also_good} in batches(stack)  # the bad one failed before rendering


def test_a_killed_worker_fails_exactly_the_jobs_it_held(api, stack, inputs):
    busy_worker(api, inputs, 0.04)
    # With the busy job's row, these fill the worker's room: the next job stays queued.
    held = [post_mix(api, inputs, [[w, 1 - w]] * MAX_ROWS, 100) for w in (0.35, 0.65)]
    assert 1 + 2 * MAX_ROWS > IN_FLIGHT_ROWS
    queued = post_mix(api, inputs, [0.45, 0.55])
    wait_until(lambda: all(api.get(f"/jobs/{j}").json()["status"] == "running" for j in held))
    assert api.get(f"/jobs/{queued}").json()["status"] == "queued"

    stack.kill_worker(0)
    for job in held:
        done = wait_for(api, job, timeout=30)
        assert done["status"] == "failed" and "worker" in done["error"], done
    assert api.get(f"/jobs/{queued}").json()["status"] == "queued"

    stack.start_worker(0)
    assert wait_for(api, queued)["status"] == "succeeded"


def test_two_workers_on_one_queue_never_run_a_job_twice(api, stack, inputs):
    stack.add_worker()
    wait_until(lambda: api.get("/readyz").json()["workers"] == 2)
    rows = [[w / 17, 1 - w / 17] for w in range(1, 17)]
    with ThreadPoolExecutor(8) as clients:
        jobs = list(clients.map(lambda row: post_mix(api, inputs, row), rows))
        ended = list(clients.map(lambda job: wait_for(api, job), jobs))

    assert all(done["status"] == "succeeded" for done in ended)
    with Redis.from_url(stack.redis_url) as redis:
        for job_id in jobs:
            job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
            assert len(job.results()) == 1, job_id  # one execution ended, by one worker
    together = [batch for batch in batches(stack) if batch & set(jobs)]
    ran = [job for batch in together for job in batch]
    assert len(ran) == len(set(ran))  # no job in two batches
    assert stack.stop_worker(len(stack.slots) - 1) == 0  # one worker again, for the next tests


def post_latents(api, seed: int) -> tuple[str, str]:
    """POST /latents of one image with the request's defaults: (job id, latent id)."""
    files = [("images", (f"i{seed}.png", png_bytes(seed), "image/png"))]
    data = {"prompt": PROMPT, "inversion_steps": STEPS, "guidance_scale": 1.0}
    response = api.post("/latents", files=files, data=data)
    assert response.status_code == 202, response.text
    body = response.json()
    return body["job"]["id"], body["latents"][0]["id"]


def test_inversion_jobs_run_together_each_with_its_own_latents_and_failure(api, stack, inputs):
    busy_worker(api, inputs, 0.05)
    first, second = post_latents(api, 71), post_latents(api, 72)
    with Redis.from_url(stack.redis_url) as redis:
        queued = Job.fetch(first[0], connection=redis, serializer=JSONSerializer).args[0]
        missing_upload = {
            "items": [{"latent_id": "e" * 32, "upload_key": "uploads/gone", "prompt": PROMPT}],
            "settings": queued["settings"],  # the same settings as the others
            "measure_reconstruction": queued["measure_reconstruction"],
        }
        bad = get_queue(redis, "tiny").enqueue(INVERT.task, missing_upload, job_id=uuid4().hex).id
    third = post_latents(api, 73)
    good = [first, second, third]

    failed = wait_for(api, bad)
    ended = [wait_for(api, job) for job, _ in good]

    assert {first[0], second[0], third[0]} in batches(stack)  # the bad one failed before
    assert failed["status"] == "failed" and "uploads/gone" in failed["error"], failed
    from latentmix.worker.engine.diffusion import InversionSettings, invert
    from latentmix.worker.engine.models import load_model

    model = load_model("tiny", device="cpu", cache_dir=stack.settings.data_dir / "models")
    settings = InversionSettings(steps=STEPS, guidance_scale=1.0)
    for (_, latent), done, seed in zip(good, ended, (71, 72, 73), strict=True):
        assert done["status"] == "succeeded", done
        assert done["progress"]["done"] == done["progress"]["total"] > 0, done
        assert done["result"]["latents"] == [latent]
        # The job's latent is its own image's, as the engine inverts it alone.
        stored = load(api.get(f"/latents/{latent}/data").content)["latent"]
        image = Image.open(io.BytesIO(png_bytes(seed))).convert("RGB")
        alone = invert(model, [image], PROMPT, settings).latent[0].numpy()
        assert np.abs(stored - alone).max() < 1e-4, seed
