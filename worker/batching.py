"""Cross-job batching (issue 30): a worker that takes a mix job claims queued mix jobs it can
render together with it and runs their rows through the denoiser as one batch.

RQ hands a worker one job at a time. Here the worker, holding a mix job, looks at its queue
(waiting up to `worker_batch_wait_ms` for company) and claims compatible jobs itself, each
with an LREM of its id: Redis removes an id once, so of several workers scanning one queue
exactly one gets each job (RQ's own dequeue pops ids the same way). Each claimed job then
goes through RQ's own bookkeeping in a thread of its own (`prepare_execution`,
`perform_job`: started registry, heartbeat, result or failure, exception handlers), so it
keeps its own progress, result, cancellation and failure. The jobs meet only at the
denoiser: `generate_rows` hands each job's rows to the batch's `Rendezvous`, which waits
until every job still running has rows to render, then renders them in one call.

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

from latentmix.service.core.contract import MIX
from latentmix.worker.engine.diffusion import generate
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
    request = _Rows(
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
    return rendezvous.generate(request)


# --- claiming company ---------------------------------------------------------------------


def batch_key(job: Job) -> tuple | None:
    """What a mix job must share with another to be rendered in one denoiser call: its
    queue (the model), steps, guidance and the inputs' inversion method and settings (the
    sampler); None for a job that is not batched (other tasks, attention interpolation, a
    request of an older release). The latents' size is checked when the rows meet."""
    if job.func_name != MIX.task or not job.args or not isinstance(job.args[0], dict):
        return None
    raw = job.args[0]
    if "rows" not in raw or raw.get("attention", "none") != "none":
        return None
    sampler = json.dumps(raw.get("inversion_settings") or {}, sort_keys=True)
    return (job.origin, raw["steps"], float(raw["guidance_scale"]), raw.get("inversion"), sampler)


def _rows(job: Job) -> int:
    return len(job.args[0]["rows"])


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
class _Rows:
    """One job's rows waiting for the denoiser, and what came of them."""

    model: LoadedModel
    latent: torch.Tensor
    aux: dict[str, torch.Tensor]
    method: str | None  # None: plain latents (the family's default sampler)
    settings: dict[str, Any]
    prompt: str
    steps: int
    guidance_scale: float
    progress: ProgressFn | None
    images: list[Image.Image] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False

    def key(self) -> tuple:
        """What rows must share to go through one call (within a batch of compatible jobs,
        only the latents' size can still differ)."""
        aux = tuple(sorted((name, tuple(value.shape[1:])) for name, value in self.aux.items()))
        sampler = json.dumps(self.settings, sort_keys=True, default=str)
        shape = tuple(self.latent.shape[1:])
        return (id(self.model), self.steps, self.guidance_scale, self.method, sampler, shape, aux)

    def report(self, done: int, total: int) -> None:
        """This job's progress; its failure (a cancel) is kept for it, not raised."""
        if self.progress is None or self.error is not None:
            return
        try:
            self.progress(done, total)
        except Exception as exc:
            self.error = exc

    def outcome(self) -> list[Image.Image]:
        if self.error is not None:
            raise self.error
        return self.images


class Rendezvous:
    """Where the jobs of one batch meet at the denoiser: each `generate` waits until every
    job still running has rows waiting (or has ended), then one of them renders all the
    waiting rows, grouped by `_Rows.key`, and each gets its own images back."""

    def __init__(self, participants: int):
        self._condition = threading.Condition()
        self._active = participants
        self._waiting: list[_Rows] = []
        self._rendering = False

    def leave(self) -> None:
        """A job ended: the others no longer wait for its rows."""
        with self._condition:
            self._active -= 1
            self._condition.notify_all()

    def generate(self, rows: _Rows) -> list[Image.Image]:
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


def _render(batch: list[_Rows]) -> None:
    groups: dict[tuple, list[_Rows]] = {}
    for rows in batch:
        groups.setdefault(rows.key(), []).append(rows)
    for group in groups.values():
        _render_group(group)


def _render_group(group: list[_Rows]) -> None:
    """One denoiser call over the group's rows; each job's images, progress and failure
    its own."""
    first = group[0]
    latent = torch.cat([rows.latent for rows in group])
    latents: torch.Tensor | Inverted = latent
    if first.method is not None:
        aux = {name: torch.cat([rows.aux[name] for rows in group]) for name in first.aux}
        latents = Inverted(latent=latent, aux=aux, method=first.method, settings=first.settings)
    prompts = [rows.prompt for rows in group for _ in range(len(rows.latent))]

    def progress(done: int, total: int) -> None:
        for rows in group:
            rows.report(done, total)
        if all(rows.error is not None for rows in group):
            raise first.error  # every job canceled (or failed reporting): stop here

    try:
        images = generate(
            first.model,
            latents,
            prompts,
            steps=first.steps,
            guidance_scale=first.guidance_scale,
            progress=progress,
        )
    except Exception as exc:
        for rows in group:
            rows.error = rows.error or exc
        return
    start = 0
    for rows in group:
        rows.images = images[start : start + len(rows.latent)]
        start += len(rows.latent)
