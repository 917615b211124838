"""The renderer of cross-job batching (worker/batching.py) without a model: which waiting
rows share a call, in which order, and that each job gets its own part back or its own
failure."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from latentmix.worker.batching import WAIT_SHARE, Renderer, _Request

CALLS: list[list[str]] = []


@dataclass
class FakeRows(_Request):
    """A job's rows: `count` of them, sharing calls with rows of the same `kind`."""

    name: str
    count: int
    kind: str = "a"
    fail: bool = False
    seen: list = field(default_factory=list)

    def key(self) -> tuple:
        return (self.kind,)

    @staticmethod
    def run_group(group: list[FakeRows]) -> None:
        CALLS.append([rows.name for rows in group])
        if any(rows.fail for rows in group):
            for rows in group:
                rows.error = RuntimeError(f"call of {[r.name for r in group]} failed")
            return
        start = 0
        for rows in group:
            rows.value = list(range(start, start + rows.count))
            start += rows.count

    def rows(self) -> int:
        return self.count


@pytest.fixture(autouse=True)
def no_calls():
    CALLS.clear()


def submit_all(renderer: Renderer, requests: list[FakeRows]) -> dict[str, object]:
    """Each request from a thread of its own, as jobs in flight send them; their outcomes."""
    outcomes: dict[str, object] = {}

    def send(rows: FakeRows) -> None:
        try:
            outcomes[rows.name] = renderer.run(rows)
        except RuntimeError as exc:
            outcomes[rows.name] = exc

    threads = [threading.Thread(target=send, args=(rows,)) for rows in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    return outcomes


def test_rows_arriving_within_the_wait_share_one_call_each_with_its_own_rows():
    renderer = Renderer(max_rows=8, wait_s=5.0)
    requests = [
        FakeRows(name=job, count=n, job_id=job) for job, n in zip("xyz", (2, 3, 3), strict=True)
    ]

    outcomes = submit_all(renderer, requests)  # 8 rows: the call is full, nobody waits 5 s
    renderer.stop()

    assert len(CALLS) == 1 and sorted(CALLS[0]) == ["x", "y", "z"]
    parts = [outcomes[job] for job in CALLS[0]]
    assert sorted(row for part in parts for row in part) == list(range(8))  # disjoint, all
    assert [len(outcomes[job]) for job in "xyz"] == [2, 3, 3]


def test_a_call_short_of_rows_waits_for_company_only_up_to_the_wait():
    renderer = Renderer(max_rows=8, wait_s=0.05)
    started = time.monotonic()

    outcome = renderer.run(FakeRows(name="alone", count=2, job_id="alone"))
    renderer.stop()

    assert outcome == [0, 1] and CALLS == [["alone"]]
    assert 0.05 <= time.monotonic() - started < 5


def test_the_wait_for_company_is_at_most_a_share_of_the_last_calls_time():
    renderer = Renderer(max_rows=2, wait_s=10.0)
    original = FakeRows.run_group

    def slow(group):  # a call of 0.2 s: the next short call waits at most 5% of it
        time.sleep(0.2)
        original(group)

    FakeRows.run_group = staticmethod(slow)
    try:
        renderer.run(FakeRows(name="full", count=2, job_id="full"))  # full: no wait at all
        started = time.monotonic()
        renderer.run(FakeRows(name="short", count=1, job_id="short"))
        took = time.monotonic() - started
    finally:
        FakeRows.run_group = staticmethod(original)
        renderer.stop()

    assert WAIT_SHARE == 0.05
    assert 0.2 <= took < 0.2 + 1.0  # its own call, and a wait of about 10 ms, not 10 s


def test_rows_of_other_settings_and_beyond_the_batch_go_in_later_calls_oldest_first():
    renderer = Renderer(max_rows=4, wait_s=0.0)
    gate = threading.Event()
    blocker = FakeRows(name="blocker", count=1, kind="slow", job_id="blocker")
    original = FakeRows.run_group

    def held(group):  # the first call holds the renderer until the others are waiting
        if group[0] is blocker:
            gate.wait(10)
        original(group)

    waiting = [
        FakeRows(name="a1", count=3, job_id="a1"),
        FakeRows(name="b1", count=1, kind="b", job_id="b1"),
        FakeRows(name="a2", count=2, job_id="a2"),  # 3 + 2 > 4: the next call of kind a
        FakeRows(name="a3", count=1, job_id="a3"),
    ]
    FakeRows.run_group = staticmethod(held)
    try:
        first = threading.Thread(target=renderer.run, args=(blocker,))
        first.start()
        while renderer._thread is None or blocker in renderer._waiting:  # until its call runs
            time.sleep(0.001)
        threads = []
        for rows in waiting:  # in this order, each waiting before the next comes
            threads.append(threading.Thread(target=renderer.run, args=(rows,)))
            threads[-1].start()
            while rows not in renderer._waiting:
                time.sleep(0.001)
        gate.set()
        for thread in [first, *threads]:
            thread.join(10)
    finally:
        FakeRows.run_group = staticmethod(original)
        renderer.stop()

    assert CALLS == [["blocker"], ["a1", "a3"], ["b1"], ["a2"]]


def test_a_failing_call_fails_only_the_jobs_whose_rows_it_held():
    renderer = Renderer(max_rows=8, wait_s=0.0)
    bad = [FakeRows(name="bad", count=1, kind="x", fail=True, job_id="bad")]
    good = [FakeRows(name="good", count=1, kind="y", job_id="good")]

    outcomes = submit_all(renderer, bad + good)
    renderer.stop()

    assert isinstance(outcomes["bad"], RuntimeError)
    assert outcomes["good"] == [0]
