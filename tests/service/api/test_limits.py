"""Bad input gets a clear 4xx problem, never a 500, a hang or a half-done job: size limits
enforced while the body streams (checked on a real socket against uvicorn), pixel limits
and decompression bombs, corrupt files, latents the models cannot take, bad mixes."""

import io
import json
import socket
import struct
import zlib

import numpy as np
import pytest
from helpers import latent_file, png_bytes, upload_random_latents
from PIL import Image

from latentmix.service.core.ids import image_latent_id

PROBLEM = "application/problem+json"
KIB = 1024


def assert_problem(response, status: int, *phrases: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert body["status"] == status and body["title"]
    for phrase in phrases:
        assert phrase in body["detail"], body
    return body


def image_part(name: str, data: bytes, content_type: str = "image/png"):
    return ("images", (name, data, content_type))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size in its header and has no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def encoded(image_format: str, size: int = 64, **options) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(3, size=size))).save(buffer, format=image_format, **options)
    return buffer.getvalue()


# --- sizes, enforced while streaming ---------------------------------------------------------


def test_a_file_over_the_per_file_limit_is_413_naming_it(make_client):
    client = make_client(max_upload_bytes=4 * KIB)
    big = encoded("PNG", size=256)
    assert len(big) > 4 * KIB

    response = client.post(
        "/latents", files=[image_part("ok.png", png_bytes(1)), image_part("big.png", big)]
    )

    assert_problem(response, 413, "big.png", "4 KiB limit per file")


def test_a_request_over_the_request_limit_is_413(make_client):
    client = make_client(max_request_bytes=8 * KIB, max_upload_bytes=8 * KIB)
    parts = [image_part(f"{i}.png", png_bytes(i)) for i in range(5)]

    assert_problem(client.post("/latents", files=parts), 413, "8 KiB limit per request")


def test_too_many_files_is_413(make_client):
    client = make_client(max_files=2)
    parts = [image_part(f"{i}.png", png_bytes(i)) for i in range(3)]

    assert_problem(client.post("/latents", files=parts), 413, "too many files", "at most 2")


def test_json_bodies_count_against_the_request_limit(make_client):
    client = make_client(max_request_bytes=1 * KIB)
    body = {"latents": ["0" * 32] * 64}

    assert_problem(client.post("/mix", json=body), 413, "1 KiB limit per request")


def _raw_exchange(base_url: str, head: bytes, chunks: list[bytes]) -> bytes:
    """Send a request head and body chunks without ever finishing the body; return what the
    server answers before we do."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        for chunk in chunks:
            sock.sendall(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_a_chunked_upload_is_cut_off_mid_stream_at_the_per_file_limit(make_live_server):
    """The body never ends, yet the server answers 413: the limit acts while bytes arrive."""
    head = (
        b"POST /latents HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n"
    )
    part = (
        b'--XyZ\r\nContent-Disposition: form-data; name="images"; filename="huge.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    with make_live_server(max_upload_bytes=16 * KIB) as url:
        answer = _raw_exchange(url, head, [_chunk(part), *[_chunk(b"\0" * 8 * KIB)] * 3])

    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b"application/problem+json" in rest
    assert "huge.png" in json.loads(rest.split(b"\r\n\r\n", 1)[1])["detail"]


def test_a_chunked_body_is_cut_off_mid_stream_at_the_request_limit(make_live_server):
    head = (
        b"POST /mix HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n"
    )
    with make_live_server(max_request_bytes=32 * KIB) as url:
        answer = _raw_exchange(url, head, [_chunk(b" " * 16 * KIB)] * 3)

    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"32 KiB limit per request" in answer


def test_a_declared_length_over_the_limit_is_refused_before_the_body(make_live_server):
    head = (
        b"POST /latents HTTP/1.1\r\nHost: test\r\nContent-Length: 1099511627776\r\n"
        b"Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n"
    )
    with make_live_server() as url:
        answer = _raw_exchange(url, head, [])

    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]


# --- images -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (5000, 5000),  # over our limit (4096 x 4096), under Pillow's
        (10_000, 10_000),  # over Pillow's limit: its DecompressionBombWarning
        (100_000, 100_000),  # over twice Pillow's limit: its DecompressionBombError
    ],
)
def test_images_with_too_many_pixels_are_413_before_decoding(make_client, width, height):
    client = make_client()

    response = client.post("/latents", files=[image_part("bomb.png", png_header(width, height))])

    assert_problem(response, 413, "bomb.png")


def test_the_pixel_limit_is_configurable(make_client):
    client = make_client(max_image_pixels=32 * 32)
    assert_problem(
        client.post("/latents", files=[image_part("a.png", png_bytes(1, size=64))]),
        413,
        "64x64",
        "1024",
    )


@pytest.mark.parametrize(
    ("name", "data", "phrase"),
    [
        ("empty.png", b"", "empty.png"),
        ("cut.jpg", encoded("JPEG")[:400], "cut.jpg"),
        ("cut.webp", encoded("WEBP")[:200], "cut.webp"),
        ("bad-crc.png", png_bytes(1)[:-20] + b"\0" * 8 + png_bytes(1)[-12:], "bad-crc.png"),
        ("picture.png", encoded("BMP"), "BMP"),
        ("picture.png", encoded("TIFF"), "TIFF"),
    ],
)
def test_corrupt_truncated_or_disallowed_images_are_415(make_client, name, data, phrase):
    client = make_client()
    assert_problem(client.post("/latents", files=[image_part(name, data)]), 415, phrase)


def test_the_format_comes_from_the_bytes_not_the_name(make_client):
    client = make_client()

    response = client.post(
        "/latents", files=[image_part("photo.gif", encoded("JPEG"), "image/gif")]
    )

    assert response.status_code == 202, response.text


def test_an_empty_request_is_a_422_problem(make_client):
    client = make_client()
    assert_problem(client.post("/latents"), 422, "at least one file part")
    assert_problem(
        client.post("/mix", content=b"", headers={"content-type": "application/json"}),
        422,
        "body",
    )


def test_one_bad_file_leaves_no_trace_of_the_good_ones(make_client):
    """All files are checked before any latent is claimed, stored or queued."""
    client = make_client()
    good = png_bytes(7)
    bad_latent = ("latents", ("bad.safetensors", b"not a latent", "application/octet-stream"))

    response = client.post("/latents", files=[image_part("good.png", good), bad_latent])

    assert_problem(response, 422, "bad.safetensors")
    settings = {"steps": 50, "guidance_scale": 7.5, "size": None, "prompt": ""}
    latent_id = image_latent_id(good, "tiny", settings)
    assert client.get(f"/latents/{latent_id}").status_code == 404
    assert client.app.state.redis.keys("rq:job:*") == []


# --- latents ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "phrase"),
    [((4, 4, 8), "4x8"), ((4, 8, 300), "8x300"), ((4, 1, 1), "1x1")],
)
def test_latents_outside_the_models_sizes_are_422(make_client, shape, phrase):
    client = make_client()
    payload = latent_file(np.zeros(shape, np.float32))

    response = client.post(
        "/latents", files=[("latents", ("z.safetensors", payload, "application/octet-stream"))]
    )

    assert_problem(response, 422, "z.safetensors", phrase)


@pytest.mark.parametrize(
    "array",
    [np.full((4, 8, 8), np.inf, np.float32), np.zeros((4, 8, 8), np.int32)],
)
def test_non_finite_or_non_float_latents_are_422(make_client, array):
    client = make_client()
    response = client.post(
        "/latents",
        files=[("latents", ("z.safetensors", latent_file(array), "application/octet-stream"))],
    )
    assert_problem(response, 422, "z.safetensors")


# --- mixes ------------------------------------------------------------------------------------


@pytest.fixture
def mixable(make_client):
    client = make_client(max_mixes_per_request=3)
    return client, upload_random_latents(client, 2, seed=0)


@pytest.mark.parametrize(
    ("body", "status", "phrase"),
    [
        ({"weights": [[1, 1]] * 4}, 422, "the limit is 3"),
        ({"steps": 0}, 422, "steps"),
        ({"steps": 501}, 422, "steps"),
        ({"guidance_scale": -1}, 422, "guidance_scale"),
        ({"guidance_scale": 31}, 422, "guidance_scale"),
        ({"weights": [1, 2, 3]}, 422, "expected K = 2"),
        ({"weights": [[1, "x"]]}, 422, "weights"),
        ({"latents": []}, 422, "latents"),
        ({"latents": ["f" * 32]}, 404, "f" * 32),
    ],
)
def test_bad_mixes_are_rejected_naming_the_problem(mixable, body, status, phrase):
    client, ids = mixable
    assert_problem(client.post("/mix", json={"latents": ids} | body), status, phrase)


def test_latents_of_different_models_are_not_mixed(mixable):
    client, ids = mixable
    catalog = client.app.state.catalog
    foreign = catalog.record(ids[0]).model_copy(update={"id": "f" * 32, "model": "other/model"})
    catalog.publish(foreign, catalog.load(ids[0]))

    assert_problem(
        client.post("/mix", json={"latents": [ids[1], foreign.id]}), 422, "different models"
    )


def test_invalid_json_is_a_422_problem_naming_the_body(make_client):
    client = make_client()
    response = client.post(
        "/mix", content=b"{not json", headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 422, "body")
    assert body["errors"][0]["field"].startswith("body")


# --- every error is a problem ----------------------------------------------------------------


def test_unknown_routes_and_methods_are_problems(make_client):
    client = make_client()
    assert_problem(client.get("/nowhere"), 404)
    assert_problem(client.delete("/mix"), 405)


def test_an_unexpected_error_is_a_500_problem_without_internals(make_client, monkeypatch):
    client = make_client()

    def broken(*_):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(client.app.state.catalog, "record", broken)
    body = assert_problem(client.get(f"/latents/{'0' * 32}"), 500, "internal error")
    assert "secret" not in json.dumps(body)
