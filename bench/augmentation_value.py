"""Does LatentMix augmentation help a classifier? Few-shot classification on the `shapes` world.

    nice -n 10 .venv/bin/python bench/augmentation_value.py                 # 1, 4 and 16 shots
    .venv/bin/python bench/augmentation_value.py --replot      # table and plot from the JSON

    nice -n 10 .venv/bin/python bench/augmentation_value.py --shots 16 --add   # into the JSON
    .venv/bin/python bench/augmentation_value.py --shots 4 --seeds 1 --steps 4   # a smoke run

For each number of real drawings per class (`--shots`) and each seed: draw that many real
drawings per class (world seed 1000 + seed), train a small CNN from scratch on them alone,
and on them plus `--multiplier` x as many LatentMix images per class, for each augmentation
in AUGMENTATIONS; score every classifier on the same held-out drawings (world seed 99).

The synthetic images are made with the engine in-process as `latentmix augment` makes them
through the service, with the `shapes` card's defaults: each class's real drawings DDIM-
inverted with "a {colour} {shape}" at guidance 1, mixed, generated at guidance 1 (the
only override: `--steps`, few for CPU time). Weights: `few` (Dirichlet over a random 2-4 of
the class's drawings; slerp: a random pair, t uniform) and `all` (Dirichlet(1) over all of
them: the old default, a large-K mix). With one drawing per class a mix is that drawing's
latent, so its images are its regeneration (the same image `multiplier` times).

Writes bench/results/augmentation-value-shapes.json, docs/augmentation-value.png, and
prints the Markdown table of docs/augmentation.md. A toy world and a generator trained on
it: it says whether the pipeline adds information a classifier can use, not what it does on
natural images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from latentmix.service.core.weight_sampling import sample_weights
from latentmix.worker.engine.diffusion import InversionSettings, generate, invert
from latentmix.worker.engine.mixing import mix
from latentmix.worker.engine.models import LoadedModel, load_model
from latentmix.worker.engine.shapes import evaluation as ev
from latentmix.worker.engine.shapes import world
from latentmix.worker.engine.shapes.model import SHAPES_MODEL_NAME

ROOT = Path(__file__).resolve().parents[1]
CLASSES = (("circle", "red"), ("square", "red"), ("circle", "blue"), ("square", "blue"))
# (mix method, weights): `few` is augment's default sampling, `all` the large-K mix.
AUGMENTATIONS = (
    ("lerp", "few"),
    ("slerp", "few"),
    ("fix/0", "few"),
    ("nin/chm", "few"),
    ("fix/chm", "few"),
    ("lerp", "all"),
    ("fix/0", "all"),
    ("nin/chm", "all"),
    ("fix/chm", "all"),
)
GUIDANCE = 1.0  # the shapes card's inversion and generation guidance
TEST_WORLD_SEED = 99
TRAIN_WORLD_SEED = 1000
CLASSIFIER_SIDE = 32  # the classifier sees 32 px: fast on CPU, enough for shape and colour


# --- data --------------------------------------------------------------------------------------


def drawings(per_class: int, world_seed: int) -> tuple[list[Image.Image], list[int]]:
    images, labels = [], []
    for label, (shape, colour) in enumerate(CLASSES):
        for sample in ev.find_samples(shape, colour, per_class, world_seed):
            images.append(ev.to_pil(sample))
            labels.append(label)
    return images, labels


def weight_rows(n: int, count: int, weights: str, method: str, seed: int) -> list[list[float]]:
    """`count` rows over a class's `n` latents: few (2-4; slerp: 2) or all (Dirichlet(1))."""
    if n == 1:
        return [[1.0]] * count
    if weights == "all":
        return sample_weights(n, count, "dirichlet", seed)
    return sample_weights(n, count, "few", seed, subset_size=2 if method == "slerp" else None)


def mixed(latents: torch.Tensor, rows: list[list[float]], method: str) -> torch.Tensor:
    """Each row's mix; slerp takes the two inputs a row weights."""
    if method != "slerp" or len(latents) == 1:
        return mix(latents, rows, "nin/chm" if len(latents) == 1 else method)
    out = []
    for row in rows:
        pair = [i for i, w in enumerate(row) if w > 0]
        out.append(mix(latents[pair], [row[i] for i in pair], "slerp"))
    return torch.stack(out)


def synthesize(
    model: LoadedModel,
    latents: list[torch.Tensor],
    method: str,
    weights: str,
    per_class: int,
    steps: int,
    seed: int,
) -> tuple[list[Image.Image], list[int]]:
    """`per_class` images per class from its inverted drawings."""
    batch, prompts, labels = [], [], []
    for label, ((shape, colour), class_latents) in enumerate(zip(CLASSES, latents, strict=True)):
        n = len(class_latents)
        count = 1 if n == 1 else per_class  # one drawing: every mix is its regeneration
        rows = weight_rows(n, count, weights, method, seed * 100 + label)
        batch.append(mixed(class_latents, rows, method))
        prompts += [world.caption(shape, colour)] * count
        labels += [label] * count
    images = generate(model, torch.cat(batch), prompts, steps=steps, guidance_scale=GUIDANCE)
    if all(len(c) == 1 for c in latents):
        images = [image for image in images for _ in range(per_class)]
        labels = [label for label in labels for _ in range(per_class)]
    return images, labels


# --- the classifier ----------------------------------------------------------------------------


def small_cnn(classes: int) -> nn.Module:
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(3, 8), *block(8, 16), *block(16, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, classes),
    )  # fmt: skip


def pixels(images: list[Image.Image]) -> torch.Tensor:
    small = [im.convert("RGB").resize((CLASSIFIER_SIDE,) * 2, Image.BILINEAR) for im in images]
    return ev.to_tensor(small) * 2 - 1


def train_and_score(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    seed: int,
    iterations: int,
) -> float:
    """Held-out accuracy of a small CNN trained from scratch (Adam, batch 32, random flips)."""
    torch.manual_seed(seed)
    x, y = train
    net = small_cnn(len(CLASSES))
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(iterations):
        index = torch.randint(len(x), (32,), generator=generator)
        batch = x[index]
        flip = torch.rand(len(batch), generator=generator) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
        loss = nn.functional.cross_entropy(net(batch), y[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()
    with torch.no_grad():
        predicted = net(test[0]).argmax(dim=1)
    return float((predicted == test[1]).float().mean())


# --- the run -----------------------------------------------------------------------------------


def run(args: argparse.Namespace, save) -> dict[str, Any]:
    """Every (shots, seed, training set)'s accuracy; `save(found)` after each draw, so a run
    cut short keeps what it measured."""
    model = load_model(SHAPES_MODEL_NAME, device="cpu")
    test_images, test_labels = drawings(args.test_per_class, TEST_WORLD_SEED)
    test = (pixels(test_images), torch.tensor(test_labels))
    rows: list[dict[str, Any]] = []
    for shots in args.shots:
        for seed in range(args.seeds):
            for name, train, made_s in draw(model, shots, seed, args):
                accuracy = train_and_score(train, test, seed, args.iterations)
                rows.append(
                    {
                        "shots": shots,
                        "seed": seed,
                        "train": name,
                        "accuracy": accuracy,
                        "seconds_per_image": made_s,
                    }
                )
                print(f"shots {shots} seed {seed} {name}: {accuracy:.3f}", flush=True)
            save(rows)
    return rows


def draw(model: LoadedModel, shots: int, seed: int, args: argparse.Namespace):
    """The training sets of one draw of `shots` real drawings per class: (name, (x, y),
    seconds per synthetic image made, inversion included; None for real only)."""
    real_images, real_labels = drawings(shots, TRAIN_WORLD_SEED + seed)
    real = (pixels(real_images), torch.tensor(real_labels))
    yield "real only", real, None
    started = time.perf_counter()
    latents = invert(
        model,
        real_images,
        [world.caption(*CLASSES[label]) for label in real_labels],
        InversionSettings(steps=args.steps, guidance_scale=GUIDANCE),
    ).latent
    inversion_s = time.perf_counter() - started
    by_class = [
        latents[[i for i, y in enumerate(real_labels) if y == c]] for c in range(len(CLASSES))
    ]
    for method, weights in AUGMENTATIONS:
        started = time.perf_counter()
        images, labels = synthesize(
            model, by_class, method, weights, args.multiplier * shots, args.steps, seed
        )
        made = len(set(map(id, images)))
        made_s = (inversion_s + time.perf_counter() - started) / made
        synthetic = (pixels(images), torch.tensor(labels))
        train = tuple(torch.cat(pair) for pair in zip(real, synthetic, strict=True))
        yield f"{method} {weights}", train, made_s


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of each (shots, train set), and the gain."""
    table = []
    for shots in sorted({r["shots"] for r in rows}):
        base = np.mean(
            [r["accuracy"] for r in rows if r["shots"] == shots and r["train"] == "real only"]
        )
        for name in dict.fromkeys(r["train"] for r in rows):
            values = [r["accuracy"] for r in rows if r["shots"] == shots and r["train"] == name]
            table.append(
                {
                    "shots": shots,
                    "train": name,
                    "mean": float(np.mean(values)),
                    "std": float(np.std(values)),
                    "gain": float(np.mean(values) - base),
                    "seconds_per_image": _mean_seconds(rows, shots, name),
                }
            )
    return table


def _mean_seconds(rows: list[dict[str, Any]], shots: int, name: str) -> float | None:
    """Wall seconds per synthetic image (inversion included) over the seeds; None for real
    only, or rows measured before the runs kept it."""
    values = [
        r["seconds_per_image"]
        for r in rows
        if r["shots"] == shots and r["train"] == name and r.get("seconds_per_image") is not None
    ]
    return float(np.mean(values)) if values else None


def markdown(table: list[dict[str, Any]]) -> str:
    """The table of docs/augmentation.md; the time column is that of the most shots."""
    shots = sorted({r["shots"] for r in table})
    names = list(dict.fromkeys(r["train"] for r in table))
    cell = {(r["shots"], r["train"]): r for r in table}
    lines = [
        "| train set | "
        + " | ".join(f"{s} shot{'s' * (s > 1)}" for s in shots)
        + f" | s / image ({shots[-1]} shots) |",
        "|---" * (len(shots) + 2) + "|",
    ]
    for name in names:
        parts = []
        for s in shots:
            r = cell[(s, name)]
            gain = "" if name == "real only" else f" ({r['gain'] * 100:+.1f})"
            parts.append(f"{r['mean'] * 100:.1f} ± {r['std'] * 100:.1f}{gain}")
        seconds = cell[(shots[-1], name)].get("seconds_per_image")
        time_cell = "-" if seconds is None else f"{seconds:.3f}"
        lines.append(f"| {name} | " + " | ".join(parts) + f" | {time_cell} |")
    return "\n".join(lines)


def plot(table: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted({r["shots"] for r in table})
    names = list(dict.fromkeys(r["train"] for r in table))
    figure, axis = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        rows = [next(r for r in table if r["shots"] == s and r["train"] == name) for s in shots]
        positions = np.arange(len(shots)) + (i - len(names) / 2 + 0.5) * width
        axis.bar(
            positions,
            [r["mean"] * 100 for r in rows],
            width,
            yerr=[r["std"] * 100 for r in rows],
            label=name,
            color="black" if name == "real only" else None,
        )
    axis.set_xticks(np.arange(len(shots)), [f"{s} real / class" for s in shots])
    axis.set_ylabel("held-out accuracy (%)")
    axis.set_title("shapes world, 4 classes: small CNN from scratch, real vs real + 5x LatentMix")
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--steps", type=int, default=4, help="DDIM steps of inversion and generation"
    )
    parser.add_argument("--multiplier", type=int, default=5, help="synthetic images per real one")
    parser.add_argument("--iterations", type=int, default=100, help="classifier training steps")
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "bench/results/augmentation-value-shapes.json"
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "docs/augmentation-value.png")
    parser.add_argument(
        "--replot",
        action="store_true",
        help="only redraw the plot and print the table from the saved --json",
    )
    parser.add_argument(
        "--add",
        action="store_true",
        help="keep the saved --json's rows of other shots (a run of the missing shots)",
    )
    args = parser.parse_args()
    if args.replot:
        found = json.loads(args.json.read_text())
        table = summary(found["rows"])
        plot(table, args.plot)
        print(markdown(table))
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    kept = _kept_rows(args)
    started = time.perf_counter()
    rows = run(args, lambda partial: save(args, kept + partial, started))
    save(args, kept + rows, started)
    table = summary(kept + rows)
    plot(table, args.plot)
    print(markdown(table))


def _kept_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """With --add, the saved rows of the shots this run does not measure."""
    if not args.add or not args.json.exists():
        return []
    rows = json.loads(args.json.read_text())["rows"]
    return [r for r in rows if r["shots"] not in args.shots]


def save(args: argparse.Namespace, rows: list[dict[str, Any]], started: float) -> None:
    table = summary(rows)
    result = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "classes": [world.caption(s, c) for s, c in CLASSES],
        "guidance": GUIDANCE,
        "machine": f"{platform.machine()} {platform.processor()}, torch threads "
        f"{torch.get_num_threads()}",
        "wall_s": time.perf_counter() - started,
        "table": table,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
