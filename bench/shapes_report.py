"""The `shapes` model measured: every figure of docs/models.md's `shapes` section, reproducibly.

    .venv/bin/python bench/shapes_report.py                      # every part
    .venv/bin/python bench/shapes_report.py --parts generation --per-prompt 2 --steps 25

1. generation: "a {colour} {shape}" for the 24 pairs from seeded noise (guidance 7.5, DDIM
   50 steps), scored by the shapes classifier; a contact sheet in docs/.
2. inversion: DDIM inversion then regeneration of held-out drawings (world seed 1; training
   used seed 0) at guidance 1, 50 steps: PSNR against the drawing, and the VAE's alone.
3. mix: a red circle and a blue square inverted, mixed with `nin/chm` at weights (1 - t, t),
   generated with the prompts' embeddings mixed alike; the classifier's two top shapes and
   colours of the 0.5/0.5 mix; the strip in docs/.
4. mix-grid: the 0.5/0.5 mix of part 3 under each setting a user would try (inversion and
   generation guidance, AID's fused attention or none, mixed captions or the empty prompt).
5. bias (the paper's Sec. 4.2 on this world): a pool of "a red circle" drawings inverted at
   the paper's guidance 7.5; uniform centroids of K of them for each method: the channel-mean
   bias of the centroid latents, and the shapes-classifier feature cosine distance of the
   generated centroids to the mean feature of the real drawings; the plot in docs/.
6. method-mixes: each inversion method's 0.5/0.5 mix of part 3 and centroid of 8 red
   circles at the paper's guidance, read by the classifier; a contact sheet in docs/.
7. mix-prompt: pairs of drawings inverted each with its own caption, mixed at weights 1,
   0.9, 0.1 and 0 towards the first, generated without a prompt as `POST /mix` does (the
   captions' embeddings mixed with the row's weights) and with the empty prompt (its
   default before 2026-12-07): how many rows the classifier reads as the class they lean
   to. `--parts mix-prompt --json bench/results/shapes-mix-prompt.json` runs it alone.

Writes bench/results/shapes-report.json (or --json) and prints a Markdown summary. All
scores use the shapes classifier: "shapes-classifier features" stand in for CLIP/Inception.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from latentmix.service.core.model_cards import guidance_for
from latentmix.worker.engine.diffusion import InversionSettings, generate, invert
from latentmix.worker.engine.inversion import get_inversion
from latentmix.worker.engine.mixing import mix
from latentmix.worker.engine.models import load_model
from latentmix.worker.engine.morph import Keyframes, frame_conditioning, render_frames
from latentmix.worker.engine.shapes import evaluation as ev
from latentmix.worker.engine.shapes import world
from latentmix.worker.engine.shapes.classifier import classify, judge, load_classifier
from latentmix.worker.engine.shapes.model import CLASSIFIER_FILE, SHAPES_MODEL_NAME
from latentmix.worker.engine.state_mixing import mix_inverted

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PARTS = ("generation", "inversion", "mix", "mix-grid", "bias", "method-mixes", "mix-prompt")
# Part 7's pairs of drawings (shape, colour): inverted each with its own caption.
PROMPT_PAIRS = (
    (("circle", "red"), ("square", "blue")),
    (("triangle", "green"), ("star", "yellow")),
    (("square", "magenta"), ("circle", "cyan")),
    (("star", "blue"), ("circle", "yellow")),
)
# Part 6's inversion methods: every one that inverts for Stable Diffusion's sampler.
MIX_INVERSIONS = ("ddim", "fixed-point", "edict", "bdia", "null-text", "negative-prompt")
BIAS_METHODS = ("fix/0", "nin/0", "fix/chm", "nin/chm")


def sheet(images: list[Image.Image], columns: int) -> Image.Image:
    """Images in a grid, row by row."""
    side = images[0].width
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (columns * side, rows * side), "white")
    for i, image in enumerate(images):
        canvas.paste(image, ((i % columns) * side, (i // columns) * side))
    return canvas


def part_generation(model: Any, classifier: Any, args: argparse.Namespace) -> dict[str, Any]:
    score, images = ev.score_generation(
        model,
        classifier,
        ev.all_pairs(),
        args.per_prompt,
        steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
    )
    first_of_each = images[:: args.per_prompt]  # one per prompt: shapes down, colours across
    sheet(first_of_each, len(world.COLOUR_NAMES)).save(DOCS / "shapes-contact-sheet.png")
    return {
        "images": len(images),
        "prompts": len(ev.all_pairs()),
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "right_shape": score.rate("shape"),
        "right_colour": score.rate("colour"),
        "right_shape_and_colour": score.rate("both"),
        "right_shape_and_colour_by_shape": score.by_shape(),
    }


def part_inversion(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    held_out = world.samples(range(args.held_out), seed=1)
    result = ev.round_trip_psnr(model, held_out, steps=args.steps, guidance_scale=1.0)
    return {**result, "steps": args.steps, "guidance_scale": 1.0, "world_seed": 1}


def _mix_ends() -> list[world.Sample]:
    """The mix's two drawings: a red circle and a blue square on white (world seed 2)."""
    return [
        ev.find_samples("circle", "red", 1, seed=2, background="white")[0],
        ev.find_samples("square", "blue", 1, seed=2, background="white")[0],
    ]


def part_mix(model: Any, classifier: Any, args: argparse.Namespace) -> dict[str, Any]:
    ends = _mix_ends()
    captions = [s.caption for s in ends]
    settings = InversionSettings(steps=args.steps, guidance_scale=args.mix_inversion_guidance)
    inverted = invert(model, [ev.to_pil(s) for s in ends], captions, settings)
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    weights = torch.tensor([[1 - t, t] for t in ts], dtype=torch.float64)
    mixed = mix(inverted.latent, weights.tolist(), "nin/chm")
    conditioning = ev.mixed_conditioning(model, captions, weights.float())
    images = generate(
        model, mixed, conditioning, steps=args.steps, guidance_scale=args.mix_guidance
    )
    strip = sheet([ev.to_pil(ends[0]), *images, ev.to_pil(ends[1])], len(images) + 2)
    strip.save(DOCS / "shapes-mix.png")
    prediction = classify(classifier, ev.to_tensor(images))
    middle = ts.index(0.5)
    return {
        "method": "nin/chm",
        "inversion_guidance": args.mix_inversion_guidance,
        "generation_guidance": args.mix_guidance,
        "prompt": "the two captions' embeddings mixed with the same weights",
        "t": ts,
        "shape": prediction.labels["shape"],
        "colour": prediction.labels["colour"],
        "mid_top2_shapes": prediction.top("shape", 2)[middle],
        "mid_top2_colours": prediction.top("colour", 2)[middle],
        "mid_shape_probabilities": _probabilities(prediction, "shape", middle),
        "mid_colour_probabilities": _probabilities(prediction, "colour", middle),
    }


def part_mix_grid(model: Any, classifier: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The 0.5/0.5 `nin/chm` mix of part 3 under every setting a user would try: inversion
    guidance 1 or 7.5, generation guidance 1, 3 or 7.5, AID's fused attention or none, the
    captions' embeddings mixed or the empty prompt; the classifier's top two of each head."""
    ends = _mix_ends()
    captions = [s.caption for s in ends]
    weights = [[0.5, 0.5]]
    rows = []
    for inversion_guidance in (1.0, 7.5):
        settings = InversionSettings(steps=args.steps, guidance_scale=inversion_guidance)
        inverted = invert(model, [ev.to_pil(s) for s in ends], captions, settings)
        mixed = mix(inverted.latent, weights, "nin/chm")
        keyframes = Keyframes(inverted.latent, captions, ["red circle", "blue square"])
        settings_grid = itertools.product((1.0, 3.0, 7.5), ("none", "fused"), ("mixed", "empty"))
        for guidance, attention, prompt in settings_grid:
            conditioning = frame_conditioning(
                model, captions, [None if prompt == "mixed" else ""], weights
            )
            images = render_frames(
                model,
                mixed,
                conditioning,
                steps=args.steps,
                guidance_scale=guidance,
                attention=attention,
                row_weights=weights,
                keyframes=keyframes,
            )
            prediction = classify(classifier, ev.to_tensor(images))
            shapes, colours = prediction.top("shape", 2)[0], prediction.top("colour", 2)[0]
            rows.append(
                {
                    "inversion_guidance": inversion_guidance,
                    "guidance": guidance,
                    "attention": attention,
                    "prompt": prompt,
                    "top2_shapes": shapes,
                    "top2_colours": colours,
                    "shapes_are_the_ends": set(shapes) == {"circle", "square"},
                    "colours_are_the_ends": set(colours) == {"red", "blue"},
                }
            )
    return {
        "method": "nin/chm",
        "weights": weights[0],
        "settings": rows,
        "shapes_are_the_ends": sum(r["shapes_are_the_ends"] for r in rows),
        "colours_are_the_ends": sum(r["colours_are_the_ends"] for r in rows),
        "of": len(rows),
    }


def _probabilities(prediction: Any, head: str, row: int) -> dict[str, float]:
    from latentmix.worker.engine.shapes.classifier import HEADS

    values = prediction.probabilities[head][row].tolist()
    return {name: round(v, 4) for name, v in zip(HEADS[head], values, strict=True)}


def part_bias(model: Any, classifier: Any, args: argparse.Namespace) -> dict[str, Any]:
    pool = ev.find_samples("circle", "red", args.pool, seed=3)
    prompt = world.caption("circle", "red")
    settings = InversionSettings(steps=args.steps, guidance_scale=args.guidance)
    latents = invert(model, [ev.to_pil(s) for s in pool], prompt, settings).latent
    reference = ev.class_feature_mean(classifier, pool)
    ks = [k for k in args.ks if k <= args.pool]
    bias: dict[str, list[float]] = {m: [] for m in ev.CENTROID_METHODS}
    distance: dict[str, list[float]] = {m: [] for m in ev.CENTROID_METHODS}
    right: dict[str, list[float]] = {m: [] for m in ev.CENTROID_METHODS}
    for k in ks:
        subsets = ev.centroid_weights(args.pool, k, args.centroids, args.seed)
        for method in ev.CENTROID_METHODS:
            mixed = ev.centroids(latents, subsets, method)
            bias[method].append(float(ev.channel_mean_bias(mixed).mean()))
            images = generate(model, mixed, prompt, steps=args.steps, guidance_scale=args.guidance)
            distance[method].append(
                float(ev.feature_distance(classifier, images, reference).mean())
            )
            prediction = classify(classifier, ev.to_tensor(images))
            ok = [
                s == "circle" and c == "red"
                for s, c in zip(
                    prediction.labels["shape"], prediction.labels["colour"], strict=True
                )
            ]
            right[method].append(sum(ok) / len(ok))
        print(f"  bias: K = {k} done", flush=True)
    per_latent = ev.channel_mean_bias(latents)
    channel_means = latents.mean(dim=(0, 2, 3)).tolist()
    result = {
        "pool": args.pool,
        "centroids_per_k": args.centroids,
        "inversion_guidance": args.guidance,
        "generation_guidance": args.guidance,
        "steps": args.steps,
        "ks": ks,
        "inverted_channel_means": [round(v, 4) for v in channel_means],
        "inverted_mean_abs_channel_mean": float(per_latent.mean()),
        "channel_mean_bias": bias,
        "feature_cosine_distance": distance,
        "right_shape_and_colour": right,
        "feature_note": "shapes-classifier features (stand-in for CLIP image embeddings)",
    }
    plot_bias(result, DOCS / "shapes-bias.png")
    return result


def part_method_mixes(model: Any, classifier: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Each inversion method's mixes at the paper's guidance (--guidance for inverting and
    generating): the 0.5/0.5 `nin/chm` mix of a red circle and a blue square (their
    captions' embeddings mixed alike) and the `nin/chm` centroid of 8 red circles; each
    method's state mixed with the same weights (null-text's embeddings: appendix B); every
    image read by the classifier; one labelled contact sheet in docs/."""
    pair = _mix_ends()
    circles = ev.find_samples("circle", "red", 8, seed=3)
    captions = [s.caption for s in pair]
    half = [[0.5, 0.5]]
    rows, tiles = {}, []
    for method in MIX_INVERSIONS:
        settings = InversionSettings(method=method, steps=args.steps, guidance_scale=args.guidance)
        pair_state = invert(model, [ev.to_pil(s) for s in pair], captions, settings)
        circle_state = invert(model, [ev.to_pil(s) for s in circles], circles[0].caption, settings)
        mixed_pair = generate(
            model,
            _mixed_state(model, pair_state, half),
            ev.mixed_conditioning(model, captions, torch.tensor(half)),
            steps=args.steps,
            guidance_scale=args.guidance,
        )
        centroid = generate(
            model,
            _mixed_state(model, circle_state, [[1.0] * len(circles)]),
            circles[0].caption,
            steps=args.steps,
            guidance_scale=args.guidance,
        )
        images = [*mixed_pair, *centroid]
        read = judge(classifier, ev.to_tensor(images))
        rows[method] = {
            "pair_mix": {"judged": read[0][0], "confidence": round(read[0][1], 3)},
            "pair_mix_top2_shapes": classify(classifier, ev.to_tensor(mixed_pair)).top("shape", 2)[
                0
            ],
            "pair_mix_top2_colours": classify(classifier, ev.to_tensor(mixed_pair)).top(
                "colour", 2
            )[0],
            "centroid_of_8": {"judged": read[1][0], "confidence": round(read[1][1], 3)},
            "centroid_on_class": read[1][0] == "red circle",
        }
        tiles.append((method, images, [label for label, _ in read]))
        print(f"  method-mixes: {method} done", flush=True)
    labelled_sheet(
        [ev.to_pil(s) for s in (*pair, circles[0])],
        tiles,
        args,
    ).save(DOCS / "shapes-method-mixes.png")
    return {
        "guidance": args.guidance,
        "steps": args.steps,
        "mix_method": "nin/chm",
        "pair": captions,
        "centroid_class": circles[0].caption,
        "methods": rows,
    }


def part_mix_prompt(model: Any, classifier: Any, args: argparse.Namespace) -> dict[str, Any]:
    # the service's defaults for this model (its card's augmentation guidance: 1 on shapes)
    inversion_guidance = guidance_for(None, model.card, "inversion")
    guidance = guidance_for(None, model.card, "generation")
    settings = InversionSettings(steps=args.steps, guidance_scale=inversion_guidance)
    weights = [[1.0, 0.0], [0.9, 0.1], [0.1, 0.9], [0.0, 1.0]]
    texts = {"captions mixed": None, "empty prompt": ""}
    kept = dict.fromkeys(texts, 0)
    pairs = []
    for pair in PROMPT_PAIRS:
        captions = [world.caption(shape, colour) for shape, colour in pair]
        drawings = [_drawing(shape, colour) for shape, colour in pair]
        inverted = invert(model, drawings, captions, settings)
        mixed = mix(inverted.latent, weights, "nin/chm")
        want = [f"{colour} {shape}" for shape, colour in (pair[0], pair[0], pair[1], pair[1])]
        read = {}
        for name, text in texts.items():
            condition = (
                text
                if text is not None
                else ev.mixed_conditioning(model, captions, torch.tensor(weights))
            )
            images = generate(model, mixed, condition, steps=args.steps, guidance_scale=guidance)
            read[name] = [label for label, _ in judge(classifier, ev.to_tensor(images))]
            kept[name] += sum(r == w for r, w in zip(read[name], want, strict=True))
        pairs.append({"captions": captions, "read": read})
    return {
        "method": "nin/chm",
        "inversion_guidance": inversion_guidance,
        "generation_guidance": guidance,
        "steps": args.steps,
        "weights_towards_first": [row[0] for row in weights],
        "rows_read_as_the_class_they_lean_to": kept,
        "of": len(weights) * len(PROMPT_PAIRS),
        "pairs": pairs,
    }


def _drawing(shape: str, colour: str) -> Image.Image:
    """The shape centred on white, as tests/e2e/test_shapes_service.py draws it."""
    pixels = world.draw(shape, colour, "white", centre=(32, 32), radius=16)
    return Image.fromarray((pixels * 255).round().astype("uint8"))


def _mixed_state(model: Any, inverted: Any, weights: list[list[float]]) -> Any:
    """The `nin/chm` mix of the inverted rows with their state mixed alike (as a mix job
    mixes it, worker/tasks/mix.py)."""
    latent_state = get_inversion(inverted.method, model.card).latent_state
    return mix_inverted(inverted, weights, "nin/chm", latent_state)


def labelled_sheet(
    inputs: list[Image.Image], tiles: list[tuple[str, list[Image.Image], list[str]]], args: Any
) -> Image.Image:
    """A row per inversion method: its 0.5/0.5 pair mix and its centroid of 8, each with the
    classifier's reading under it; the inputs on top."""
    scale, label_w, caption_h = 2, 130, 16
    side = inputs[0].width * scale
    width = max(label_w + 3 * side, 560)
    height = caption_h * 3 + side + len(tiles) * (side + caption_h)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text(
        (4, 2),
        f"shapes, guidance {args.guidance:g}, {args.steps} steps, nin/chm. Per inversion "
        "method: the 0.5/0.5 mix of\nthe red circle and the blue square, and the centroid of "
        "8 red circles; under each, the classifier's reading",
        fill="black",
    )
    draw.text((4, 2 * caption_h + side // 2), "inputs", fill="black")
    for i, (image, text) in enumerate(
        zip(inputs, ("red circle", "blue square", "1 of 8 red circles"), strict=True)
    ):
        canvas.paste(image.resize((side, side), Image.NEAREST), (label_w + i * side, 2 * caption_h))
        draw.text((label_w + i * side + 2, 2 * caption_h + side), text, fill="black")
    top = caption_h * 3 + side
    for method, images, readings in tiles:
        draw.text((4, top + side // 2), method, fill="black")
        for i, (image, reading) in enumerate(zip(images, readings, strict=True)):
            x = label_w + i * side
            canvas.paste(image.resize((side, side), Image.NEAREST), (x, top))
            draw.text((x + 2, top + side), f"read: {reading}", fill="black")
        top += side + caption_h
    return canvas


def plot_bias(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for method in BIAS_METHODS:
        left.plot(result["ks"], result["channel_mean_bias"][method], marker="o", label=method)
    left.set(
        xscale="log",
        xlabel="K (latents per centroid)",
        ylabel="mean |channel mean| of the centroid latent",
        title="Channel-mean bias of centroids (Sec. 4.2)",
    )
    for method in ev.CENTROID_METHODS:
        right.plot(
            result["ks"], result["feature_cosine_distance"][method], marker="o", label=method
        )
    right.set(
        xscale="log",
        xlabel="K (latents per centroid)",
        ylabel="cosine distance to the class mean",
        title="Centroid images: shapes-classifier feature distance",
    )
    for axis in (left, right):
        axis.set_xticks(result["ks"], [str(k) for k in result["ks"]])
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    fig.suptitle(f"shapes model, {result['pool']} inverted 'a red circle' drawings", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=SHAPES_MODEL_NAME, help="name or pipeline folder")
    parser.add_argument("--classifier", type=Path, default=CLASSIFIER_FILE)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--per-prompt", type=int, default=8, help="images per prompt (192 in all)")
    parser.add_argument("--held-out", type=int, default=32)
    parser.add_argument("--mix-inversion-guidance", type=float, default=1.0)
    parser.add_argument("--mix-guidance", type=float, default=1.0)
    parser.add_argument("--pool", type=int, default=32)
    parser.add_argument("--centroids", type=int, default=4)
    parser.add_argument(
        "--ks", type=lambda s: [int(k) for k in s.split(",")], default=[1, 2, 4, 8, 16, 32]
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/shapes-report.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    parts = [p for p in args.parts.split(",") if p]
    torch.manual_seed(args.seed)
    model = load_model(args.model, device="cpu", max_batch_size=64, vae_batch_size=64)
    classifier = load_classifier(args.classifier)
    report: dict[str, Any] = {
        "model": args.model,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(),
        "features": "shapes classifier",
    }
    runners = {
        "generation": lambda: part_generation(model, classifier, args),
        "inversion": lambda: part_inversion(model, args),
        "mix": lambda: part_mix(model, classifier, args),
        "mix-grid": lambda: part_mix_grid(model, classifier, args),
        "bias": lambda: part_bias(model, classifier, args),
        "method-mixes": lambda: part_method_mixes(model, classifier, args),
        "mix-prompt": lambda: part_mix_prompt(model, classifier, args),
    }
    for part in parts:
        started = time.monotonic()
        report[part] = runners[part]()
        report[part]["seconds"] = round(time.monotonic() - started, 1)
        print(f"{part}: {json.dumps(report[part])}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
