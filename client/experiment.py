"""`latentmix experiment DATA --k 1,2,4 --methods lerp,fix/0,fix/chm --centroids N --out OUT`:
the mixing paper's Section 6 (Landolsi & Kahl, Figure 7) through the service.

DATA is an ImageFolder tree (one folder of images per class). For each class the command
inverts its images once (the service caches latents by content; OUT/latents.json keeps the
ids, so a rerun uploads nothing), then for every (K, method) cell draws `--centroids` uniform
centroids of random K-subsets (the `subset` scheme; the seed depends on the class and K only,
so every method mixes the same subsets), generates their images, and scores them against the
class's real images with `POST /evaluations` (FID, KID, CLIP distance on CLIP features; on a
model whose card names a judge, e.g. `shapes`, all three on the judge's features, and the
judge reads every image's class: the accuracy). Each row also holds the channel-mean bias
of the mixed latents (from the mixes' diagnostics). The prompt template is the card's. It
writes

    OUT/results.csv     one row per (class, K, method), rewritten atomically after each cell
    OUT/figure7.png     each measure against K, one line per method (class means)
    OUT/experiment.json the settings, the latent ids and the measured UNet rate

Before generating it prints the number of UNet evaluations and an estimated time from the
rate the service's workers were measured at on the inversion jobs (this run's or a previous
run's), then the time left after each cell. Interrupt it (Ctrl-C) and run it again: finished
cells are not redone.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from latentmix.client.api import LatentMixClient, add_service_arguments, write_atomic
from latentmix.client.augment import (
    DEFAULT_PROMPT,
    ImageClass,
    UsageError,
    class_label,
    class_prompt,
    exclusive,
    find_classes,
    model_card,
)
from latentmix.client.errors import LatentMixError
from latentmix.client.models import Job

RESULTS_FILE = "results.csv"
FIGURE_FILE = "figure7.png"
STATE_FILE = "experiment.json"
DEFAULT_METHODS = "lerp,fix/0,fix/m,fix/chm,nin/0,nin/m,nin/chm"  # the paper's seven
DEFAULT_STEPS = 50  # the service's default (inversion and generation)
COLUMNS = (
    "class",
    "k",
    "method",
    "centroids",
    "clip_distance",
    "clip_distance_std",
    "fid",
    "kid",
    "accuracy",
    "channel_mean_bias",
    "features",
    "model",
    "mix_job",
    "evaluation_job",
)
DEFAULT_IN_FLIGHT = 1
FEATURES = ("clip", "inception", "judge")  # POST /evaluations' features
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass(frozen=True)
class Cell:
    """A (class, K, method) cell whose mix and evaluation jobs are queued."""

    name: str
    k: int
    method: str
    mix: Job
    evaluation: Job
    judged: Job | None  # the judge's reading of the images, if the model has a judge


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `experiment` command to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "experiment",
        help="the mixing paper's Figure 7: quality of K-centroids per method",
        description="Invert each class once, generate centroids of random K-subsets for "
        "every (K, method), score them (FID, KID, CLIP distance) against the class's images, "
        "and write results.csv and figure7.png. Rerunning the same command resumes.",
    )
    parser.add_argument("data", type=Path, help="folder with one sub-folder of images per class")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--k", type=_int_list, default=[1, 2, 4, 8, 16, 32, 64], help="Ks")
    parser.add_argument(
        "--methods", type=_str_list, default=_str_list(DEFAULT_METHODS), help="mixing methods"
    )
    parser.add_argument("--centroids", type=_positive, default=1000, help="centroids per cell")
    parser.add_argument("--max-per-class", type=_positive, default=64, help="images per class")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default %(default)s)")
    parser.add_argument(
        "--features",
        choices=FEATURES,
        default=None,
        help="FID/KID features (inception needs LATENTMIX_INCEPTION_WEIGHTS on the workers; "
        "judge: the model's judge's, for the distance too); default: judge if the model's "
        "card names a judge, else clip",
    )
    parser.add_argument(
        "--prompt", default=None, help="prompt template (default: the model card's)"
    )
    parser.add_argument("--steps", type=_positive, default=None, help="generation steps")
    parser.add_argument("--inversion-steps", type=_positive, default=None, help="DDIM steps")
    parser.add_argument("--guidance-scale", type=float, default=None, help="CFG scale")
    parser.add_argument("--size", type=_positive, default=None, help="image side in pixels")
    parser.add_argument("--model", default=None, help="model (default: the service's)")
    add_service_arguments(parser)
    parser.add_argument(
        "--title", default="", help="a line on the figure, e.g. what the weights are"
    )
    parser.add_argument(
        "--in-flight",
        type=_positive,
        default=DEFAULT_IN_FLIGHT,
        help="cells queued ahead of the one awaited, so every worker has work "
        "(default %(default)s; use about the number of workers)",
    )
    parser.set_defaults(handler=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m latentmix.client.experiment ...`: the command without the `latentmix` front."""
    parser = argparse.ArgumentParser(prog="latentmix")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["experiment", *(sys.argv[1:] if argv is None else argv)]))


def run(args: argparse.Namespace) -> int:
    """Run `experiment`; returns the exit status (0 done, 1 failed, 2 usage, 130 interrupted)."""
    plan = Plan.from_args(args)
    try:
        classes = find_classes(args.data, args.out)
        check_class_sizes(plan, classes)  # before anything is sent
        with LatentMixClient(args.url, args.api_key) as client, exclusive(args.out):
            plan = plan.for_card(model_card(client, args.model), classes)
            classes = [replace(c, prompt=class_prompt(plan.prompt, c.name)) for c in classes]
            Experiment(client, plan, classes, args.out).run(args.title, args.in_flight)
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LatentMixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the experiment computes: every setting that changes its numbers."""

    data: str
    ks: list[int]
    methods: list[str]
    centroids: int
    max_per_class: int
    seed: int
    features: str | None  # None: the model card's choice (for_card)
    prompt: str | None
    steps: int | None
    inversion_steps: int | None
    guidance_scale: float | None
    size: int | None
    model: str | None
    judge: str | None = None  # the model's judge, which reads every centroid's class

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        return cls(
            data=str(args.data.resolve()),
            ks=sorted(set(args.k)),
            methods=list(dict.fromkeys(args.methods)),
            centroids=args.centroids,
            max_per_class=args.max_per_class,
            seed=args.seed,
            features=args.features,
            prompt=args.prompt,
            steps=args.steps,
            inversion_steps=args.inversion_steps,
            guidance_scale=args.guidance_scale,
            size=args.size,
            model=args.model,
        )

    def for_card(self, card: dict[str, Any], classes: list[ImageClass]) -> Plan:
        """What the command line left open, from the model's card: its prompt template,
        and its judge (whose features then score), which also reads every centroid's class
        if it knows every class (else its accuracy would mean nothing)."""
        defaults = card.get("augmentation") or {}
        judge = defaults.get("judge")
        labels = set(defaults.get("judge_labels") or ())
        knows_all = all(class_label(c.name) in labels for c in classes)
        return replace(
            self,
            prompt=self.prompt or defaults.get("prompt_template") or DEFAULT_PROMPT,
            features=self.features or ("judge" if judge else "clip"),
            judge=judge if knows_all else None,
        )

    def cells(self, classes: list[str]) -> list[tuple[str, int, str]]:
        return [(c, k, m) for c in classes for k in self.ks for m in self.methods]

    def unet_evaluations(self, images: int, cells: int) -> tuple[int, int]:
        """UNet evaluations (one per image per step; guidance doubles each) of the inversion
        (every image, if none is cached yet) and of the generation."""
        guided = 1 if self.guidance_scale == 1 else 2
        inversion = images * (self.inversion_steps or DEFAULT_STEPS) * guided
        steps = self.steps or self.inversion_steps or DEFAULT_STEPS
        return inversion, cells * self.centroids * steps * guided


@dataclass
class State:
    """OUT/experiment.json: the plan, the latents per class, the measured UNet rate."""

    plan: dict[str, Any]
    latents: dict[str, list[str]] = field(default_factory=dict)
    unet_evaluations: float = 0.0  # measured on inversion jobs, with the seconds they took
    job_seconds: float = 0.0

    @property
    def rate(self) -> float | None:
        """UNet evaluations per second, as measured on the workers."""
        return self.unet_evaluations / self.job_seconds if self.job_seconds > 0 else None

    def measured(self, job: Job, evaluations: float) -> None:
        if job.started_at and job.finished_at:
            self.unet_evaluations += evaluations
            self.job_seconds += (job.finished_at - job.started_at).total_seconds()


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class Experiment:
    def __init__(self, client: LatentMixClient, plan: Plan, classes: list[ImageClass], out: Path):
        self.client, self.plan, self.out = client, plan, out
        self.classes = {c.name: c for c in classes}
        self.images = {
            c.name: [source.image for source in c.sources[: plan.max_per_class]] for c in classes
        }
        check_class_sizes(plan, classes)
        self.state = self._load_state()
        self.rows = self._load_rows()

    def run(self, title: str = "", in_flight: int = DEFAULT_IN_FLIGHT) -> None:
        self.in_flight = in_flight
        cells = self.plan.cells(list(self.classes))
        images = sum(len(paths) for paths in self.images.values())
        inversion, generation = self.plan.unet_evaluations(images, len(cells))
        print(
            f"{len(self.classes)} classes, {images} images; {len(cells)} cells "
            f"(class x K x method) of {self.plan.centroids} centroids\n"
            f"UNet evaluations: {inversion:,} to invert (cached images skip theirs), "
            f"{generation:,} to generate",
            flush=True,
        )
        self._check_limits()
        self._invert()
        todo = [cell for cell in cells if _key(*cell) not in self.rows]
        done_before = len(cells) - len(todo)
        print(f"{done_before} cells done before, {len(todo)} to go; {self._estimate(len(todo))}")
        started = time.monotonic()
        submitted: deque[Cell] = deque()
        finished = 0
        for cell in [*todo, None]:  # None: drain the window
            if cell is not None:
                submitted.append(self._submit_cell(*cell))
            while submitted and (cell is None or len(submitted) > self.in_flight):
                done = submitted.popleft()
                self._finish_cell(done)
                finished += 1
                left = (time.monotonic() - started) / finished * (len(todo) - finished)
                row = self.rows[_key(done.name, done.k, done.method)]
                print(
                    f"[{done_before + finished}/{len(cells)}] {_describe(row)}; "
                    f"about {_duration(left)} left",
                    flush=True,
                )
        write_figure(list(self.rows.values()), self.out / FIGURE_FILE, title)
        print(f"wrote {self.out / RESULTS_FILE} and {self.out / FIGURE_FILE}")

    # -- inversion ------------------------------------------------------------------------

    def _invert(self) -> None:
        missing = [name for name in self.classes if name not in self.state.latents]
        for name in missing:
            latents = self.client.invert(
                self.images[name],
                prompt=self.classes[name].prompt,
                model=self.plan.model,
                inversion_steps=self.plan.inversion_steps,
                guidance_scale=self.plan.guidance_scale,
                size=self.plan.size,
                wait=False,
            )
            for job_id in dict.fromkeys(latent.job for latent in latents if latent.job):
                job = self.client.wait(job_id)
                steps = self.plan.inversion_steps or DEFAULT_STEPS
                self.state.measured(job, len(job.latents) * steps * self._guided())
            self.state.latents[name] = [latent.id for latent in latents]
            print(f"inverted {name}: {len(latents)} latents", flush=True)
            self._save_state()

    # -- cells ----------------------------------------------------------------------------

    def _submit_cell(self, name: str, k: int, method: str) -> Cell:
        """Queue a cell's mix job and its evaluation (which waits for the mix)."""
        latents = self.state.latents[name]
        mix = self.client.sample(
            latents,
            self.plan.centroids,
            scheme="subset",
            k=k,
            seed=_seed(self.plan.seed, name, k),
            method=method,
            steps=self.plan.steps,
            guidance_scale=self.plan.guidance_scale,
        )
        evaluation = self.client.evaluate(
            job=mix, reference_latents=latents, label=name, features=self.plan.features
        )
        judged = self.client.evaluate(job=mix, label=name, judge=True) if self.plan.judge else None
        return Cell(name, k, method, mix, evaluation, judged)

    def _finish_cell(self, cell: Cell) -> None:
        """Wait for a submitted cell and record its row."""
        name, k, method = cell.name, cell.k, cell.method
        mix = self.client.wait(cell.mix)
        evaluation = self.client.wait(cell.evaluation)
        figures = evaluation.result or {}
        judged = (self.client.wait(cell.judged).result or {}) if cell.judged else {}
        self.rows[_key(name, k, method)] = {
            "class": name,
            "k": k,
            "method": method,
            "centroids": self.plan.centroids,
            **{c: figures.get(c) for c in ("clip_distance", "clip_distance_std", "fid", "kid")},
            "accuracy": _accuracy(judged.get("judged"), name),
            "channel_mean_bias": _channel_mean_bias(mix.result or {}),
            "features": figures.get("features"),
            "model": mix.model,
            "mix_job": mix.id,
            "evaluation_job": evaluation.id,
        }
        self._save_rows()
        self._save_state()

    def _guided(self) -> int:
        return 1 if self.plan.guidance_scale == 1 else 2

    def _estimate(self, cells: int) -> str:
        """The generation's time at the UNet rate measured on inversion jobs (a mix job's
        rate is not: images rendered before cost it nothing)."""
        rate = self.state.rate
        _, evaluations = self.plan.unet_evaluations(0, cells)
        if rate is None:
            return "estimated time: unknown (no inversion measured), see the progress below"
        return f"estimated time: {_duration(evaluations / rate)} at {rate:.1f} UNet evals/s"

    # -- files ----------------------------------------------------------------------------

    def _check_limits(self) -> None:
        """Refuse, before any work, a plan the service's limits (GET /limits) would stop."""
        limits = self.client.limits()
        if self.plan.centroids > limits.max_mixes_per_request:
            raise UsageError(
                f"--centroids {self.plan.centroids} is over the service's "
                f"max_mixes_per_request ({limits.max_mixes_per_request}, "
                "LATENTMIX_MAX_MIXES_PER_REQUEST)"
            )
        largest = max(len(paths) for paths in self.images.values())
        if largest > limits.max_latents_per_mix:
            raise UsageError(
                f"a class of {largest} images is over the service's max_latents_per_mix "
                f"({limits.max_latents_per_mix}); lower --max-per-class"
            )

    def _load_state(self) -> State:
        path = self.out / STATE_FILE
        plan = asdict(self.plan)
        if not path.exists():
            return State(plan=plan)
        state = State(**json.loads(path.read_text()))
        # A setting the saved plan lacks (an OUT of an older release) reads as unset.
        changed = sorted(key for key in plan if state.plan.get(key) != plan[key])
        if changed:
            raise UsageError(
                f"{self.out} holds an experiment with other settings ({', '.join(changed)}); "
                "use another --out"
            )
        state.plan = plan
        return state

    def _save_state(self) -> None:
        write_atomic(self.out / STATE_FILE, json.dumps(asdict(self.state), indent=1).encode())

    def _load_rows(self) -> dict[tuple[str, int, str], dict[str, Any]]:
        path = self.out / RESULTS_FILE
        if not path.exists():
            return {}
        with path.open(newline="") as file:
            rows = list(csv.DictReader(file))
        return {_key(row["class"], int(row["k"]), row["method"]): _typed(row) for row in rows}

    def _save_rows(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows.values())
        write_atomic(self.out / RESULTS_FILE, buffer.getvalue().encode())


def check_class_sizes(plan: Plan, classes: list[ImageClass]) -> None:
    """Refuse a K larger than a class (of at most --max-per-class images)."""
    sizes = {c.name: min(len(c.sources), plan.max_per_class) for c in classes}
    too_small = {name: size for name, size in sizes.items() if size < max(plan.ks)}
    if too_small:
        raise UsageError(
            f"K = {max(plan.ks)} needs that many images per class; "
            f"these classes have fewer: {too_small}"
        )


# --------------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------------


def write_figure(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Figure 7: the class means against K, one line per method (log-2 K axis), of what
    was measured: the judge's on-class share, the CLIP (or judge feature) distance, FID,
    the channel-mean bias; `title` adds a line above."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(
            "figure7.png needs matplotlib: pip install 'latentmix[experiment]'"
        ) from None
    panels = [
        (metric, label)
        for metric, label in (
            ("accuracy", "judged on-class (share)"),
            ("clip_distance", _distance_name(rows[0]) if rows else "CLIP distance"),
            ("fid", "FID"),
            ("channel_mean_bias", "channel-mean bias of the latents"),
        )
        if any(row.get(metric) is not None for row in rows)
    ] or [("clip_distance", "CLIP distance")]
    figure, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels) + 1.6, 4), constrained_layout=True
    )
    axes = list(axes) if len(panels) > 1 else [axes]
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for axis, (metric, label) in zip(axes, panels, strict=True):
        for method in methods:
            ks, means = _class_means(rows, method, metric)
            axis.plot(ks, means, marker="o", label=method)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("K (images per centroid)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside center right")
    features = sorted({str(row.get("features")) for row in rows})
    models = sorted({str(row.get("model")) for row in rows})
    classes = len({row["class"] for row in rows})
    heading = (
        f"model {', '.join(models)}; {classes} classes, "
        f"{rows[0]['centroids'] if rows else 0} centroids per cell; features {', '.join(features)}"
    )
    figure.suptitle(f"{title}\n{heading}" if title else heading)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    write_atomic(path, buffer.getvalue())


def _class_means(rows, method: str, metric: str) -> tuple[list[int], list[float]]:
    by_k: dict[int, list[float]] = {}
    for row in rows:
        if row["method"] == method and row.get(metric) is not None:
            by_k.setdefault(int(row["k"]), []).append(float(row[metric]))
    ks = sorted(by_k)
    return ks, [sum(by_k[k]) / len(by_k[k]) for k in ks]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _key(name: str, k: int, method: str) -> tuple[str, int, str]:
    return (name, int(k), method)


def _seed(base: int, name: str, k: int) -> int:
    """The subsets' seed: one per (class, K), the same for every method."""
    digest = hashlib.sha256(f"{base}/{name}/{k}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


def _accuracy(judged: list[str] | None, name: str) -> float | None:
    """The share of a cell's images the judge reads as its class."""
    if not judged:
        return None
    return sum(label == class_label(name) for label in judged) / len(judged)


def _channel_mean_bias(result: dict[str, Any]) -> float | None:
    """The mean over a mix job's latents of mean_c |channel mean c| (the paper's Sec. 4.2
    bias, from each mix's diagnostics)."""
    means = [
        image["diagnostics"]["channel_means"]
        for image in result.get("images", [])
        if image.get("diagnostics")
    ]
    if not means:
        return None
    return sum(sum(abs(m) for m in row) / len(row) for row in means) / len(means)


def _typed(row: dict[str, str]) -> dict[str, Any]:
    numbers = ("clip_distance", "clip_distance_std", "fid", "kid", "accuracy", "channel_mean_bias")
    return (
        row
        | {"k": int(row["k"]), "centroids": int(row["centroids"])}
        | {name: float(row[name]) if row.get(name) else None for name in numbers}
    )


def _describe(row: dict[str, Any]) -> str:
    fid = "n/a" if row["fid"] is None else f"{row['fid']:.4g}"
    accuracy = "" if row.get("accuracy") is None else f", judged on-class {row['accuracy']:.0%}"
    return (
        f"{row['class']} K={row['k']} {row['method']}: "
        f"{_distance_name(row)} {row['clip_distance']:.4f}, FID {fid}{accuracy}"
    )


def _distance_name(row: dict[str, Any]) -> str:
    features = str(row.get("features") or "")
    return "judge feature distance" if features.startswith("judge:") else "CLIP distance"


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [_positive(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one K")
    return values


def _str_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one method")
    return values


if __name__ == "__main__":
    sys.exit(main())
