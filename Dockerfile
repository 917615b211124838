# syntax=docker/dockerfile:1
#
# LatentMix images; two final targets from one file:
#   docker build --target api    -t latentmix-api .     # torch-free FastAPI front end
#   docker build --target worker -t latentmix-worker .  # GPU worker (Diffusers + CUDA torch)
#   docker build --target rq-dashboard .                # RQ's dashboard (docker-compose.yml)
# Plain `docker build .` builds the last stage, `api` (the small one).
#
# Both targets start from the same python:3.11-slim base. The worker does NOT use an
# nvidia/cuda base image: the PyPI torch==2.13.0 wheel for Linux x86_64 is the CUDA build and
# pulls its CUDA runtime, cuBLAS, cuDNN, NCCL... as nvidia-* wheels (CUDA 13.0 for 2.13.0), so
# a CUDA base would only add a second, unused, possibly mismatched CUDA copy, and Ubuntu's
# python3.10 would need a PPA for 3.11. The host needs only the NVIDIA driver (>= 580 for
# CUDA 13) and the NVIDIA Container Toolkit; no CUDA toolkit.
#
# The build stages install into a virtualenv at /opt/venv (a regular, non-editable install,
# so service/ and worker/ land in site-packages); the final stages copy only that venv, so no
# source tree, build frontend or pip cache ends up in the images.

FROM python:3.11.14-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Runtime base: an unprivileged user (uid/gid 10001; USER uses the numbers so that
# runAsNonRoot-style checks can verify it) and a writable data directory (LATENTMIX_DATA_DIR).
FROM base AS runtime
RUN groupadd --system --gid 10001 latentmix \
    && useradd --system --uid 10001 --gid latentmix --create-home \
        --home-dir /home/latentmix --shell /usr/sbin/nologin latentmix \
    && install -d -o latentmix -g latentmix /var/lib/latentmix
ENV LATENTMIX_DATA_DIR=/var/lib/latentmix
WORKDIR /home/latentmix

# ---------------------------------------------------------------------------------- api ---
FROM base AS api-build
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY worker/ worker/
COPY client/ client/
# Only the `api` extra: no torch, no diffusers. DL3013 reads `.[api]` as an unpinned PyPI
# package; it is this source tree, and its dependency ranges live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[api]"

# ------------------------------------------------------------------------------- worker ---
FROM base AS worker-build
# torch first, in its own layer: the multi-GB download stays cached across source edits.
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir "torch==2.13.0"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY worker/ worker/
COPY client/ client/
# Repeating the pin keeps the resolver from ever swapping the torch installed above.
# DL3013: `.[worker]` is this source tree (see the api stage), not a PyPI package.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[worker]" "torch==2.13.0"

FROM runtime AS worker
# Hub model weights go to the Hugging Face cache; mount a named volume here so the
# Stable Diffusion download survives container restarts. Created now so that an empty named
# volume mounted on it inherits the latentmix user's ownership.
ENV HF_HOME=/home/latentmix/.cache/huggingface \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0"
RUN install -d -o latentmix -g latentmix /home/latentmix/.cache /home/latentmix/.cache/huggingface
COPY --from=worker-build /opt/venv /opt/venv
USER 10001:10001
# SIGTERM is RQ's warm shutdown: the current job finishes, then the worker exits. Give the
# container a long stop timeout (compose: stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["latentmix", "worker"]

# ------------------------------------------------------------------------- rq-dashboard ---
# RQ's web dashboard for docker-compose.yml, from pip with a tested combination: rq-dashboard
# 0.9.0 imports `six` without declaring it, and reads our jobs only with its JSON serializer
# (compose sets RQ_DASHBOARD_JSON=true; tests/deploy start the same command from pip).
FROM base AS rq-dashboard-build
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir "rq-dashboard==0.9.0" "rq==3.0.0" "six==1.17.0"

FROM runtime AS rq-dashboard
COPY --from=rq-dashboard-build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 9181
CMD ["rq-dashboard", "--port", "9181"]

# ---------------------------------------------------------------------------------- api ---
FROM runtime AS api
COPY --from=api-build /opt/venv /opt/venv
USER 10001:10001
ENV LATENTMIX_HOST=0.0.0.0 \
    LATENTMIX_PORT=8000
EXPOSE 8000
# python:3.11-slim has no curl: probe /healthz with the standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LATENTMIX_PORT', '8000'), timeout=4)"]
CMD ["latentmix", "api"]
