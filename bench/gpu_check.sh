#!/usr/bin/env bash
# The prepared GPU check: KPR throughput on SOLIDER Swin-B at 384x128 (random weights) against timm's eager Swin-B
# backbone, the optimised path's agreement with the eager fp32 model, and the part distance 10k x 100k on CUDA.
# Writes ${OUT:-bench/results}/kpr_throughput.json and, for the optimised and compiled paths, the operator / kernel
# time tables kpr_profile.txt (see bench/README.md). Needs Python with torch, timm, safetensors,
# numpy, opencv and onnxruntime; nothing else of the project (no Ray, Prefect, LanceDB, onnx).
#
#   bash bench/gpu_check.sh             on a GPU machine, from any folder (~4 min on an H100, at most ~6)
#   bash bench/gpu_check.sh --dry-run   the same steps on the CPU with a tiny Swin config and batches 2 and 4 (~1 min)
#
# Each measurement runs in its own process under its own timeout; one that fails or times out is recorded in the
# result's "failures" and the others still run. PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-$(command -v python3 || command -v python)}"
if [[ "${1:-}" == "--dry-run" ]]; then
    out="${OUT:-$(mktemp -d)}"
    common=(--device cpu --threads 2 --preset tiny_solider --baseline tiny_swin --warmup 0 --iters 1
            --distance 100x1000 --compile-backend eager)
    small=2 large=4
    limits=(120 120 120 180 180 120)
    note="dry run on the CPU with the tiny_solider preset: checks the script, not a figure"
elif [[ $# -eq 0 ]]; then
    out="${OUT:-bench/results}"
    common=(--device cuda --preset solider_swin_base --baseline timm_swin_base --warmup 3 --iters 10
            --distance 10000x100000)
    small=64 large=256
    limits=(40 55 40 110 75 40)
    note="GPU check (bench/gpu_check.sh): random weights; timm swin_base_patch4_window7_224 at 384x128 is the baseline"
else
    echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2
    exit 2
fi
mkdir -p "$out"
rm -f "$out/kpr_profile.txt"
parts="$(mktemp -d)"
trap 'rm -rf "$parts"' EXIT

step() {  # step NAME LIMIT_S ARGS...: one measurement process under its own timeout; a failure is recorded
    local name=$1 limit=$2 rc=0
    shift 2
    local cmd=(timeout "$limit" "$python" -m bench.kpr_throughput "${common[@]}" "$@" --output "$parts/$name.json")
    echo "+ ${cmd[*]}"
    local begin=$SECONDS
    "${cmd[@]}" > "$parts/$name.log" 2>&1 || rc=$?
    tail -n 3 "$parts/$name.log"
    echo "  step $name: exit $rc after $((SECONDS - begin)) s"
    if [[ $rc -ne 0 ]]; then
        local why="exit $rc"
        [[ $rc -eq 124 ]] && why="timed out after $limit s"
        local last
        last="$(tail -n 1 "$parts/$name.log" | tr -d '"\\' | cut -c1-200)"
        printf '{"failures": {"step %s": "%s: %s"}}\n' "$name" "$why" "$last" > "$parts/$name.failed.json"
    fi
}

echo "+ environment"
"$python" -c "import sys, torch, timm; print(sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__,
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

start=$SECONDS
step backbone "${limits[0]}" --measure backbone --dtypes fp32 bf16 --batches $small $large
step kpr "${limits[1]}" --measure kpr --dtypes fp32 bf16 --batches $small $large
step optimised "${limits[2]}" --measure optimised --dtypes bf16 --batches $small $large --profile "$out/kpr_profile.txt"
step compiled_large "${limits[3]}" --measure compiled --dtypes bf16 --batches $large --profile "$out/kpr_profile.txt"
step compiled_small "${limits[4]}" --measure compiled --dtypes bf16 --batches $small
step distance "${limits[5]}" --measure distance
echo "+ merge after $((SECONDS - start)) s"
"$python" -m bench.kpr_throughput --merge "$parts"/*.json --note "$note" --output "$out/kpr_throughput.json"
echo "wrote $out/kpr_throughput.json"
