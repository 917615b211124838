"""Per-step cost of each family's built-in test model: one guided denoiser evaluation
(`ModelFamily.predict`, the unconditional and conditional rows as one doubled batch) for a
batch of B latents at the model's native size, the unit every inversion and generation step
is made of.

    .venv/bin/python bench/step_cost.py --threads 1 --json bench/results/DATE-step-cost.json

Prints a Markdown table (median and min over `--repeats` timed calls after a warm-up).
Loading is not timed. The tiny models are built into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from latentmix.worker.engine.diffusion import encode_prompts
from latentmix.worker.engine.models import load_model

MODELS = ("tiny", "tiny-v", "tiny-sdxl", "tiny-sd3")
PROMPT = "a photo of a cat"


def step_cost(name: str, batch: int, repeats: int, models_dir: Path, device: str) -> dict:
    """Milliseconds of one guided `predict` for `batch` latents of `name` at native size."""
    model = load_model(name, device=device, cache_dir=models_dir)
    card = model.card
    side = model.default_size // card.vae_scale_factor
    x = torch.randn(batch, card.latent_channels, side, side, generator=torch.Generator())
    x = x.to(model.device)
    conditioning = encode_prompts(model, [PROMPT] * batch)
    timestep = 500.0 if card.prediction_type == "flow_prediction" else 501
    times = []
    for index in range(repeats + 2):  # two warm-up calls
        start = time.perf_counter()
        model.family.predict(model, x, timestep, conditioning, card.default_guidance)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        if index >= 2:
            times.append((time.perf_counter() - start) * 1000)
    denoiser = getattr(model.pipe, "unet", None) or model.pipe.transformer
    return {
        "model": name,
        "family": card.family,
        "denoiser": type(denoiser).__name__,
        "parameters": sum(p.numel() for p in denoiser.parameters()),
        "latent": [card.latent_channels, side, side],
        "size": model.default_size,
        "batch": batch,
        "guidance": card.default_guidance,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "repeats": repeats,
    }


def report(data: dict) -> str:
    lines = [
        f"{data['date']}; {data['device']}, {data['threads']} torch thread(s); "
        f"{data['cpu']}, {data['cpu_count']} CPUs; load average before "
        f"{' / '.join(f'{v:.2f}' for v in data['load_before'])}, after "
        f"{' / '.join(f'{v:.2f}' for v in data['load_after'])}.",
        "",
        "| model | family | denoiser (parameters) | latent | batch x 2 (guided) | "
        "ms / step: median | min | ms / step / image |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for row in data["rows"]:
        latent = "x".join(map(str, row["latent"]))
        lines.append(
            f"| {row['model']} | {row['family']} | {row['denoiser']} "
            f"({row['parameters'] / 1e6:.2f} M) | {latent} ({row['size']} px) | {row['batch']} "
            f"| {row['median_ms']:.1f} | {row['min_ms']:.1f} "
            f"| {row['median_ms'] / row['batch']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch", type=int, default=4, help="latents per call")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="latentmix-step-cost-") as tmp:
        rows = [
            step_cost(name, args.batch, args.repeats, Path(tmp), args.device)
            for name in args.models
        ]
    data = {
        "date": started.isoformat(timespec="seconds"),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "torch": torch.__version__,
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    print(report(data))


if __name__ == "__main__":
    main()
