"""The worker process: load the model once, then serve its queue with RQ's SimpleWorker
(with LATENTMIX_WORKER_BATCH_WAIT_MS set, several mix and inversion jobs at once, their rows
in shared denoiser calls: worker/batching.py).

SimpleWorker runs jobs in this process: the pipeline stays warm across jobs and nothing
forks after torch (or CUDA) is up. RQ handles SIGTERM as a warm shutdown: the current
job finishes, then the worker exits. Jobs are loaded as `LatentMixJob`: a job that names
any other function than the service's tasks fails without anything being imported.

Faults:

- A killed worker: SimpleWorker runs the job in the main thread, and RQ would keep the
  job's registry entry alive for job_timeout + 60 s, so a SIGKILLed worker's job would look
  `running` for an hour. Here a heartbeat thread keeps the worker's key and its running
  job's entries alive with a short TTL (`LATENTMIX_WORKER_HEARTBEAT_TTL_S`, refreshed every
  third of it); once the worker is gone they expire and the API's reaper
  (service/api/reaper.py) fails the job as abandoned. Jobs still queued stay queued for
  the next worker.
- A job that raises (a torch or CUDA error included) fails with its message and the
  worker takes the next job. After a failure on a CUDA device the worker checks that the
  device still works; if not (a device-side assert or illegal memory access poisons the
  CUDA context for the whole process), it stops after recording the failure and exits
  with EXIT_DEVICE_LOST, for its supervisor (compose `restart:`, `latentmix up`) to
  start a fresh process. Out-of-memory is not poisoning: the cache is emptied and the
  worker goes on.
- Stopping: the first SIGTERM (or SIGINT) is RQ's warm shutdown (the job finishes, then the
  worker exits). INTERRUPT_REQUEUE (SIGUSR1: `latentmix up`'s grace period ran out, or the
  launcher died) stops the job at its next diffusion step and puts it back at the front of
  its queue; INTERRUPT_FAIL (SIGUSR2, or a second SIGTERM/SIGINT: the user asked to stop
  now) stops it there as failed, "stopped by shutdown". Either way the worker exits within
  STOP_NOW_S, even if Redis is gone too.
"""

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
from cachetools import LRUCache
from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import SimpleWorker, worker_registration
from rq.exceptions import AbandonedJobError
from rq.executions import ExecutionRegistry
from rq.job import JobStatus as RQStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.utils import current_timestamp, now
from rq.worker import DequeueStrategy, WorkerStatus

from latentmix.service.core.config import Settings
from latentmix.service.core.job_events import announce
from latentmix.service.core.jobs import (
    BACKGROUND_PREFIX,
    INTERRUPT_FAIL,
    INTERRUPT_REQUEUE,
    REDIS_BACKOFF_CAP_S,
    REDIS_ERRORS,
    JobStatus,
    LatentMixJob,
    background_queue,
    cancel_requested,
    ended_elsewhere,
    get_queue,
    heartbeats_current,
    mark_canceled,
    prepare_requeue,
    report_abandoned,
    report_job_end,
)
from latentmix.service.core.latents import LatentCatalog
from latentmix.service.core.model_card import ModelCard
from latentmix.service.core.model_cards import (
    SERVING_BEATS,
    publish_card,
    stop_serving,
    worker_name,
)
from latentmix.service.core.redis_connection import connect
from latentmix.service.core.webhooks import webhook_queue
from latentmix.worker.batching import InFlight, batchable
from latentmix.worker.engine.attention.keyframes import KeyframeAttentionCache
from latentmix.worker.engine.frame_distance import FrameDistance, configured_distance
from latentmix.worker.engine.metrics.clip import ImageEncoder, load_clip
from latentmix.worker.engine.metrics.inception import InceptionEncoder, load_inception
from latentmix.worker.engine.models import LoadedModel, load_model
from latentmix.worker.engine.shapes.classifier import load_classifier
from latentmix.worker.engine.shapes.model import CLASSIFIER_FILE
from latentmix.worker.writer import OffloadedWrites

log = logging.getLogger("latentmix.worker")

EXIT_DEVICE_LOST = os.EX_TEMPFAIL  # 75: "restart me"; `latentmix up` does
EXIT_INTERRUPTED = 1  # stopped now, past STOP_NOW_S
STOP_NOW_S = 10.0  # an interrupted worker exits within this, whatever it was waiting for
# How long an idle worker listens for a job at a time: the most it takes to see a stop.
LISTEN_S = 1


@dataclass
class WorkerContext:
    """What every task needs, created once per process: the model, the connections, and
    the worker's own state (its attention cache, its publishing thread, the helper models
    loaded on first use). Nothing of it lives in module globals: the engine takes these
    as arguments, so a library caller builds its own."""

    settings: Settings
    model: LoadedModel
    storage: OffloadedWrites
    redis: Redis
    catalog: LatentCatalog
    # Keyframe attention, shared by the worker's morph and mix jobs.
    attention_cache: KeyframeAttentionCache
    # Publishes finished batches one after another, while the next batch computes.
    publishing: ThreadPoolExecutor
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)
    _loading: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def clip(self) -> ImageEncoder:
        """The CLIP image encoder of LATENTMIX_CLIP_MODEL."""
        return self._once("clip", lambda: load_clip(self.settings.clip_model, self._device))

    def inception(self) -> InceptionEncoder:
        """The Inception of LATENTMIX_INCEPTION_WEIGHTS."""
        weights = self.settings.inception_weights
        return self._once("inception", lambda: load_inception(weights, self._device))

    def frame_distance(self) -> FrameDistance:
        """LPIPS with LATENTMIX_LPIPS_WEIGHTS, else `rgb-rmse` (frame_distance.py)."""
        weights = self.settings.lpips_weights
        path = str(weights) if weights else None
        return self._once("distance", lambda: configured_distance(path, self._device))

    def shapes_classifier(self):
        """The `shapes` model's judge."""
        return self._once("classifier", lambda: load_classifier(CLASSIFIER_FILE))

    @property
    def _device(self) -> str:
        return str(self.model.device)

    def _once(self, name: str, load: Callable[[], Any]) -> Any:
        """`load()` on first use, kept for the process; a failed load is tried again."""
        with self._loading:
            if name not in self._loaded:
                self._loaded[name] = load()
            return self._loaded[name]

    def close(self) -> None:
        self.publishing.shutdown()
        self.storage.close()


_context: WorkerContext | None = None


def context() -> WorkerContext:
    if _context is None:
        raise RuntimeError("worker context not started: run tasks through `latentmix worker`")
    return _context


def start(settings: Settings) -> WorkerContext:
    """Load the model and connect to Redis and storage (once per process)."""
    global _context
    log.info("loading model %s", settings.model)
    model = load_model(
        settings.model,
        device=settings.device,
        dtype=settings.dtype,
        cache_dir=settings.data_dir / "models",
        max_batch_size=settings.max_batch_size,
        vae_batch_size=settings.vae_batch_size,
        inversion_batch_size=settings.inversion_batch_size,
        compile=settings.compile,
        t5=settings.t5,
    )
    redis = patient_redis(settings)
    storage = OffloadedWrites(settings)
    catalog = LatentCatalog(storage, redis, memory=_latent_memory(settings.worker_latent_memory_mb))
    _context = WorkerContext(
        settings,
        model,
        storage,
        redis,
        catalog,
        attention_cache=KeyframeAttentionCache(settings.worker_attention_cache_mb * 2**20),
        publishing=ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentmix-publish"),
    )
    log.info("model %s ready on %s (%s)", settings.model, model.device, model.dtype)
    return _context


def patient_redis(settings: Settings) -> Redis:
    """Redis whose commands are retried with exponential backoff (0.5 s doubling up to
    REDIS_BACKOFF_CAP_S) for about `worker_redis_outage_s`: a job that computes through a
    Redis restart reports its progress and result once Redis is back, instead of failing
    and taking the worker down with it."""
    retries, waited = 0, 0.0
    while waited < settings.worker_redis_outage_s:
        retries += 1
        waited += min(REDIS_BACKOFF_CAP_S, 0.25 * 2**retries)
    return connect(
        settings,
        retry=Retry(ExponentialBackoff(cap=REDIS_BACKOFF_CAP_S, base=0.25), retries),
        retry_on_error=list(REDIS_ERRORS),
    )


def _latent_memory(size_mb: int) -> LRUCache | None:
    """Recently used latents, least recently used out first, bounded by their bytes."""
    if not size_mb:
        return None
    return LRUCache(maxsize=size_mb * 2**20, getsizeof=lambda array: array.nbytes)


def run(settings: Settings, *, burst: bool = False) -> None:
    ctx = start(settings)
    # Webhook deliveries share the worker, taken in turn with GPU jobs. Their retries wait in
    # RQ's scheduled registry; the API's maintenance loop (service/api/reaper.py) enqueues
    # them when due, because RQ's own scheduler would fork this process after torch is up.
    queues = [
        get_queue(ctx.redis, settings.model),
        webhook_queue(ctx.redis),
        background_queue(ctx.redis, settings.model),  # taken last (reorder_queues)
    ]
    worker = LatentMixWorker(
        queues,
        name=worker_name(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:8]),
        connection=ctx.redis,
        job_class=LatentMixJob,
        serializer=JSONSerializer,
        settings=settings,
        device=ctx.model.device,
        batch_rows=ctx.model.max_batch_size,
    )
    # Served from now on: /readyz and GET /models count this worker while its heartbeat lives.
    heartbeat = Heartbeat(worker, settings.worker_heartbeat_ttl_s, ctx.model.card)
    heartbeat.publish(ctx.redis)
    try:
        with heartbeat:
            worker.work(
                burst=burst,
                logging_level="INFO",
                dequeue_strategy=DequeueStrategy.ROUND_ROBIN,
            )
    finally:
        stop_serving(ctx.redis, worker.name)
    ctx.close()
    if worker.device_lost:
        raise SystemExit(EXIT_DEVICE_LOST)


class JobInterrupted(Exception):
    """Raised at a diffusion step of a job whose worker was told to stop now."""

    def __init__(self, job_id: str, requeue: bool):
        super().__init__(
            f"job {job_id} interrupted by shutdown; "
            + ("requeued" if requeue else "stopped by shutdown")
        )
        self.requeue = requeue


@dataclass
class _Interruption:
    """The worker was told to stop now; `job_ids`: the jobs it interrupted."""

    requeue: bool
    job_ids: set[str]


_interruption: _Interruption | None = None


def check_interrupted(job_id: str) -> None:
    """JobInterrupted if this worker was told to stop now (called at each diffusion step)."""
    if _interruption is not None:
        _interruption.job_ids.add(job_id)
        raise JobInterrupted(job_id, _interruption.requeue)


class LatentMixWorker(SimpleWorker):
    """SimpleWorker with a short job heartbeat TTL, a device check after failures, and
    interruptions that requeue (or fail) the running job at its next step."""

    # Jobs rendered together run in threads of their own (worker/batching.py): their
    # timeouts come from a timer thread, as SIGALRM reaches the main thread only.
    death_penalty_class = TimerDeathPenalty

    def __init__(
        self, *args, settings: Settings, device: torch.device, batch_rows: int = 1, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.settings = settings
        wait_ms = settings.worker_batch_wait_ms
        self.in_flight = (
            None
            if wait_ms is None
            else InFlight(self._execute_one, max_rows=batch_rows, wait_s=wait_ms / 1000)
        )
        self.heartbeat_ttl_s = settings.worker_heartbeat_ttl_s
        self.device = device
        self.device_lost = False
        self.push_exc_handler(self._after_job_failure)
        self.push_exc_handler(self._report_abandoned)

    def execute_job(self, job, queue) -> None:
        """With batching across jobs on, a mix or inversion job starts in a thread of its
        own and the worker goes back to its queues (worker/batching.py); any other job runs
        here, alone, once those have ended."""
        if self.in_flight is not None and batchable(job):
            self.in_flight.start(job, queue)
            return
        if self.in_flight is not None:
            self.in_flight.drain()
        self._execute_one(job, queue)

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """With jobs in flight up to their limit, wait for room before taking another."""
        if self.in_flight is not None:
            self.in_flight.wait_for_room(lambda: self._stop_requested)
        return self._listen(timeout, max_idle_time)

    def teardown(self) -> None:
        """The jobs in flight end (a warm shutdown lets them finish) before the worker
        leaves Redis."""
        if self.in_flight is not None:
            self.in_flight.close()
        super().teardown()

    def _execute_one(self, job, queue) -> None:
        try:
            super().execute_job(job, queue)
        except REDIS_ERRORS as exc:  # RQ's own bookkeeping of the job's end
            log.error("job %s: Redis unreachable as it ended (%s)", job.id, exc)
        self._settle(job, queue)
        announce(self.connection, job.id)  # the job has ended: wake its long polls

    def _settle(self, job, queue) -> None:
        """A job whose end RQ could not record (Redis stayed away past
        worker_redis_outage_s) is still marked started: once Redis is back, fail it naming
        Redis, rather than leaving the reaper to call it "worker died"."""
        while True:
            try:
                status = job.get_status(refresh=True)
                break
            except REDIS_ERRORS:
                log.warning("job %s: waiting for Redis to record its end", job.id)
                time.sleep(REDIS_BACKOFF_CAP_S)
        if status != RQStatus.STARTED:
            return
        cause = f"{RedisUnavailable.__name__}: {redis_outage_error(self.settings)}"
        self.handle_job_failure(job, queue, exc_string=cause)
        report_job_end(
            self.connection,
            self.settings,
            job,
            JobStatus.failed,
            error=cause,
            result=None,
            duration_s=0.0,
        )

    def handle_job_success(self, job, queue, started_job_registry, execution=None) -> None:
        """RQ records the job's success, unless the job was already failed as abandoned
        (one true end per job: the first, reported one stands)."""
        if not self._ended_elsewhere(job, execution):
            super().handle_job_success(job, queue, started_job_registry, execution)

    def _ended_elsewhere(self, job, execution) -> bool:
        """A job the reaper failed while this worker ran it: drop this worker's execution
        of it, record nothing else."""
        if not ended_elsewhere(self.connection, job):
            return False
        log.warning(
            "job %s ended here, but it was already failed as abandoned (its heartbeat "
            "lapsed); that end stands",
            job.id,
        )
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipe, execution)
            pipe.execute()
        return True

    def clean_registries(self) -> None:
        """RQ's maintenance, which fails jobs whose heartbeat lapsed: not until Redis has
        been up for one heartbeat TTL (after a restart, no deadline is current yet)."""
        if heartbeats_current(self.connection, self.settings, None):
            super().clean_registries()

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", **kw):
        """RQ fails a job that raised; one stopped at a cancel request ends `canceled`; one
        interrupted to be requeued goes back to the front of its queue, through RQ's retry
        (so its dependents are not released as if it had failed)."""
        if self._ended_elsewhere(job, kw.get("execution")):
            return
        if _interruption and _interruption.requeue and job.id in _interruption.job_ids:
            prepare_requeue(self.connection, job)
            job.retries_left, job.retry_intervals = (job.retries_left or 0) + 1, [0]
            job.enqueue_at_front_on_retry = True
            log.warning("job %s interrupted by shutdown: requeued", job.id)
        super().handle_job_failure(job, queue, started_job_registry, exc_string, **kw)
        if cancel_requested(self.connection, job.id):
            mark_canceled(self.connection, job)

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        signal.signal(INTERRUPT_REQUEUE, lambda *_: self.stop_now(requeue=True))
        signal.signal(INTERRUPT_FAIL, lambda *_: self.stop_now(requeue=False))

    def request_force_stop(self, signum, frame) -> None:
        """A second SIGTERM/SIGINT (RQ's cold shutdown): stop now, failing the job (RQ's own
        would raise SystemExit wherever the job happens to be)."""
        if now() - self._shutdown_requested_date < timedelta(seconds=1):
            return  # the same signal delivered twice (RQ ignores it too)
        self.stop_now(requeue=False)

    def stop_now(self, *, requeue: bool) -> None:
        """Interrupt the running job at its next step (requeued, or failed "stopped by
        shutdown"), then exit; exit within STOP_NOW_S regardless."""
        global _interruption
        if _interruption is None:
            _interruption = _Interruption(requeue, set())
        _interruption.requeue = _interruption.requeue and requeue  # failing wins
        log.warning("stopping now: the running job is %s", "requeued" if requeue else "failed")
        self._stop_requested = True  # an idle worker sees it within LISTEN_S (_shutdown)
        deadline = threading.Timer(STOP_NOW_S, os._exit, (EXIT_INTERRUPTED,))
        deadline.daemon = True
        deadline.start()

    def _shutdown(self) -> None:
        """A first SIGTERM/SIGINT (RQ's warm shutdown). RQ raises StopRequested into an idle
        worker, wherever it is: landing just after the pop that took a job from its queue,
        that lost the job (in no queue and no registry). Here an idle worker only notes the
        request; it listens in turns of LISTEN_S and stops between them, and a job already
        popped runs first."""
        if self.get_state() == WorkerStatus.BUSY:
            super()._shutdown()
        else:
            self._stop_requested = True

    def _listen(self, timeout, max_idle_time):
        """RQ's listening, in turns of at most LISTEN_S, each ending by itself, so that a
        stop request is seen between turns rather than raised into one."""
        if timeout is None:  # burst: one look at the queues, nothing to wait in
            return super().dequeue_job_and_maintain_ttl(None, max_idle_time)
        idle_since = time.monotonic()
        while not self._stop_requested:
            result = super().dequeue_job_and_maintain_ttl(LISTEN_S, max_idle_time=LISTEN_S)
            idle_for = time.monotonic() - idle_since
            if result is not None or (max_idle_time is not None and idle_for >= max_idle_time):
                return result
        return None

    def reorder_queues(self, reference_queue) -> None:
        """RQ's round robin over the request and webhook queues; the background queue (work
        no request waits for) always last, so it is taken only when the others are empty."""
        super().reorder_queues(reference_queue)
        background = [q for q in self._ordered_queues if q.name.startswith(BACKGROUND_PREFIX)]
        others = [q for q in self._ordered_queues if not q.name.startswith(BACKGROUND_PREFIX)]
        self._ordered_queues = others + background

    def subscribe(self) -> None:
        """RQ's command channel, read in turns of LISTEN_S. RQ reads it in turns of 60 s and,
        on exit, waits for the reading thread to end its turn: every worker took up to a
        minute to stop, idle or not."""
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=LISTEN_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        """How long a started job's entries live without a heartbeat (RQ: timeout + 60 s)."""
        return self.heartbeat_ttl_s

    def _report_abandoned(self, job, exc_type, exc_value, traceback) -> bool:
        """RQ's registry cleanup, run by this worker at start and now and then, fails the
        jobs of dead workers (AbandonedJobError): report them as the reaper would."""
        if exc_type is AbandonedJobError:
            report_abandoned(self.connection, self.settings, job)
        return True

    def _after_job_failure(self, job, exc_type, exc_value, traceback) -> bool:
        if exc_type is AbandonedJobError:
            return True  # another worker's job: this device is fine
        if isinstance(exc_value, torch.OutOfMemoryError):
            log.warning("job %s ran out of device memory; emptying the cache", job.id)
            empty_device_cache(self.device)
        elif not device_works(self.device):
            log.error(
                "job %s left device %s unusable (%s); stopping so that a fresh process takes over",
                job.id,
                self.device,
                exc_value,
            )
            self.device_lost = True
            self._stop_requested = True
        return True  # let RQ's other handlers run too


class RedisUnavailable(RuntimeError):
    """Redis stayed away longer than a worker waits for it (a job's error names it)."""


def redis_outage_error(settings: Settings) -> str:
    """What a job that Redis left says: Redis, and how long the worker waited for it."""
    return (
        f"Redis was unreachable for over {settings.worker_redis_outage_s:g} s "
        "(LATENTMIX_WORKER_REDIS_OUTAGE_S) while the job ran"
    )


def device_works(device: torch.device) -> bool:
    """Whether the device still runs a kernel (a poisoned CUDA context does not)."""
    if device.type != "cuda":
        return True
    try:
        torch.cuda.synchronize(device)
        return torch.ones(1, device=device).add_(1).item() == 2.0
    except Exception:
        return False


def empty_device_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Heartbeat:
    """Keeps the worker's key and its running job's registry entries alive for `ttl_s`,
    refreshed every `ttl_s / 3` from a thread, whatever the job is doing in the main one;
    rewrites the model card and the serving key (service/core/model_cards.py) each time, and
    registers the worker again if Redis lost it (a restart without its data, a failover):
    /readyz and `latentmix info` show it again within one beat.

    Only existing job entries are refreshed (EXPIRE, ZADD XX): a job that just ended and was
    removed from the registries is never put back."""

    def __init__(self, worker: SimpleWorker, ttl_s: int, card: ModelCard):
        self.worker = worker
        self.ttl_s = ttl_s
        self.card = card
        self.interval_s = ttl_s / 3
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latentmix-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception as exc:  # Redis away: the next beat tries again
                log.warning("heartbeat failed: %s", exc)

    def publish(self, redis) -> None:
        """The card, and that this worker serves it for SERVING_BEATS more beats."""
        publish_card(redis, self.card, self.worker.name, SERVING_BEATS * self.interval_s)

    def beat(self) -> None:
        worker, ttl = self.worker, self.ttl_s
        deadline = current_timestamp() + ttl
        executions = list(worker.executions.values())
        with worker.connection.pipeline(transaction=False) as pipe:
            # RQ's own heartbeat (HSET last_heartbeat) recreates a lost worker hash without
            # putting it back in the workers set: registered means both are there.
            pipe.sismember(worker.redis_workers_keys, worker.key)
            pipe.expire(worker.key, ttl)
            self.publish(pipe)
            for execution in executions:
                job = execution.job
                started = StartedJobRegistry(job.origin, connection=worker.connection)
                pipe.expire(execution.key, ttl)
                pipe.zadd(started.key, {execution.composite_key: deadline}, xx=True)
                per_job = ExecutionRegistry(job_id=execution.job_id, connection=worker.connection)
                pipe.zadd(per_job.key, {execution.id: deadline + 60}, xx=True)
            in_set, hash_kept = pipe.execute()[:2]
        if not (in_set and hash_kept):
            self.register_again()

    def register_again(self) -> None:
        """Redis lost this worker's registration: write it again, as RQ does at birth."""
        worker = self.worker
        log.warning("Redis had lost worker %s; registering it again", worker.name)
        with worker.connection.pipeline() as pipe:
            pipe.hset(worker.key, mapping=worker.serialize())
            worker_registration.register(worker, pipe)
            pipe.expire(worker.key, self.ttl_s)
            pipe.execute()
