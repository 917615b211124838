#!/usr/bin/env bash
# The throughput comparison on a CUDA machine, ready to run: SD 1.5's architecture with random
# weights (`sd15-random`, the real model's compute) at 512 px in fp16, UNet batch 16, four ways
# side by side (batched Diffusers, one-at-a-time Diffusers, the engine, the service over HTTP),
# first without, then with torch.compile. Prints each run's report (images per second and the
# ratios against batched Diffusers) and writes the raw numbers to bench/results/.
#
#     bench/gpu.sh                 # on the GPU machine: about 5 minutes on one H200
#     bench/gpu.sh --device cpu    # the same script on CPU with a tiny workload (tested in CI)
#
# Then the many-small-requests workload (bench/small_jobs.py, issue 30): BENCH_CLIENTS
# concurrent clients each submitting one-row mixes of two ready latents, against the engine
# rendering the same rows in batches, with and without cross-job batching.
#
# Override the workload with BENCH_MODEL, BENCH_SIZE, BENCH_STEPS, BENCH_K, BENCH_N,
# BENCH_BATCH, BENCH_ROUNDS; the small jobs' with BENCH_CLIENTS, BENCH_JOBS,
# BENCH_SMALL_STEPS; BENCH_OUT is where the JSON files go; BENCH_MODES="eager" skips the
# torch.compile run (compiling takes minutes on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
device="cuda"
if [ "${1:-}" = "--device" ]; then device="$2"; shift 2; fi
if [ "$device" = "cpu" ]; then
  model="${BENCH_MODEL:-tiny}" size="${BENCH_SIZE:-64}" steps="${BENCH_STEPS:-2}"
  k="${BENCH_K:-4}" n="${BENCH_N:-4}" batch="${BENCH_BATCH:-4}" dtype=float32
  clients="${BENCH_CLIENTS:-4}" jobs="${BENCH_JOBS:-8}" small_steps="${BENCH_SMALL_STEPS:-2}"
else
  model="${BENCH_MODEL:-sd15-random}" size="${BENCH_SIZE:-512}" steps="${BENCH_STEPS:-20}"
  k="${BENCH_K:-16}" n="${BENCH_N:-32}" batch="${BENCH_BATCH:-16}" dtype=float16
  clients="${BENCH_CLIENTS:-16}" jobs="${BENCH_JOBS:-96}" small_steps="${BENCH_SMALL_STEPS:-20}"
fi
rounds="${BENCH_ROUNDS:-2}"
out="${BENCH_OUT:-bench/results}"
python="${LATENTMIX_VENV:-.venv}/bin/python"
mkdir -p "$out"
stamp="$(date -u +%Y-%m-%dT%H%M)"
export HF_HUB_OFFLINE=1
for mode in ${BENCH_MODES:-eager compiled}; do
  compile=""
  [ "$mode" = "compiled" ] && compile="--compile"
  name="$stamp-gpu-$model-${size}px-$device${compile:+-compiled}"
  echo "== $model, $size px, $steps steps, K = $k, N = $n, batch $batch, $device $dtype ${compile:-(eager)}"
  "$python" bench/throughput.py --model "$model" --size "$size" --steps "$steps" -k "$k" -n "$n" \
    --device "$device" --dtype "$dtype" --max-batch-size "$batch" --rounds "$rounds" \
    --store local $compile --json "$out/$name.json" "$@"
done
name="$stamp-gpu-small-jobs-$model-${size}px-$device"
echo "== small jobs: $model, $size px, $small_steps steps, $clients clients, $jobs one-row mixes, batch $batch, $device $dtype"
"$python" bench/small_jobs.py --model "$model" --size "$size" --steps "$small_steps" \
  --clients "$clients" --jobs "$jobs" --batch "$batch" --device "$device" --dtype "$dtype" \
  --rounds "$rounds" --threads "${BENCH_THREADS:-0}" --json "$out/$name.json"
