"""`LatentMixClient`: the service's HTTP API as a few typed calls.

    from latentmix.client import LatentMixClient

    with LatentMixClient("http://127.0.0.1:8000") as lm:
        latents = lm.invert(["cat1.jpg", "cat2.jpg", "cat3.jpg"], prompt="a photo of a cat")
        job = lm.sample(latents, count=100, seed=7)
        paths = lm.download(job, "out/cat", progress=True)

Only httpx and Pillow: no torch. An error answer raises `ProblemError` with the problem
details; a job that ends failed or canceled raises `JobFailed`. Requests the service
answers 503 to, or that never reached it, are retried (after Retry-After); every POST
carries an `Idempotency-Key`, the same on each retry, so retrying never submits twice.
"""

from __future__ import annotations

import argparse
import io
import math
import mimetypes
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from latentmix.client.errors import InvalidArgument, JobFailed, LimitExceeded, ProblemError
from latentmix.client.models import (
    ImageResult,
    Job,
    JobStatus,
    Latent,
    LatentInfo,
    Limits,
    ModelInfo,
)

DEFAULT_URL = "http://127.0.0.1:8000"


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every command that talks to the service takes: --url and --api-key,
    defaulting to $LATENTMIX_URL and $LATENTMIX_API_KEY."""
    parser.add_argument(
        "--url",
        default=os.environ.get("LATENTMIX_URL", DEFAULT_URL),
        help="service URL (default: $LATENTMIX_URL or %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("LATENTMIX_API_KEY"),
        help="bearer API key (default: $LATENTMIX_API_KEY)",
    )


DEFAULT_METHOD = "nin/chm"
SCHEMES = ("few", "dirichlet", "subset")
DEFAULT_SCHEME = "few"
LONG_POLL_S = 10.0  # GET /jobs/{id}?wait=S while nothing is shown
STREAM_POLL_S = 0.5  # ... while a progress bar wants news
MAX_RETRY_AFTER_S = 30.0
# One POST /latents carries at most this many images and bytes, and no more than the
# service's limits allow (GET /limits: by default 64 files and 128 MiB per request).
INVERT_CHUNK_FILES = 32
INVERT_CHUNK_BYTES = 64 * 2**20
PART_OVERHEAD_BYTES = 1024  # a file part's headers and boundary, generously

ImageInput = str | os.PathLike[str] | Image.Image | bytes
LatentRef = str | Latent
JobRef = str | Job


class LatentMixClient:
    """A client of one LatentMix service. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"User-Agent": "latentmix-client"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # Long polls hold a request up to LONG_POLL_S: the read timeout must outlast them.
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(max(timeout, LONG_POLL_S + 10)),
            follow_redirects=True,  # images may answer 307 to a presigned S3 URL
            transport=transport,
        )
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self._limits: Limits | None = None

    def __enter__(self) -> LatentMixClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---------------------------------------------------------------------------------------
    # Latents
    # ---------------------------------------------------------------------------------------

    def invert(
        self,
        images: Sequence[ImageInput],
        *,
        prompt: str | Sequence[str] | None = None,
        model: str | None = None,
        inversion_steps: int | None = None,
        guidance_scale: float | None = None,
        size: int | None = None,
        inversion: str | None = None,
        inversion_options: Mapping[str, Any] | None = None,
        measure_reconstruction: bool | str | None = None,
        wait: bool = True,
        progress: bool = False,
        timeout: float | None = None,
    ) -> list[Latent]:
        """Invert images (paths, PIL images or encoded bytes) into noise latents, one per
        image, in order. `prompt`: one for all, or one per image. The service caches by
        content, so inverting the same images again is instant.

        `inversion` names the method (default: the model's, ddim for Stable Diffusion;
        `models()` lists each model's), `inversion_options` its options by form field name
        (e.g. {"edict_mix": 0.9}). `measure_reconstruction` says which latents the service
        regenerates to record their round-trip error, each costing a generation pass:
        "sample" (the service's default: one per request, none for exact methods), "all"
        (or True), "none" (or False).

        With `wait` (the default) returns once every latent is ready; otherwise at once,
        with pending latents naming the job that computes them."""
        files = [_image_part(image, index) for index, image in enumerate(images)]
        if not files:
            raise ValueError("invert needs at least one image")
        prompts = _prompt_list(prompt, len(files))
        limits = self.limits()
        check_invert(limits, [(name, content) for name, content, _ in files], prompts)
        form = {
            key: _form_value(value)
            for key, value in (
                ("model", model),
                ("inversion_steps", inversion_steps),
                ("guidance_scale", guidance_scale),
                ("size", size),
                ("inversion", inversion),
                ("measure_reconstruction", measure_reconstruction),
                *(inversion_options or {}).items(),
            )
            if value is not None
        }
        latents: list[Latent] = []
        sizes = [len(content) + PART_OVERHEAD_BYTES for _, content, _ in files]
        if prompts is not None:
            sizes = [size + len(text.encode()) for size, text in zip(sizes, prompts, strict=True)]
        max_files = min(INVERT_CHUNK_FILES, limits.max_files)
        max_bytes = min(INVERT_CHUNK_BYTES, limits.max_request_bytes - PART_OVERHEAD_BYTES)
        for chunk in _chunks(sizes, max_files, max_bytes):
            fields: dict[str, Any] = dict(form)
            if prompts is not None:
                fields["prompt"] = prompts[chunk] if len(set(prompts)) > 1 else prompts[0]
            parts = [("images", part) for part in files[chunk]]
            body = self._post("/latents", files=parts, data=fields)
            latents += [Latent.from_json(entry) for entry in body["latents"]]
        if not wait:
            return latents
        for job_id in dict.fromkeys(latent.job for latent in latents if latent.job):
            self.wait(job_id, progress=progress, timeout=timeout)
        return [replace(latent, status="ready", job=None) for latent in latents]

    def get_latent(self, latent: LatentRef) -> LatentInfo:
        """A latent's metadata; for a mix: its parents, weights, method and prompt."""
        return LatentInfo.from_json(self._get_json(f"/latents/{_id(latent)}"))

    # ---------------------------------------------------------------------------------------
    # Mixing
    # ---------------------------------------------------------------------------------------

    def mix(
        self,
        latents: Sequence[LatentRef],
        weights: Sequence[float] | Sequence[Sequence[float]] | None = None,
        *,
        method: str = DEFAULT_METHOD,
        prompt: str | None = None,
        guidance_scale: float | None = None,
        steps: int | None = None,
        attention: str | None = None,
    ) -> Job:
        """Queue a mix job: one image for a weight list, one per row for a list of rows,
        the uniform centroid for None. Latents still being inverted are waited for.
        `prompt` None: the inputs' prompt, or their prompts mixed with each row's weights
        where they differ. `attention` (inner, outer, fused) also interpolates attention
        with the inputs'."""
        body: dict[str, Any] = {"latents": [_id(latent) for latent in latents], "method": method}
        if attention is not None:
            body["attention"] = attention
        if weights is not None:
            body["weights"] = [list(row) if _is_row(row) else row for row in weights]
            _check_finite(body["weights"])
        return self._submit_mix(body, prompt, guidance_scale, steps)

    def sample(
        self,
        latents: Sequence[LatentRef],
        count: int,
        *,
        scheme: str = DEFAULT_SCHEME,
        alpha: float | None = None,
        k: int | None = None,
        seed: int | None = None,
        method: str = DEFAULT_METHOD,
        prompt: str | None = None,
        guidance_scale: float | None = None,
        steps: int | None = None,
    ) -> Job:
        """Queue `count` mixes with weights the service draws: `few` (Dirichlet(`alpha`) over
        a random subset of 2 to `k` inputs, k default 4: mixes of few inputs whatever the
        number of latents), `dirichlet` (Dirichlet(`alpha`) over all latents) or `subset`
        (uniform centroids of random `k`-subsets). The same seed gives
        the same weights and images; each image's provenance records them."""
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        if scheme == "subset" and k is None:
            raise ValueError("the subset scheme needs k, the number of latents per mix")
        sample: dict[str, Any] = {"count": count, "scheme": scheme}
        for key, value in (("alpha", alpha), ("k", k), ("seed", seed)):
            if value is not None:
                sample[key] = value
        body = {"latents": [_id(latent) for latent in latents], "method": method, "sample": sample}
        return self._submit_mix(body, prompt, guidance_scale, steps)

    def _submit_mix(
        self,
        body: dict[str, Any],
        prompt: str | None,
        guidance_scale: float | None,
        steps: int | None,
    ) -> Job:
        options = {"prompt": prompt, "guidance_scale": guidance_scale, "steps": steps}
        body |= {key: value for key, value in options.items() if value is not None}
        return Job.from_json(self._post("/mix", json=body))

    # ---------------------------------------------------------------------------------------
    # Morphs (POST /morph, animations)
    # ---------------------------------------------------------------------------------------

    def morph(
        self,
        keyframes: Sequence[LatentRef],
        frames: int,
        *,
        path: str = "chain",
        spacing: str = "linear",
        alpha: float | None = None,
        beta: float | None = None,
        method: str = DEFAULT_METHOD,
        attention: str = "none",
        attention_steps: float | None = None,
        prompts: str | Sequence[str] | None = None,
        guide_prompt: str | None = None,
        guidance_scale: float | None = None,
        steps: int | None = None,
        seed: int | None = None,
    ) -> Job:
        """Queue a morph: `frames` frames (keyframes included) from keyframe to keyframe
        (`path` chain, or loop back to the first), coefficients spaced `linear`, `beta`
        (Beta(alpha, beta)) or `perceptual`; `attention` inner, outer or fused interpolates
        attention (AID). Its frames stream like a mix's images (`iter_images`, `download`);
        `animation` fetches the finished morph as WebP, GIF or MP4."""
        body: dict[str, Any] = {
            "keyframes": [_id(latent) for latent in keyframes],
            "frames": frames,
            "path": path,
            "spacing": spacing,
            "method": method,
            "attention": attention,
        }
        options = {
            "alpha": alpha,
            "beta": beta,
            "attention_steps": attention_steps,
            "prompts": prompts if isinstance(prompts, str) or prompts is None else list(prompts),
            "guide_prompt": guide_prompt,
            "guidance_scale": guidance_scale,
            "steps": steps,
            "seed": seed,
        }
        body |= {key: value for key, value in options.items() if value is not None}
        return Job.from_json(self._post("/morph", json=body))

    def animation(
        self,
        job: JobRef,
        fmt: str = "webp",
        *,
        fps: float = 8,
        loop: bool = True,
        bounce: bool = False,
    ) -> bytes:
        """A finished job's images as an animation: `fmt` webp, gif or mp4."""
        params = {"fps": fps, "loop": str(loop).lower(), "bounce": str(bounce).lower()}
        return self._request("GET", f"/jobs/{_id(job)}/animation.{fmt}", params=params).content

    # ---------------------------------------------------------------------------------------
    # Jobs
    # ---------------------------------------------------------------------------------------

    def get_job(self, job: JobRef, *, wait: float = 0, seen: int | None = None) -> Job:
        """A job's state; `wait` holds the request until it ends or `wait` seconds pass
        (or, with `seen`, until it has more than `seen` images)."""
        params: dict[str, Any] = {"wait": wait} if wait else {}
        if wait and seen is not None:
            params["seen"] = seen
        return Job.from_json(self._get_json(f"/jobs/{_id(job)}", params=params or None))

    def wait(
        self,
        job: JobRef,
        *,
        progress: bool = False,
        timeout: float | None = None,
        raise_on_failure: bool = True,
    ) -> Job:
        """Until the job ends; a progress bar (diffusion steps) with `progress`. Raises
        `JobFailed` if it failed or was canceled (unless `raise_on_failure` is False),
        `TimeoutError` after `timeout` seconds."""
        current = self.get_job(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _step_bar(current) if progress else None
        try:
            while not current.done:
                hold = STREAM_POLL_S if bar is not None else LONG_POLL_S
                current = self.get_job(current.id, wait=_hold(hold, deadline, current))
                if bar is not None:
                    _update_step_bar(bar, current)
        finally:
            if bar is not None:
                bar.close()
        if raise_on_failure and current.status is not JobStatus.succeeded:
            raise JobFailed(current)
        return current

    def cancel(self, job: JobRef) -> Job:
        """Cancel a queued job, or a running one within a quarter second."""
        return Job.from_json(self._post(f"/jobs/{_id(job)}/cancel"))

    def iter_images(self, job: JobRef, *, timeout: float | None = None) -> Iterator[ImageResult]:
        """Each image of a mix job as soon as it is finished, while the job still runs.
        Raises `JobFailed` at the end if the job failed or was canceled."""
        current = job if isinstance(job, Job) else self.get_job(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: set[str] = set()
        while True:
            for image in current.images:
                if image.id not in seen:
                    seen.add(image.id)
                    yield image
            if current.done:
                break
            hold = _hold(LONG_POLL_S, deadline, current)
            current = self.get_job(current.id, wait=hold, seen=len(seen))
        if current.status is not JobStatus.succeeded:
            raise JobFailed(current)

    def grid(self, job: JobRef) -> bytes:
        """A contact sheet of a mix job's images, as PNG bytes."""
        return self._request("GET", f"/jobs/{_id(job)}/grid.png").content

    # ---------------------------------------------------------------------------------------
    # Images
    # ---------------------------------------------------------------------------------------

    def image_bytes(self, image: ImageResult | str) -> bytes:
        """A generated image's PNG bytes (following a redirect to S3 if there is one)."""
        return self._request("GET", f"/images/{_id(image)}").content

    def open_image(self, image: ImageResult | str) -> Image.Image:
        """A generated image as a PIL image."""
        picture = Image.open(io.BytesIO(self.image_bytes(image)))
        picture.load()
        return picture

    def save_image(self, image: ImageResult | str, path: str | os.PathLike[str]) -> Path:
        """Write the image's PNG to `path` atomically: the file is complete or absent."""
        path = Path(path)
        write_atomic(path, self.image_bytes(image))
        return path

    def download(
        self,
        job: JobRef,
        folder: str | os.PathLike[str],
        *,
        progress: bool = False,
        timeout: float | None = None,
        name: str = "{id}.png",
    ) -> list[Path]:
        """Save each image of a mix job as `folder/<name>` as soon as it is done (`name` is
        formatted with the image's `id` and its `index` in the job: "frame-{index:03}.png"
        keeps a morph's order); images already there are kept. Returns the paths in the
        job's order."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        bar = _image_bar(progress)
        try:
            for index, image in enumerate(self.iter_images(job, timeout=timeout)):
                path = folder / name.format(id=image.id, index=index)
                if not path.exists():
                    self.save_image(image, path)
                paths.append(path)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return paths

    # ---------------------------------------------------------------------------------------
    # Diagnostics and evaluations (the paper's measurements)
    # ---------------------------------------------------------------------------------------

    def diagnose(
        self,
        latents: Sequence[LatentRef],
        weights: Sequence[float] | Sequence[Sequence[float]] | None = None,
        *,
        method: str = DEFAULT_METHOD,
    ) -> list[dict[str, Any]]:
        """`POST /mix` with `dry_run`: each row's degeneracy diagnostics (norms, channel
        means, bias amplification, warnings); nothing is generated."""
        body: dict[str, Any] = {
            "latents": [_id(latent) for latent in latents],
            "method": method,
            "dry_run": True,
        }
        if weights is not None:
            body["weights"] = [list(row) if _is_row(row) else row for row in weights]
        return self._post("/mix", json=body)["rows"]

    def evaluate(
        self,
        *,
        job: JobRef | None = None,
        images: Sequence[str] | None = None,
        reference_latents: Sequence[LatentRef] = (),
        references: Sequence[ImageInput] = (),
        label: str | None = None,
        features: str = "clip",
        judge: bool = False,
    ) -> Job:
        """Queue an evaluation (FID, KID, CLIP distance) of a mix job's images (waited for
        if unfinished) or of image ids, against the source images of `reference_latents`
        and/or uploaded `references`; FID and KID on `features` ("clip", "inception", or
        "judge": the model's judge's features for them and the distance). With `judge`,
        instead, each image's class as the model's judge reads it (no references needed).
        `wait` on the returned job gives the figures."""
        fields: dict[str, Any] = {
            "reference_latents": [_id(latent) for latent in reference_latents],
            "features": features,
        }
        if judge:
            fields["judge"] = "true"
        if job is not None:
            fields["job"] = _id(job)
        if images is not None:
            fields["images"] = list(images)
        if label is not None:
            fields["label"] = label
        files = [("references", _image_part(image, i)) for i, image in enumerate(references)]
        return Job.from_json(self._post("/evaluations", data=fields, files=files or None))

    def judge(self, images: Sequence[ImageResult | str]) -> list[tuple[str, float]]:
        """Each image's class as the model's judge reads it (`POST /evaluations` with
        judge; the model's card names its judge and labels: card.augmentation), with the
        judge's probability, in order. Waits for the answer."""
        result = self.wait(self.evaluate(images=[_id(image) for image in images], judge=True))
        result = result.result or {}
        return list(zip(result["judged"], result["judge_confidences"], strict=True))

    # ---------------------------------------------------------------------------------------
    # Health and limits
    # ---------------------------------------------------------------------------------------

    def limits(self) -> Limits:
        """`GET /limits`: what one request may ask of the service (asked once per client;
        a service too old to say gets release 0.1's limits)."""
        if self._limits is None:
            try:
                self._limits = Limits.from_json(self._get_json("/limits"))
            except ProblemError as exc:
                if exc.status != 404:
                    raise
                self._limits = Limits()
        return self._limits

    def models(self) -> list[ModelInfo]:
        """`GET /models`: the models served, with their live workers and cards."""
        return [ModelInfo.from_json(model) for model in self._get_json("/models")["models"]]

    def health(self) -> dict[str, Any]:
        """`GET /healthz`: the API process answers."""
        return self._get_json("/healthz")

    def ready(self) -> bool:
        """`GET /readyz`: Redis, storage and at least one worker are reachable."""
        try:
            self._request("GET", "/readyz", retries=0)
        except ProblemError:
            return False
        return True

    # ---------------------------------------------------------------------------------------
    # HTTP
    # ---------------------------------------------------------------------------------------

    def _get_json(self, path: str, **kwargs: Any) -> Any:
        return self._request("GET", path, **kwargs).json()

    def _post(self, path: str, **kwargs: Any) -> Any:
        return self._request("POST", path, **kwargs).json()

    def _request(
        self, method: str, path: str, *, retries: int | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One logical request: retried on 503 and on failures to connect."""
        retries = self.retries if retries is None else retries
        headers = dict(kwargs.pop("headers", None) or {})
        if method == "POST":
            headers.setdefault("Idempotency-Key", uuid.uuid4().hex)
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                response = self._http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                # A POST is retried only when it surely never reached the service.
                sent_maybe = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if last or (method != "GET" and sent_maybe):
                    raise
                time.sleep(min(2**attempt, MAX_RETRY_AFTER_S))
                continue
            if response.status_code < 400:
                return response
            error = _problem(response)
            if response.status_code != 503 or last:
                raise error
            wait = 2**attempt if error.retry_after is None else error.retry_after
            time.sleep(min(wait, MAX_RETRY_AFTER_S))
        raise AssertionError("unreachable")


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with partial.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _problem(response: httpx.Response) -> ProblemError:
    """The problem details of an error answer (or what can be said of a non-JSON one)."""
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    detail = body.get("detail")
    if detail is None and not body:
        detail = response.text[:500] or None
    retry_after = response.headers.get("Retry-After")
    status = body.get("status")  # /readyz's 503 has a status too: "not ready"
    return ProblemError(
        status if isinstance(status, int) else response.status_code,
        str(body.get("title") or response.reason_phrase),
        detail if detail is None else str(detail),
        type=str(body.get("type") or "about:blank"),
        errors=body.get("errors"),
        retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
    )


def _image_part(image: ImageInput, index: int) -> tuple[str, bytes, str]:
    """A multipart file part (filename, bytes, content type) for one image."""
    if isinstance(image, bytes):
        return f"image{index}", image, "application/octet-stream"
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        name = Path(getattr(image, "filename", "") or f"image{index}.png").name
        return name, buffer.getvalue(), "image/png"
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return path.name, path.read_bytes(), content_type
    raise TypeError(f"expected a path, PIL image or bytes, got {type(image).__name__}")


def check_invert(limits: Limits, files: list[tuple[str, bytes]], prompts: list[str] | None) -> None:
    """Raise LimitExceeded if a file or prompt can never be sent within the service's
    limits (many files are not a problem: `invert` splits them into requests)."""
    for name, content in files:
        check_file(limits, name, len(content), image_pixels(content))
    for index, text in enumerate(prompts or []):
        if len(text) > limits.max_prompt_chars:
            raise LimitExceeded(
                f"prompt {index} has {len(text)} characters; the service's limit is "
                f"{limits.max_prompt_chars} (max_prompt_chars)"
            )


def check_file(limits: Limits, name: str, size: int, pixels: int | None) -> None:
    """Raise LimitExceeded unless an image file of `size` bytes and `pixels` pixels (None:
    not known) can be uploaded."""
    largest = min(limits.max_upload_bytes, limits.max_request_bytes - 2 * PART_OVERHEAD_BYTES)
    if size > largest:
        raise LimitExceeded(
            f"{name!r} has {size} bytes; the service takes at most {largest} per file "
            "(max_upload_bytes, max_request_bytes)"
        )
    if pixels is not None and pixels > limits.max_image_pixels:
        raise LimitExceeded(
            f"{name!r} has {pixels} pixels; the service's limit is "
            f"{limits.max_image_pixels} (max_image_pixels)"
        )


def image_pixels(source: bytes | str | os.PathLike[str]) -> int | None:
    """Width x height from an image's header (nothing is decoded); None if unreadable."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
    except Exception:
        return None  # not an image Pillow reads: the service says what is wrong with it
    return width * height


def _chunks(sizes: list[int], max_files: int, max_bytes: int) -> Iterator[slice]:
    """Consecutive runs of at most `max_files` files and `max_bytes` bytes (a larger file
    goes alone)."""
    start, total = 0, 0
    for index, size in enumerate(sizes):
        if index > start and (index - start >= max_files or total + size > max_bytes):
            yield slice(start, index)
            start, total = index, 0
        total += size
    if sizes:
        yield slice(start, len(sizes))


def _prompt_list(prompt: str | Sequence[str] | None, count: int) -> list[str] | None:
    if prompt is None:
        return None
    if isinstance(prompt, str):
        return [prompt] * count
    prompts = list(prompt)
    if len(prompts) != count:
        raise ValueError(f"got {len(prompts)} prompts for {count} images: pass one, or one each")
    return prompts


def _id(ref: str | Latent | Job | ImageResult) -> str:
    return ref if isinstance(ref, str) else ref.id


def _check_finite(weights: list) -> None:
    """JSON has no NaN or infinity: name the entry instead of failing to encode it."""
    rows = weights if weights and _is_row(weights[0]) else [weights]
    for i, row in enumerate(rows):
        for j, weight in enumerate(row):
            if not isinstance(weight, int | float) or not math.isfinite(weight):
                where = f"row {i}, entry {j}" if rows is weights else f"entry {j}"
                raise InvalidArgument(f"weights {where} must be a finite number, got {weight!r}")


def _is_row(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def _hold(preferred: float, deadline: float | None, job: Job) -> float:
    """How long the next long poll may hold; TimeoutError once the deadline passed."""
    if deadline is None:
        return preferred
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"{job.type} job {job.id} still {job.status}")
    return min(preferred, left)


def _step_bar(job: Job):
    from tqdm.auto import tqdm

    return tqdm(
        total=job.progress.total or None,
        initial=job.progress.done,
        unit="step",
        desc=f"{job.type or 'job'} {job.id[:8]}",
    )


def _update_step_bar(bar, job: Job) -> None:
    if job.progress.total and bar.total != job.progress.total:
        bar.total = job.progress.total
    bar.n = job.progress.done
    bar.refresh()


def _image_bar(progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(unit="img", desc="images")


def _form_value(value: Any) -> str:
    """A form field's text: booleans as the API reads them."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)
