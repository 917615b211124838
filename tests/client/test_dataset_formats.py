"""The dataset layouts `latentmix augment` reads and writes, read back with their own readers
(`datasets.load_from_disk` / `load_dataset`, `webdataset`); no service needed."""

import io
import json
from pathlib import Path

import datasets
import pytest
import webdataset
from PIL import Image

from latentmix.client.dataset_exports import metadata_row, write_metadata, write_shards
from latentmix.client.dataset_sources import SourceError, read_labelled_images

CLASSES = ["cat", "red_fox"]


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 10, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def labelled_dataset() -> datasets.Dataset:
    """Five images, labels as a ClassLabel: 3 cats, 2 foxes."""
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}
    )
    rows = {"image": [{"bytes": png(i), "path": None} for i in range(5)], "label": [0, 1, 0, 1, 0]}
    return datasets.Dataset.from_dict(rows, features=features)


def pixels_by_class(found) -> dict[str, list[bytes]]:
    return {
        name: [Image.open(io.BytesIO(s.data)).getpixel((0, 0)) for s in sources]
        for name, sources in found.classes.items()
    }


EXPECTED = {
    "cat": [(0, 10, 200), (2, 10, 200), (4, 10, 200)],
    "red_fox": [(1, 10, 200), (3, 10, 200)],
}


def test_a_dataset_saved_to_disk_is_read_by_class_label(tmp_path):
    labelled_dataset().save_to_disk(tmp_path / "saved")
    datasets.DatasetDict({"train": labelled_dataset()}).save_to_disk(tmp_path / "dict")

    assert pixels_by_class(read_labelled_images(tmp_path / "saved")) == EXPECTED
    assert pixels_by_class(read_labelled_images(tmp_path / "dict")) == EXPECTED
    with pytest.raises(SourceError, match="splits \\['train'\\], not 'test'"):
        read_labelled_images(tmp_path / "dict", split="test")


def test_parquet_with_a_string_label_column_is_read(tmp_path):
    dataset = labelled_dataset()
    names = [CLASSES[i] for i in dataset["label"]]
    dataset = dataset.remove_columns("label").add_column("species", names)
    dataset.to_parquet(str(tmp_path / "train.parquet"))

    found = read_labelled_images(tmp_path / "train.parquet", label_column="species")

    assert found.layout == "parquet" and pixels_by_class(found) == EXPECTED
    with pytest.raises(SourceError, match=r"no column 'label'.*--label-column"):
        read_labelled_images(tmp_path / "train.parquet")


def test_an_image_folder_with_a_metadata_label_column_is_read(tmp_path):
    lines = []
    for index in range(5):
        (tmp_path / f"{index}.png").write_bytes(png(index))
        lines.append(json.dumps({"file_name": f"{index}.png", "label": CLASSES[index % 2]}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")

    found = read_labelled_images(tmp_path)

    assert found.layout == "imagefolder-metadata" and pixels_by_class(found) == EXPECTED


def test_a_plain_image_folder_tree_is_read_by_folder(tmp_path):
    for index in range(5):
        folder = tmp_path / CLASSES[index % 2]
        folder.mkdir(exist_ok=True)
        (folder / f"{index}.png").write_bytes(png(index))

    found = read_labelled_images(tmp_path)

    assert found.layout == "imagefolder"
    assert {n: [s.name for s in v] for n, v in found.classes.items()} == {
        "cat": ["cat/0.png", "cat/2.png", "cat/4.png"],
        "red_fox": ["red_fox/1.png", "red_fox/3.png"],
    }


def ledger_records(out: Path) -> list[dict]:
    """What augment's ledger holds for five written images; the last is a cross-class mix."""
    records = []
    for index in range(5):
        name = CLASSES[index % 2]
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / f"im{index}.png").write_bytes(png(10 * index))
        records.append(
            {
                "class": name,
                "file": f"{name}/im{index}.png",
                "image": f"im{index}",
                "inputs": [{"latent": "l1", "source": "cat/0.png"}, {"latent": "l2"}],
                "weights": [0.25, 0.75],
                "method": "nin/chm",
                "seed": index,
                "steps": 4,
                "guidance_scale": 1.0,
                "prompt": f"a {name}",
            }
        )
    records[-1]["soft_label"] = [0.25, 0.75]
    return records


def test_the_metadata_loads_as_an_imagefolder_dataset_with_provenance(tmp_path):
    rows = [metadata_row(r, CLASSES, "shapes") for r in ledger_records(tmp_path)]
    write_metadata(tmp_path, rows)
    write_shards(tmp_path, rows, CLASSES, 2)  # the shards must not show up as images

    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path), split="train")

    assert len(loaded) == 5
    by_id = {row["image_id"]: row for row in loaded}
    first, last = by_id["im0"], by_id["im4"]
    assert first["image"].getpixel((0, 0)) == (0, 10, 200)
    assert last["image"].getpixel((0, 0)) == (40, 10, 200)
    assert (first["label"], first["soft_label"]) == ("cat", [1.0, 0.0])
    assert (last["label"], last["soft_label"]) == ("cat", [0.25, 0.75])
    assert first["inputs"] == ["cat/0.png", "l2"] and first["weights"] == [0.25, 0.75]
    assert (first["method"], first["seed"], first["model"], first["steps"]) == (
        "nin/chm",
        0,
        "shapes",
        4,
    )


def test_webdataset_shards_hold_every_image_with_its_metadata_and_class(tmp_path):
    rows = [metadata_row(r, CLASSES, "shapes") for r in ledger_records(tmp_path)]
    (tmp_path / "webdataset").mkdir()
    (tmp_path / "webdataset" / "shard-000009.tar").write_bytes(b"")  # from a larger set

    shards = write_shards(tmp_path, rows, CLASSES, 2)

    assert [p.name for p in shards] == [f"shard-00000{i}.tar" for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "webdataset").iterdir()) == [p.name for p in shards]
    urls = [str(p) for p in shards]
    samples = list(webdataset.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == [f"im{i}" for i in range(5)]
    for index, sample in enumerate(samples):
        assert sample["png"].getpixel((0, 0)) == (10 * index, 10, 200)
        assert sample["json"]["label"] == CLASSES[index % 2]
        assert int(sample["cls"]) == index % 2
