"""GET /metrics: Prometheus text format."""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from latentmix.service.api.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}}
)
def get_metrics(metrics: MetricsDep) -> Response:
    """Request latency, jobs by type and status, job duration, queue wait and depth, cache."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
