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


TRAIN_KEYS = {"s_per_step", "images_per_s", "flops_per_step", "fraction_of_peak", "peak_host_mem", "peak_gpu_mem",
              "lora_overhead", "step_overhead", "model", "device", "resolution", "batch", "precision", "flags",
              "steps", "step_times"}


def _bench_train(*args: str) -> list[dict]:
    # One torch thread: on a shared, busy machine two threads wait on each other at every small op.
    run = subprocess.run([sys.executable, str(BENCHMARKS / "bench_train.py"), *args],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines()]


def test_train_benchmark_runs_the_cli_on_the_tiny_model_and_prints_one_json_line():
    (line,) = _bench_train("--steps", "2", "--resolution", "64", "--micro_rounds", "1", "--threads", "1",
                           "--warmup", "2", "--profile")
    assert TRAIN_KEYS <= line.keys()
    assert line["model"] == "tiny" and line["device"] == "cpu" and line["resolution"] == 64 and line["batch"] == 1
    assert line["steps"] == 2 and len(line["step_times"]) == 2 and line["flags"] == []
    # --profile: the second (last warm-up) step, by kind of op; the measured steps are still the two after it.
    profile = line["profile"]
    assert profile["step_s"] > 0 and profile["device_s"] is None and profile["device_busy"] is None
    assert profile["host_s"]["matmul"] > 0 and profile["host_s"]["optimizer"] > 0
    assert sum(profile["host_s"].values()) <= profile["step_s"] and profile["top"]
    # No checkpointing here, so the executed FLOPs by kind add up to the model's count exactly.
    assert profile["executed_flops"]["matmul"] > 0 and profile["executed_flops"]["convolution"] > 0
    assert sum(profile["executed_flops"].values()) == line["flops_per_step"]
    assert line["s_per_step"] > 0 and line["images_per_s"] == pytest.approx(1 / line["s_per_step"])
    assert line["flops_per_step"] > 0 and line["peak_host_mem"] > 0
    assert line["lora_overhead"] > 0 and line["step_overhead"] > 0
    assert line["fraction_of_peak"] is None and line["peak_gpu_mem"] is None  # CPU, no --peak_tflops


def test_train_benchmark_compares_two_option_sets_and_prints_the_ratio():
    a, b, ratio = _bench_train("--steps", "1", "--warmup", "1", "--resolution", "64", "--batch", "2",
                               "--no_overheads", "--peak_tflops", "1", "--rounds", "1", "--threads", "1",
                               "--compare", "", "--cache_latents --cache_text_encoder_outputs --channels_last")
    assert (a["label"], b["label"], ratio["compare"]) == ("A", "B", "B/A")
    assert a["flags"] == [] and b["flags"] == ["--cache_latents", "--cache_text_encoder_outputs"]
    assert not a["unet_channels_last"] and b["unet_channels_last"]  # a harness option, read off the trained U-Net
    assert a["batch"] == b["batch"] == 2
    assert ratio["s_per_step"] == pytest.approx(b["s_per_step"] / a["s_per_step"])
    assert 0 < a["fraction_of_peak"] and a["lora_overhead"] is None
