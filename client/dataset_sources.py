"""The labelled images `latentmix augment` reads, by class, from the layouts training code keeps:

- an ImageFolder tree: one sub-folder of images per class (no extra dependency);
- a Hugging Face dataset saved with `Dataset.save_to_disk` / `DatasetDict.save_to_disk`
  (read with `datasets.load_from_disk`; a DatasetDict's `--split`);
- parquet files (a file or a folder of them) or an ImageFolder with a `metadata.jsonl` /
  `metadata.csv` holding a label column (read with `datasets.load_dataset`).

The last two need the `datasets` package (`pip install latentmix[formats]`), imported only
when such an input is given: the client stays importable without it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
HF_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")


class SourceError(ValueError):
    """The input cannot be read as labelled images (the message says why)."""


@dataclass(frozen=True)
class Source:
    """One input image: its name in provenance, and its file or its encoded bytes."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    @property
    def image(self) -> Path | bytes:
        """What `LatentMixClient.invert` uploads."""
        return self.path if self.path is not None else self.data  # type: ignore[return-value]

    def size(self) -> int:
        return self.path.stat().st_size if self.path is not None else len(self.data or b"")


@dataclass(frozen=True)
class LabelledImages:
    """The input's classes (sorted) and each class's images (in a stable order), and the
    layout they were read from."""

    classes: dict[str, list[Source]]
    layout: str  # "imagefolder", "hf-saved", "parquet", "imagefolder-metadata"


def read_labelled_images(
    data: Path, *, label_column: str = "label", image_column: str = "image", split: str = "train"
) -> LabelledImages:
    """The classes of `data`, whichever layout it has (module docstring)."""
    if data.is_file() and data.suffix == ".parquet":
        return _from_hf(_load("parquet", [data]), "parquet", label_column, image_column)
    if not data.is_dir():
        raise SourceError(f"{data} is neither a folder nor a .parquet file")
    if any((data / marker).is_file() for marker in HF_SAVED_MARKERS):
        return _from_hf(_load_saved(data, split), "hf-saved", label_column, image_column)
    parquet = sorted(data.glob("*.parquet"))
    if parquet:
        return _from_hf(_load("parquet", parquet), "parquet", label_column, image_column)
    if any((data / name).is_file() for name in METADATA_FILES):
        dataset = _load("imagefolder", data)
        return _from_hf(dataset, "imagefolder-metadata", label_column, image_column)
    return LabelledImages(_image_folder(data), "imagefolder")


def _image_folder(data: Path) -> dict[str, list[Source]]:
    classes = {}
    for folder in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        paths = sorted(
            path
            for path in folder.rglob("*")
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        )
        classes[folder.name] = [Source(p.relative_to(data).as_posix(), path=p) for p in paths]
    return classes


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise SourceError(
            "reading Hugging Face datasets and parquet needs the `datasets` package: "
            "pip install 'latentmix[formats]'"
        ) from None
    return datasets


def _load_saved(data: Path, split: str) -> Any:
    datasets = _datasets()
    loaded = datasets.load_from_disk(str(data))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise SourceError(f"{data} has splits {sorted(loaded)}, not {split!r}: use --split")
        loaded = loaded[split]
    return loaded


def _load(builder: str, files: Path | list[Path]) -> Any:
    datasets = _datasets()
    if isinstance(files, Path):
        return datasets.load_dataset(builder, data_dir=str(files), split="train")
    return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")


def _from_hf(dataset: Any, layout: str, label_column: str, image_column: str) -> LabelledImages:
    """Group a `datasets.Dataset`'s images by label, keeping each image's encoded bytes."""
    datasets = _datasets()
    for column, option in ((label_column, "--label-column"), (image_column, "--image-column")):
        if column not in dataset.column_names:
            raise SourceError(
                f"the dataset has no column {column!r} (columns: "
                f"{', '.join(dataset.column_names)}): name it with {option}"
            )
    feature = dataset.features[label_column]
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    if isinstance(dataset.features[image_column], datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    classes: dict[str, list[Source]] = {}
    for index, row in enumerate(dataset.select_columns([label_column, image_column])):
        label = names[row[label_column]] if names else str(row[label_column])
        classes.setdefault(label, []).append(
            Source(f"{layout}[{index}]", data=_encoded(row[image_column], index))
        )
    return LabelledImages(dict(sorted(classes.items())), layout)


def _encoded(value: Any, index: int) -> bytes:
    """An image cell as encoded bytes: {bytes, path} (an undecoded Image feature), raw bytes,
    or a PIL image."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return Path(value["path"]).read_bytes()
    if isinstance(value, bytes):
        return value
    if hasattr(value, "save"):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    raise SourceError(f"row {index}: the image column holds {type(value).__name__}, not an image")
