"""`latentmix.client.datasets`: a torch Dataset over an augment output, real + synthetic at a
ratio, soft labels; importing the module needs no torch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from latentmix.client.dataset_exports import metadata_row, write_metadata
from latentmix.client.datasets import AugmentedDataset, mixed_at

CLASSES = ["cat", "red_fox"]


def make_output(tmp_path: Path, synthetic_per_class: int) -> tuple[Path, Path]:
    real, out = tmp_path / "train", tmp_path / "aug"
    records = []
    for label, name in enumerate(CLASSES):
        (real / name).mkdir(parents=True)
        (out / name).mkdir(parents=True)
        Image.new("RGB", (4, 4), (255 * label, 0, 0)).save(real / name / "0.png")
        for index in range(synthetic_per_class):
            Image.new("RGB", (4, 4), (0, 255, 0)).save(out / name / f"s{index}.png")
            records.append(
                {
                    "class": name,
                    "file": f"{name}/s{index}.png",
                    "image": f"{name}{index}",
                    "inputs": [],
                    "weights": [],
                    "method": "nin/chm",
                    "seed": 0,
                    "steps": 4,
                    "guidance_scale": 1.0,
                    "prompt": "p",
                    "soft_label": [0.3, 0.7] if index == 0 else None,
                }
            )
    (out / "augment.json").write_text(json.dumps({"classes": CLASSES}))
    write_metadata(out, [metadata_row(r, CLASSES, "shapes") for r in records])
    return real, out


def test_real_and_synthetic_images_come_with_one_hot_and_soft_labels(tmp_path):
    real, out = make_output(tmp_path, synthetic_per_class=2)

    data = AugmentedDataset(real, out)

    assert len(data) == 6 and sum(data.is_synthetic) == 4
    targets = [data[i][1].tolist() for i in range(len(data))]
    assert targets[:2] == [[1.0, 0.0], [0.0, 1.0]]  # real: one-hot
    expected = [[0.3, 0.7], [1.0, 0.0], [0.3, 0.7], [0.0, 1.0]]
    assert [t == pytest.approx(e) for t, e in zip(targets[2:], expected, strict=True)] == [True] * 4
    image, _ = data[1]
    assert image.shape == (3, 4, 4) and image.dtype == torch.float32
    assert image[:, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_the_synthetic_fraction_sets_the_share_by_repeating_the_smaller_side(tmp_path):
    real, out = make_output(tmp_path, synthetic_per_class=5)  # 2 real, 10 synthetic

    half = AugmentedDataset(real, out, synthetic_fraction=0.5)
    tenth = AugmentedDataset(real, out, synthetic_fraction=0.1)

    assert (len(half), sum(half.is_synthetic)) == (20, 10)  # real repeated 5x
    assert (len(tenth), sum(tenth.is_synthetic)) == (100, 10)
    assert mixed_at([1, 2, 3, 4], ["a"], 0.5) == [1, 2, 3, 4, "a", "a", "a", "a"]
    with pytest.raises(ValueError, match="synthetic_fraction must be in"):
        mixed_at([1], ["a"], 1.0)


def test_the_module_imports_without_torch():
    blocker = "import sys; sys.modules['torch'] = None; import latentmix.client.datasets; "
    code = blocker + "print('torch' in sys.modules and sys.modules['torch'] is not None)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
