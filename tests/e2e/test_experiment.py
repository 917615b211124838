"""`latentmix experiment` against the session's service (tiny model, tiny random CLIP):
results.csv with one row per (class, K, method), figure7.png, and a resumed run that redoes
no finished cell. Also what the mix jobs and evaluations it made carry."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import pytest
from helpers import png_bytes
from redis import Redis

from latentmix.client import LatentMixClient, experiment
from latentmix.client.experiment import EXIT_INTERRUPTED, EXIT_OK, Experiment
from latentmix.service.core.jobs import fetch_job
from latentmix.worker.engine.shapes.classifier import judge, load_classifier
from latentmix.worker.engine.shapes.evaluation import to_tensor
from latentmix.worker.engine.shapes.folders import write_world_tree
from latentmix.worker.engine.shapes.model import CLASSIFIER_FILE

pytestmark = pytest.mark.e2e

KS, METHODS = (1, 2, 4), ("fix/0", "nin/chm")


@pytest.fixture
def four_image_tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for offset, name in enumerate(["cat", "red_fox"]):
        (root / name).mkdir(parents=True)
        for index in range(4):
            (root / name / f"{index}.png").write_bytes(png_bytes(10 * offset + index))
    return root


def latents(out: Path, row: dict) -> list[str]:
    """The latent ids of a results row's class, from OUT/experiment.json."""
    return json.loads((out / "experiment.json").read_text())["latents"][row["class"]]


def run_experiment(service_url: str, data: Path, out: Path, *extra: str) -> int:
    return experiment.main(
        [
            str(data),
            "--out", str(out),
            "--k", ",".join(map(str, KS)),
            "--methods", ",".join(METHODS),
            "--centroids", "2",
            "--steps", "2",
            "--inversion-steps", "2",
            "--url", service_url,
            *extra,
        ]
    )  # fmt: skip


def test_an_interrupted_experiment_resumes_without_redoing_finished_cells(
    service_url, four_image_tree, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "runs" / "x"
    ran: list[tuple[str, int, str]] = []
    finish_cell = Experiment._finish_cell

    def interrupted_after_two(self, cell):
        if len(ran) == 2:
            raise KeyboardInterrupt
        finish_cell(self, cell)
        ran.append((cell.name, cell.k, cell.method))

    monkeypatch.setattr(Experiment, "_finish_cell", interrupted_after_two)
    assert run_experiment(service_url, four_image_tree, out) == EXIT_INTERRUPTED
    first = {
        (r["class"], r["k"], r["method"]): r for r in csv.DictReader((out / "results.csv").open())
    }
    assert len(first) == 2
    printed = capsys.readouterr().out
    assert "UNet evaluations: 32 to invert" in printed  # 8 images x 2 steps x 2 (guidance)
    assert "96 to generate" in printed  # 12 cells x 2 centroids x 2 steps x 2

    redone: list[tuple[str, int, str]] = []

    def recorded(self, cell):
        redone.append((cell.name, cell.k, cell.method))
        finish_cell(self, cell)

    monkeypatch.setattr(Experiment, "_finish_cell", recorded)
    assert run_experiment(service_url, four_image_tree, out) == EXIT_OK

    assert not set(redone) & set(ran) and len(redone) == 10
    rows = list(csv.DictReader((out / "results.csv").open()))
    cells = {(r["class"], int(r["k"]), r["method"]) for r in rows}
    assert cells == {(c, k, m) for c in ("cat", "red_fox") for k in KS for m in METHODS}
    assert len(rows) == 12
    for row in rows:
        assert row["features"] == "clip:tiny-clip"
        assert 0 <= float(row["clip_distance"]) <= 2 and float(row["fid"]) >= 0
        key = (row["class"], row["k"], row["method"])
        if key in first:
            assert row["mix_job"] == first[key]["mix_job"]
    assert (out / "figure7.png").read_bytes().startswith(b"\x89PNG")
    assert "estimated time: " in printed and "UNet evals/s" in printed  # inversion's rate
    assert "left" in capsys.readouterr().out


def test_the_experiment_mix_jobs_carry_diagnostics_and_evaluations_outlive_their_job(
    service_stack, service_url, four_image_tree, tmp_path
):
    out = tmp_path / "out"
    assert run_experiment(service_url, four_image_tree, out, "--in-flight", "3") == EXIT_OK
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 12 and len({r["mix_job"] for r in rows}) == 12
    row = next(r for r in rows if r["k"] == "4" and r["method"] == "fix/0")

    job = httpx.get(f"{service_url}/jobs/{row['mix_job']}").json()

    diagnostics = job["result"]["images"][0]["diagnostics"]
    assert diagnostics["k_eff"] == pytest.approx(4)
    assert set(diagnostics) >= {"norm", "bias_amplification", "warnings", "channel_means"}
    evaluation = httpx.get(f"{service_url}/evaluations/{row['evaluation_job']}").json()
    assert evaluation["result"]["generated"] == 2 and evaluation["result"]["references"] == 4
    assert evaluation["result"]["label"] == row["class"]
    with LatentMixClient(service_url) as lm:
        inception = lm.wait(
            lm.evaluate(
                job=row["mix_job"], reference_latents=latents(out, row), features="inception"
            )
        ).result
    assert inception["features"] == "inception:tiny-inception"
    assert inception["clip_features"] == "clip:tiny-clip"
    assert inception["clip_distance"] == pytest.approx(evaluation["result"]["clip_distance"])
    assert inception["fid"] != evaluation["result"]["fid"]
    with Redis.from_url(service_stack.settings.redis_url) as redis:
        fetch_job(redis, row["evaluation_job"]).delete()
    kept = httpx.get(f"{service_url}/evaluations/{row['evaluation_job']}").json()
    assert kept["status"] == "succeeded" and kept["result"] == evaluation["result"]


def test_on_shapes_the_judge_scores_each_cell_with_the_cards_prompt(shapes_url, tmp_path):
    """`latentmix experiment` on the trained `shapes` model, no options but the size of the
    run: the card's prompt template, FID/KID and the distance on the judge's features, the
    judge's on-class share of every cell (checked here by reading the images with the
    classifier), and the channel-mean bias of the mixed latents."""
    data = write_world_tree(tmp_path / "data", {"red_circle": 4, "blue_square": 4}, seed=1)
    out = tmp_path / "out"
    status = experiment.main(
        [
            str(data), "--out", str(out), "--k", "1,4", "--methods", "fix/0,nin/chm",
            "--centroids", "3", "--steps", "10", "--inversion-steps", "10", "--url", shapes_url,
        ]
    )  # fmt: skip

    assert status == EXIT_OK
    assert json.loads((out / "experiment.json").read_text())["plan"]["prompt"] == "a {class}"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 8
    classifier = load_classifier(CLASSIFIER_FILE)
    with LatentMixClient(shapes_url) as client:
        for row in rows:
            assert row["features"] == "judge:shapes-classifier"
            assert float(row["fid"]) >= 0 and 0 <= float(row["clip_distance"]) <= 2
            mix = client.wait(row["mix_job"])
            images = [client.open_image(image).convert("RGB") for image in client.iter_images(mix)]
            read = judge(classifier, to_tensor(images))
            on_class = sum(label == row["class"].replace("_", " ") for label, _ in read)
            assert float(row["accuracy"]) == pytest.approx(on_class / len(images))
            means = [image["diagnostics"]["channel_means"] for image in mix.result["images"]]
            bias = sum(sum(map(abs, m)) / len(m) for m in means) / len(means)
            assert float(row["channel_mean_bias"]) == pytest.approx(bias)
    # K = 1: a drawing's own regeneration, which the defaults keep on its class.
    assert all(float(r["accuracy"]) == 1 for r in rows if r["k"] == "1")
    assert (out / "figure7.png").read_bytes().startswith(b"\x89PNG")
