"""Cross-job batching (issue 30): continuous batching of the jobs a worker has in flight.

RQ hands a worker one job at a time. With batching on, the worker does not run a mix or an
inversion job to its end before taking the next: it starts the job in a thread of its own
(RQ's whole run of it: `prepare_execution`, `perform_job`, its started registry entry and
heartbeat, its result or failure, the exception handlers) and goes back to its queues, up
to `2 x max_batch_size` rows in flight. Jobs are taken by RQ's own dequeue, so several
workers on one queue never take a job twice, and a job nobody took stays queued.

The jobs meet only at the denoiser: `generate_rows` (mixes) and `invert_rows` (inversions)
hand each job's rows to the worker's `Renderer`, one thread that runs every waiting row of
compatible jobs in one call, up to `max_batch_size` rows. While a call runs, the next
call's rows gather, so the denoiser goes from one full batch to the next without waiting
for the previous jobs to store and publish their results (they do that in their threads,
beside the next call). A call short of `max_batch_size` rows first waits for company,
from when its rows arrived or the previous call ended (whichever is later), up to
`worker_batch_wait_ms` and to WAIT_SHARE of the previous call's time: one setting serves a
model whose calls take seconds (a long wait fills the batch, which costs little more than
a short one) and one whose calls take milliseconds (a wait as long would idle it).

- A job that fails before or after rendering fails alone; the others go on.
- A canceled job is seen at the next step's progress report, as alone; its rows finish the
  call they are in (the other jobs' rows are in it too) and the job then ends canceled. A
  call whose jobs are all canceled stops at that step.
- A denoiser call that raises fails every job whose rows it held, and only those.
- A killed worker: each job has its own execution and heartbeat entry, so the reaper fails
  exactly the jobs the worker held; jobs it had not taken stay queued.
- Any other job (a morph, an evaluation, a measurement) runs alone, in the worker's thread,
  once the jobs in flight have ended: it uses the model too.
- Stopping: a warm shutdown lets the jobs in flight finish (`drain`); an interruption
  reaches each of them at its next step.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from latentmix.service.core.contract import INVERT, MIX, InversionSettings
from latentmix.worker.engine.diffusion import encode_prompts, generate, invert
from latentmix.worker.engine.families.base import Conditioning
from latentmix.worker.engine.results import Inverted, ProgressFn

if TYPE_CHECKING:
    from rq import Queue
    from rq.job import Job

    from latentmix.worker.engine.models import LoadedModel

log = logging.getLogger("latentmix.worker")

# The most of the denoiser's time a call short of rows waits for company: the share of the
# last call's time (so at most about this share of throughput is spent waiting).
WAIT_SHARE = 0.05

_current = threading.local()  # the renderer and job id of this thread's job, when in flight


def generate_rows(
    model: LoadedModel,
    latents: torch.Tensor | Inverted,
    prompt: str | Conditioning,
    *,
    steps: int,
    guidance_scale: float,
    progress: ProgressFn | None,
) -> list[Image.Image]:
    """`generate` for a task: together with the other jobs of this thread's batch, if any.
    `prompt`: one prompt for every row, or each row's text condition."""
    renderer: Renderer | None = getattr(_current, "renderer", None)
    if renderer is None:
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
        job_id=_current.job_id,
    )
    return renderer.run(request)


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
    renderer: Renderer | None = getattr(_current, "renderer", None)
    if renderer is None:
        return invert(model, images, prompts, settings, progress, measure=measure)
    request = _InvertRows(
        model, images, prompts, settings, measure, progress=progress, job_id=_current.job_id
    )
    return renderer.run(request)


# --- the jobs in flight --------------------------------------------------------------------


def batchable(job: Job) -> bool:
    """Whether the job's rows can share denoiser calls with other jobs' rows: a mix without
    attention interpolation, an inversion; not other tasks, nor a request of an older
    release. Which calls they share is the rows' `key`."""
    if not job.args or not isinstance(job.args[0], dict):
        return False
    raw = job.args[0]
    if job.func_name == INVERT.task:
        return "items" in raw and "settings" in raw
    return job.func_name == MIX.task and "rows" in raw and raw.get("attention", "none") == "none"


def job_rows(job: Job) -> int:
    """A batchable job's rows: a mix's weight rows, an inversion's images."""
    raw = job.args[0]
    return len(raw["rows"] if job.func_name == MIX.task else raw["items"])


class InFlight:
    """The batchable jobs a worker runs at once, each in a thread of its own, their rows
    rendered by one `Renderer`; `limit` rows in all before the worker takes another job."""

    def __init__(self, execute: Callable[[Job, Queue], None], *, max_rows: int, wait_s: float):
        self.execute = execute  # RQ's whole run of one job
        self.renderer = Renderer(max_rows, wait_s)
        self.limit = 2 * max_rows  # a call's rows, and the next call's gathering
        self._changed = threading.Condition()
        self._rows: dict[str, int] = {}  # job id -> its rows

    def wait_for_room(self, should_stop: Callable[[], bool]) -> None:
        """Until fewer than `limit` rows are in flight (or the worker is stopping)."""
        with self._changed:
            while sum(self._rows.values()) >= self.limit and not should_stop():
                self._changed.wait(timeout=1)

    def start(self, job: Job, queue: Queue) -> None:
        """Runs the job in a thread of its own and returns."""
        with self._changed:
            self._rows[job.id] = job_rows(job)
        thread = threading.Thread(
            target=self._run, args=(job, queue), name=f"latentmix-job-{job.id}", daemon=True
        )
        thread.start()

    def _run(self, job: Job, queue: Queue) -> None:
        _current.renderer, _current.job_id = self.renderer, job.id
        try:
            self.execute(job, queue)
        finally:
            _current.renderer = _current.job_id = None
            with self._changed:
                del self._rows[job.id]
                self._changed.notify_all()

    def drain(self) -> None:
        """Until every job in flight has ended."""
        with self._changed:
            while self._rows:
                self._changed.wait()

    def close(self) -> None:
        self.drain()
        self.renderer.stop()


@dataclass
class _Request:
    """One job's rows waiting for the denoiser, and what came of them."""

    progress: ProgressFn | None = field(default=None, kw_only=True)
    job_id: str | None = field(default=None, kw_only=True)
    arrived: float = field(default_factory=time.monotonic, kw_only=True)
    value: Any = field(default=None, kw_only=True)  # this job's part of the call's result
    error: BaseException | None = field(default=None, kw_only=True)
    done: bool = field(default=False, kw_only=True)

    def key(self) -> tuple:
        """What requests must share to go through one call."""
        raise NotImplementedError

    @functools.cached_property
    def call_key(self) -> tuple:
        """`key()`, computed once: the renderer compares it at every wake-up."""
        return (type(self), self.key())

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
    prompt: str | Conditioning  # one prompt for all rows, or each row's text condition
    steps: int
    guidance_scale: float

    def key(self) -> tuple:
        """The model, steps, guidance, sampler (method and settings), latent and state
        shapes; prompts may differ (they are per row)."""
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


class Renderer:
    """One thread that runs the rows the jobs in flight wait with through the denoiser: the
    oldest waiting rows and every waiting row of the same `key`, up to `max_rows` (the
    oldest always), in one call; each job gets its own part back. Rows that arrive during a
    call go in the next one. Started with the first rows."""

    def __init__(self, max_rows: int, wait_s: float):
        self.max_rows, self.wait_s = max_rows, wait_s
        self._changed = threading.Condition()
        self._waiting: list[_Request] = []
        self._stopped = False
        self._free_since = 0.0  # when the last call ended
        self._last_call_s = math.inf  # how long it took (before the first: the setting rules)
        self._thread: threading.Thread | None = None

    def run(self, rows: _Request) -> Any:
        """`rows` rendered with the other jobs' rows of their call; this job's part."""
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="latentmix-renderer", daemon=True
                )
                self._thread.start()
            self._waiting.append(rows)
            self._changed.notify_all()
            while not rows.done:
                self._changed.wait()
        return rows.outcome()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def _loop(self) -> None:
        while (call := self._next_call()) is not None:
            started = time.monotonic()
            try:
                type(call[0]).run_group(call)
            except BaseException as exc:  # whatever a call raises, the renderer goes on
                for rows in call:
                    rows.error = rows.error or exc
            with self._changed:
                for rows in call:
                    rows.done = True
                self._free_since = time.monotonic()
                self._last_call_s = self._free_since - started
                self._changed.notify_all()

    def _next_call(self) -> list[_Request] | None:
        """The next call's rows, taken from the waiting ones; None once stopped."""
        with self._changed:
            while not self._waiting and not self._stopped:
                self._changed.wait()
            if not self._waiting:
                return None
            # A call short of rows waits for company, from when its rows arrived or the
            # last call ended (whichever is later), up to the operator's setting and to
            # WAIT_SHARE of the last call's time: a full batch pays where it costs little
            # more than a short one, and waiting never costs more than that share.
            wait_s = min(self.wait_s, WAIT_SHARE * self._last_call_s)
            deadline = max(self._waiting[0].arrived, self._free_since) + wait_s
            while self._rows_like_oldest() < self.max_rows and not self._stopped:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(timeout=left)
            call, taken = [], 0
            key = self._waiting[0].call_key
            for waiting in list(self._waiting):
                fits = not call or taken + waiting.rows() <= self.max_rows
                if waiting.call_key == key and fits:
                    call.append(waiting)
                    taken += waiting.rows()
                    self._waiting.remove(waiting)
        if len(call) > 1:
            ids = ", ".join(rows.job_id or "?" for rows in call)
            log.info("rendering %d jobs together: %s", len(call), ids)
        return call

    def _rows_like_oldest(self) -> int:
        key = self._waiting[0].call_key
        return sum(waiting.rows() for waiting in self._waiting if waiting.call_key == key)


def _render_group(group: list[_MixRows]) -> None:
    """One denoiser call over the group's rows; each job's images, progress and failure
    its own."""
    first = group[0]
    latent = torch.cat([rows.latent for rows in group])
    latents: torch.Tensor | Inverted = latent
    if first.method is not None:
        aux = {name: torch.cat([rows.aux[name] for rows in group]) for name in first.aux}
        latents = Inverted(latent=latent, aux=aux, method=first.method, settings=first.settings)
    _call_group(
        group,
        lambda progress: generate(
            first.model,
            latents,
            _group_text(group),
            steps=first.steps,
            guidance_scale=first.guidance_scale,
            progress=progress,
        ),
    )


def _group_text(group: list[_MixRows]) -> list[str] | Conditioning:
    """The group's text conditions, row by row: prompts, or, where a job brings its rows'
    own conditions (mixed prompts), conditions for all (prompts encoded)."""
    if all(isinstance(rows.prompt, str) for rows in group):
        return [rows.prompt for rows in group for _ in range(len(rows.latent))]
    model = group[0].model
    return Conditioning.concat(
        [
            rows.prompt
            if isinstance(rows.prompt, Conditioning)
            else encode_prompts(model, [rows.prompt] * len(rows.latent))
            for rows in group
        ]
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
