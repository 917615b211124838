"""Cross-job batching (issue 30): a worker that takes a mix or an inversion job claims queued
jobs of the same kind and settings and runs their rows through the denoiser as one batch.

RQ hands a worker one job at a time. Here the worker, holding such a job, looks at its queue
(waiting up to `worker_batch_wait_ms` for company) and claims compatible jobs itself, each
with an LREM of its id: Redis removes an id once, so of several workers scanning one queue
exactly one gets each job (RQ's own dequeue pops ids the same way). Each claimed job then
goes through RQ's own bookkeeping in a thread of its own (`prepare_execution`,
`perform_job`: started registry, heartbeat, result or failure, exception handlers), so it
keeps its own progress, result, cancellation and failure. The jobs meet only at the
denoiser: `generate_rows` (mixes) and `invert_rows` (inversions) hand each job's rows to the
batch's `Rendezvous`, which waits until every job still running has rows waiting, then runs
them in one call.

- A job that fails before or after rendering fails alone; the others go on.
- A canceled job is seen at the next step's progress report, as alone; its rows finish the
  batch they are in (the other jobs' rows are in the same UNet call) and the job then ends
  canceled. A batch whose jobs are all canceled stops at that step.
- A denoiser call that raises fails every job whose rows it held, and only those.
- A killed worker: each job has its own execution and heartbeat entry, so the reaper fails
  exactly the jobs the worker held.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from latentmix.service.core.contract import INVERT, MIX, InversionSettings
from latentmix.worker.engine.diffusion import generate, invert
from latentmix.worker.engine.results import Inverted, ProgressFn

if TYPE_CHECKING:
    from rq import Queue
    from rq.job import Job
    from rq.worker import BaseWorker

    from latentmix.worker.engine.models import LoadedModel

log = logging.getLogger("latentmix.worker")

# Queued jobs looked at per scan for company (the head of the queue: the oldest).
SCAN_DEPTH = 64
POLL_INTERVAL_S = 0.001

_current = threading.local()  # the rendezvous of the batch this thread's job belongs to


def generate_rows(
    model: LoadedModel,
    latents: torch.Tensor | Inverted,
    prompt: str,
    *,
    steps: int,
    guidance_scale: float,
    progress: ProgressFn | None,
) -> list[Image.Image]:
    """`generate` for a task: together with the other jobs of this thread's batch, if any."""
    rendezvous: Rendezvous | None = getattr(_current, "rendezvous", None)
    if rendezvous is None:
        return generate(
            model, latents, prompt, steps=steps, guidance_scale=guidance_scale, progress=progress
        )
    inverted = latents if isinstance(latents, Inverted) else None
    request = _MixRows(
        model=model,
        latent=inverted.latent if inverted else latents,
        aux=inverted.aux if inverted else {},
        method=inverted.method if inverted else None,
        settings=inverted.settings if inverted else {},
        prompt=prompt,
        steps=steps,
        guidance_scale=guidance_scale,
        progress=progress,
    )
    return rendezvous.run(request)


def invert_rows(
    model: LoadedModel,
    images: list[Image.Image],
    prompts: list[str],
    settings: InversionSettings,
    *,
    progress: ProgressFn | None,
    measure: bool,
) -> Inverted:
    """`invert` for a task: together with the other jobs of this thread's batch, if any."""
    rendezvous: Rendezvous | None = getattr(_current, "rendezvous", None)
    if rendezvous is None:
        return invert(model, images, prompts, settings, progress, measure=measure)
    request = _InvertRows(model, images, prompts, settings, measure, progress=progress)
    return rendezvous.run(request)


# --- claiming company ---------------------------------------------------------------------


def batch_key(job: Job) -> tuple | None:
    """What a job must share with another to run in one denoiser call. A mix: its queue (the
    model), steps, guidance and the inputs' inversion method and settings (the sampler); an
    inversion: its queue, its settings (method, options, steps, guidance, size) and whether
    every latent is regenerated to measure it. None for a job that is not batched (other
    tasks, attention interpolation, a request of an older release). The latents' size is
    checked when the rows meet."""
    if not job.args or not isinstance(job.args[0], dict):
        return None
    raw = job.args[0]
    if job.func_name == INVERT.task and "items" in raw and "settings" in raw:
        settings = json.dumps(raw["settings"], sort_keys=True)
        return (job.origin, INVERT.name, settings, raw.get("measure_reconstruction") == "all")
    if job.func_name != MIX.task or "rows" not in raw or raw.get("attention", "none") != "none":
        return None
    sampler = json.dumps(raw.get("inversion_settings") or {}, sort_keys=True)
    return (job.origin, raw["steps"], float(raw["guidance_scale"]), raw.get("inversion"), sampler)


def _rows(job: Job) -> int:
    """A job's rows: a mix's weight rows, an inversion's images."""
    raw = job.args[0]
    return len(raw["rows"] if job.func_name == MIX.task else raw["items"])


def claim_company(
    worker: BaseWorker, job: Job, queue: Queue, *, max_rows: int, wait_s: float
) -> list[Job]:
    """Queued jobs to render together with `job` (same `batch_key`), claimed from `queue`
    (their ids removed from it: no other worker will take them), up to `max_rows` rows in
    all; waiting up to `wait_s` for them to arrive."""
    key = batch_key(job)
    if key is None:
        return []
    rows, company = _rows(job), []
    looked_at: set[str] = set()  # ids fetched before: a job's request does not change
    deadline = time.monotonic() + wait_s
    while rows < max_rows:
        for candidate in _queued(worker, queue, looked_at):
            if batch_key(candidate) != key or rows + _rows(candidate) > max_rows:
                continue
            if worker.connection.lrem(queue.key, 1, candidate.id):  # ours, and only ours
                company.append(candidate)
                rows += _rows(candidate)
        if rows >= max_rows or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL_S)
    return company


def _queued(worker: BaseWorker, queue: Queue, looked_at: set[str]) -> list[Job]:
    """The jobs at the head of the queue not looked at before (adds them to `looked_at`)."""
    ids = [
        i.decode() if isinstance(i, bytes) else i
        for i in worker.connection.lrange(queue.key, 0, SCAN_DEPTH - 1)
    ]
    ids = [i for i in ids if i not in looked_at]
    looked_at.update(ids)
    if not ids:
        return []
    jobs = worker.job_class.fetch_many(
        ids, connection=worker.connection, serializer=worker.serializer
    )
    return [job for job in jobs if job is not None]


# --- running together ---------------------------------------------------------------------


def run_together(execute: Callable[[Job, Queue], None], jobs: Sequence[Job], queue: Queue) -> None:
    """`execute(job, queue)` (RQ's whole run of one job) for each job, each in its own
    thread (the first in this one), their rows rendered together. Returns when all ended."""
    rendezvous = Rendezvous(len(jobs))

    def run(job: Job) -> None:
        _current.rendezvous = rendezvous
        try:
            execute(job, queue)
        finally:
            _current.rendezvous = None
            rendezvous.leave()

    threads = [
        threading.Thread(target=run, args=(job,), name=f"latentmix-batch-{job.id}", daemon=True)
        for job in jobs[1:]
    ]
    for thread in threads:
        thread.start()
    log.info("rendering %d jobs together: %s", len(jobs), ", ".join(job.id for job in jobs))
    run(jobs[0])
    for thread in threads:
        thread.join()


@dataclass
class _Request:
    """One job's rows waiting for the denoiser, and what came of them."""

    progress: ProgressFn | None = field(default=None, kw_only=True)
    value: Any = field(default=None, kw_only=True)  # this job's part of the call's result
    error: BaseException | None = field(default=None, kw_only=True)
    done: bool = field(default=False, kw_only=True)

    def key(self) -> tuple:
        """What requests must share to go through one call."""
        raise NotImplementedError

    @staticmethod
    def run_group(group: list) -> None:
        """One call over the group's rows; each request gets its own part back."""
        raise NotImplementedError

    def rows(self) -> int:
        """How many rows of the group's call are this request's."""
        raise NotImplementedError

    def part(self, result: Any, start: int, stop: int) -> Any:
        """Rows start..stop of the group's result, as this job takes them."""
        raise NotImplementedError

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    def report(self, done: int, total: int) -> None:
        """This job's progress; its failure (a cancel) is kept for it, not raised."""
        if self.progress is None or self.error is not None:
            return
        try:
            self.progress(done, total)
        except Exception as exc:
            self.error = exc


def _group_progress(group: list[_Request]) -> ProgressFn:
    """Every job's progress at once; stops the call when every job has failed (canceled)."""

    def progress(done: int, total: int) -> None:
        for request in group:
            request.report(done, total)
        if all(request.error is not None for request in group):
            raise group[0].error

    return progress


@dataclass
class _MixRows(_Request):
    """A mix job's mixed latents to generate images from."""

    model: LoadedModel
    latent: torch.Tensor
    aux: dict[str, torch.Tensor]
    method: str | None  # None: plain latents (the family's default sampler)
    settings: dict[str, Any]
    prompt: str
    steps: int
    guidance_scale: float

    def key(self) -> tuple:
        """Within a batch of compatible jobs, only the latents' size can still differ."""
        aux = tuple(sorted((name, tuple(value.shape[1:])) for name, value in self.aux.items()))
        sampler = json.dumps(self.settings, sort_keys=True, default=str)
        shape = tuple(self.latent.shape[1:])
        return (id(self.model), self.steps, self.guidance_scale, self.method, sampler, shape, aux)

    @staticmethod
    def run_group(group: list[_MixRows]) -> None:
        _render_group(group)

    def rows(self) -> int:
        return len(self.latent)

    def part(self, images: list[Image.Image], start: int, stop: int) -> list[Image.Image]:
        return images[start:stop]


@dataclass
class _InvertRows(_Request):
    """An inversion job's images to invert."""

    model: LoadedModel
    images: list[Image.Image]
    prompts: list[str]
    settings: InversionSettings
    measure: bool

    def key(self) -> tuple:
        return (id(self.model), INVERT.name, self.settings.model_dump_json(), self.measure)

    @staticmethod
    def run_group(group: list[_InvertRows]) -> None:
        """One `invert` over the group's images; each job's latents (and state and measured
        errors) its own rows of it."""
        first = group[0]
        _call_group(
            group,
            lambda progress: invert(
                first.model,
                [image for request in group for image in request.images],
                [prompt for request in group for prompt in request.prompts],
                first.settings,
                progress,
                measure=first.measure,
            ),
        )

    def rows(self) -> int:
        return len(self.images)

    def part(self, inverted: Inverted, start: int, stop: int) -> Inverted:
        return inverted.rows(start, stop)


class Rendezvous:
    """Where the jobs of one batch meet at the denoiser: each `run` waits until every job
    still running has rows waiting (or has ended), then one of them runs all the waiting
    rows, grouped by their `key`, and each gets its own part back."""

    def __init__(self, participants: int):
        self._condition = threading.Condition()
        self._active = participants
        self._waiting: list[_Request] = []
        self._rendering = False

    def leave(self) -> None:
        """A job ended: the others no longer wait for its rows."""
        with self._condition:
            self._active -= 1
            self._condition.notify_all()

    def run(self, rows: _Request) -> Any:
        with self._condition:
            self._waiting.append(rows)
            self._condition.notify_all()
            while not rows.done:
                if not self._rendering and len(self._waiting) >= self._active:
                    batch, self._waiting, self._rendering = self._waiting, [], True
                    break
                self._condition.wait()
            else:
                return rows.outcome()
        try:
            _render(batch)
        finally:
            with self._condition:
                for waiting in batch:
                    waiting.done = True
                self._rendering = False
                self._condition.notify_all()
        return rows.outcome()


def _render(batch: list[_Request]) -> None:
    groups: dict[tuple, list[_Request]] = {}
    for rows in batch:
        groups.setdefault((type(rows), rows.key()), []).append(rows)
    for group in groups.values():
        type(group[0]).run_group(group)


def _render_group(group: list[_MixRows]) -> None:
    """One denoiser call over the group's rows; each job's images, progress and failure
    its own."""
    first = group[0]
    latent = torch.cat([rows.latent for rows in group])
    latents: torch.Tensor | Inverted = latent
    if first.method is not None:
        aux = {name: torch.cat([rows.aux[name] for rows in group]) for name in first.aux}
        latents = Inverted(latent=latent, aux=aux, method=first.method, settings=first.settings)
    prompts = [rows.prompt for rows in group for _ in range(len(rows.latent))]
    _call_group(
        group,
        lambda progress: generate(
            first.model,
            latents,
            prompts,
            steps=first.steps,
            guidance_scale=first.guidance_scale,
            progress=progress,
        ),
    )


def _call_group(group: list[_Request], call: Callable[[ProgressFn], Any]) -> None:
    """`call(progress)` once for the whole group; each request takes its rows of the result,
    or, if the call raises, its failure (and only the group's requests fail)."""
    try:
        result = call(_group_progress(group))
    except Exception as exc:
        for request in group:
            request.error = request.error or exc
        return
    start = 0
    for request in group:
        request.value = request.part(result, start, start + request.rows())
        start += request.rows()
