"""`latentmix experiment` without a service: its arithmetic, its refusals and its figure."""

import argparse
import csv
import json
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import png_bytes

from latentmix.client import experiment
from latentmix.client.augment import find_classes
from latentmix.client.experiment import (
    EXIT_USAGE,
    Experiment,
    Plan,
    UsageError,
    write_figure,
)
from latentmix.client.models import Limits


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    experiment.add_parser(parser.add_subparsers())
    return parser.parse_args(["experiment", *argv])


def tree(root: Path, images: int) -> Path:
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(images):
            (root / name / f"{i}.png").write_bytes(png_bytes(i))
    return root


def test_the_papers_experiment_counts_49_million_unet_evaluations(tmp_path):
    plan = Plan.from_args(parse(str(tmp_path), "--out", str(tmp_path / "o"), "--centroids", "1000"))

    cells = len(plan.cells([f"class{i}" for i in range(10)]))
    inversion, generation = plan.unet_evaluations(images=640, cells=cells)

    assert cells == 10 * 7 * 7  # classes x K in 1..64 x the paper's seven methods
    assert inversion == 640 * 50 * 2  # 50 steps, guidance doubles
    assert generation == 490 * 1000 * 50 * 2


def test_unguided_runs_count_one_evaluation_per_step(tmp_path):
    plan = Plan.from_args(
        parse(str(tmp_path), "--out", "o", "--guidance-scale", "1", "--steps", "10", "--k", "2")
    )

    assert plan.unet_evaluations(images=4, cells=3) == (4 * 50, 3 * 1000 * 10)


def test_every_method_mixes_the_same_subsets_and_classes_differ():
    assert experiment._seed(0, "cat", 4) == experiment._seed(0, "cat", 4)
    assert len({experiment._seed(0, "cat", 4), experiment._seed(0, "dog", 4),
                experiment._seed(0, "cat", 8), experiment._seed(1, "cat", 4)}) == 4  # fmt: skip


def test_a_k_larger_than_a_class_is_refused_before_anything_is_sent(tmp_path, capsys):
    data = tree(tmp_path / "data", images=3)

    status = experiment.main([str(data), "--out", str(tmp_path / "o"), "--k", "1,4"])

    assert status == EXIT_USAGE
    assert "K = 4" in capsys.readouterr().err


def test_an_out_folder_of_another_experiment_is_refused(tmp_path):
    data = tree(tmp_path / "data", images=2)
    out = tmp_path / "o"
    first = Plan.from_args(parse(str(data), "--out", str(out), "--k", "1,2"))
    classes = find_classes(data, out, first.prompt)
    Experiment(None, first, classes, out)._save_state()

    other = Plan.from_args(parse(str(data), "--out", str(out), "--k", "1,2", "--centroids", "5"))
    with pytest.raises(UsageError, match="centroids"):
        Experiment(None, other, classes, out)


def test_the_figure_is_a_png_of_class_means(tmp_path):
    rows = [
        {"class": c, "k": k, "method": m, "centroids": 4, "clip_distance": 0.1 * k,
         "fid": None if k == 1 else float(k), "features": "clip:tiny-clip", "model": "tiny"}
        for c in ("cat", "dog") for k in (1, 2, 4) for m in ("lerp", "nin/chm")
    ]  # fmt: skip

    write_figure(rows, tmp_path / "figure7.png", "a title")

    assert (tmp_path / "figure7.png").read_bytes().startswith(b"\x89PNG")
    assert experiment._class_means(rows, "lerp", "fid") == ([2, 4], [2.0, 4.0])


def test_results_read_back_as_written(tmp_path):
    out = tmp_path / "o"
    data = tree(tmp_path / "data", images=2)
    plan = Plan.from_args(parse(str(data), "--out", str(out), "--k", "1"))
    run = Experiment(None, plan, find_classes(data, out, plan.prompt), out)
    run.rows[("cat", 1, "lerp")] = {
        "class": "cat", "k": 1, "method": "lerp", "centroids": 1000, "clip_distance": 0.25,
        "clip_distance_std": 0.0, "fid": None, "kid": None, "accuracy": 0.5,
        "channel_mean_bias": 0.125, "features": "clip:x", "model": "m",
        "mix_job": "a", "evaluation_job": "b",
    }  # fmt: skip
    run._save_rows()

    again = Experiment(None, plan, find_classes(data, out, plan.prompt), out)

    assert again.rows == run.rows
    (written,) = csv.DictReader((out / "results.csv").open())
    assert written["fid"] == ""


class LimitedService:
    """A client whose service allows few mixes per request; anything else fails the test."""

    def limits(self):
        return Limits(max_mixes_per_request=10)

    def __getattr__(self, name):
        raise AssertionError(f"the experiment called {name} despite the limits")


def test_a_plan_over_the_services_limits_is_refused_before_any_work(tmp_path):
    data = tree(tmp_path / "data", images=2)
    out = tmp_path / "o"
    plan = Plan.from_args(parse(str(data), "--out", str(out), "--k", "1", "--centroids", "11"))

    with pytest.raises(UsageError, match="max_mixes_per_request"):
        Experiment(LimitedService(), plan, find_classes(data, out, plan.prompt), out).run()


def test_the_model_card_fills_in_the_prompt_and_the_judge_for_classes_it_knows(tmp_path):
    data = tree(tmp_path / "data", images=2)
    card = {
        "augmentation": {
            "prompt_template": "a {class}",
            "judge": "shapes-classifier",
            "judge_labels": ["cat", "dog"],
        }
    }
    given = Plan.from_args(parse(str(data), "--out", "o", "--k", "1"))
    classes = find_classes(data, tmp_path / "o")

    judged = given.for_card(card, classes)
    dogless = {"augmentation": {**card["augmentation"], "judge_labels": ["cat"]}}
    unknown = given.for_card(dogless, classes)
    sd = given.for_card({}, classes)
    told = Plan.from_args(
        parse(str(data), "--out", "o", "--prompt", "{class}!", "--features", "clip")
    ).for_card(card, classes)

    assert (judged.prompt, judged.features, judged.judge) == (
        "a {class}",
        "judge",
        "shapes-classifier",
    )
    assert unknown.judge is None and unknown.features == "judge"  # it cannot tell a dog
    assert (sd.prompt, sd.features, sd.judge) == ("a photo of a {class}", "clip", None)
    assert (told.prompt, told.features) == ("{class}!", "clip")


def test_an_out_folder_of_an_older_release_resumes(tmp_path):
    """Its experiment.json predates the plan's `judge`: unset then, as it is here."""
    data = tree(tmp_path / "data", images=2)
    out = tmp_path / "o"
    plan = Plan.from_args(parse(str(data), "--out", str(out), "--k", "1,2"))
    classes = find_classes(data, out)
    Experiment(None, plan, classes, out)._save_state()
    saved = json.loads((out / "experiment.json").read_text())
    del saved["plan"]["judge"]
    (out / "experiment.json").write_text(json.dumps(saved))

    resumed = Experiment(None, plan, classes, out)

    assert resumed.state.plan == asdict(plan)
