"""`latentmix augment DATA --per-class N --out OUT`: synthetic training images per class.

DATA is an ImageFolder tree (one folder of images per class), a Hugging Face dataset saved
with `save_to_disk`, or parquet / ImageFolder-with-metadata files with a label column
(client/dataset_sources.py). For each class the command inverts the class's images once (the
service caches latents by content, so reruns skip this), then samples mixes of them in
batches (one mix job per batch, `--batch` images each) with the class name in the prompt.

What is not given on the command line comes from the model's card (GET /models): the prompt
template, the guidance for inverting and for generating, the inversion method that keeps
mixes on-class; the weights default to the `few` scheme (Dirichlet over a random 2-4 of the
class's images, whatever its size: the paper's degeneracy grows with the number of inputs
per mix). The command prints what it chose. It writes

    OUT/<class>/<image id>.png     one file per image, written atomically
    OUT/provenance.jsonl           one JSON line per image, appended once its file is complete
    OUT/augment.json               the settings the set was made with
    OUT/metadata.jsonl             the set as a Hugging Face `imagefolder` dataset
    OUT/webdataset/*.tar           with --shard-size: WebDataset shards (client/dataset_exports.py)

Batch `i` of class `c` samples with a seed derived from (`--seed`, `c`, `i`), so the same
command makes the same images. Interrupt it (Ctrl-C) and run it again: batches whose images
are all in provenance.jsonl are skipped, and a batch cut short is submitted again (the
service renders only what it has not stored yet) and only its missing images are written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm.auto import tqdm

from latentmix.client.api import (
    DEFAULT_METHOD,
    DEFAULT_SCHEME,
    SCHEMES,
    LatentMixClient,
    add_service_arguments,
    check_file,
    image_pixels,
)
from latentmix.client.dataset_exports import metadata_row, write_metadata, write_shards
from latentmix.client.dataset_sources import (
    Source,
    SourceError,
    read_labelled_images,
)
from latentmix.client.errors import JobFailed, LatentMixError, LimitExceeded, ProblemError
from latentmix.client.models import ImageResult, Job, Latent, Limits

PROVENANCE_FILE = "provenance.jsonl"
SETTINGS_FILE = "augment.json"
LOCK_FILE = ".augment.lock"
DEFAULT_PROMPT = "a photo of a {class}"  # a card without a prompt template: SD's (method.md)
FEW_MAX_INPUTS = 4  # the service's default k of the `few` scheme
DEFAULT_BATCH = 25
IN_FLIGHT = 3  # mix jobs submitted and not yet downloaded: keeps every worker busy

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(LatentMixError):
    """The command cannot run as asked (bad tree, settings that contradict OUT)."""


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `augment` command to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "augment",
        help="make synthetic images per class from an ImageFolder tree",
        description="Invert each class's images once, sample latent mixes per class with the "
        "class name in the prompt, and write the images in the same layout plus "
        "provenance.jsonl. Rerunning the same command resumes.",
    )
    parser.add_argument(
        "data",
        type=Path,
        help="an ImageFolder tree (one sub-folder of images per class), a Hugging Face "
        "dataset saved with save_to_disk, or parquet files with image and label columns",
    )
    parser.add_argument(
        "--label-column", default="label", help="datasets: the label column (default %(default)s)"
    )
    parser.add_argument(
        "--image-column", default="image", help="datasets: the image column (default %(default)s)"
    )
    parser.add_argument(
        "--split", default="train", help="a saved DatasetDict's split (default %(default)s)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--per-class", type=_positive, required=True, help="synthetic images per class"
    )
    parser.add_argument(
        "--method", default=DEFAULT_METHOD, help="mixing method (default %(default)s)"
    )
    parser.add_argument(
        "--scheme",
        choices=SCHEMES,
        default=DEFAULT_SCHEME,
        help="how mix weights are drawn: few: Dirichlet(alpha) over a random 2 to k of a "
        "class's images (k default 4); dirichlet: Dirichlet(alpha) over all of them (near the "
        "class centroid for a large class: degenerate); subset: the centroid of a random "
        "k-subset (large k: the paper's centroids) (default %(default)s)",
    )
    parser.add_argument(
        "--alpha", type=float, default=1.0, help="Dirichlet concentration (default %(default)s)"
    )
    parser.add_argument(
        "--k", type=_positive, default=None, help="few: most images per mix; subset: images per mix"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (default %(default)s)")
    parser.add_argument(
        "--prompt",
        default=None,
        help="prompt template; {class} is the class name, underscores as spaces (default: the "
        f"model card's prompt template, else {DEFAULT_PROMPT!r})",
    )
    parser.add_argument("--steps", type=_positive, default=None, help="generation steps")
    parser.add_argument("--inversion-steps", type=_positive, default=None, help="inversion steps")
    parser.add_argument(
        "--inversion",
        default=None,
        help="inversion method: ddim, fixed-point, edict, bdia, negative-prompt, null-text "
        "(default: the model card's method for mixes, else the model's default)",
    )
    parser.add_argument(
        "--inversion-option",
        action="append",
        type=_option,
        default=None,
        metavar="NAME=VALUE",
        help="an option of the method, e.g. edict_mix=0.9 (repeatable)",
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="CFG scale of generation, and of inversion unless --inversion-guidance-scale "
        "(default: the model card's guidance for each)",
    )
    parser.add_argument(
        "--inversion-guidance-scale",
        type=float,
        default=None,
        help="CFG scale of inversion (default: --guidance-scale, else the model card's)",
    )
    parser.add_argument("--size", type=_positive, default=None, help="image side in pixels")
    parser.add_argument("--model", default=None, help="model (default: the service's)")
    parser.add_argument(
        "--batch", type=_positive, default=DEFAULT_BATCH, help="mixes per job (default %(default)s)"
    )
    add_service_arguments(parser)
    parser.add_argument(
        "--cross-class",
        action="store_true",
        help="mix each class's images with another class's (the others in turn): at least "
        "half of each mix's weight on its own class; soft labels from the weights",
    )
    parser.add_argument(
        "--filter",
        action="store_true",
        help="check each image with the model's judge (its card's, e.g. the shapes "
        "classifier) and drop, and count, those it assigns to another class",
    )
    parser.add_argument(
        "--shard-size",
        type=_positive,
        default=None,
        help="also write WebDataset shards of this many images (OUT/webdataset/)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m latentmix.client.augment ...`: the command without the `latentmix` front."""
    parser = argparse.ArgumentParser(prog="latentmix")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["augment", *(sys.argv[1:] if argv is None else argv)]))


def run(args: argparse.Namespace) -> int:
    """Run `augment`; returns the exit status (0 done, 1 failed, 2 usage, 130 interrupted)."""
    try:
        classes = find_classes(
            args.data,
            args.out,
            label_column=args.label_column,
            image_column=args.image_column,
            split=args.split,
        )
        plan = Plan.of(args, classes)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    with LatentMixClient(args.url, args.api_key) as lm:
        augmenter = Augmenter(lm, plan, progress=not args.no_progress)
        try:
            with exclusive(plan.out):
                augmenter.plan = plan = plan.resolved(model_card(lm, plan.settings["model"]))
                print(f"latentmix augment: {plan.describe()}", file=sys.stderr)
                return augmenter.run()
        except KeyboardInterrupt:
            augmenter.cancel()
            print(
                f"\nlatentmix augment: interrupted after {augmenter.written} new images; "
                "run the same command again to resume",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        except (UsageError, LimitExceeded) as exc:
            return _fail(str(exc), EXIT_USAGE)
        except (ProblemError, JobFailed) as exc:
            augmenter.cancel()
            return _fail(str(exc), EXIT_FAILED)
        except (httpx.TransportError, OSError) as exc:
            augmenter.cancel()
            return _fail(f"{exc} (is the service running at {args.url}?)", EXIT_FAILED)


# --------------------------------------------------------------------------------------------
# The tree and the plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageClass:
    name: str
    sources: list[Source]  # images in a stable order (ImageFolder: sorted paths)
    prompt: str = ""  # set by Plan.resolved, from the prompt template


def find_classes(
    data: Path,
    out: Path,
    template: str | None = None,
    *,
    label_column: str = "label",
    image_column: str = "image",
    split: str = "train",
) -> list[ImageClass]:
    """The input's classes, sorted, each with its images (client/dataset_sources.py) and,
    with a prompt `template`, its prompt."""
    if out.resolve().is_relative_to(data.resolve()):
        raise UsageError(f"--out {out} must not be inside the data folder {data}")
    try:
        found = read_labelled_images(
            data, label_column=label_column, image_column=image_column, split=split
        )
    except SourceError as exc:
        raise UsageError(str(exc)) from None
    classes = []
    for name, sources in found.classes.items():
        if not sources:
            print(f"latentmix augment: skipping class {name!r}: no images", file=sys.stderr)
            continue
        prompt = class_prompt(template, name) if template is not None else ""
        classes.append(ImageClass(name, sources, prompt))
    if not classes:
        raise UsageError(f"{data} has no classes with images (.png, .jpg, .jpeg, .webp)")
    return classes


def class_prompt(template: str, class_name: str) -> str:
    return template.replace("{class}", class_name.replace("_", " "))


def model_card(lm: LatentMixClient, model: str | None) -> dict[str, Any]:
    """The card of `model` (None: the service's default model); {} while no worker has
    described it (the service's defaults then apply)."""
    for info in lm.models():
        if (info.name == model) if model else info.default:
            return info.card or {}
    return {}


@dataclass(frozen=True)
class Batch:
    """One mix job: `count` images of class `cls`, weights drawn with `seed`."""

    cls: ImageClass
    index: int
    count: int
    seed: int


@dataclass(frozen=True)
class Plan:
    data: Path
    out: Path
    per_class: int
    classes: list[ImageClass]
    settings: dict[str, Any]  # what decides the images: recorded in OUT/augment.json
    shard_size: int | None = None  # WebDataset shards: images per shard; None: no shards

    @classmethod
    def of(cls, args: argparse.Namespace, classes: list[ImageClass]) -> Plan:
        if args.scheme == "subset":
            if args.k is None:
                raise UsageError("--scheme subset needs --k (images per subset)")
            for image_class in classes:
                _check_subsets(image_class, args.k, args.per_class)
        elif args.alpha <= 0:
            raise UsageError(f"--alpha must be positive, got {args.alpha}")
        elif args.scheme == "few" and args.k is not None and args.k < 2:
            raise UsageError(f"--scheme few mixes 2 to --k images: --k must be >= 2, got {args.k}")
        for image_class in classes:
            if len(image_class.sources) < 2:
                raise UsageError(f"class {image_class.name!r} has one image: mixing needs two")
        if args.cross_class and (len(classes) < 2 or args.scheme != "few"):
            raise UsageError(
                "--cross-class mixes two classes with 2 to --k inputs per mix: it needs two "
                "classes or more and --scheme few"
            )
        settings = {
            "method": args.method,
            "scheme": args.scheme,
            "alpha": args.alpha if args.scheme != "subset" else None,
            "k": (args.k or FEW_MAX_INPUTS) if args.scheme == "few" else args.k,
            "seed": args.seed,
            "batch": args.batch,
            "prompt": args.prompt,
            "steps": args.steps,
            "inversion_steps": args.inversion_steps,
            "inversion": args.inversion,
            "inversion_options": dict(args.inversion_option) if args.inversion_option else None,
            "guidance_scale": args.guidance_scale,
            "inversion_guidance_scale": args.inversion_guidance_scale,
            "size": args.size,
            "model": args.model,
            "classes": [image_class.name for image_class in classes],
            "filter": args.filter,
            "cross_class": args.cross_class,
        }
        return cls(args.data, args.out, args.per_class, classes, settings, args.shard_size)

    def resolved(self, card: dict[str, Any]) -> Plan:
        """The plan with what the command line left open taken from the model card's
        `augmentation`: the prompt template, each guidance scale, the inversion method. `chosen` in
        the settings names the card's choices (what `describe` prints)."""
        given = self.settings
        defaults = card.get("augmentation") or {}
        generation = given["guidance_scale"]
        inversion_guidance = given["inversion_guidance_scale"]
        picks = {
            "prompt": (given["prompt"], defaults.get("prompt_template")),
            "guidance_scale": (generation, defaults.get("generation_guidance")),
            "inversion_guidance_scale": (
                inversion_guidance if inversion_guidance is not None else generation,
                defaults.get("inversion_guidance"),
            ),
            "inversion": (given["inversion"], defaults.get("mix_inversion")),
        }
        settings = dict(given, model=given["model"] or card.get("model"))
        chosen = []
        for key, (value, from_card) in picks.items():
            if value is None and from_card is not None:
                value = from_card
                chosen.append(key)
            settings[key] = value
        if settings["prompt"] is None:
            settings["prompt"] = DEFAULT_PROMPT
        if settings["filter"]:
            _check_judge(defaults, [c.name for c in self.classes], settings["model"])
        settings["chosen"] = chosen
        classes = [
            ImageClass(c.name, c.sources, class_prompt(settings["prompt"], c.name))
            for c in self.classes
        ]
        return Plan(self.data, self.out, self.per_class, classes, settings, self.shard_size)

    def describe(self) -> str:
        """What the run does, and which of it the model's card chose."""
        s = self.settings
        chosen = set(s.get("chosen", ()))

        def note(key: str, value: Any, default: str = "the service's default") -> str:
            text = default if value is None else f"{value:g}" if isinstance(value, float) else value
            return f"{text} (model card)" if key in chosen else str(text)

        weights = {
            "few": f"Dirichlet({s['alpha']:g}) over a random 2 to {s['k']} of a class's images",
            "dirichlet": f"Dirichlet({s['alpha']:g}) over all of a class's images",
            "subset": f"centroids of random {s['k']}-subsets",
        }[s["scheme"]]
        return (
            f"model {s['model'] or 'the service default'}; "
            f"prompt {note('prompt', repr(s['prompt']))}"
            f"; inversion {note('inversion', s['inversion'])} at guidance "
            f"{note('inversion_guidance_scale', s['inversion_guidance_scale'])}, "
            f"{s['inversion_steps'] or 'default'} steps; generation at guidance "
            f"{note('guidance_scale', s['guidance_scale'])}, {s['steps'] or 'default'} steps; "
            f"weights: {weights}; method {s['method']}"
        )

    def partner(self, batch: Batch) -> str:
        """--cross-class: the class a batch mixes with, the others in turn."""
        others = [c.name for c in self.classes if c.name != batch.cls.name]
        return others[batch.index % len(others)]

    def batches(self, image_class: ImageClass) -> list[Batch]:
        size = self.settings["batch"]
        return [
            Batch(
                image_class,
                index,
                min(size, self.per_class - start),
                batch_seed(self.settings["seed"], image_class.name, index),
            )
            for index, start in enumerate(range(0, self.per_class, size))
        ]


def cross_class_weights(
    ours: int, theirs: int, count: int, seed: int, alpha: float, k: int
) -> list[list[float]]:
    """`count` rows over `ours` + `theirs` latents: 2 to k inputs per mix, at least one of
    each class; the first class's share uniform in [0.5, 1), split over its inputs by
    Dirichlet(alpha), the rest over the other class's inputs likewise (Diff-Mix's
    inter-class mixes, with few inputs as in `few`)."""
    rng = random.Random(seed)  # noqa: S311 (seeded weights, not secrets)
    rows = []
    for _ in range(count):
        n_ours = rng.randint(1, min(ours, k - 1))
        n_theirs = rng.randint(1, min(theirs, k - n_ours))
        share = rng.uniform(0.5, 1.0)
        row = [0.0] * (ours + theirs)
        for offset, pool, n, mass in (
            (0, ours, n_ours, share),
            (ours, theirs, n_theirs, 1 - share),
        ):
            picked = rng.sample(range(pool), n)
            gammas = [rng.gammavariate(alpha, 1.0) for _ in picked]
            for index, gamma in zip(picked, gammas, strict=True):
                row[offset + index] = mass * gamma / sum(gammas)
        rows.append(row)
    return rows


def class_label(class_name: str) -> str:
    """A class's name as a judge's labels spell it ('Green_circle' -> 'green circle')."""
    return " ".join(class_name.replace("_", " ").split()).lower()


def _check_judge(defaults: dict[str, Any], classes: list[str], model: str | None) -> None:
    """--filter needs a judge that knows every class."""
    if not defaults.get("judge"):
        raise UsageError(f"--filter: model {model!r} has no judge on its card")
    labels = set(defaults.get("judge_labels") or ())
    unknown = [name for name in classes if class_label(name) not in labels]
    if unknown:
        raise UsageError(
            f"--filter: the judge ({defaults['judge']}) does not know the classes "
            f"{', '.join(unknown)}; it knows {', '.join(sorted(labels))}"
        )


def batch_seed(seed: int, class_name: str, index: int) -> int:
    """A seed per (base seed, class, batch): stable across runs, machines and Pythons."""
    digest = hashlib.sha256(f"{seed}/{class_name}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _check_subsets(image_class: ImageClass, k: int, per_class: int) -> None:
    n = len(image_class.sources)
    if not 2 <= k <= n:
        raise UsageError(f"--k {k}: class {image_class.name!r} has {n} images; use 2 <= k <= {n}")
    if math.comb(n, k) < per_class:
        raise UsageError(
            f"class {image_class.name!r} has {n} images: its {k}-subsets give only "
            f"{math.comb(n, k)} different mixes, fewer than --per-class {per_class}; "
            "use --scheme dirichlet or another --k"
        )


def check_limits(plan: Plan, classes: list[ImageClass], limits: Limits) -> None:
    """Raise UsageError if a request the plan needs could not pass the service's limits:
    checked before anything is inverted, so a run never fails halfway on a limit. Images
    are split into requests of at most `max_files`; mixes are batched by --batch."""
    settings = plan.settings
    if settings["batch"] > limits.max_mixes_per_request:
        raise UsageError(
            f"--batch {settings['batch']} is over the service's limit of "
            f"{limits.max_mixes_per_request} mixes per request; use a smaller --batch"
        )
    for name, value, limit in (
        ("--steps", settings["steps"], limits.max_steps),
        ("--inversion-steps", settings["inversion_steps"], limits.max_steps),
        ("--guidance-scale", settings["guidance_scale"], limits.max_guidance),
        ("--inversion-guidance-scale", settings["inversion_guidance_scale"], limits.max_guidance),
    ):
        if value is not None and value > limit:
            raise UsageError(f"{name} {value} is over the service's limit of {limit}")
    size = settings["size"]
    if size is not None and not limits.min_image_size <= size <= limits.max_image_size:
        raise UsageError(
            f"--size {size}: the service takes sizes from {limits.min_image_size} to "
            f"{limits.max_image_size} pixels"
        )
    for image_class in classes:
        count = len(image_class.sources)
        if count > limits.max_latents_per_mix:
            raise UsageError(
                f"class {image_class.name!r} has {count} images; the service mixes at most "
                f"{limits.max_latents_per_mix} latents per request (its "
                "LATENTMIX_MAX_LATENTS_PER_MIX): raise that limit, or split the class into "
                "folders of at most that many images"
            )
        if len(image_class.prompt) > limits.max_prompt_chars:
            raise UsageError(
                f"class {image_class.name!r}: its prompt has {len(image_class.prompt)} "
                f"characters; the service's limit is {limits.max_prompt_chars}"
            )
        for source in image_class.sources:
            try:
                check_file(limits, source.name, source.size(), image_pixels(source.image))
            except LimitExceeded as exc:
                raise UsageError(f"class {image_class.name!r}: {exc}") from None


# --------------------------------------------------------------------------------------------
# What is done: provenance.jsonl
# --------------------------------------------------------------------------------------------


class Ledger:
    """OUT/provenance.jsonl: one line per finished image, appended after its file is
    complete, so a line always means a whole image. A torn last line (a kill mid-append)
    is ignored and its image done again."""

    def __init__(self, path: Path | None):
        """Read `path`; None: an empty ledger that cannot be appended to."""
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._ids: dict[str, set[str]] = {}
        self.rejected: dict[str, set[str]] = {}  # class -> images --filter dropped
        self._batches: dict[tuple[str, int], int] = {}
        self._torn = False
        if path is not None and path.exists():
            text = path.read_text(encoding="utf-8")
            self._torn = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and {"class", "image"} <= record.keys():
                    self._note(record)

    def _note(self, record: dict[str, Any]) -> None:
        if record.get("rejected"):  # judged off-class: counts as done, has no file
            self.rejected.setdefault(record["class"], set()).add(record["image"])
        else:
            self.records.append(record)
            self._ids.setdefault(record["class"], set()).add(record["image"])
        key = (record["class"], record.get("batch", -1))
        self._batches[key] = self._batches.get(key, 0) + 1

    def count(self, class_name: str) -> int:
        return len(self._ids.get(class_name, ()))

    def has(self, class_name: str, image_id: str) -> bool:
        return image_id in self._ids.get(class_name, ()) or image_id in self.rejected.get(
            class_name, ()
        )

    def done_in(self, batch: Batch) -> int:
        return self._batches.get((batch.cls.name, batch.index), 0)

    def append(self, record: dict[str, Any]) -> None:
        if self.path is None:
            raise RuntimeError("this ledger has no file")
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self.path.open("a", encoding="utf-8") as out:
            if self._torn:
                out.write("\n")
                self._torn = False
            out.write(line)
            out.flush()
            os.fsync(out.fileno())
        self._note(record)


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold OUT/.augment.lock: two runs writing one OUT would record images twice."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK_FILE).open("a") as lock:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here; don't run two at once
            yield
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another latentmix augment is writing to {out}") from None
        yield


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to add to an OUT made with other settings; record them for a new OUT."""
    path = out / SETTINGS_FILE
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = [
            f"{key} {before.get(key)!r} -> {value!r}"
            for key, value in settings.items()
            if before.get(key) != value
        ]
        if changed:
            raise UsageError(
                f"{out} was made with other settings ({'; '.join(changed)}): use the same "
                "settings to resume, or another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class Augmenter:
    def __init__(self, lm: LatentMixClient, plan: Plan, *, progress: bool = True):
        self.lm = lm
        self.plan = plan
        self.progress = progress
        self.ledger = Ledger(None)
        self.written = 0
        self.in_flight: deque[tuple[Batch, Job]] = deque()
        self.sources: dict[str, dict[str, str]] = {}  # class -> latent id -> source file
        self.warned: set[str] = set()  # classes whose mixes' diagnostics warning was shown

    def run(self) -> int:
        """Make what OUT lacks (the caller holds its lock); returns the exit status."""
        plan = self.plan
        check_settings(plan.out, plan.settings)
        self.ledger = Ledger(plan.out / PROVENANCE_FILE)
        todo = [
            batch
            for image_class in plan.classes
            for batch in plan.batches(image_class)
            if self.ledger.done_in(batch) < batch.count
            and self.ledger.count(image_class.name) < plan.per_class
        ]
        target = plan.per_class * len(plan.classes)
        already = sum(min(self.ledger.count(c.name), plan.per_class) for c in plan.classes)
        if not todo:
            self.export()
            print(f"latentmix augment: all {target} images already in {plan.out}", file=sys.stderr)
            return EXIT_OK
        if not self.lm.ready():
            print(
                f"latentmix augment: {self.lm.base_url} is not ready (no worker yet?): "
                "jobs wait in its queue until one starts",
                file=sys.stderr,
            )
        check_limits(
            plan, list({batch.cls.name: batch.cls for batch in todo}.values()), self.lm.limits()
        )
        latents = self.invert({batch.cls.name: batch.cls for batch in todo}.values())
        with tqdm(
            total=target, initial=already, unit="img", desc="augment", disable=not self.progress
        ) as bar:
            self.mix(todo, latents, bar)
        self.export()
        short = {
            c.name: self.ledger.count(c.name)
            for c in plan.classes
            if self.ledger.count(c.name) < plan.per_class
        }
        if plan.settings["filter"]:
            self.report_filter()
            short = {}  # what the judge dropped is missing by request
        print(
            f"latentmix augment: {self.written} new images, {already + self.written} of "
            f"{target} in {plan.out}",
            file=sys.stderr,
        )
        if short:
            # Only when sampled mixes repeat (few subsets): the same image cannot count twice.
            return _fail(
                "classes short of --per-class (repeated mixes): "
                + ", ".join(f"{name} {count}" for name, count in short.items()),
                EXIT_FAILED,
            )
        return EXIT_OK

    def report_filter(self) -> None:
        rejected = {name: len(ids) for name, ids in self.ledger.rejected.items() if ids}
        total = sum(rejected.values())
        made = total + sum(self.ledger.count(c.name) for c in self.plan.classes)
        detail = ", ".join(f"{name} {count}" for name, count in sorted(rejected.items()))
        print(
            f"latentmix augment: --filter: the judge assigned {total} of {made} images to "
            f"another class and they were dropped{': ' + detail if detail else ''}",
            file=sys.stderr,
        )

    def export(self) -> None:
        """OUT/metadata.jsonl and, with --shard-size, the WebDataset shards, from the ledger
        (client/dataset_exports.py)."""
        settings = self.plan.settings
        rows = [
            metadata_row(record, settings["classes"], settings["model"])
            for record in self.ledger.records
        ]
        write_metadata(self.plan.out, rows)
        if self.plan.shard_size:
            write_shards(self.plan.out, rows, settings["classes"], self.plan.shard_size)

    def invert(self, classes) -> dict[str, list[str]]:
        """Each class's distinct latent ids; all classes submitted before waiting on any."""
        settings = self.plan.settings
        submitted: dict[str, list[Latent]] = {}
        for image_class in classes:
            submitted[image_class.name] = self.lm.invert(
                [source.image for source in image_class.sources],
                prompt=image_class.prompt,
                model=settings["model"],
                inversion_steps=settings["inversion_steps"],
                guidance_scale=settings["inversion_guidance_scale"],
                size=settings["size"],
                inversion=settings["inversion"],
                inversion_options=settings["inversion_options"],
                wait=False,
            )
        pending = [latent for entries in submitted.values() for latent in entries if latent.job]
        if pending:  # else every latent was cached: nothing to show
            total = sum(len(entries) for entries in submitted.values())
            with tqdm(total=total, unit="img", desc="invert", disable=not self.progress) as bar:
                bar.update(total - len(pending))
                for job_id in dict.fromkeys(latent.job for latent in pending):
                    self.lm.wait(job_id)
                    bar.update(sum(1 for latent in pending if latent.job == job_id))
        latent_ids = {}
        for image_class in classes:
            entries = submitted[image_class.name]
            by_id = self.sources.setdefault(image_class.name, {})
            for latent, source in zip(entries, image_class.sources, strict=True):
                by_id.setdefault(latent.id, source.name)
            latent_ids[image_class.name] = list(by_id)
            if len(by_id) < 2:
                raise UsageError(f"class {image_class.name!r} has one distinct image")
        return latent_ids

    def mix(self, todo: list[Batch], latents: dict[str, list[str]], bar) -> None:
        """Submit batches IN_FLIGHT ahead; write each image as soon as it is finished."""
        pending = deque(todo)
        while pending or self.in_flight:
            while pending and len(self.in_flight) < IN_FLIGHT:
                batch = pending.popleft()
                if self.plan.settings["cross_class"]:
                    self.in_flight.append((batch, self.submit_cross_class(batch, latents)))
                    continue
                job = self.lm.sample(
                    latents[batch.cls.name],
                    batch.count,
                    scheme=self.plan.settings["scheme"],
                    alpha=self.plan.settings["alpha"],
                    k=self.plan.settings["k"],
                    seed=batch.seed,
                    method=self.plan.settings["method"],
                    prompt=batch.cls.prompt,
                    guidance_scale=self.plan.settings["guidance_scale"],
                    steps=self.plan.settings["steps"],
                )
                self.in_flight.append((batch, job))
            batch, job = self.in_flight[0]
            bar.set_postfix_str(batch.cls.name, refresh=False)
            if self.plan.settings["filter"]:
                self.store_judged(batch, job, list(self.lm.iter_images(job)), bar)
            else:
                for image in self.lm.iter_images(job):
                    self.warn_once(batch.cls.name, image)
                    if self.store(batch, job, image):
                        bar.update(1)
            self.in_flight.popleft()

    def submit_cross_class(self, batch: Batch, latents: dict[str, list[str]]) -> Job:
        """--cross-class: a mix job over the batch's class and its partner class; the
        batch's class keeps at least half of each mix's weight (it is the image's class)."""
        settings = self.plan.settings
        partner = self.plan.partner(batch)
        ours, theirs = latents[batch.cls.name], latents[partner]
        rows = cross_class_weights(
            len(ours), len(theirs), batch.count, batch.seed, settings["alpha"], settings["k"]
        )
        return self.lm.mix(
            [*ours, *theirs],
            rows,
            method=settings["method"],
            prompt=batch.cls.prompt,
            guidance_scale=settings["guidance_scale"],
            steps=settings["steps"],
        )

    def store_judged(self, batch: Batch, job: Job, images: list[ImageResult], bar) -> None:
        """--filter: the judge reads the batch's new images; those it assigns to another
        class are recorded as rejected (no file), the others stored."""
        name = batch.cls.name
        for image in images:
            self.warn_once(name, image)
        new = [image for image in images if not self.ledger.has(name, image.id)]
        readings = self.lm.judge(new) if new else []
        for image, (label, confidence) in zip(new, readings, strict=True):
            if label == class_label(name):
                if self.store(batch, job, image):
                    bar.update(1)
            elif self.ledger.done_in(batch) < batch.count:
                self.ledger.append(
                    {"class": name, "image": image.id, "batch": batch.index, "rejected": True}
                    | {"judged": label, "confidence": confidence}
                )

    def warn_once(self, class_name: str, image: ImageResult) -> None:
        """The first degeneracy warning of a class's mixes (service/core/diagnostics.py),
        printed once for the class."""
        warnings = (image.diagnostics or {}).get("warnings") or []
        if warnings and class_name not in self.warned:
            self.warned.add(class_name)
            tqdm.write(
                f"latentmix augment: warning: class {class_name!r}: {warnings[0]}", file=sys.stderr
            )

    def store(self, batch: Batch, job: Job, image: ImageResult) -> bool:
        """Write one image and its provenance line, unless it is already there."""
        name = batch.cls.name
        if (
            self.ledger.done_in(batch) >= batch.count
            or self.ledger.has(name, image.id)
            or self.ledger.count(name) >= self.plan.per_class
        ):
            return False
        path = self.plan.out / name / f"{image.id}.png"
        if not path.exists():  # else: written just before an interruption, line missing
            self.lm.save_image(image, path)
        self.ledger.append(self.provenance(batch, job, image, path))
        self.written += 1
        return True

    def provenance(self, batch: Batch, job: Job, image: ImageResult, path: Path) -> dict:
        made = image.provenance
        if made is None:  # a service without per-image provenance: the mix's latent has it
            info = self.lm.get_latent(image.latent or "")
            result = job.result or {}
            inputs, weights, method = info.parents or [], info.weights or [], info.method
            seed, prompt = batch.seed, info.prompt
            steps, guidance = result.get("steps"), result.get("guidance_scale")
        else:
            inputs, weights, method = made.inputs, made.weights, made.method
            seed = made.seed if made.seed is not None else batch.seed
            prompt, steps, guidance = made.prompt, made.steps, made.guidance_scale
        sources = {k: v for named in self.sources.values() for k, v in named.items()}
        record = {
            "class": batch.cls.name,
            "file": path.relative_to(self.plan.out).as_posix(),
            "image": image.id,
            "latent": image.latent,
            "inputs": [{"latent": i, "source": sources.get(i)} for i in inputs],
            "weights": weights,
            "method": method,
            "prompt": prompt,
            "seed": seed,
            "steps": steps,
            "guidance_scale": guidance,
            "model": self.plan.settings["model"],
            "batch": batch.index,
            "job": job.id,
        }
        if self.plan.settings["cross_class"]:
            record["soft_label"] = self.soft_label(inputs, weights)
        return record

    def soft_label(self, inputs: list[str], weights: list[float]) -> list[float]:
        """The mix's weights (normalised to sum 1, as every method normalises them) summed
        per class, over the classes of augment.json."""
        classes = self.plan.settings["classes"]
        label = [0.0] * len(classes)
        total = sum(weights)
        for latent, weight in zip(inputs, weights, strict=True):
            owner = next(name for name, named in self.sources.items() if latent in named)
            label[classes.index(owner)] += weight / total
        return label

    def cancel(self) -> None:
        """Cancel the mix jobs still queued or running; a rerun picks up from the ledger."""
        while self.in_flight:
            _, job = self.in_flight.popleft()
            # Already ended, or the service is gone: nothing to stop.
            with suppress(LatentMixError, httpx.TransportError):
                self.lm.cancel(job)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _option(text: str) -> tuple[str, str]:
    """NAME=VALUE of --inversion-option, sent to the service as the form field NAME (which
    checks both and names the method's options when NAME is not one of them)."""
    name, separator, value = text.partition("=")
    if not separator or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, e.g. edict_mix=0.9, got {text!r}")
    return name, value


def _fail(message: str, status: int) -> int:
    print(f"latentmix augment: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
