"""POST /mix with dry_run: each row's degeneracy diagnostics, computed by the API from the
stored inputs, with nothing queued (Landolsi & Kahl, Eq. 9)."""

import numpy as np
import pytest
from helpers import assert_problem, latent_file, png_bytes
from redis import Redis
from rq import Queue

from latentmix.service.core.diagnostics import InputStatistics, diagnose

BIAS = np.array([0.02, -0.01, 0.015, 0.02])  # per channel; small against the noise / sqrt(K)


def biased_arrays(count: int, seed: int) -> np.ndarray:
    """`count` latents n_k + b ([4, 16, 16], n_k ~ N(0, I))."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, 4, 16, 16)) + BIAS[None, :, None, None]


def upload_biased_latents(client, count: int, seed: int) -> list[str]:
    """`biased_arrays(count, seed)` in one POST /latents (as float32)."""
    arrays = biased_arrays(count, seed)
    files = [
        ("latents", (f"z{i}.safetensors", latent_file(a.astype(np.float32)), "application/x"))
        for i, a in enumerate(arrays)
    ]
    response = client.post("/latents", files=files)
    assert response.status_code in (200, 201, 202), response.text
    return [entry["id"] for entry in response.json()["latents"]]


def queued_jobs(settings) -> int:
    with Redis.from_url(settings.redis_url) as redis:
        return sum(len(q) for q in Queue.all(connection=redis))


@pytest.mark.parametrize(
    ("method", "amplification", "rel", "warned"),
    [
        ("fix/0", 8.0, 0.15, True),
        ("fix/chm", 1.0, 0.05, False),
    ],
)
def test_dry_run_reports_eq9_amplification_and_queues_nothing(
    client, settings, method, amplification, rel, warned
):
    latents = upload_biased_latents(client, 64, seed=0)
    before = queued_jobs(settings)

    response = client.post("/mix", json={"latents": latents, "method": method, "dry_run": True})

    assert response.status_code == 200, response.text
    (row,) = response.json()["rows"]
    diagnostics = row["diagnostics"]
    assert diagnostics["k_eff"] == pytest.approx(64)
    assert diagnostics["bias_amplification"] == pytest.approx(amplification, rel=rel)
    assert any("amplified" in w for w in diagnostics["warnings"]) is warned
    assert queued_jobs(settings) == before
    queued = client.post("/mix", json={"latents": latents, "method": method}).json()
    assert row["image"] == queued["planned"][0]["id"]


def test_dry_run_of_sampled_rows_answers_every_row(client):
    latents = upload_biased_latents(client, 8, seed=1)

    response = client.post(
        "/mix",
        json={
            "latents": latents,
            "method": "lerp",
            "sample": {"count": 5, "scheme": "subset", "k": 4, "seed": 3},
            "dry_run": True,
        },
    )

    rows = response.json()["rows"]
    assert len(rows) == 5
    assert all(sum(w > 0 for w in row["weights"]) == 4 for row in rows)
    assert all(row["diagnostics"]["norm_ratio"] < 0.8 for row in rows)
    assert all(
        any("interpolated norm" in w for w in row["diagnostics"]["warnings"]) for row in rows
    )


def test_dry_run_of_latents_still_inverting_is_refused(client):
    pending = client.post(
        "/latents", files=[("images", ("a.png", png_bytes(5), "image/png"))]
    ).json()["latents"][0]["id"]
    ready = upload_biased_latents(client, 1, seed=2)

    response = client.post("/mix", json={"latents": [pending, *ready], "dry_run": True})

    assert_problem(response, 409, pending, "dry_run")


def test_dry_run_rows_that_leave_inputs_out_match_the_full_computation(client):
    latents = upload_biased_latents(client, 4, seed=3)
    arrays = biased_arrays(4, seed=3).astype(np.float32)
    rows = [[1, 0, 0, 0], [0, 1, 1, 0]]

    for method in ("slerp", "nin/chm", "fix/0"):
        k = 2 if method == "slerp" else 4
        weights = [row[:k] for row in rows]
        response = client.post(
            "/mix",
            json={"latents": latents[:k], "weights": weights, "method": method, "dry_run": True},
        )

        assert response.status_code == 200, response.text
        expected = diagnose(InputStatistics.of(arrays[:k]), weights, method)
        for row, full in zip(response.json()["rows"], expected, strict=True):
            assert row["diagnostics"]["norm"] == pytest.approx(full.norm, rel=1e-9)
            assert row["diagnostics"]["channel_means"] == pytest.approx(full.channel_means)
