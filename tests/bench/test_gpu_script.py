"""bench/gpu.sh, the GPU run ready to go, runs end to end on CPU (`--device cpu`) with a tiny
workload: four variants side by side, raw numbers written, ratios against batched Diffusers
printed; then the small-jobs workload (bench/small_jobs.py) with and without cross-job
batching, with RQ's cost per job against the CPU budget of the target. The torch.compile
half is skipped here (BENCH_MODES=eager: compiling takes minutes on two cores;
tests/worker/engine/test_models.py covers the compile switch)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(900)
def test_gpu_script_runs_the_four_way_comparison_on_cpu(tmp_path):
    env = os.environ | {
        "BENCH_OUT": str(tmp_path),
        "BENCH_MODES": "eager",
        "BENCH_ROUNDS": "1",
        "BENCH_THREADS": "1",
        "LATENTMIX_VENV": str(Path(sys.executable).parents[1]),
    }
    done = subprocess.run(
        ["bash", "bench/gpu.sh", "--device", "cpu", "--threads", "1", "--repeats", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (raw,) = tmp_path.glob("*-gpu-tiny-64px-cpu.json")
    data = json.loads(raw.read_text())
    assert set(data["results"]) == {"batched", "baseline", "engine", "service"}
    assert data["model"]["max_batch_size"] == 4 and data["model"]["device"] == "cpu"
    # Same computation, not only the same amount of it: the engine's PNGs match the pipeline's.
    assert data["max_pixel_difference_engine_vs_batched"] <= 1
    assert "service / batched Diffusers" in done.stdout
    assert "img/s" in done.stdout

    (small,) = tmp_path.glob("*-gpu-small-jobs-tiny-64px-cpu.json")
    small_data = json.loads(small.read_text())
    rates = {name: runs[0]["images_per_s"] for name, runs in small_data["results"].items()}
    assert set(rates) == {"engine", "service-off", "service-on"} and min(rates.values()) > 0
    assert "batching off" in done.stdout and "on / engine" in done.stdout
    # RQ's own cost per job, measured on the service's Redis, and the budget it is set against
    assert 0 < small_data["rq_job_cpu_ms"] < 100
    assert "CPU budget of 0.8x" in done.stdout
