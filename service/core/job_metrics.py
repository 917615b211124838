"""Job metrics the workers record in Redis when a job ends; the API's /metrics reads them
(service/metrics.py). Plain Redis hashes, so the worker needs no metrics library."""

import math

from redis import Redis

JOB_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, math.inf)
JOBS_KEY = "latentmix:metrics:jobs"


def histogram_key(name: str) -> str:
    return f"latentmix:metrics:{name}"


HISTOGRAMS = {
    "job_duration_seconds": "Run time of jobs, from start to end",
    "queue_wait_seconds": "Time jobs waited in their queue before a worker started them",
}


def record_job_end(
    redis: Redis, job_type: str, status: str, duration_s: float, queue_wait_s: float
) -> None:
    """Called by a worker when a job ends: counts it and adds it to the histograms."""
    with redis.pipeline(transaction=False) as pipe:
        pipe.hincrby(JOBS_KEY, f"{job_type}|{status}", 1)
        for name, value in (
            ("job_duration_seconds", duration_s),
            ("queue_wait_seconds", queue_wait_s),
        ):
            key = histogram_key(name)
            for bound in JOB_BUCKETS:
                if value <= bound:
                    pipe.hincrby(key, f"{job_type}|{bound}", 1)
            pipe.hincrbyfloat(key, f"{job_type}|sum", value)
        pipe.execute()
