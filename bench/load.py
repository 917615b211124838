"""A bounded load test on loopback: many concurrent clients submit and poll for a fixed
time, then every accepted job must reach a terminal state.

    .venv/bin/python bench/load.py                       # 16 clients, 30 s, writes bench/LOAD.md
    .venv/bin/python bench/load.py --clients 4 --duration 5 --out -

It starts its own stack on 127.0.0.1 only (`ServiceStack`, as `latentmix up` does: a
Redis-protocol server, one worker serving the tiny model, the API under uvicorn, a local
store) in a temporary directory, and stops it when done. Each client loops over a mix of
real requests (Idempotency-Key on every POST):

- POST /mix of two of the seeded latents, random weights, 2 steps   (accepted: a job)
- POST /latents with an image, 2 inversion steps, sometimes cached  (accepted: a job)
- POST /latents with an uploaded latent                             (200)
- GET /jobs/{id} of one of its unfinished jobs, GET /latents/{id}, GET /healthz

A client keeps at most MAX_IN_FLIGHT jobs unfinished: past that it polls instead of
submitting, as a real client waiting for its results would.

An error is any transport failure, any 5xx, or any status a request of its kind cannot
legitimately get. After the load phase, the jobs are drained: each accepted job is polled
until it is terminal (bounded by --drain-timeout).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from safetensors.numpy import save

from latentmix.service.cli.stack import ServiceStack
from latentmix.service.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"succeeded", "failed", "canceled"}
MAX_IN_FLIGHT = 2  # unfinished jobs per client: clients submit, then poll
EXPECTED = {  # what each kind of request may legitimately answer
    "mix": {202},
    "invert": {200, 202},
    "upload": {200},
    "job": {200},
    "latent": {200},
    "health": {200},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def latent_bytes(rng: np.random.Generator) -> bytes:
    return save({"latent": rng.standard_normal((4, 8, 8)).astype(np.float32)})


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# --- the stack under test ---------------------------------------------------------------------


def service_stack(root: Path, workers: int) -> ServiceStack:
    """The service as `latentmix up` runs it: an embedded Redis-protocol server, `workers`
    workers serving the tiny model and the API, on 127.0.0.1 with a local store."""
    settings = Settings(
        model="tiny",
        data_dir=root / "data",
        host="127.0.0.1",
        port=free_port(),
        embedded_redis_port=free_port(),
    )
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    return ServiceStack(settings, workers=workers, env=env, log_dir=root / "logs")


# --- clients ----------------------------------------------------------------------------------


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    jobs: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, status: int | str, seconds: float, job: str | None) -> None:
        with self.lock:
            self.statuses[(kind, status)] += 1
            self.latencies.append(seconds)
            if status not in EXPECTED[kind]:
                self.errors[(kind, status)] += 1
            if job:
                self.jobs.add(job)


def client_loop(url: str, seed: int, latents: list[str], deadline: float, tally: Tally) -> None:
    """Submit jobs (at most MAX_IN_FLIGHT unfinished at a time) and poll them, with reads
    and uploads in between, until the deadline."""
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    in_flight: list[str] = []
    with httpx.Client(base_url=url, timeout=60) as http:
        while time.monotonic() < deadline:
            kind, method, path, options = next_request(rng, np_rng, latents, in_flight)
            if method == "POST":
                options["headers"] = {"Idempotency-Key": uuid.uuid4().hex}
            started = time.perf_counter()
            try:
                response = http.request(method, path, **options)
                status: int | str = response.status_code
            except httpx.HTTPError as exc:
                status, response = type(exc).__name__, None
            job = _job_of(kind, response)
            if job:
                in_flight.append(job)
            ended = kind == "job" and status == 200 and response.json()["status"] in TERMINAL
            if ended:
                in_flight.remove(path.rsplit("/", 1)[1])
            tally.record(kind, status, time.perf_counter() - started, job)


def next_request(rng, np_rng, latents: list[str], in_flight: list[str]):
    """(kind, method, path, httpx options) of the client's next request."""
    roll = rng.random()
    if roll < 0.45 and in_flight:
        return "job", "GET", f"/jobs/{rng.choice(in_flight)}", {}
    if roll < 0.15 and len(in_flight) < MAX_IN_FLIGHT:
        weights = [rng.random() + 0.01, rng.random() + 0.01]
        body = {"latents": rng.sample(latents, 2), "weights": weights, "steps": 2}
        return "mix", "POST", "/mix", {"json": body}
    if roll < 0.22 and len(in_flight) < MAX_IN_FLIGHT:
        image = png(rng.randrange(64))  # a small pool: some requests hit the cache
        return (
            "invert",
            "POST",
            "/latents",
            {
                "files": [("images", ("load.png", image, "image/png"))],
                "data": {"inversion_steps": "2", "guidance_scale": "1"},
            },
        )
    if roll < 0.30:
        payload = latent_bytes(np_rng)
        files = [("latents", ("z.safetensors", payload, "application/octet-stream"))]
        return "upload", "POST", "/latents", {"files": files}
    if roll < 0.95:
        return "latent", "GET", f"/latents/{rng.choice(latents)}", {}
    return "health", "GET", "/healthz", {}


def _job_of(kind: str, response: httpx.Response | None) -> str | None:
    if response is None or response.status_code != 202:
        return None
    body = response.json()
    if kind == "mix":
        return body["id"]
    if kind == "invert":
        return (body.get("job") or {}).get("id")
    return None


def drain(url: str, jobs: set[str], timeout: float) -> Counter:
    """Poll every accepted job until it is terminal; returns the count per final status."""
    final: Counter = Counter()
    pending = set(jobs)
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=30) as http:
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                status = http.get(f"/jobs/{job_id}").json()["status"]
                if status in TERMINAL:
                    final[status] += 1
                    pending.discard(job_id)
            if pending:
                time.sleep(0.5)
    final["not terminal"] = len(pending)
    return final


# --- report -----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else values[0]


def report(args, tally: Tally, final: Counter, elapsed: float, drained_in: float) -> str:
    total = sum(tally.statuses.values())
    errors = sum(tally.errors.values())
    by_kind = Counter()
    for (kind, _), count in tally.statuses.items():
        by_kind[kind] += count
    latencies = sorted(tally.latencies)
    lines = [
        "# Load test (loopback)",
        "",
        f"`{' '.join(['bench/load.py', *sys.argv[1:]])}` on a {os.cpu_count()}-core machine: "
        f"{args.clients} concurrent clients for {args.duration:g} s against the API, "
        f"{args.workers} worker(s) serving the tiny model, Redis and a local store, all on "
        "127.0.0.1.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| requests served | {total} ({total / elapsed:.0f}/s) |",
        f"| errors (5xx, transport, unexpected status) | {errors} |",
        f"| latency p50 / p95 / p99 | {percentile(latencies, 50) * 1000:.0f} / "
        f"{percentile(latencies, 95) * 1000:.0f} / {percentile(latencies, 99) * 1000:.0f} ms |",
        f"| jobs accepted | {len(tally.jobs)} |",
        f"| jobs terminal after the load | {len(tally.jobs) - final['not terminal']} "
        f"(succeeded {final['succeeded']}, failed {final['failed']}, "
        f"canceled {final['canceled']}) in {drained_in:.0f} s of draining |",
        f"| jobs not terminal | {final['not terminal']} |",
        "",
        "Requests by kind: "
        + ", ".join(f"{kind} {count}" for kind, count in sorted(by_kind.items()))
        + ".",
    ]
    if tally.errors:
        lines += ["", "Errors: " + ", ".join(f"{k} {s}: {n}" for (k, s), n in tally.errors.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "LOAD.md"), help="'-': stdout")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="latentmix-load-") as tmp:
        stack = service_stack(Path(tmp), args.workers)
        try:
            stack.start(ready_timeout=180)
            seed_rng = np.random.default_rng(0)
            with httpx.Client(base_url=stack.api_url, timeout=60) as http:
                latents = [
                    http.post(
                        "/latents",
                        files=[("latents", ("s.safetensors", latent_bytes(seed_rng), "x/y"))],
                    ).json()["latents"][0]["id"]
                    for _ in range(6)
                ]
            tally = Tally()
            started = time.monotonic()
            deadline = started + args.duration
            threads = [
                threading.Thread(
                    target=client_loop, args=(stack.api_url, i, latents, deadline, tally)
                )
                for i in range(args.clients)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
            drain_started = time.monotonic()
            final = drain(stack.api_url, tally.jobs, args.drain_timeout)
            drained_in = time.monotonic() - drain_started
        finally:
            stack.stop()

    text = report(args, tally, final, elapsed, drained_in)
    if args.out == "-":
        print(text, end="")
    else:
        Path(args.out).write_text(text)
        print(text, end="")
    failed = sum(tally.errors.values()) > 0 or final["not terminal"] > 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
