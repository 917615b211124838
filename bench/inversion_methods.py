"""Inversion methods side by side: seconds per image and reconstruction error, each method
next to DDIM on the same model in the same run (the engine in-process).

For each method and guidance: invert K seeded pictures (one batch), then sample them back
with the same method, steps and guidance; report the inversion's seconds per image, the
round trip's seconds per image, and the reconstruction error the service records with every
latent (latent RMSE, pixel PSNR and the largest 8-bit pixel error of the decoded round trip
against the decoded input, as `worker/engine/reconstruction.py` computes them). The methods
run in turn after a one-step warm-up; model loading is not timed.

    .venv/bin/python bench/inversion_methods.py --model shapes --steps 20 -k 3
    .venv/bin/python bench/inversion_methods.py --model tiny --steps 20 -k 2
    .venv/bin/python bench/inversion_methods.py --model sd15-random --size 64 --steps 10 -k 1

On `shapes` the pictures are held-out drawings of its world (seed 1), each with its own
caption as the prompt; elsewhere seeded pictures with one prompt. Prints a Markdown table;
`--json PATH` also writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from latentmix.service.core.images import seeded_image
from latentmix.worker.engine import reconstruction
from latentmix.worker.engine.diffusion import (
    InversionSettings,
    decode_latents,
    encode_images,
    encode_prompts,
    invert,
    sample,
)
from latentmix.worker.engine.models import load_model
from latentmix.worker.engine.shapes import world
from latentmix.worker.engine.shapes.evaluation import to_pil

PROMPT = "a photo of a cat"
MODELS_DIR = Path("data/models")


def pictures_and_prompts(model_name: str, k: int, size: int) -> tuple[list, list[str]]:
    """`shapes`: k held-out drawings of its world and their captions; else seeded pictures."""
    if model_name == "shapes":
        drawings = world.samples(range(k), seed=1)
        return [to_pil(d) for d in drawings], [d.caption for d in drawings]
    return [seeded_image(seed, size) for seed in range(k)], [PROMPT] * k


def measure(model, pictures, prompts, method: str, steps: int, guidance: float) -> dict:
    """One method at one guidance: timings per image and the reconstruction errors."""
    settings = InversionSettings(steps=steps, guidance_scale=guidance, method=method)
    started = time.perf_counter()
    inverted = invert(model, pictures, prompts, settings)
    inverted_s = time.perf_counter() - started
    conditioning = encode_prompts(model, prompts)
    started = time.perf_counter()
    regenerated = sample(model, inverted, conditioning, steps=steps, guidance_scale=guidance)
    generated_s = time.perf_counter() - started
    clean = encode_images(model, pictures, inverted.settings["size"])
    psnr, largest = reconstruction.pixel_errors(
        decode_latents(model, regenerated), decode_latents(model, clean)
    )
    return {
        "method": method,
        "guidance": guidance,
        "invert_s_per_image": inverted_s / len(pictures),
        "generate_s_per_image": generated_s / len(pictures),
        "latent_rmse": float(reconstruction.latent_rmse(regenerated, clean).mean()),
        "pixel_psnr_db": float(psnr.min()),
        "pixel_psnr_db_mean": float(psnr.mean()),
        "pixel_max_error": float(largest.max()),
        "aux_bytes_per_image": sum(
            value[0].numel() * value.element_size() for value in inverted.aux.values()
        ),
    }


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = load_model(args.model, device=args.device, cache_dir=MODELS_DIR)
    size = args.size or model.default_size
    pictures, prompts = pictures_and_prompts(args.model, args.k, size)
    methods = args.methods or list(model.card.inversion_methods)
    invert(model, pictures[:1], prompts[:1], InversionSettings(steps=1))  # warm-up
    rows = []
    for guidance in args.guidance:
        for method in methods:
            rows.append(measure(model, pictures, prompts, method, args.steps, guidance))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # progress
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": args.model,
        "size": size,
        "steps": args.steps,
        "images": args.k,
        "prompts": prompts,
        "device": args.device,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }


def report(data: dict) -> str:
    lines = [
        f"### {data['model']}, {data['size']} px, {data['steps']} steps, "
        f"{data['images']} image(s), {data['device']} ({data['date']})",
        "",
        "| method | guidance | invert s/image | x DDIM | regenerate s/image | latent RMSE "
        "| pixel PSNR dB (worst) | max pixel error | state bytes/image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ddim = {row["guidance"]: row for row in data["rows"] if row["method"] == "ddim"}
    for row in data["rows"]:
        base = ddim.get(row["guidance"])
        ratio = f"{row['invert_s_per_image'] / base['invert_s_per_image']:.1f}" if base else "-"
        psnr = row["pixel_psnr_db"]
        lines.append(
            f"| `{row['method']}` | {row['guidance']:g} | {row['invert_s_per_image']:.3f} "
            f"| {ratio} | {row['generate_s_per_image']:.3f} | {row['latent_rmse']:.2e} "
            f"| {'identical' if psnr == float('inf') else f'{psnr:.1f}'} "
            f"| {row['pixel_max_error']:.0f} | {row['aux_bytes_per_image']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=None, help="default: the model's")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("-k", type=int, default=2, help="images")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 7.5])
    parser.add_argument("--methods", nargs="+", default=None, help="default: the family's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers")
    args = parser.parse_args()
    data = run(args)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    print(report(data))


if __name__ == "__main__":
    main()
