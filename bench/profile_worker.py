"""Where a worker's time goes on a job: py-spy samples of the worker process while the
service (as `bench/throughput.py` starts it) runs the throughput workload's invert and mix
jobs, summarised per thread and per function.

    .venv/bin/pip install py-spy    # a tool, not a dependency of the project
    .venv/bin/python bench/profile_worker.py --model tiny -k 16 -n 32 --store local

`--workload small` profiles the many-small-requests workload of `bench/small_jobs.py`
instead (16 clients of one-row mixes, cross-job batching on):

    .venv/bin/python bench/profile_worker.py --model tiny --workload small --jobs 96

Prints, for the worker's main thread (the one that computes), the share of samples on each
line of the task and what it calls (the denoiser's calls as one), and between jobs (RQ's
loop); `--gil` samples only threads holding the GIL (who competes with the compute thread),
`--process api` profiles the API instead. py-spy samples without pausing the process
(`--nonblocking`); the sampling still costs the target some speed, so read shares, not
times. `--raw FILE` keeps py-spy's collapsed stacks for a flame graph (speedscope reads them).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from small_jobs import rows, run_service, upload  # bench/ is the script's directory
from throughput import Service, ServiceRun, Workload

from latentmix.client import LatentMixClient

DENOISERS = ("unet_2d_condition.py", "transformer_sd3.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("-k", type=int, default=16)
    parser.add_argument("-n", type=int, default=32)
    parser.add_argument("--store", choices=("s3", "local"), default="local")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--process", choices=("worker", "api"), default="worker")
    parser.add_argument("--gil", action="store_true", help="sample only threads holding the GIL")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks here")
    parser.add_argument("--workload", choices=("throughput", "small"), default="throughput")
    parser.add_argument("--jobs", type=int, default=96, help="small: mix jobs per round")
    parser.add_argument("--clients", type=int, default=16, help="small: concurrent clients")
    args = parser.parse_args()
    if not shutil.which("py-spy"):
        sys.exit("py-spy not found: .venv/bin/pip install py-spy")
    torch.set_num_threads(1)
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    small = args.workload == "small"
    settings = {"worker_batch_wait_ms": 20.0, "max_batch_size": 16} if small else {}
    with (
        tempfile.TemporaryDirectory(prefix="latentmix-profile-") as tmp,
        Service(args.model, Path(tmp), settings, env, args.store) as svc,
    ):
        raw = args.raw or Path(tmp) / "stacks.txt"
        profile = profile_small if small else profile_throughput
        profile(args, svc, lambda: record(args, svc, raw))
        print(summarise(raw.read_text()))


def record(args: argparse.Namespace, svc: Service, raw: Path) -> subprocess.Popen:
    """py-spy sampling the chosen process into `raw` until sent SIGINT."""
    spy = subprocess.Popen(
        [
            *("py-spy", "record", "--pid", str(svc.pid(args.process))),
            *("--rate", str(args.rate), "--format", "raw", "--threads", "--nonblocking"),
            *(("--gil",) if args.gil else ("--idle",)),
            *("-o", str(raw)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    return spy


def stop(spy: subprocess.Popen) -> None:
    spy.send_signal(subprocess.signal.SIGINT)
    spy.wait(60)


def profile_throughput(args: argparse.Namespace, svc: Service, start_recording) -> None:
    w = Workload(args.model, args.size, args.steps, 7.5, args.k, args.n)
    with LatentMixClient(svc.base_url, timeout=600) as client:
        warm = w.warmup(16)
        run = ServiceRun(client, svc, warm, warm.images(offset=1000))
        run.invert({}), run.mix({})
        spy = start_recording()
        out: dict = {}
        for round_ in range(args.rounds):
            run = ServiceRun(client, svc, w, w.images(offset=round_ * w.k))
            run.invert(out)
            run.mix(out)
        stop(spy)
    for phase in ("invert", "mix"):
        times = [p.wall_s for p in out[phase]]
        workers = [p.detail.get("worker_s") or 0 for p in out[phase]]
        print(f"{phase}: end to end {min(times):.3f} s best, worker {min(workers):.3f} s best")


def profile_small(args: argparse.Namespace, svc: Service, start_recording) -> None:
    options = argparse.Namespace(clients=args.clients, steps=args.steps, guidance=1.0)
    with LatentMixClient(svc.base_url) as client:  # the latents' shape from the model's card
        (card,) = [info.card for info in client.models() if info.name == args.model]
    side = args.size // card["vae_scale_factor"]
    shape = (2, card["latent_channels"], side, side)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    ids = upload(svc.base_url, latents)
    run_service(svc.base_url, ids, rows(16, 1, args.rounds, args.rounds + 1), options)
    spy = start_recording()
    for round_ in range(args.rounds):
        seconds, _ = run_service(
            svc.base_url, ids, rows(args.jobs, 1, round_, args.rounds + 1), options
        )
        print(f"round {round_ + 1}: {args.jobs / seconds:.2f} img/s")
    stop(spy)


def summarise(collapsed: str) -> str:
    """The main thread's samples by where they fall: inside a task, the task's line and what
    it calls (any denoiser call counted as one); outside, RQ's loop (waiting for the next
    job, bookkeeping). Other threads' samples only as a count: they run beside compute."""
    where: collections.Counter = collections.Counter()
    others: collections.Counter = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if "MainThread" not in frames[0]:
            others[frames[0]] += int(count)
            continue
        names = [re.sub(r" \(.*?:(\d+)\)", r":\1", frame) for frame in frames]
        task = next((i for i, name in enumerate(names) if "rq_task" in name), None)
        if task is None:
            loop = next((i for i, name in enumerate(names) if "BaseWorker.work" in name), 0)
            key = "between jobs: " + " > ".join(names[loop + 1 : loop + 4])
        elif any(marker in stack for marker in DENOISERS):
            key = f"{names[task + 1]} > denoiser"
        else:
            key = " > ".join(names[task + 1 : task + 3])
        where[key] += int(count)
    total = sum(where.values())
    lines = [f"\nmain thread, {total} samples:"]
    for key, samples in where.most_common(20):
        lines.append(f"  {100 * samples / max(total, 1):5.1f}%  {key}")
    lines.append("other threads (samples):")
    lines += [f"  {samples:6d}  {name}" for name, samples in others.most_common()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
