"""The task adapters' own logic, without a model: batching, progress, cancellation, the
order in which a mix's rows are rendered, and the previous release's requests."""

from concurrent.futures import Future
from types import SimpleNamespace

import pytest
from helpers import TINY_CARD
from redis import Redis

from latentmix.service.core.contract import InversionSettings, MixRequest, plan_mix
from latentmix.service.core.jobs import request_cancel
from latentmix.worker.engine.diffusion import named_method
from latentmix.worker.runtime import WorkerContext
from latentmix.worker.tasks import mix as mix_task
from latentmix.worker.tasks import streaming
from latentmix.worker.tasks.invert import measured_in_job
from latentmix.worker.tasks.reporting import (
    JobCanceled,
    batch_progress,
    in_batches,
    progress_reporter,
)
from latentmix.worker.tasks.streaming import rows_to_render

IDS = [f"{i:032x}" for i in range(3)]


def done(value: bool) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def render_plan(stored: list[bool], size: int) -> tuple[list, list]:
    """(batches with their planned count, the calls of on_rendered) for rows whose image is
    stored (True) or not."""
    rendered: list[list[int]] = []
    batches = list(rows_to_render([done(s) for s in stored], size, rendered.append))
    return batches, rendered


def test_rows_are_rendered_in_batches_of_the_given_size():
    batches, rendered = render_plan([False] * 5, size=2)
    assert batches == [([0, 1], 3), ([2, 3], 3), ([4], 3)]
    assert rendered == []


def test_rows_rendered_before_are_announced_together_and_never_rendered_again():
    batches, rendered = render_plan([True, False, True, False, True], size=2)
    assert batches == [([1, 3], 2)]
    assert rendered == [[0, 2], [4]]


def test_a_mix_rendered_entirely_before_renders_nothing():
    batches, rendered = render_plan([True, True, True], size=2)
    assert batches == []
    assert rendered == [[0, 1, 2]]


def test_the_planned_batch_count_shrinks_as_stored_rows_turn_up():
    batches, _ = render_plan([False, False, True, True, False], size=2)
    # After the first batch, three rows are unknown (two more batches planned); two of
    # them turn out stored, so the last batch is the second of two.
    assert batches == [([0, 1], 3), ([4], 2)]


def test_copies_of_earlier_rows_are_neither_rendered_nor_planned():
    rendered: list[list[int]] = []
    futures = [done(False), None, done(True), done(False), None]
    batches = list(rows_to_render(futures, 2, rendered.append))
    # Rows 1 and 4 repeat earlier rows: three rows are known, one batch of two renders
    # rows 0 and 3, and the trailing copy does not hold the last batch back.
    assert batches == [([0, 3], 1)]
    assert rendered == [[2]]


def test_a_copy_is_listed_together_with_the_row_it_repeats(monkeypatch):
    appended: list[list[dict]] = []
    monkeypatch.setattr(
        streaming,
        "append_partial_result",
        lambda redis, job_id, rows, settings: appended.append(rows),
    )
    images = [
        SimpleNamespace(id=image, model_dump=lambda mode, i=image: {"id": i}) for image in "abab"
    ]
    ctx = SimpleNamespace(redis=None, settings=None)
    stream = streaming.ImageStream(ctx, SimpleNamespace(id="job"), images)

    assert stream.copies == {2: 0, 3: 1}
    stream.list([1])
    stream.list([0])
    assert appended == [[{"id": "b"}, {"id": "b"}], [{"id": "a"}, {"id": "a"}]]


def test_latents_are_stored_for_every_row_but_the_copies(local_storage):
    images = [SimpleNamespace(id=image) for image in "aba"]
    ctx = SimpleNamespace(storage=local_storage)  # its I/O threads store the latents
    stream = streaming.ImageStream(ctx, SimpleNamespace(id="job"), images)
    published: list[int] = []

    futures = stream.store_latents(lambda row: published.append(row) or row == 1)

    assert futures[2] is None
    assert [future.result() for future in futures[:2]] == [False, True]
    assert sorted(published) == [0, 1]


def test_in_batches_covers_every_row_once():
    assert in_batches(5, 2) == [[0, 1], [2, 3], [4]]
    assert in_batches(0, 4) == []


def test_batch_progress_counts_steps_over_all_planned_batches():
    seen = []
    report = batch_progress(lambda done, total: seen.append((done, total)), number=1, planned=3)
    report(4, 10)
    assert seen == [(14, 30)]


class FakeJob(SimpleNamespace):
    def save_meta(self) -> None:
        self.saves += 1


@pytest.fixture
def redis(redis_url: str) -> Redis:
    return Redis.from_url(redis_url)


def test_progress_is_saved_at_most_every_interval_and_always_at_the_end(redis):
    job = FakeJob(id="job-1", meta={}, saves=0)
    report = progress_reporter(redis, job)

    for step in range(1, 11):
        report(step, 10)

    assert job.meta["progress"] == {"done": 10, "total": 10}
    assert job.saves == 2  # the first step and the last; the others fall in one interval


def test_a_canceled_job_stops_at_its_next_report(redis):
    job = FakeJob(id="job-2", meta={}, saves=0)
    report = progress_reporter(redis, job)
    report(1, 10)
    request_cancel(redis, "job-2", ttl_s=60)

    with pytest.raises(JobCanceled, match="job-2 canceled"):
        report(10, 10)


def test_a_mix_request_of_the_previous_release_is_upgraded(monkeypatch):
    records = {
        latent_id: SimpleNamespace(id=latent_id, prompt="a cat", settings={"steps": 20})
        for latent_id in IDS[:2]
    }
    monkeypatch.setattr(mix_task, "context", lambda: None)
    monkeypatch.setattr(mix_task, "ready_record", lambda ctx, i, producer: records[i])
    legacy = {
        "latents": IDS[:2],
        "weights": [[0.25, 0.75]],
        "method": "nin/chm",
        "prompt": None,
        "steps": None,
        "guidance_scale": 7.5,
        "producers": {},
        "seed": None,
    }

    upgraded = MixRequest.model_validate(mix_task._upgrade(legacy))

    assert upgraded == plan_mix(
        latents=IDS[:2],
        rows=[[0.25, 0.75]],
        method="nin/chm",
        prompt="a cat",
        steps=20,
        guidance_scale=7.5,
    )
    assert mix_task._upgrade(upgraded.model_dump()) == upgraded.model_dump()


FLOW_CARD = TINY_CARD.model_copy(
    update={"prediction_type": "flow_prediction", "inversion_methods": ("flow-euler", "rf-solver")}
)


@pytest.mark.parametrize(
    ("card", "default", "other"),
    [(TINY_CARD, "ddim", "bdia"), (FLOW_CARD, "flow-euler", "rf-solver")],
)
def test_an_inversion_naming_no_method_uses_the_models_default(card, default, other):
    unnamed = named_method(InversionSettings(steps=7, guidance_scale=1.0), card)
    named = named_method(InversionSettings(method=other, steps=7), card)

    assert (unnamed.name, named.name) == (default, other)


# --- morph -------------------------------------------------------------------------------


def test_a_morphs_coefficients_are_listed_per_segment_with_both_ends():
    from latentmix.service.core.morph_plan import plan_frames
    from latentmix.worker.tasks.morph import _per_segment

    chain = plan_frames(3, 6, path="chain")  # 3 inner frames: 2 on the first segment, 1 on the next
    assert _per_segment(chain, "chain") == [[0.0, 1 / 3, 2 / 3, 1.0], [0.0, 0.5, 1.0]]
    loop = plan_frames(2, 4, path="loop")
    assert _per_segment(loop, "loop") == [[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]]
    # An inner coefficient that rounds to 1 (Beta with a huge alpha) is still inner.
    steep = plan_frames(3, 5, path="chain", coefficients=[[0.0, 1.0, 1.0], [0.0, 0.5, 1.0]])
    assert _per_segment(steep, "chain") == [[0.0, 1.0, 1.0], [0.0, 0.5, 1.0]]


def test_perceptual_respacing_closes_a_loop_with_its_first_frame():
    from PIL import Image

    from latentmix.service.core.contract import MorphRequest
    from latentmix.worker.tasks.morph import _respaced

    request = MorphRequest(
        keyframes=IDS[:2],
        prompts=["", ""],
        frames=6,
        path="loop",
        spacing="perceptual",
        method="nin/chm",
        steps=4,
        guidance_scale=1.0,
    )
    planned = request.plan()  # t = 0, 1/3, 2/3 on A -> B, then 0, 1/3, 2/3 on B -> A
    grey = [0, 10, 20, 250, 250, 250]  # frame values; frame 0 (black) closes the loop
    images = [Image.new("RGB", (2, 2), (v, v, v)) for v in grey]
    first, second = _respaced(request, planned, images)
    # A -> B: the jump is between t = 2/3 and 1 (20 -> 250): frames crowd there.
    assert first[0] == 0.0 and first[-1] == 1.0 and first[1] > 1 / 3
    # B -> A: the jump is back to frame 0 (250 -> 0) at the very end.
    assert second[1] > 1 / 3 and second[2] > 2 / 3


def _context(settings, model) -> WorkerContext:
    """A worker context with only what the helper models need."""
    return WorkerContext(settings, model, None, None, None, None, None)  # type: ignore[arg-type]


def test_a_morph_measures_with_lpips_when_its_weights_are_configured(tmp_path):
    import torch
    from safetensors.torch import save_file

    from latentmix.worker.engine.lpips import ALEX_CHANNELS, AlexFeatures, Lpips

    state = Lpips(AlexFeatures(), ALEX_CHANNELS).state_dict()
    weights = {
        k.removeprefix("backbone."): v for k, v in state.items() if k not in ("shift", "scale")
    }
    save_file(weights, str(tmp_path / "alex.safetensors"))
    model = SimpleNamespace(device=torch.device("cpu"))
    configured = _context(SimpleNamespace(lpips_weights=tmp_path / "alex.safetensors"), model)
    unset = _context(SimpleNamespace(lpips_weights=None), model)
    assert configured.frame_distance().name == "lpips-alex"
    # Loaded once per worker: the context keeps it for the next morph.
    assert configured.frame_distance() is configured.frame_distance()
    assert unset.frame_distance().name == "rgb-rmse"


@pytest.mark.parametrize(
    ("measure", "expected"),
    [
        ("sample", False),  # measured after the job, on the background queue
        ("all", True),  # every latent of every batch
        ("none", False),
    ],
)
def test_which_latents_of_an_inversion_are_regenerated_inside_the_job(measure, expected):
    assert measured_in_job(measure) is expected
