"""Many small requests (issue 30): C concurrent clients, each submitting one-row mixes of two
ready latents one after another (POST /mix, wait, download the PNG), against the engine
rendering the same rows in batches in-process; the service with and without cross-job
batching (LATENTMIX_WORKER_BATCH_WAIT_MS), side by side in one run.

Each round renders `--jobs` new weight rows (so nothing is served from the caches) in each
variant: the engine (`generate` over batches of `--batch` rows, PNGs encoded), then the
service with batching off, then on (each round starts with another variant). Both services
run at once, each its own stack (API, Redis, one worker, local store) with UNet batch
`--batch`; only the one being driven computes. Reports images/s and service / engine, CPU
per image by process, and the CPU budget the 0.8x target leaves against RQ's own cost of a
job (`--floor-jobs` no-op jobs through a plain RQ worker on the service's Redis): the
floor that one job per image pays before any of the service's own work.

    nice -n 10 .venv/bin/python bench/small_jobs.py --model tiny --clients 16 --jobs 96
    nice -n 10 .venv/bin/python bench/small_jobs.py --model sd15-random --jobs 32 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import torch
from redis import Redis
from rq import Queue
from rq.worker import SimpleWorker
from safetensors.numpy import save
from throughput import (  # bench/ is the script's directory
    Service,
    _machine,
    _proc_cpu_s,
    _with_children,
    run_and_report,
)

from latentmix.client import LatentMixClient
from latentmix.service.core.images import encode_png
from latentmix.worker.engine.diffusion import generate
from latentmix.worker.engine.mixing import mix
from latentmix.worker.engine.models import load_model

PROMPT = "a photo of a cat"
METHOD = "nin/chm"


def rows(jobs: int, rows_per_job: int, round_: int, rounds: int) -> list[list[list[float]]]:
    """Each job's weight rows over the two latents: distinct across jobs and rounds."""
    count = jobs * rows_per_job
    weights = (np.arange(count) + round_ * count + 0.5) / (count * rounds + 1)
    pairs = [[float(w), float(1 - w)] for w in weights]
    return [pairs[i : i + rows_per_job] for i in range(0, count, rows_per_job)]


def run_engine(model, latents: torch.Tensor, jobs, args) -> float:
    """Seconds to render every row in batches of `--batch`, PNGs included."""
    flat = [row for job in jobs for row in job]
    started = time.perf_counter()
    for start in range(0, len(flat), args.batch):
        mixed = mix(latents, flat[start : start + args.batch], METHOD)
        images = generate(model, mixed, PROMPT, steps=args.steps, guidance_scale=args.guidance)
        assert all(encode_png(image) for image in images)
    return time.perf_counter() - started


def run_service(url: str, latent_ids: list[str], jobs, args) -> tuple[float, list[float]]:
    """Seconds for `--clients` clients to get every job's PNGs, and each job's latency."""
    queue = list(jobs)
    latencies: list[float] = []

    def client_loop(_: int) -> None:
        with LatentMixClient(url, timeout=600) as client:
            while queue:
                try:
                    job_rows = queue.pop()
                except IndexError:
                    return
                submitted = time.perf_counter()
                job = client.mix(
                    latent_ids,
                    job_rows if len(job_rows) > 1 else job_rows[0],
                    method=METHOD,
                    prompt=PROMPT,
                    steps=args.steps,
                    guidance_scale=args.guidance,
                )
                pngs = [client.image_bytes(image) for image in client.iter_images(job)]
                assert len(pngs) == len(job_rows) and all(p.startswith(b"\x89PNG") for p in pngs)
                latencies.append(time.perf_counter() - submitted)

    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(client_loop, range(args.clients)))
    return time.perf_counter() - started, latencies


def run(args: argparse.Namespace) -> dict:
    env = {}
    if args.threads:
        torch.set_num_threads(args.threads)
        env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    base = {"max_batch_size": args.batch, "device": args.device, "dtype": args.dtype}
    modes = {"service-off": {}, "service-on": {"worker_batch_wait_ms": args.wait_ms}}
    results: dict[str, list[dict]] = {name: [] for name in ("engine", *modes)}
    started, load_before = datetime.now(UTC), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="latentmix-small-") as tmp, ExitStack() as stack:
        services = {
            name: stack.enter_context(
                Service(args.model, Path(tmp) / name, base | extra, env, "local")
            )
            for name, extra in modes.items()
        }
        model = load_model(
            args.model,
            device=args.device,
            dtype=args.dtype,
            cache_dir=Path(tmp) / "service-off" / "data" / "models",
            max_batch_size=args.batch,
        )
        side = args.size // model.card.vae_scale_factor
        shape = (2, model.card.latent_channels, side, side)
        latents = torch.from_numpy(np.random.default_rng(0).standard_normal(shape)).float()
        ids = {name: upload(svc.base_url, latents) for name, svc in services.items()}
        warm = rows(args.batch, 1, args.rounds, args.rounds + 1)  # outside the rounds' rows
        run_engine(model, latents, warm, args)
        for name, svc in services.items():
            run_service(svc.base_url, ids[name], warm, args)
        print("warm-up done", file=sys.stderr)
        names = list(results)
        for round_ in range(args.rounds):
            jobs = rows(args.jobs, args.rows_per_job, round_, args.rounds + 1)
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                before = cpu_seconds(services.get(name))
                if name == "engine":
                    seconds, latencies = run_engine(model, latents, jobs, args), []
                else:
                    seconds, latencies = run_service(services[name].base_url, ids[name], jobs, args)
                images = args.jobs * args.rows_per_job
                after = cpu_seconds(services.get(name))
                together = batched_jobs(services[name]) if name in services else []
                results[name].append(
                    {
                        "wall_s": seconds,
                        # batches of 2+ jobs: how many, and their mean size
                        "batches": len(together),
                        "jobs_per_batch": statistics.mean(together) if together else None,
                        "images_per_s": images / seconds,
                        "median_latency_s": statistics.median(latencies) if latencies else None,
                        "cpu_ms_per_image": {
                            part: 1000 * (after[part] - before[part]) / images for part in after
                        },
                        "load_1m": os.getloadavg()[0],
                    }
                )
                print(f"round {round_ + 1} {name}: {images / seconds:.2f} img/s", file=sys.stderr)
        floor = rq_job_cpu_ms(services["service-off"].stack.redis_url, args.floor_jobs)
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": _machine(),
        "load_1_5_15_before": load_before,
        "load_1_5_15_after": os.getloadavg(),
        "workload": {
            key: getattr(args, key)
            for key in (
                "model",
                "size",
                "steps",
                "guidance",
                "clients",
                "jobs",
                "rows_per_job",
                "batch",
                "wait_ms",
                "rounds",
                "floor_jobs",
                "threads",
                "device",
                "dtype",
            )
        }
        | {"prompt": PROMPT, "method": METHOD},
        "results": results,
        "rq_job_cpu_ms": floor,
    }


def cpu_seconds(svc: Service | None) -> dict[str, float]:
    """CPU seconds so far of this process (the engine, or the service's clients: their
    threads run here) and, for a service, of its API, its worker (with its storage writer)
    and its Redis."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    seconds = {"engine" if svc is None else "clients": own.ru_utime + own.ru_stime}
    if svc is not None:
        seconds["api"] = _proc_cpu_s(svc.pid("api"))
        seconds["worker"] = sum(map(_proc_cpu_s, _with_children(svc.pid("worker"))))
        seconds["redis"] = _proc_cpu_s(svc.stack.embedded_redis.child.pid)
    return seconds


def noop(payload: dict) -> dict:
    """A job that does nothing: what RQ alone costs per job (rq_job_cpu_ms)."""
    return payload


def rq_job_cpu_ms(redis_url: str, jobs: int) -> float:
    """CPU milliseconds per job that a plain RQ worker spends (in this process) taking,
    running and finishing no-op jobs with a one-row mix's payload, queued beforehand on
    the service's Redis: a floor under any RQ worker's cost per job."""
    queue = Queue("latentmix-floor", connection=Redis.from_url(redis_url))
    for _ in range(jobs):
        # by name: RQ refuses functions of __main__ (bench/ is on the path: the script's)
        queue.enqueue("small_jobs.noop", {"rows": [[0.5, 0.5]], "method": METHOD})
    worker = SimpleWorker([queue], connection=queue.connection)
    started = time.process_time()
    worker.work(burst=True, logging_level="WARNING")
    return 1000 * (time.process_time() - started) / jobs


def batched_jobs(svc: Service) -> list[int]:
    """The number of jobs in each batch the worker rendered together since the last call
    (from its log: worker/batching.py says each), and forgets them."""
    counts = []
    for log in svc.stack.log_dir.glob("worker*.log"):
        text = log.read_text()
        counts += [int(n) for n in re.findall(r"rendering (\d+) jobs together", text)]
        log.write_text("")
    return counts


def upload(url: str, latents: torch.Tensor) -> list[str]:
    """The latents stored through the API (POST /latents of safetensors files: ready, no
    inversion)."""
    files = [
        (
            "latents",
            (f"z{i}.safetensors", save({"latent": latent.numpy()}), "application/octet-stream"),
        )
        for i, latent in enumerate(latents)
    ]
    response = httpx.post(f"{url}/latents", files=files, timeout=600)
    response.raise_for_status()
    return [entry["id"] for entry in response.json()["latents"]]


def report(data: dict) -> str:
    w, r = data["workload"], data["results"]
    rate = {name: [run["images_per_s"] for run in runs] for name, runs in r.items()}
    lines = [
        f"### small jobs, {w['model']}: {w['clients']} clients, {w['jobs']} jobs of "
        f"{w['rows_per_job']} row(s), {w['size']} px, {w['steps']} steps, guidance "
        f"{w['guidance']}, batch {w['batch']}, batching wait {w['wait_ms']} ms",
        "",
        f"{data['date']}; {data['machine']['cpu']}, {data['machine']['cpu_count']} CPUs, "
        f"{w['threads']} torch thread(s) per process, {w['rounds']} rounds; load average "
        f"before {' / '.join(f'{v:.2f}' for v in data['load_1_5_15_before'])}.",
        "",
        "| round | engine img/s | service, batching off | service, batching on | "
        "off / engine | on / engine |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for index in range(w["rounds"]):
        engine, off, on = (rate[name][index] for name in ("engine", "service-off", "service-on"))
        lines.append(
            f"| {index + 1} | {engine:.2f} | {off:.2f} | {on:.2f} | {off / engine:.2f}x "
            f"| {on / engine:.2f}x |"
        )
    engine = statistics.median(rate["engine"])
    off, on = statistics.median(rate["service-off"]), statistics.median(rate["service-on"])
    ratios_on = [a / b for a, b in zip(rate["service-on"], rate["engine"], strict=True)]
    ratios_off = [a / b for a, b in zip(rate["service-off"], rate["engine"], strict=True)]
    lines += [
        "",
        f"- **service / engine, median of the rounds' ratios: batching off "
        f"{statistics.median(ratios_off):.2f}x, "
        f"on {statistics.median(ratios_on):.2f}x** (range on: {min(ratios_on):.2f}x to "
        f"{max(ratios_on):.2f}x; target >= 0.8x on tiny). Median img/s: engine {engine:.2f}, "
        f"off {off:.2f}, on {on:.2f}.",
    ]
    if all("cpu_ms_per_image" in run for runs in r.values() for run in runs):
        lines.append(f"- {cpu_text(r)}")
        if "rq_job_cpu_ms" in data:
            lines.append(f"- {budget_text(r, data['rq_job_cpu_ms'], data['machine'])}")
    return "\n".join(lines)


def median_cpu_ms(results: dict[str, list[dict]], variant: str, part: str) -> float:
    """A process's CPU milliseconds per image in a variant, the median over the rounds."""
    return statistics.median(run["cpu_ms_per_image"][part] for run in results[variant])


def cpu_text(results: dict[str, list[dict]]) -> str:
    """CPU milliseconds per image, by process (medians over the rounds)."""
    parts = ("worker", "api", "clients", "redis")
    on = ", ".join(f"{part} {median_cpu_ms(results, 'service-on', part):.1f}" for part in parts)
    total = sum(median_cpu_ms(results, "service-on", part) for part in parts)
    return (
        f"CPU ms per image: engine {median_cpu_ms(results, 'engine', 'engine'):.1f}; service with "
        f"batching on {total:.1f} in all ({on}), against the machine's "
        f"{os.cpu_count()} cores."
    )


def budget_text(results: dict[str, list[dict]], rq_ms: float, machine: dict) -> str:
    """What 0.8x of the engine leaves the worker per image: the machine's cores over 0.8 x
    the engine's rate, less what the other processes took; against the engine's own CPU and
    RQ's floor per job (every image is one job here)."""
    cores = machine["cpu_count"]
    engine_rate = statistics.median(run["images_per_s"] for run in results["engine"])
    budget = 1000 * cores / (0.8 * engine_rate)
    others = sum(median_cpu_ms(results, "service-on", part) for part in ("api", "clients", "redis"))
    engine = median_cpu_ms(results, "engine", "engine")
    worker = median_cpu_ms(results, "service-on", "worker")
    left = budget - others - engine
    return (
        f"CPU budget of 0.8x: {budget:.1f} ms per image on {cores} cores; API, clients and "
        f"Redis took {others:.1f} and the engine's rendering {engine:.1f}, which leaves "
        f"**{left:.1f} ms** per image for all of the worker's work besides rendering, "
        f"against {rq_ms:.1f} ms that RQ alone spends per no-op job (a plain RQ worker on "
        f"the service's Redis) and {worker - engine:.1f} ms that the worker spent."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny, sd15-random, ...")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--jobs", type=int, default=96, help="mix jobs per round and variant")
    parser.add_argument("--rows-per-job", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16, help="UNet batch, engine and worker")
    parser.add_argument("--wait-ms", type=float, default=500.0, help="batching wait (cap), when on")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per process (0: torch's default)"
    )
    parser.add_argument(
        "--floor-jobs", type=int, default=500, help="no-op jobs to measure RQ's cost per job"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    run_and_report(parser, run, report)


if __name__ == "__main__":
    main()
