"""The shapes world as an ImageFolder tree, one folder of drawings per class: the input
`latentmix augment` and `latentmix experiment` take.

    python -m latentmix.worker.engine.shapes.folders OUT red_circle=32 blue_square=32 --seed 1

Class "red_circle" holds the first 32 red circles of the world with that seed (any
background); the model was trained on seed 0, so other seeds are held-out drawings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latentmix.worker.engine.shapes.evaluation import find_samples, to_pil


def write_world_tree(root: Path, classes: dict[str, int], seed: int = 0) -> Path:
    """Write `count` drawings of each "{colour}_{shape}" class under root/<class>/."""
    for name, count in classes.items():
        colour, shape = name.split("_")
        (root / name).mkdir(parents=True, exist_ok=True)
        for index, sample in enumerate(find_samples(shape, colour, count, seed=seed)):
            to_pil(sample).save(root / name / f"{index:03}.png")
    return root


def _class_count(text: str) -> tuple[str, int]:
    name, _, count = text.partition("=")
    if "_" not in name or not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected colour_shape=COUNT, got {text!r}")
    return name, int(count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("classes", type=_class_count, nargs="+", help="e.g. red_circle=32")
    parser.add_argument("--seed", type=int, default=0, help="world seed (0: the training one)")
    args = parser.parse_args(argv)
    write_world_tree(args.out, dict(args.classes), args.seed)


if __name__ == "__main__":
    main()
