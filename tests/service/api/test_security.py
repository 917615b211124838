"""API keys, CORS and Idempotency-Key, against the app in-process on a real Redis; jobs in
Redis that name functions other than LatentMix tasks."""

import hmac
import importlib
import json
import os
import uuid

import pytest
from helpers import assert_problem, png_bytes, upload_random_latents
from redis import Redis
from rq import Callback, Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from latentmix.service.api import security
from latentmix.service.api.idempotency import PENDING_TTL_S, RECORD_KEY
from latentmix.service.core.contract import EVALUATE, INVERT, MEASURE, MIX, MORPH
from latentmix.service.core.jobs import TASKS, LatentMixJob, UnknownTask
from latentmix.service.core.webhooks import DELIVER_TASK, deliver

KEYS = ["first-key-0123456789abcdef", "second-key-0123456789abcdef"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- API keys ---------------------------------------------------------------------------------


def test_without_keys_configured_the_api_is_open(make_client):
    client = make_client()
    assert client.get(f"/jobs/{'0' * 32}").status_code == 404
    assert client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/jobs/{'0' * 32}"),
        ("POST", f"/jobs/{'0' * 32}/cancel"),
        ("POST", "/mix"),
        ("POST", "/latents"),
        ("GET", f"/latents/{'0' * 32}"),
        ("GET", f"/latents/{'0' * 32}/data"),
        ("GET", f"/images/{'0' * 32}"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/no/such/path"),
    ],
)
def test_with_keys_every_endpoint_but_the_probes_needs_one(make_client, method, path):
    client = make_client(api_keys=KEYS)

    missing = client.request(method, path)
    wrong = client.request(method, path, headers=bearer("not-a-key-0123456789abcdef"))
    right = client.request(method, path, headers=bearer(KEYS[1]))

    assert_problem(missing, 401, "missing API key")
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="latentmix"'
    assert_problem(wrong, 401, "invalid API key")
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert right.status_code != 401


def test_health_probes_need_no_key(make_client):
    client = make_client(api_keys=KEYS)
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code in (200, 503)


@pytest.mark.parametrize("header", ["Basic Zm9vOmJhcg==", "Bearer", "Bearer ", KEYS[0]])
def test_malformed_authorization_headers_are_401(make_client, header):
    client = make_client(api_keys=KEYS)
    assert_problem(client.get("/openapi.json", headers={"Authorization": header}), 401)


def test_every_key_is_compared_in_constant_time(make_client, monkeypatch):
    """hmac.compare_digest over fixed-length digests, for every key, whichever matches."""
    client = make_client(api_keys=KEYS)
    calls = []
    compare = hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    for token in (KEYS[0], KEYS[1], "x" * 40):
        calls.clear()
        client.get("/openapi.json", headers=bearer(token))
        assert calls == [(32, 32)] * len(KEYS)


def test_short_keys_are_refused_at_startup(make_settings):
    with pytest.raises(ValueError, match="at least 16 characters"):
        make_settings(api_keys=["short"])


def test_keys_come_from_a_comma_separated_variable(monkeypatch):
    from latentmix.service.core.config import Settings

    monkeypatch.setenv("LATENTMIX_API_KEYS", f" {KEYS[0]} ,{KEYS[1]}")
    monkeypatch.setenv("LATENTMIX_CORS_ORIGINS", "https://a.example,https://b.example")
    settings = Settings()
    assert [key.get_secret_value() for key in settings.api_keys] == KEYS
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert KEYS[0] not in repr(settings)


def test_the_schema_declares_the_bearer_scheme_optional_without_keys(make_client):
    schema = make_client().get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": security.bearer_scheme.model.description,
    }
    assert schema["paths"]["/mix"]["post"]["security"] == [{"apiKey": []}, {}]
    assert schema["paths"]["/metrics"]["get"]["security"] == [{"apiKey": []}, {}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_the_schema_declares_the_bearer_scheme_required_with_keys(make_client):
    client = make_client(api_keys=",".join(KEYS))
    schema = client.get("/openapi.json", headers=bearer(KEYS[0])).json()
    assert schema["paths"]["/mix"]["post"]["security"] == [{"apiKey": []}]
    assert schema["paths"]["/metrics"]["get"]["security"] == [{"apiKey": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


# --- CORS -------------------------------------------------------------------------------------


def test_cors_is_off_unless_configured(make_client):
    client = make_client()
    origin = {"Origin": "https://evil.example"}

    response = client.get("/healthz", headers=origin)
    preflight = client.options("/mix", headers=origin | {"Access-Control-Request-Method": "POST"})

    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in preflight.headers


def test_configured_origins_only_get_cors_headers_and_preflights_need_no_key(make_client):
    client = make_client(cors_origins=["https://app.example"], api_keys=KEYS)
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, idempotency-key",
    }

    allowed = client.options("/mix", headers={"Origin": "https://app.example"} | preflight)
    other = client.options("/mix", headers={"Origin": "https://evil.example"} | preflight)
    simple = client.get("/healthz", headers={"Origin": "https://app.example"})

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "idempotency-key" in allowed.headers["access-control-allow-headers"].lower()
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    assert simple.headers["access-control-allow-origin"] == "https://app.example"


# --- Idempotency-Key --------------------------------------------------------------------------


@pytest.fixture
def with_latents(make_client):
    client = make_client()
    return client, upload_random_latents(client, 2, seed=5)


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def test_a_retried_post_returns_the_original_job(with_latents):
    client, ids = with_latents
    headers = key()

    first = client.post("/mix", json={"latents": ids}, headers=headers)
    again = client.post("/mix", json={"latents": ids}, headers=headers)
    reordered = client.post(
        "/mix",
        content=json.dumps({"latents": ids}, indent=2).encode(),
        headers=headers | {"content-type": "application/json"},
    )

    assert first.status_code == again.status_code == reordered.status_code == 202
    assert again.json() == first.json() and reordered.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(client.app.state.redis.keys("rq:job:*")) == 1


def test_a_retry_after_a_crash_that_lost_the_answer_finds_the_queued_job(with_latents):
    client, ids = with_latents
    headers = key()
    first = client.post("/mix", json={"latents": ids}, headers=headers)
    redis = client.app.state.redis
    for record in redis.keys(RECORD_KEY.format(digest="*")):
        redis.delete(record)  # as if the API died after queueing, before storing the answer

    again = client.post("/mix", json={"latents": ids}, headers=headers)
    other = client.post("/mix", json={"latents": ids[::-1]}, headers=headers)

    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert other.status_code == 422  # the key now belongs to the request retried above
    assert len(redis.keys("rq:job:*")) == 1
    assert redis.lrange("rq:queue:latentmix:tiny", 0, -1) == [first.json()["id"].encode()]


def test_without_a_key_every_post_is_a_new_job(with_latents):
    client, ids = with_latents
    first = client.post("/mix", json={"latents": ids}).json()
    second = client.post("/mix", json={"latents": ids}).json()
    assert first["id"] != second["id"]


def test_the_same_key_with_a_different_body_is_rejected(with_latents):
    client, ids = with_latents
    headers = key()
    client.post("/mix", json={"latents": ids}, headers=headers)

    body = assert_problem(
        client.post("/mix", json={"latents": ids, "steps": 3}, headers=headers),
        422,
        "already used for a different request",
    )
    assert body["errors"][0]["field"] == "header.Idempotency-Key"
    assert_problem(client.post(f"/jobs/{'0' * 32}/cancel", headers=headers), 422)


def test_multipart_retries_match_whatever_the_boundary(make_client):
    client = make_client()
    headers = key()
    files = [("images", ("a.png", png_bytes(1), "image/png"))]

    first = client.post("/latents", files=files, headers=headers)
    # The same form encoded again: httpx picks a new random boundary each time.
    again = client.post("/latents", files=files, headers=headers)
    other = client.post(
        "/latents", files=[("images", ("a.png", png_bytes(2), "image/png"))], headers=headers
    )

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert_problem(other, 422, "different request")


def test_failed_requests_are_not_remembered(with_latents):
    client, ids = with_latents
    headers = key()

    bad = client.post("/mix", json={"latents": ids, "method": "bogus"}, headers=headers)
    fixed = client.post("/mix", json={"latents": ids}, headers=headers)

    assert bad.status_code == 422
    assert fixed.status_code == 202 and "Idempotent-Replayed" not in fixed.headers


def test_a_key_still_in_flight_is_a_409(with_latents):
    client, ids = with_latents
    headers = key()
    record = RECORD_KEY.format(
        digest=__import__("hashlib")
        .sha256(f"anonymous\n{headers['Idempotency-Key']}".encode())
        .hexdigest()
    )
    client.app.state.redis.set(record, json.dumps({"state": "pending", "claim": "x"}))

    response = client.post("/mix", json={"latents": ids}, headers=headers)

    assert_problem(response, 409, "still in progress")
    assert int(response.headers["Retry-After"]) > 0
    assert client.app.state.redis.ttl(record) == -1  # untouched: not ours
    assert PENDING_TTL_S > 0


def test_keys_are_scoped_by_api_key(make_client):
    client = make_client(api_keys=KEYS)
    headers = key()
    files = [("images", ("a.png", png_bytes(3), "image/png"))]

    mine = client.post("/latents", files=files, headers=headers | bearer(KEYS[0]))
    theirs = client.post(
        "/latents",
        files=[("images", ("b.png", png_bytes(4), "image/png"))],
        headers=headers | bearer(KEYS[1]),
    )

    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["job"]["id"] != theirs.json()["job"]["id"]


@pytest.mark.parametrize("value", ["", " spaced key ", "k" * 256, "naïve"])
def test_malformed_idempotency_keys_are_422(with_latents, value):
    client, ids = with_latents
    response = client.post(
        "/mix", json={"latents": ids}, headers={"Idempotency-Key": value.encode()}
    )
    assert_problem(response, 422, "Idempotency-Key")


def test_the_schema_documents_the_header_on_posts(make_client):
    schema = make_client().get("/openapi.json").json()
    for path in ("/mix", "/latents", "/jobs/{job_id}/cancel"):
        names = [p["name"] for p in schema["paths"][path]["post"].get("parameters", [])]
        assert "Idempotency-Key" in names, path


# --- jobs in Redis name only LatentMix tasks ------------------------------------------------


@pytest.fixture
def stray_queue(redis_url) -> Queue:
    """A queue no worker serves: jobs put there are only looked at by the test."""
    redis = Redis.from_url(redis_url)
    return Queue("latentmix-test-unserved", connection=redis, serializer=JSONSerializer)


def loaded(job: Job, job_class: type[Job] = LatentMixJob) -> Job:
    """The job as a worker (or the reaper) reads it back from Redis."""
    return job_class.fetch(job.id, connection=job.connection, serializer=JSONSerializer)


def test_a_job_naming_another_function_is_refused_before_it_is_imported(stray_queue):
    job = stray_queue.enqueue("os.mkdir", "/tmp/never")
    with pytest.raises(UnknownTask, match=r"'os\.mkdir' is not a LatentMix task"):
        loaded(job).func  # noqa: B018 (the property imports the function)


def test_the_latentmix_tasks_resolve(stray_queue):
    job = stray_queue.enqueue(DELIVER_TASK, "http://127.0.0.1:9/hook", {})
    assert loaded(job).func is deliver
    assert {INVERT.task, MIX.task, EVALUATE.task, MORPH.task, MEASURE.task, DELIVER_TASK} == TASKS


@pytest.mark.parametrize(
    ("old_name", "task"),
    [
        ("worker.tasks.invert_images", INVERT.task),
        ("worker.tasks.mix_latents", MIX.task),
        ("service.webhooks.deliver", DELIVER_TASK),
    ],
)
def test_jobs_queued_under_the_previous_release_names_run_todays_tasks(stray_queue, old_name, task):
    job = loaded(stray_queue.enqueue(old_name, {}))
    module, name = task.rsplit(".", 1)
    assert job.func is getattr(importlib.import_module(module), name)


def test_callbacks_named_in_redis_are_never_imported(stray_queue):
    job = stray_queue.enqueue(
        DELIVER_TASK,
        "http://127.0.0.1:9/hook",
        {},
        on_success=Callback("os.mkdir"),
        on_failure=Callback("os.rmdir"),
        on_stopped=Callback("os.remove"),
    )
    assert loaded(job, Job).failure_callback is os.rmdir  # what RQ itself would run
    job = loaded(job)
    assert job.success_callback is job.failure_callback is job.stopped_callback is None
