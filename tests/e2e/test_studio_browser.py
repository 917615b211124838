"""The Studio page (`/studio`) in a real browser: Debian's Chromium driven by Playwright,
against the session's ServiceStack (tiny model, S3 storage behind presigned redirects).

Every test records the page's network requests and checks that none went to a host other
than the API's, except the presigned storage URLs the API itself redirected to.

Without Chromium or Playwright these tests skip with a message saying how to enable them;
with LATENTMIX_BROWSER_TESTS=required (set by .ci/run) they fail instead. scripts/test
installs Chromium when missing (scripts/install-chromium).
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from helpers import latent_file, live_server, png_bytes
from pydantic import SecretStr

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [ROOT / "examples" / "blue-square.png", ROOT / "examples" / "red-circle.png"]
SIZE = 96  # the requested image side (the tiny model's default is 64)
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 60_000
ENABLE = (
    "Studio browser tests need Chromium and Playwright: `apt-get install -y chromium` (Debian) "
    "or LATENTMIX_CHROMIUM=/path/to/chromium, and `pip install -e '.[dev]'` (playwright). "
    "scripts/test installs Chromium when it runs as root on Debian (scripts/install-chromium)."
)


def chromium_path() -> str | None:
    return os.environ.get("LATENTMIX_CHROMIUM") or shutil.which("chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable is None:
        if os.environ.get("LATENTMIX_BROWSER_TESTS") == "required":
            pytest.fail(f"LATENTMIX_BROWSER_TESTS=required but no browser: {ENABLE}")
        pytest.skip(ENABLE)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


class Studio:
    """A browser page on /studio that records every request it makes."""

    def __init__(self, browser, api_url: str, viewport: dict[str, int] = DESKTOP):
        self.api = urlsplit(api_url).netloc
        self.context = browser.new_context(viewport=viewport)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.requests = []
        self.page.on("request", lambda request: self.requests.append(request))
        self.console_errors: list[str] = []
        self.page.on("pageerror", lambda error: self.console_errors.append(str(error)))
        self.page.goto(f"{api_url}/studio")

    def foreign_requests(self) -> list[str]:
        """Requests to another host than the API's that were not the API's own redirects
        (nor stopped in the browser by the page's Content-Security-Policy)."""
        foreign = []
        for request in self.requests:
            url = urlsplit(request.url)
            if url.scheme in ("data", "blob") or url.netloc == self.api:
                continue
            if request.failure == "csp":  # Chromium's ERR_BLOCKED_BY_CSP
                continue  # never left the browser
            origin = request.redirected_from
            if origin is None or urlsplit(origin.url).netloc != self.api:
                foreign.append(request.url)
        return foreign

    def drop(self, files: list[tuple[str, bytes, str]]) -> None:
        """Drop files on the drop zone, as a person dragging them from a file manager does."""
        transfer = self.page.evaluate_handle(
            """([names, contents, types]) => {
                const transfer = new DataTransfer();
                names.forEach((name, i) => {
                    const bytes = Uint8Array.from(atob(contents[i]), (c) => c.charCodeAt(0));
                    transfer.items.add(new File([bytes], name, { type: types[i] }));
                });
                return transfer;
            }""",
            [
                [name for name, _, _ in files],
                [base64.b64encode(data).decode() for _, data, _ in files],
                [kind for _, _, kind in files],
            ],
        )
        self.page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})

    def drop_examples(self, size: int = SIZE) -> None:
        if not self.page.locator("#upload-size").is_visible():
            self.page.get_by_text("Inversion options").click()
        self.page.get_by_label("Size (px)").fill(str(size))
        self.drop([(path.name, path.read_bytes(), "image/png") for path in EXAMPLES])

    def ready_cards(self, count: int):
        cards = self.page.locator('#cards .card[data-status="ready"]')
        cards.nth(count - 1).wait_for()
        return cards

    def select_all_ready(self, count: int) -> None:
        self.ready_cards(count)
        self.page.get_by_role("button", name="Select all").click()

    def close(self) -> None:
        assert not self.console_errors, self.console_errors
        self.context.close()


@pytest.fixture
def studio(browser, service_url: str) -> Iterator[Studio]:
    studio = Studio(browser, service_url)
    yield studio
    foreign = studio.foreign_requests()
    assert len(studio.requests) > 5
    assert not foreign, foreign
    studio.close()


def queues_a_mix(request) -> bool:
    """A POST /mix that queues a job (not a dry run: the page previews diagnostics with
    those where the API has them)."""
    return (
        request.url.endswith("/mix")
        and request.method == "POST"
        and not request.post_data_json.get("dry_run")
    )


def natural_width(image) -> int:
    return image.evaluate("img => img.naturalWidth")


def test_root_links_to_the_studio(service_url: str):
    page = httpx.get(f"{service_url}/")
    assert page.status_code == 200
    assert 'href="/studio"' in page.text and 'href="/docs"' in page.text


@pytest.mark.parametrize(
    ("path", "rendered"), [("/docs", ".swagger-ui .info .title"), ("/redoc", ".redoc-wrap h1")]
)
def test_the_api_docs_render_from_the_apis_own_assets(browser, service_url, path, rendered):
    """Swagger UI and ReDoc draw the schema with what the API serves (no CDN, works offline)."""
    docs = Studio(browser, service_url)
    try:
        docs.page.goto(f"{service_url}{path}")
        title = docs.page.locator(rendered).first
        title.wait_for()
        assert "LatentMix" in title.inner_text()
        assert not docs.foreign_requests()
        assert any(request.url.endswith(".js") for request in docs.requests)
    finally:
        docs.close()


def test_dropped_images_become_cards_and_mix_at_half_half_into_an_image_of_the_requested_size(
    studio: Studio,
):
    page = studio.page
    studio.drop_examples()
    cards = studio.ready_cards(2)
    assert cards.count() == 2
    for index in range(2):
        card = cards.nth(index)
        assert card.locator("img.thumb").evaluate("img => img.naturalWidth") > 0
        stats = card.locator(".stats").inner_text()
        assert "method" in stats and "norm" in stats and "channel means" in stats

    studio.select_all_ready(2)
    assert page.locator("#mix-method").input_value() == "nin/chm"
    assert page.locator("#weights output").all_inner_texts() == ["50%", "50%"]
    with page.expect_request(queues_a_mix) as sent:
        page.get_by_role("button", name="Mix", exact=True).click()
    morph = page.evaluate(
        "async () => '/morph' in (await (await fetch('/openapi.json')).json()).paths"
    )
    assert page.locator("#morph-panel").is_visible() == morph  # shown when the API has it
    assert sent.value.post_data_json["weights"] == [0.5, 0.5]
    assert sent.value.post_data_json["method"] == "nin/chm"
    first = page.locator("#mix-results img.result-image[src]").first
    first.wait_for()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=first.element_handle()
    )
    assert natural_width(first) == SIZE


def test_moving_a_slider_renormalises_the_weights_and_mixes_a_second_image(studio: Studio):
    page = studio.page
    studio.drop_examples()
    studio.select_all_ready(2)
    page.get_by_role("button", name="Mix", exact=True).click()
    page.locator("#mix-results img.result-image[src]").first.wait_for()

    with page.expect_request(queues_a_mix) as sent:
        slider = page.locator("#weight-0")
        slider.focus()
        for _ in range(20):  # 0.50 -> 0.70 in steps of 0.01
            page.keyboard.press("ArrowRight")
    assert page.locator("#weights output").all_inner_texts() == ["70%", "30%"]
    weights = sent.value.post_data_json["weights"]
    assert weights == pytest.approx([0.7, 0.3]) and sum(weights) == pytest.approx(1)
    images = page.locator("#mix-results img.result-image[src]")
    images.nth(1).wait_for()
    assert page.locator("#mix-results .result").count() == 2
    assert "70%" in page.locator("#mix-results .result .recipe").first.inner_text()


def test_a_canceled_job_is_marked_canceled_and_the_page_keeps_its_results(
    studio: Studio, service_url: str
):
    page = studio.page
    studio.drop_examples()
    studio.select_all_ready(2)
    page.locator("#mix-steps").fill("400")  # long enough to still be running when canceled
    page.locator("#sample-count").fill("24")
    with page.expect_response(lambda response: queues_a_mix(response.request)) as answer:
        page.get_by_role("button", name="Sample", exact=True).click()
    job_id = answer.value.json()["id"]
    row = page.locator(f'#jobs tr[data-job="{job_id}"]')
    row.wait_for()
    assert page.locator("#sample-grid .tile").count() == 24
    row.get_by_role("button", name="Cancel").click()
    page.locator(f'#jobs tr[data-job="{job_id}"][data-status="canceled"]').wait_for()
    assert row.locator(".badge").inner_text() == "canceled"
    assert row.get_by_role("button", name="Cancel").is_disabled()
    assert httpx.get(f"{service_url}/jobs/{job_id}").json()["status"] == "canceled"
    assert studio.ready_cards(2).count() == 2  # nothing on the page was lost


def test_the_sample_grid_shows_provenance_and_downloads_a_zip(studio: Studio, tmp_path: Path):
    import zipfile

    page = studio.page
    studio.drop_examples()
    studio.select_all_ready(2)
    page.locator("#sample-count").fill("4")
    page.locator("#sample-seed").fill("7")
    page.get_by_role("button", name="Sample", exact=True).click()
    tiles = page.locator("#sample-grid .tile img[src]")
    tiles.nth(3).wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#sample-grid img')].every(i => i.naturalWidth > 0)"
    )
    first = page.locator("#sample-grid .tile").first
    first.hover()
    provenance = first.locator(".provenance").inner_text()
    assert "seed 7" in provenance and "blue-square.png" in provenance
    with page.expect_download() as download:
        page.get_by_role("button", name="Download all (.zip)").click()
    archive = tmp_path / "sample.zip"
    download.value.save_as(archive)
    with zipfile.ZipFile(archive) as zipped:
        assert zipped.testzip() is None  # every CRC-32 checks
        names = zipped.namelist()
        pngs = [name for name in names if name.endswith(".png")]
        assert len(pngs) == 4 and "provenance.json" in names
        assert zipped.read(pngs[0])[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_files_and_bad_settings_show_the_api_detail_next_to_their_control(studio: Studio):
    page = studio.page
    studio.drop_examples()
    studio.ready_cards(2)
    studio.drop([("notes.txt", b"not an image at all", "text/plain")])
    error = page.locator("#upload-error")
    error.filter(has_text="notes.txt").wait_for()
    assert "is not a readable PNG, JPEG or WebP image" in error.inner_text()

    studio.select_all_ready(2)
    page.locator("#mix-steps").fill("100000")
    page.get_by_role("button", name="Mix", exact=True).click()
    page.locator("#mix-error").filter(has_text="steps").wait_for()
    assert "less than or equal" in page.locator("#mix-error").inner_text()
    assert studio.ready_cards(2).count() == 2  # the cards are still there

    page.locator("#mix-steps").fill("")
    page.route("**/mix", lambda route: route.abort("connectionrefused"))
    page.get_by_role("button", name="Mix", exact=True).click()
    page.locator("#mix-error").filter(has_text="could not be reached").wait_for()
    assert studio.ready_cards(2).count() == 2


def test_a_dropped_latent_file_becomes_a_card_with_its_channels_pictured(studio: Studio):
    import numpy as np

    latent = np.random.default_rng(5).standard_normal((4, 12, 12)).astype(np.float32)
    studio.drop([("noise.safetensors", latent_file(latent), "application/octet-stream")])
    card = studio.ready_cards(1).first
    assert card.locator("canvas.thumb").evaluate("c => [c.width, c.height]") == [12, 12]
    stats = card.locator(".stats").inner_text()
    assert "uploaded" in stats
    norm = float(stats.split("norm")[1].split()[0])
    assert norm == pytest.approx(float(np.linalg.norm(latent)), rel=1e-3)


def test_the_page_is_labelled_and_fits_desktop_and_phone_widths(
    browser, studio: Studio, service_url
):
    """Every control has a label; nothing overflows sideways at 1280x800 or 390 px wide. The
    screenshots go to LATENTMIX_SCREENSHOTS_DIR when set (docs/ holds the Studio page's)."""
    page = studio.page
    studio.drop_examples()
    studio.drop([("seeded.png", png_bytes(3), "image/png")])
    studio.select_all_ready(3)
    assert page.locator("#simplex").is_visible()  # three inputs: the triangle picker
    page.locator("#simplex").focus()
    page.keyboard.press("ArrowUp")
    page.locator("#mix-results img.result-image[src]").first.wait_for()
    page.locator("#sample-count").fill("8")
    page.get_by_role("button", name="Sample", exact=True).click()
    page.locator("#sample-grid .tile img[src]").nth(7).wait_for()

    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, button, [tabindex]')]
            .filter(el => !el.closest('[hidden]') && el.type !== 'file')
            .filter(el => !(el.labels?.length || el.getAttribute('aria-label')
                            || (el.tagName === 'BUTTON' && el.textContent.trim())
                            || el.closest('li.tile')))
            .map(el => el.outerHTML.slice(0, 80))"""
    )
    assert unlabelled == []
    shots = os.environ.get("LATENTMIX_SCREENSHOTS_DIR")
    if shots:
        page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(path=str(Path(shots) / "studio-1280x800.png"))
    phone = Studio(browser, service_url, PHONE)
    try:
        phone.drop_examples()
        phone.select_all_ready(2)
        phone.page.get_by_role("button", name="Mix", exact=True).click()
        phone.page.locator("#mix-results img.result-image[src]").first.wait_for()
        width = phone.page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"]
        if shots:
            phone.page.screenshot(path=str(Path(shots) / "studio-phone.png"), full_page=True)
        assert not phone.foreign_requests()
    finally:
        phone.close()


def test_the_morph_panel_plays_the_frames_and_downloads_the_animation(studio: Studio):
    """Runs where the server has POST /morph and the animation route (issue 15)."""
    page = studio.page
    paths = page.evaluate(
        "async () => Object.keys((await (await fetch('/openapi.json')).json()).paths)"
    )
    if "/morph" not in paths or "/jobs/{job_id}/animation.{fmt}" not in paths:
        pytest.skip("this build of the API has no POST /morph or animation route")
    studio.drop_examples()
    studio.select_all_ready(2)
    assert page.locator("#morph-panel").is_visible()
    assert page.locator("#morph-keyframes").inner_text() == "blue-square.png → red-circle.png"
    page.get_by_label("Frames").fill("5")
    with page.expect_request(lambda r: r.url.endswith("/morph") and r.method == "POST") as sent:
        page.get_by_role("button", name="Morph", exact=True).click()
    body = sent.value.post_data_json
    assert body["frames"] == 5 and len(body["keyframes"]) == 2
    page.locator("#morph-downloads button").first.wait_for()
    assert page.locator("#morph-frame-number").inner_text().endswith("/ 5")
    page.get_by_label("Frame", exact=True).focus()
    page.keyboard.press("End")
    assert page.locator("#morph-frame-number").inner_text() == "5 / 5"
    with page.expect_download() as download:
        page.get_by_role("button", name="Download GIF").click()
    assert Path(download.value.path()).read_bytes()[:6] in (b"GIF87a", b"GIF89a")


def test_mix_diagnostics_and_warnings_show_by_the_weights_and_the_result(studio: Studio):
    """Runs where POST /mix has dry_run and results carry diagnostics (issue 16): lerp of two
    inputs shrinks the norm (Eq. 1), which the API warns about."""
    page = studio.page
    fields = page.evaluate(
        "async () => Object.keys((await (await fetch('/openapi.json')).json())"
        ".components.schemas.MixCreate.properties)"
    )
    if "dry_run" not in fields:
        pytest.skip("this build of the API has no mix diagnostics (POST /mix dry_run)")
    studio.drop_examples()
    studio.select_all_ready(2)
    preview = page.locator("#mix-diagnostics")
    preview.filter(has_text="norm ratio").wait_for()
    page.locator("#mix-method").select_option("lerp")
    preview.locator(".warning").filter(has_text="norm").wait_for()
    page.get_by_role("button", name="Mix", exact=True).click()
    result = page.locator("#mix-results .result").first
    result.locator(".diagnostics").filter(has_text="k_eff").wait_for()
    result.locator(".warnings li").filter(has_text="interpolated norm").wait_for()


def test_a_picked_inversion_method_shows_on_the_card_with_its_reconstruction_error(
    studio: Studio,
):
    """Runs where POST /latents takes an `inversion` method (issue 13)."""
    page = studio.page
    fields = page.evaluate(
        "async () => Object.keys((await (await fetch('/openapi.json')).json())"
        ".components.schemas.Body_create_latents.properties)"
    )
    if "inversion" not in fields:
        pytest.skip("this build of the API has no inversion methods on POST /latents")
    page.get_by_text("Inversion options").click()
    # An inexact method: by default its one latent is the job's measured sample (an exact
    # one, edict or bdia, is not measured unless asked).
    page.get_by_label("Inversion method").select_option("fixed-point")
    studio.drop([("seeded-fixed-point.png", png_bytes(11), "image/png")])
    stats = studio.ready_cards(1).first.locator(".stats")
    stats.filter(has_text="latent rmse").wait_for()
    text = stats.inner_text()
    assert "fixed-point" in text and "pixel psnr" in text


@pytest.fixture
def keyed_api_url(service_stack) -> Iterator[str]:
    """A second API process of the session's service (same Redis, bucket and worker) that
    requires an API key."""
    settings = service_stack.settings.model_copy(
        update={"api_keys": [SecretStr("studio-key-0123456789abcdef")]}
    )
    with live_server(settings) as url:
        yield url


def test_with_keys_required_the_page_asks_for_one_and_works_after(browser, keyed_api_url: str):
    studio = Studio(browser, keyed_api_url)
    page = studio.page
    key_form = page.locator("#key-form")
    key_form.wait_for()
    assert "missing API key" in page.locator("#key-error").inner_text()
    page.get_by_label("API key").fill("studio-key-0123456789abcdef")
    page.get_by_role("button", name="Use key").click()
    page.locator("#server-info").filter(has_text="Model tiny").wait_for()
    assert page.evaluate("() => sessionStorage.getItem('latentmix.apiKey')") is not None
    studio.drop_examples()
    studio.select_all_ready(2)
    page.get_by_role("button", name="Mix", exact=True).click()
    image = page.locator("#mix-results img.result-image[src]").first
    image.wait_for()
    page.wait_for_function("img => img.naturalWidth > 0", arg=image.element_handle())
    assert natural_width(image) == SIZE
    assert not studio.foreign_requests()
    studio.close()
