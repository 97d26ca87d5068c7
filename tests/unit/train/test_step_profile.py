"""benchmarks/step_profile.py: op rows summed by kind, kernels counted once (hand-built profiler rows)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from step_profile import kind_of, summarize  # noqa: E402


@pytest.mark.parametrize(("name", "kind"), [
    ("aten::addmm", "matmul"), ("aten::mkldnn_convolution", "convolution"), ("aten::_slow_conv2d_backward",
                                                                               "convolution"),
    ("aten::convolution_backward", "convolution"), ("aten::_convert_weight_to_int4pack", "other aten"),
    ("aten::_scaled_dot_product_flash_attention", "attention"), ("aten::native_layer_norm", "normalization"),
    ("aten::_fused_adamw_", "optimizer"), ("Optimizer.step#AdamW.step", "optimizer"), ("aten::copy_", "copy/cast"),
    ("aten::t", "views"), ("aten::topk", "other aten"), ("aten::gelu", "other aten"),
    ("AddmmBackward0", "autograd/framework"),
])
def test_kind_of_an_op_name(name, kind):
    assert kind_of(name) == kind


def _row(key, cpu_us, device_us=0.0, device=DeviceType.CPU):
    return SimpleNamespace(key=key, self_cpu_time_total=cpu_us, self_device_time_total=device_us, device_type=device)


def test_cpu_summary_sums_self_cpu_time_by_kind_in_seconds():
    rows = [_row("aten::mm", 3000), _row("aten::addmm", 1000), _row("aten::gelu", 500), _row("AddmmBackward0", 250)]
    out = summarize(rows, step_s=0.01, cuda=False)
    assert out["host_s"] == {"matmul": 0.004, "other aten": 0.0005, "autograd/framework": 0.00025}
    assert list(out["host_s"]) == ["matmul", "other aten", "autograd/framework"]  # largest first
    assert out["device_s"] is None and out["device_busy"] is None
    assert out["top"] == [["aten::mm", 0.003], ["aten::addmm", 0.001], ["aten::gelu", 0.0005],
                          ["AddmmBackward0", 0.00025]]


def test_cuda_summary_splits_kernel_time_by_the_launching_op_and_counts_each_kernel_once_for_busy():
    rows = [_row("aten::mm", 40, device_us=6000), _row("aten::add", 10, device_us=1000),
            _row("AddmmBackward0", 30, device_us=6000),  # an autograd node's total, not a kernel of its own
            _row("sm90_gemm_kernel", 0, device_us=6000, device=DeviceType.CUDA),
            _row("elementwise_kernel", 0, device_us=1000, device=DeviceType.CUDA),
            _row("triton_fused_kernel", 0, device_us=2000, device=DeviceType.CUDA)]  # launched by no aten op
    out = summarize(rows, step_s=0.01, cuda=True)
    assert out["device_s"] == {"matmul": 0.006, "other aten": 0.001}
    assert out["device_busy"] == pytest.approx(0.9)  # 9 ms of kernels in a 10 ms step
    assert out["host_s"] == {"matmul": 0.00004, "autograd/framework": 0.00003, "other aten": 0.00001}
    assert out["top"][0] == ["aten::mm", 0.006]


def test_cuda_kernel_rows_add_no_host_kind():
    rows = [_row("aten::mm", 40, device_us=6000), _row("sm90_gemm_kernel", 0, device_us=6000, device=DeviceType.CUDA)]
    out = summarize(rows, step_s=0.01, cuda=True)
    assert out["host_s"] == {"matmul": 0.00004} and out["device_s"] == {"matmul": 0.006}
    assert out["device_busy"] == pytest.approx(0.6)
