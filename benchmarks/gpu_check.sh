#!/usr/bin/env bash
# The full-size GPU figures of docs/performance.md ("Training step"), in one go: SDXL base shape, random weights,
# 1024 px, batch 1 and 4, bf16, cached latents and text-encoder outputs, AdamW (last warm-up step profiled by kind
# of op: how busy the GPU is), each batch size comparing
#   A: gradient checkpointing   B: no checkpointing   C: gradient checkpointing + fp8 base
# in one process, alternating, 2 rounds. About 6-8 minutes on an H100/H200 (the model is written once, ~1 min).
#
# Run from the repository root: `bash benchmarks/gpu_check.sh`. Writes $OUT/results.jsonl (one JSON line per
# option set and per ratio, see benchmarks/bench_train.py) and $OUT/log.txt (OUT defaults to /tmp/gpu_check_out).
#
# A machine without diffusers (the lent H200): carry the packages as wheels in .whl/ (ignored by git). Fetch them
# here, on a machine with pip and network, from the repository root (the versions pyproject.toml pins):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     diffusers==0.42.1 transformers==5.23.0 peft==0.21.2 imagesize==2.0.1 tomli==2.5.0 regex==2026.11.19 \
#     importlib_metadata==10.2.0
# (about 22 MB; torch, accelerate, safetensors, tokenizers, huggingface_hub, numpy and pillow are there already).
# A dry run of this script on a CPU, on the tiny model (a minute or two):
#   PYTHON=.venv/bin/python MODEL=tiny RESOLUTION=64 BATCHES=1 EXTRA="--steps 1 --warmup 2 --rounds 1 --micro_rounds 1" \
#     bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
MODEL_DIR=${MODEL_DIR:-/tmp/bench-sdxl-full} PYTHON=${PYTHON:-python3}
MODEL=${MODEL:-full} RESOLUTION=${RESOLUTION:-1024} BATCHES=${BATCHES:-1 4} EXTRA=${EXTRA:-}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
mkdir -p "$MODEL_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$OUT/log.txt" || true
"$PYTHON" -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)" \
    | tee -a "$OUT/log.txt"

for batch in $BATCHES; do
    echo "== $MODEL, $RESOLUTION px, batch $batch" | tee -a "$OUT/log.txt"
    # shellcheck disable=SC2086  # EXTRA is a list of options
    timeout 330 "$PYTHON" benchmarks/bench_train.py --model "$MODEL" --model_dir "$MODEL_DIR" --resolution "$RESOLUTION" \
        --batch "$batch" --precision bf16 --steps 8 --warmup 3 --micro_rounds 4 --rounds 2 --profile $EXTRA \
        --cache_latents --cache_text_encoder_outputs --optimizer_type AdamW \
        --compare "--gradient_checkpointing" "" "--gradient_checkpointing --fp8_base" \
        >>"$OUT/results.jsonl" 2>>"$OUT/log.txt" || echo "batch $batch: exit status $?" | tee -a "$OUT/log.txt"
done
"$PYTHON" - "$OUT/results.jsonl" <<'EOF'
import json, sys

def f(value, scale=1.0, digits=3):
    return "-" if value is None else f"{value / scale:.{digits}f}"

for line in open(sys.argv[1]):
    d = json.loads(line)
    if "label" in d:
        print(f"batch {d['batch']} {d['label']} [{d['options']}]: {f(d['s_per_step'], digits=4)} s/step, "
              f"{f(d['images_per_s'], digits=2)} img/s, {f(d['flops_per_step'], 1e12, 2)} TFLOP, fraction of peak "
              f"{f(d['fraction_of_peak'])}, peak GPU {f(d['peak_gpu_mem'], 2**30, 1)} GiB, lora_overhead "
              f"{f(d['lora_overhead'])}, step_overhead {f(d['step_overhead'])}")
        p = d.get("profile")
        if p:  # the last warm-up step of the set's last round (bench_train.py --profile)
            print(f"  profiled step {p['step_s']:.4f} s, GPU busy {f(p['device_busy'])}, kernels by kind "
                  f"{p['device_s']}, host by kind {p['host_s']}, executed FLOPs {p.get('executed_flops')}")
    else:
        print(f"  {d['compare']}: s/step {f(d['s_per_step'])}, peak GPU {f(d['peak_gpu_mem'])}")
EOF
