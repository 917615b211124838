"""A PyTorch dataset over what `latentmix augment` wrote: real and synthetic images at a
chosen ratio, with soft labels, and no service at training time.

    from latentmix.client.datasets import AugmentedDataset
    data = AugmentedDataset("train/", "augmented/", synthetic_fraction=0.5)
    image, target = data[0]  # [3, H, W] float in [0, 1]; [classes] soft label

The real images are the ImageFolder tree augment read (`real`; None: synthetic only), the
synthetic ones those of OUT/provenance.jsonl (augment's ledger: each line one finished
image). `synthetic_fraction` is the share of synthetic samples in one pass over the
dataset (DA-Fusion samples synthetic images with probability 0.5; Diff-Mix uses 0.1): the
smaller set is repeated to reach it. None keeps every image once. Targets are the soft
labels of `metadata.jsonl` (the mix's weights summed per class) over the classes of
OUT/augment.json, one-hot for real images.

torch is imported when the class is used, never by `import latentmix.client`: the client
package stays torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from latentmix.client.dataset_exports import METADATA_FILE
from latentmix.client.dataset_sources import IMAGE_SUFFIXES

SETTINGS_FILE = "augment.json"


def _torch_dataset() -> type:
    try:
        from torch.utils.data import Dataset
    except ImportError:
        raise ImportError("latentmix.client.datasets needs torch: pip install torch") from None
    return Dataset


def __getattr__(name: str) -> Any:
    """AugmentedDataset is built on first use, so importing this module needs no torch."""
    if name == "AugmentedDataset":
        globals()[name] = cls = _define(_torch_dataset())
        return cls
    raise AttributeError(name)


def read_synthetic(out: Path) -> tuple[list[str], list[tuple[Path, list[float]]]]:
    """The classes of an augment output and its images with their soft labels."""
    settings = json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8"))
    metadata = out / METADATA_FILE
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata} is missing: run latentmix augment to the end")
    rows = [json.loads(line) for line in metadata.read_text(encoding="utf-8").splitlines()]
    return settings["classes"], [(out / row["file_name"], row["soft_label"]) for row in rows]


def read_real(real: Path, classes: list[str]) -> list[tuple[Path, list[float]]]:
    """The ImageFolder tree's images of `classes`, one-hot."""
    items = []
    for index, name in enumerate(classes):
        one_hot = [float(i == index) for i in range(len(classes))]
        folder = real / name
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        items += [(path, one_hot) for path in paths]
    return items


def mixed_at(real: list[Any], synthetic: list[Any], synthetic_fraction: float | None) -> list[Any]:
    """Real and synthetic items with synthetic making up `synthetic_fraction` of the list:
    the smaller side repeated (cyclically) to reach the ratio; None: both as they are."""
    if synthetic_fraction is None or not real or not synthetic:
        return real + synthetic
    if not 0 < synthetic_fraction < 1:
        raise ValueError(f"synthetic_fraction must be in (0, 1), got {synthetic_fraction}")
    wanted_synthetic = round(len(real) * synthetic_fraction / (1 - synthetic_fraction))
    if wanted_synthetic >= len(synthetic):
        return real + _cycled(synthetic, wanted_synthetic)
    wanted_real = round(len(synthetic) * (1 - synthetic_fraction) / synthetic_fraction)
    return _cycled(real, wanted_real) + synthetic


def _cycled(items: list[Any], count: int) -> list[Any]:
    return [items[i % len(items)] for i in range(count)]


def _define(dataset_base: type) -> type:
    import numpy as np
    import torch

    class AugmentedDataset(dataset_base):  # type: ignore[misc, valid-type]
        """(image [3, H, W] in [0, 1] or `transform(PIL image)`, soft label [classes])."""

        def __init__(
            self,
            real: str | Path | None,
            synthetic: str | Path,
            *,
            synthetic_fraction: float | None = None,
            transform: Callable[[Image.Image], Any] | None = None,
        ):
            self.classes, generated = read_synthetic(Path(synthetic))
            originals = read_real(Path(real), self.classes) if real is not None else []
            tagged = mixed_at(
                [(*item, False) for item in originals],
                [(*item, True) for item in generated],
                synthetic_fraction,
            )
            self.items = [(path, label) for path, label, _ in tagged]
            self.is_synthetic = [synthetic for _, _, synthetic in tagged]
            self.transform = transform

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
            path, soft_label = self.items[index]
            with Image.open(path) as image:
                picture = image.convert("RGB")
            if self.transform is not None:
                pixels = self.transform(picture)
            else:
                array = np.asarray(picture, dtype=np.float32) / 255
                pixels = torch.from_numpy(array).permute(2, 0, 1)
            return pixels, torch.tensor(soft_label, dtype=torch.float32)

    return AugmentedDataset
