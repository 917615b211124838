"""Soak: many small jobs through one worker on the tiny model, with the worker's and the API's
resident memory (RSS) sampled over time. A benchmark, not a test: it answers whether memory
grows after warm-up.

    nice -n 10 .venv/bin/python bench/soak.py                 # 2,000 jobs
    nice -n 10 .venv/bin/python bench/soak.py --jobs 300      # shorter

It starts its own stack (bench/load.py's: embedded Redis, one worker serving `tiny`, the API,
a local store) in a temporary directory. Jobs alternate between a mix of two uploaded
latents (2 steps) and an inversion of a new 64 px image (2 steps), with at most
--in-flight unfinished at a time. RSS is read from /proc/<pid>/status (VmRSS) every
--every seconds. Writes bench/results/soak.json (the samples and a summary) and
bench/soak-rss.png (the plot).

Growth is judged after warm-up (the first --warmup jobs): the least-squares slope of RSS
over completed jobs, in MiB per 1,000 jobs, for each process.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from load import latent_bytes, png, service_stack

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"succeeded", "failed", "canceled"}


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Sampler(threading.Thread):
    """RSS of each named pid, with the jobs done so far, every `every` seconds."""

    def __init__(self, pids: dict[str, int], done: list[int], every: float):
        super().__init__(daemon=True)
        self.pids, self.done, self.every = pids, done, every
        self.samples: list[dict] = []
        self.started = time.monotonic()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            sample = {"t": round(time.monotonic() - self.started, 2), "jobs": self.done[0]}
            sample |= {name: rss_mib(pid) for name, pid in self.pids.items()}
            self.samples.append(sample)
            self.stop.wait(self.every)


def submit(client: httpx.Client, index: int, latents: list[str], rng) -> str:
    if index % 2:
        response = client.post(
            "/latents",
            files=[("images", (f"soak{index}.png", png(10_000 + index), "image/png"))],
            data={"inversion_steps": "2", "guidance_scale": "1"},
        )
    else:
        weight = float(rng.uniform(0.1, 0.9))
        response = client.post(
            "/mix", json={"latents": latents, "weights": [weight, 1 - weight], "steps": 2}
        )
    response.raise_for_status()
    body = response.json()
    return body["job"]["id"] if "job" in body else body["id"]


def run_jobs(url: str, count: int, in_flight: int, done: list[int]) -> dict[str, int]:
    """Submit `count` jobs keeping at most `in_flight` unfinished; returns end statuses."""
    rng = np.random.default_rng(0)
    ends: dict[str, int] = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        uploads = [("z.safetensors", latent_bytes(rng), "application/octet-stream") for _ in "ab"]
        latents = [
            client.post("/latents", files=[("latents", upload)]).json()["latents"][0]["id"]
            for upload in uploads
        ]
        pending: list[str] = []
        submitted = 0
        while submitted < count or pending:
            while submitted < count and len(pending) < in_flight:
                pending.append(submit(client, submitted, latents, rng))
                submitted += 1
            job = client.get(f"/jobs/{pending[0]}", params={"wait": 10}).json()
            if job["status"] in TERMINAL:
                pending.pop(0)
                ends[job["status"]] = ends.get(job["status"], 0) + 1
                done[0] += 1
    return ends


def slope_per_1000(samples: list[dict], name: str, warmup: int) -> float | None:
    points = [(s["jobs"], s[name]) for s in samples if s["jobs"] >= warmup and s[name]]
    if len(points) < 3:
        return None
    jobs, rss = np.array(points).T
    return float(np.polyfit(jobs, rss, 1)[0] * 1000)


def plot(samples: list[dict], names: list[str], warmup: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name in names:
        axis.plot([s["jobs"] for s in samples], [s[name] for s in samples], label=name)
    axis.axvline(warmup, color="grey", linestyle=":", label=f"warm-up ({warmup} jobs)")
    axis.set_xlabel("jobs finished")
    axis.set_ylabel("RSS (MiB)")
    axis.set_title("Soak: RSS of the worker and the API (tiny model, one worker)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "soak-rss.png")
    args = parser.parse_args(argv)

    done = [0]
    with (
        tempfile.TemporaryDirectory(prefix="latentmix-soak-") as tmp,
        service_stack(Path(tmp), workers=1) as stack,
    ):
        pids = {"worker": stack.workers[0].pid, "api": stack.api.pid}
        sampler = Sampler(pids, done, args.every)
        sampler.start()
        started = time.monotonic()
        ends = run_jobs(stack.api_url, args.jobs, args.in_flight, done)
        elapsed = time.monotonic() - started
        sampler.stop.set()
        sampler.join()
        restarts = [slot.history for slot in stack.slots]
    samples = sampler.samples
    summary = {
        "jobs": args.jobs,
        "ends": ends,
        "seconds": round(elapsed, 1),
        "warmup_jobs": args.warmup,
        "worker_restarts": restarts,
    }
    for name in pids:
        after = [s[name] for s in samples if s["jobs"] >= args.warmup and s[name]]
        summary[name] = {
            "rss_mib_at_warmup": round(after[0], 1) if after else None,
            "rss_mib_at_end": round(after[-1], 1) if after else None,
            "rss_mib_max": round(max(after), 1) if after else None,
            "slope_mib_per_1000_jobs": slope_per_1000(samples, name, args.warmup),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "samples": samples}, indent=1) + "\n")
    plot(samples, list(pids), args.warmup, args.plot)
    print(json.dumps(summary, indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
