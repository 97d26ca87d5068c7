"""The benchmarks still run: one step each on the tiny model. No time or memory figure is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

VARIANT_KEYS = {"variant", "model", "optimizer", "steps", "device", "unet_params", "lora_params", "lora_grad_bytes",
                "rss_after_model", "rss_after_setup", "peak_rss", "step_extra_rss", "peak_rss_per_step",
                "cuda_after_model", "cuda_peak", "seconds_per_step", "lora_sum_of_squares"}
SUMMARY_KEYS = {"variant", "peak_rss_ratio", "step_extra_rss_ratio", "peak_rss_saving",
                "later_steps_peak_rss_saving", "lora_grad_bytes"}


def test_fused_backward_benchmark_prints_one_json_line_per_variant_and_the_ratios():
    run = subprocess.run([sys.executable, str(BENCHMARKS / "bench_fused_backward.py"), "--model", "tiny",
                          "--steps", "1", "--resolution", "128", "--max_grad_norm", "0"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["variant"] for line in lines] == ["plain", "fused", "fused/plain"]
    plain, fused, summary = lines
    for variant in (plain, fused):
        assert VARIANT_KEYS <= variant.keys()
        assert variant["model"] == "tiny" and variant["steps"] == 1 and len(variant["seconds_per_step"]) == 1
        assert variant["peak_rss"] >= variant["rss_after_model"] > 0
    assert SUMMARY_KEYS <= summary.keys()
    # Same seeds, no clipping: the fused pass trains the same LoRA as the plain loop.
    assert fused["lora_sum_of_squares"] == pytest.approx(plain["lora_sum_of_squares"], rel=1e-6)
