"""Prometheus metrics (`GET /metrics`).

Two sources:
- this API process: request latency, jobs submitted, latent cache hits and misses
  (per process, as Prometheus expects; each replica is scraped);
- Redis, read at scrape time: jobs finished by type and status, job duration and queue
  wait (recorded by the workers when a job ends, `service.job_metrics.record_job_end`), and
  per model queue the jobs waiting and running (what a queue-driven autoscaler reads). These
  are global, so every replica reports the same values.
"""

import math
import time
from collections.abc import Iterable

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from rq import Queue
from rq.registry import DeferredJobRegistry

from latentmix.service.core.job_metrics import HISTOGRAMS, JOB_BUCKETS, JOBS_KEY, histogram_key
from latentmix.service.core.jobs import QUEUE_PREFIX, running_count


class _RedisCollector(Collector):
    """Reads the worker-recorded job metrics and the queue depths at scrape time."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def collect(self) -> Iterable:
        finished = CounterMetricFamily(
            "latentmix_jobs_finished",
            "Jobs that ended, by type and status",
            labels=["type", "status"],
        )
        for field, count in self.redis.hgetall(JOBS_KEY).items():
            job_type, status = field.decode().split("|")
            finished.add_metric([job_type, status], int(count))
        yield finished
        for name, help_text in HISTOGRAMS.items():
            yield self._histogram(name, help_text)
        yield from self._queue_gauges()

    def _histogram(self, name: str, help_text: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(f"latentmix_{name}", help_text, labels=["type"])
        fields = {k.decode(): float(v) for k, v in self.redis.hgetall(histogram_key(name)).items()}
        for job_type in sorted({field.split("|")[0] for field in fields}):
            buckets = [
                (
                    "+Inf" if math.isinf(bound) else str(bound),
                    fields.get(f"{job_type}|{bound}", 0.0),
                )
                for bound in JOB_BUCKETS
            ]
            family.add_metric([job_type], buckets, sum_value=fields.get(f"{job_type}|sum", 0.0))
        return family

    def _queue_gauges(self) -> Iterable[GaugeMetricFamily]:
        """Per model queue, what an autoscaler needs: jobs waiting and jobs running."""
        depth = GaugeMetricFamily(
            "latentmix_queue_depth", "Jobs waiting: queued, or deferred on inputs", labels=["queue"]
        )
        running = GaugeMetricFamily(
            "latentmix_jobs_running",
            "Jobs a live worker is running (heartbeat not lapsed)",
            labels=["queue"],
        )
        for queue in Queue.all(connection=self.redis):
            if queue.name.startswith(QUEUE_PREFIX):
                deferred = DeferredJobRegistry(queue=queue).get_job_count(cleanup=False)
                depth.add_metric([queue.name], queue.count + deferred)
                running.add_metric([queue.name], running_count(queue))
        yield depth
        yield running


class Metrics:
    """The API process's metrics registry."""

    def __init__(self, redis: Redis) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "latentmix_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.jobs_submitted = Counter(
            "latentmix_jobs_submitted", "Jobs queued, by type", ["type"], registry=self.registry
        )
        self.cache = Counter(
            "latentmix_latent_cache",
            "Latent lookups in POST /latents, by result (hit: already known)",
            ["result"],
            registry=self.registry,
        )
        self.registry.register(_RedisCollector(redis))


def install(app: FastAPI) -> None:
    """Time every request, labelled by route template (not raw path: bounded cardinality)."""

    @app.middleware("http")
    async def time_requests(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        metrics: Metrics | None = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.request_seconds.labels(
                request.method, getattr(route, "path", "unmatched"), str(response.status_code)
            ).observe(time.perf_counter() - started)
        return response
