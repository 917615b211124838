"""The layouts `latentmix augment` writes beside its ImageFolder tree, for training code to read:

- `OUT/metadata.jsonl`: the tree as a Hugging Face `imagefolder` dataset,
  `datasets.load_dataset("imagefolder", data_dir=OUT)`: per image its `file_name`, `label`
  (the class), `soft_label` (one weight per class of `classes` in OUT/augment.json: the
  mix's normalised weights summed per class; one-hot within a class) and its provenance
  (`inputs`, `weights`, `method`, `seed`, `model`, `steps`, `guidance_scale`, `prompt`).
- `OUT/webdataset/shard-NNNNNN.tar` (with `--shard-size`): WebDataset shards of at most that
  many samples, each `<image id>.png`, `<image id>.json` (the metadata row) and
  `<image id>.cls` (the class's index).

Both are rewritten from OUT/provenance.jsonl (the ledger) at the end of every run, so they
always list exactly the images the ledger holds. Standard library only.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from latentmix.client.api import write_atomic

METADATA_FILE = "metadata.jsonl"
SHARDS_FOLDER = "webdataset"
SHARD_NAME = "shard-{index:06d}.tar"


def metadata_row(record: dict[str, Any], classes: Sequence[str], model: str | None) -> dict:
    """The `metadata.jsonl` row of one ledger record."""
    soft = record.get("soft_label") or [float(name == record["class"]) for name in classes]
    return {
        "file_name": record["file"],
        "label": record["class"],
        "soft_label": soft,
        "inputs": [item.get("source") or item["latent"] for item in record["inputs"]],
        "weights": record["weights"],
        "method": record["method"],
        "seed": record["seed"],
        "model": record.get("model") or model,
        "steps": record["steps"],
        "guidance_scale": record["guidance_scale"],
        "prompt": record["prompt"],
        "image_id": record["image"],
    }


def write_metadata(out: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """OUT/metadata.jsonl, replaced atomically."""
    path = out / METADATA_FILE
    text = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
    write_atomic(path, text.encode())
    return path


def write_shards(
    out: Path, rows: Sequence[dict[str, Any]], classes: Sequence[str], shard_size: int
) -> list[Path]:
    """OUT/webdataset/shard-*.tar, `shard_size` samples each; shards left from a larger set
    are removed."""
    folder = out / SHARDS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, start in enumerate(range(0, len(rows), shard_size)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for row in rows[start : start + shard_size]:
                key = row["image_id"]
                _add(tar, f"{key}.png", (out / row["file_name"]).read_bytes())
                _add(tar, f"{key}.json", json.dumps(row).encode())
                _add(tar, f"{key}.cls", str(classes.index(row["label"])).encode())
        path = folder / SHARD_NAME.format(index=index)
        write_atomic(path, buffer.getvalue())
        written.append(path)
    for stale in set(folder.glob("shard-*.tar")) - set(written):
        stale.unlink()
    return written


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # the same images make the same shard
    tar.addfile(info, io.BytesIO(data))
