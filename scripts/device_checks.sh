#!/usr/bin/env bash
# Every GPU check of issues 5 (kernels) and 6 (memory) as one command, for a lent GPU machine.
#
#   scripts/device_wheels.sh                        # here: .whl/ with DeepSpeed and what the GPU image lacks
#   bash scripts/device_checks.sh                   # there, with .whl carried; results under $OUT
#   SMOKE=1 PY=.venv/bin/python OUT=/tmp/dc bash scripts/device_checks.sh   # the plumbing, on a CPU
#
# Stages, each under its own time cap and all under one deadline (DEADLINE_S, default 480 s), so
# that one stuck stage cannot spend the lease:
#   env            nvidia-smi, torch / triton / deepspeed versions
#   kernel_gpu     tests/kernels -m gpu: the bf16 and large-shape tests that CI skips
#   bench_kernels  scripts/bench_kernels.py: eager / torch.compile / Triton, limits, issue 5's targets
#   output_layer   tests/benchmarks/bench_output_layer.py: plain vs fused 670K output layer, bf16
#   memory         python -m xmtc.memory --measure on xml_cnn_670k: allocator peak vs prediction, snapshot
#   e2e_triton     xml_cnn_670k (synthetic, bf16) trained E2E_STEPS steps with model.kernels triton ...
#   e2e_torch      ... and with torch: samples/s and peak memory side by side
#   two_ranks_one_gpu  (one-GPU machines) deepspeed --num_gpus 2: must stop with the two-ranks-one-GPU sentence
#   kernel_tests   the rest of tests/kernels (CI runs them interpreted), compiled for the GPU
#   memory_bench   tests/benchmarks/bench_memory.py on the GPU: one JSON record per config x ZeRO stage
# Expected on an H200 (estimates, no run yet): about 6 minutes of stages, plus the machine's start.
# Output: $OUT/summary.txt (a line per stage and the headline numbers) and $OUT/device_checks.tar.gz
# (every log, JSON and PNG; no checkpoints). In the checkout only the ignored .cache/ is written
# (the synthetic corpus, built by the memory stage and reused by the e2e runs).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_checks_out}
SMOKE=${SMOKE:-0}
E2E_STEPS=${E2E_STEPS:-100}
work=$(mktemp -d)
R=$work/device_checks
mkdir -p "$R" "$OUT"
deadline=$(( $(date +%s) + ${DEADLINE_S:-480} ))

PY=${PY:-python3}
if ! "$PY" -c "import deepspeed, datasets" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "$PY lacks deepspeed or datasets and .whl/ is empty: run scripts/device_wheels.sh here and carry .whl" >&2; exit 1; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" .whl/*.whl \
        || { echo "installing .whl/ failed" >&2; exit 1; }
    export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$work/torch_extensions}" MPLBACKEND=Agg

stage() {  # stage NAME CAP_S COMMAND...: run under min(cap, time left); log to $R/NAME.log
    local name=$1 cap=$2 left t0 rc
    shift 2
    left=$(( deadline - $(date +%s) ))
    if [ "$left" -lt 15 ]; then
        echo "$name: skipped, the deadline has passed" | tee -a "$R/summary.txt"
        return
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    t0=$(date +%s)
    timeout -k 10 "$cap" "$@" >"$R/$name.log" 2>&1
    rc=$?
    echo "$name: rc $rc in $(( $(date +%s) - t0 )) s$([ $rc -eq 124 ] && echo " (stopped at its cap of $cap s)")" \
        | tee -a "$R/summary.txt"
}

if [ "$SMOKE" = 1 ]; then
    # The same stages at CPU sizes: checks the arguments and the collection, not the GPU.
    gpu_tests=(-m gpu tests/kernels/test_masked_softmax.py)  # skipped without CUDA: checks the selection only
    tests=(-m "not slow" tests/kernels/test_ops_dispatch.py tests/kernels/test_bench_targets.py)
    bench=(--dry-run --ops dynamic_max_pool masked_softmax)
    output_layer=(--device cpu --cases plain,fused --labels 20000 --steps 1)
    memory=(--config debug_xml_cnn --device cpu --steps 2)
    e2e=(--config debug_xml_cnn --train.max_steps 4)
    backends=(torch auto)
    memory_bench=(-k "debug_xml_cnn-0-1-1")

else
    gpu_tests=(-m gpu tests/kernels)
    tests=(-m "not gpu and not slow" tests/kernels)
    bench=()
    output_layer=(--device cuda --cases plain,fused)
    memory=(--config xml_cnn_670k --snapshot "$R/memory_snapshot.pickle")
    e2e=(--config xml_cnn_670k --train.max_steps "$E2E_STEPS" --train.precision bf16)
    backends=(triton torch)
    memory_bench=()

fi

stage env 60 bash -c "nvidia-smi || true; $PY -c 'import torch, triton, deepspeed, platform; \
print(platform.python_version(), \"torch\", torch.__version__, \"triton\", triton.__version__, \"deepspeed\", deepspeed.__version__); \
print(torch.cuda.get_device_name() if torch.cuda.is_available() else \"no CUDA device\")'"
stage kernel_gpu 150 "$PY" -m pytest -q -p no:cacheprovider --timeout 100 -rs "${gpu_tests[@]}"
stage bench_kernels 180 "$PY" scripts/bench_kernels.py "${bench[@]}" --out "$R/bench_kernels"
stage output_layer 60 "$PY" tests/benchmarks/bench_output_layer.py "${output_layer[@]}" --json "$R/output_layer.json"
stage memory 90 "$PY" -m xmtc.memory "${memory[@]}" --measure --json "$R/memory.json" --plot "$R/memory.png"
for backend in "${backends[@]}"; do
    stage "e2e_$backend" 120 "$PY" -m deepspeed.launcher.runner --num_gpus 1 \
        --master_port $(( 29500 + RANDOM % 1000 )) launch/train.py "${e2e[@]}" --model.kernels "$backend" \
        --train.output_dir "$R/e2e_$backend" --train.progress false --train.log_every 10
done
if [ "$SMOKE" != 1 ] && [ "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')" = 1 ]; then
    # Two ranks on the one GPU: passes when the run stops at start-up with the trainer's sentence.
    stage two_ranks_one_gpu 60 bash -c 'out=$("$@" 2>&1); rc=$?; printf "%s\n" "$out"; echo "launcher exit $rc"
        [ "$rc" -ne 0 ] && grep -q "both run on .* GPU " <<<"$out"' _ "$PY" -m deepspeed.launcher.runner --num_gpus 2 \
        --master_port $(( 29500 + RANDOM % 1000 )) launch/train.py --config debug_xml_cnn --train.max_steps 2 \
        --train.output_dir "$R/two_ranks" --train.progress false
fi
stage kernel_tests 120 "$PY" -m pytest -q -p no:cacheprovider --timeout 100 -rs "${tests[@]}"
XMTC_MEMORY_BENCH_DIR="$R/memory_bench" XMTC_MEMORY_BENCH_RANKS=1 stage memory_bench 150 "$PY" -m pytest -q \
    -p no:cacheprovider tests/benchmarks/bench_memory.py --benchmark-only "${memory_bench[@]}"

"$PY" - "$R" <<'EOF' >"$R/headline.txt" 2>&1
import json, sys
from pathlib import Path
r = Path(sys.argv[1])
def load(p):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None
try:  # bench_kernels.py prints its limits and its verdicts on issue 5's targets itself
    print(*[line for line in (r / "bench_kernels.log").read_text().splitlines()
            if line.startswith(("limits:", "target "))], sep="\n")
except OSError:
    print("bench_kernels: no log")
o = load(r / "output_layer.json")
for row in (o or {}).get("rows", []):
    print(f"output layer {row['case']}: {row['samples_per_s']:.0f} samples/s, {row['tflops']:.1f} TFLOP/s, peak {row['peak_gb']:.2f} GiB")
try:
    log = (r / "memory.log").read_text().splitlines()
    at = next(i for i, line in enumerate(log) if line.startswith("measured over"))
    print("memory, xmtc.memory --measure:", *log[at:at + 16], sep="\n  ")
except (OSError, StopIteration):
    print("memory: no measurement (see memory.log)")
for d in sorted(r.glob("e2e_*")):
    f = load(d / "final_metrics.json")
    if f:
        peak = f.get("peak_allocated_gb", f.get("peak_rss_gb"))
        print(f"{d.name}: last window {f.get('samples_per_s', 0):.0f} samples/s, whole run {f.get('train_samples_per_s', 0):.0f}, "
              f"peak {peak:.2f} GiB, train {f.get('train_time_s', 0):.0f} s, P@1 {f.get('P@1', float('nan')):.4f}")
EOF

rm -rf "$R"/e2e_*/checkpoints
find "$R" -name memory_snapshot.pickle -size +12M -delete  # over what comes back; memory.json keeps the numbers
cat "$R/headline.txt" >>"$R/summary.txt"
cp "$R/summary.txt" "$OUT/summary.txt"
tar -czf "$OUT/device_checks.tar.gz" -C "$work" device_checks
echo; cat "$R/headline.txt"
ls -l "$OUT"
