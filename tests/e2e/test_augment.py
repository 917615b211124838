"""`latentmix augment` against the real service processes (tests/client/conftest.py)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import webdataset

from latentmix.client.augment import Ledger
from latentmix.service.cli.main import main as latentmix

pytestmark = pytest.mark.e2e

CLASSES = {"cat": "a photo of a cat", "red_fox": "a photo of a red fox"}
FAST = ["--steps", "4", "--inversion-steps", "4", "--guidance-scale", "1", "--no-progress"]


def augment_args(tree: Path, out: Path, url: str, *options: str) -> list[str]:
    return ["augment", str(tree), "--out", str(out), "--url", url, *FAST, *options]


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_:
        latentmix(args)
    return exit_.value.code


def read_provenance(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "provenance.jsonl").read_text().splitlines()]


def snapshot(out: Path) -> dict[str, int]:
    """Each image file with its modification time."""
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*.png")}


def check_output(out: Path, tree: Path, per_class: int) -> list[dict]:
    """Exactly `per_class` images per class, one provenance line per file, all consistent."""
    lines = read_provenance(out)
    assert len(lines) == per_class * len(CLASSES)
    assert sorted(snapshot(out)) == sorted(line["file"] for line in lines)
    assert len({line["image"] for line in lines}) == len(lines)
    for name, prompt in CLASSES.items():
        assert len(list((out / name).glob("*.png"))) == per_class
        class_files = {f"{name}/{p.name}" for p in (tree / name).iterdir()}
        for line in (line for line in lines if line["class"] == name):
            assert line["file"] == f"{name}/{line['image']}.png"
            assert line["prompt"] == prompt
            assert sum(line["weights"]) == pytest.approx(1.0)
            assert len(line["weights"]) == len(line["inputs"]) == 3
            assert {i["source"] for i in line["inputs"]} == class_files
            assert all(len(i["latent"]) == 32 for i in line["inputs"])
    return lines


def check_exports(out: Path, lines: list[dict]) -> None:
    """The Hugging Face layout and the WebDataset shards hold every image of the ledger."""
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert sorted(loaded["image_id"]) == sorted(line["image"] for line in lines)
    by_id = {line["image"]: line for line in lines}
    for row in loaded:
        line = by_id[row["image_id"]]
        assert row["label"] == line["class"] and row["weights"] == line["weights"]
        assert row["soft_label"] == [float(name == line["class"]) for name in CLASSES]
        assert (row["method"], row["seed"], row["steps"]) == (
            line["method"],
            line["seed"],
            line["steps"],
        )
        assert row["model"] == "tiny" and row["image"].size == (64, 64)
    shards = sorted(str(p) for p in (out / "webdataset").glob("*.tar"))
    assert len(shards) == 2  # 6 images, 4 per shard
    keys = [s["__key__"] for s in webdataset.WebDataset(shards, shardshuffle=False)]
    assert sorted(keys) == sorted(by_id)


def test_augment_writes_per_class_images_with_matching_provenance(
    service_url, image_tree, tmp_path
):
    out = tmp_path / "aug"
    args = augment_args(
        image_tree, out, service_url, "--per-class", "3", "--batch", "2", "--shard-size", "4"
    )

    assert run_cli(args) == 0

    lines = check_output(out, image_tree, per_class=3)
    check_exports(out, lines)
    assert [line["batch"] for line in lines if line["class"] == "cat"] == [0, 0, 1]
    assert len({line["seed"] for line in lines}) == 4  # one per (class, batch)
    settings = json.loads((out / "augment.json").read_text())
    assert settings["method"] == "nin/chm" and settings["scheme"] == "few"
    before = snapshot(out)
    assert run_cli(args) == 0  # everything there: nothing to do
    assert snapshot(out) == before and read_provenance(out) == lines
    assert run_cli([*args, "--seed", "1"]) == 2  # other settings would mix two sets


def test_cross_class_mixes_carry_soft_labels_from_their_weights(service_url, image_tree, tmp_path):
    out = tmp_path / "aug"
    args = augment_args(image_tree, out, service_url, "--per-class", "2", "--cross-class")

    assert run_cli(args) == 0

    lines = read_provenance(out)
    assert len(lines) == 4
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    by_id = {line["image"]: line for line in lines}
    for row in loaded:
        line = by_id[row["image_id"]]
        names = list(CLASSES)
        own, other = names.index(line["class"]), 1 - names.index(line["class"])
        total = sum(line["weights"])
        by_class = [0.0, 0.0]
        for item, weight in zip(line["inputs"], line["weights"], strict=True):
            by_class[names.index(item["source"].split("/")[0])] += weight / total
        assert row["soft_label"] == pytest.approx(by_class)
        assert row["soft_label"][own] >= 0.5 and row["soft_label"][other] > 0
        assert row["label"] == line["class"] and line["prompt"] == CLASSES[line["class"]]


def test_interrupted_augment_resumes_without_redoing_finished_images(
    service_url, image_tree, tmp_path
):
    out = tmp_path / "aug"
    args = augment_args(image_tree, out, service_url, "--per-class", "4", "--batch", "1")
    process = subprocess.Popen(
        [sys.executable, "-m", "latentmix.service.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As a terminal starts it: a test run started in the background (`cmd &`) ignores
        # SIGINT and its children would inherit that, so Ctrl-C would never arrive.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        provenance = out / "provenance.jsonl"
        while not (provenance.exists() and provenance.read_text().strip()):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "no image within 60 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)  # Ctrl-C
        output = process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    assert "run the same command again to resume" in output
    partial = read_provenance(out)
    assert 1 <= len(partial) < 8
    finished = snapshot(out)
    assert sorted(finished) == sorted(line["file"] for line in partial)

    assert run_cli(args) == 0

    lines = check_output(out, image_tree, per_class=4)
    assert lines[: len(partial)] == partial  # kept, not redone
    assert {name: snapshot(out)[name] for name in finished} == finished
    # The resumed set is the set an uninterrupted run makes.
    fresh = tmp_path / "fresh"
    assert (
        run_cli(augment_args(image_tree, fresh, service_url, "--per-class", "4", "--batch", "1"))
        == 0
    )
    assert sorted(snapshot(fresh)) == sorted(snapshot(out))


def test_subsets_too_few_for_per_class_are_refused_before_any_work(image_tree, tmp_path):
    args = ["--per-class", "4", "--scheme", "subset", "--k", "2"]
    out = tmp_path / "aug"

    assert run_cli(augment_args(image_tree, out, "http://127.0.0.1:9", *args)) == 2

    assert not out.exists()


def test_a_torn_last_provenance_line_is_skipped_and_not_glued_to_the_next(tmp_path):
    path = tmp_path / "provenance.jsonl"
    path.write_text('{"class": "cat", "image": "a", "batch": 0}\n{"class": "cat", "ima')
    ledger = Ledger(path)
    assert ledger.count("cat") == 1

    ledger.append({"class": "cat", "image": "b", "batch": 0})

    assert Ledger(path).count("cat") == 2
    assert path.read_text().splitlines()[-1] == '{"class":"cat","image":"b","batch":0}'
