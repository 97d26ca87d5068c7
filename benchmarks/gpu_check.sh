#!/usr/bin/env bash
# The full-size GPU figures of docs/performance.md ("Training step"), in one go: SDXL base shape, random weights,
# 1024 px, batch 1 and 4, bf16, cached latents and text-encoder outputs, AdamW, each batch size comparing
#   A: gradient checkpointing   B: no checkpointing   C: gradient checkpointing + fp8 base
# in one process, alternating, 2 rounds. About 6-8 minutes on an H100/H200 (the model is written once, ~1 min).
#
# Run from the repository root: `bash benchmarks/gpu_check.sh`. Writes $OUT/results.jsonl (one JSON line per
# option set and per ratio, see benchmarks/bench_train.py) and $OUT/log.txt (OUT defaults to ./gpu_check_out).
#
# A machine without diffusers (the lent H200): carry the packages as wheels in .whl/ (ignored by git). Fetch them
# here, on a machine with pip and network, from the repository root (the versions pyproject.toml pins):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     diffusers==0.42.1 transformers==5.23.0 peft==0.21.2 imagesize==2.0.1 tomli==2.5.0
# (torch, accelerate, safetensors, tokenizers, huggingface_hub, numpy and pillow are there already).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
MODEL_DIR=${MODEL_DIR:-/tmp/bench-sdxl-full}
mkdir -p "$MODEL_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/log.txt"
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)" \
    | tee -a "$OUT/log.txt"

for batch in 1 4; do
    echo "== 1024 px, batch $batch" | tee -a "$OUT/log.txt"
    timeout 330 python3 benchmarks/bench_train.py --model full --model_dir "$MODEL_DIR" --resolution 1024 \
        --batch "$batch" --precision bf16 --steps 8 --warmup 3 --micro_rounds 4 --rounds 2 \
        --cache_latents --cache_text_encoder_outputs --optimizer_type AdamW \
        --compare "--gradient_checkpointing" "" "--gradient_checkpointing --fp8_base" \
        >>"$OUT/results.jsonl" 2>>"$OUT/log.txt" || echo "batch $batch: exit status $?" | tee -a "$OUT/log.txt"
done
python3 - "$OUT/results.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    d = json.loads(line)
    if "label" in d:
        print(f"batch {d['batch']} {d['label']} [{d['options']}]: {d['s_per_step']:.4f} s/step, "
              f"{d['images_per_s']:.2f} img/s, {d['flops_per_step'] / 1e12:.2f} TFLOP, fraction of peak "
              f"{d['fraction_of_peak']}, peak GPU {d['peak_gpu_mem'] / 2**30:.1f} GiB, lora_overhead "
              f"{d['lora_overhead']:.3f}, step_overhead {d['step_overhead']:.3f}")
    else:
        print(f"  {d['compare']}: s/step {d['s_per_step']:.3f}, peak GPU {d['peak_gpu_mem']:.3f}")
EOF
