"""Where a training step's time goes: one step under torch.profiler, its ops summed by kind.

bench_train.py --profile profiles the last warm-up step (dropped from the timings, so the profiler's own cost
never reaches s_per_step) and puts `summarize(...)` in its JSON line under "profile":
- step_s: the profiled step's wall time (with the profiler's overhead);
- host_s: the ops' self CPU time by kind (on CUDA this is launch and framework work, not the kernels);
- device_s and device_busy (CUDA only): the kernels' time by kind of the aten op that launched them, and all
  kernels' time over step_s. A busy fraction well under 1 means the GPU waits on the host (launches, Python,
  syncs); near 1 means the kernels themselves are the step.
- top: the eight ops with the most time (device time on CUDA, self CPU time on the CPU), in seconds.
bench_train.py adds executed_flops: the FLOPs by kind of one forward+backward of the trained U-Net at the step's
shapes as the run had it (with checkpointing's recomputation when it was on), counted by FlopCounterMode.

Kinds: matmul, convolution, attention, normalization, optimizer, copy/cast, views (no data moved: pure host
cost), other aten ops (mostly elementwise), and autograd/framework (the rows that are not aten ops: autograd
nodes and the engine).
"""

from __future__ import annotations

import re

from torch.autograd import DeviceType

KINDS = (
    ("matmul", r"(mm|addmm|bmm|baddbmm|addbmm|matmul|linear|_addmm_activation|_scaled_mm)"),
    ("convolution", r"\w*conv(olution|\d?d|_depthwise|_transpose)\w*"),
    ("attention", r"(\w*scaled_dot_product\w*|\w*flash_attention\w*|\w*efficient_attention\w*|_cudnn_attention\w*)"),
    ("normalization", r"(native_)?(group|layer|batch)_norm\w*"),
    ("optimizer", r"(_foreach_\w*|_fused_adam\w*|_fused_sgd\w*)"),
    ("copy/cast", r"(copy_|_to_copy|to|clone|contiguous|cat|stack|fill_|zero_|zeros\w*|empty\w*|index\w*)"),
    ("views", r"(t|transpose|view|_unsafe_view|reshape|as_strided|expand|permute|unsqueeze|squeeze|slice|select|"
              r"split\w*|chunk|unbind|alias|detach|unflatten|flatten|narrow)"),
)
_PATTERNS = [(kind, re.compile(rf"aten::{pattern}$")) for kind, pattern in KINDS]


def kind_of(name: str) -> str:
    """The kind an op row of the profile belongs to, from its name."""
    for kind, pattern in _PATTERNS:
        if pattern.match(name):
            return kind
    if name.startswith("Optimizer."):  # the optimizer's own Python (torch.optim's profiler label)
        return "optimizer"
    return "other aten" if name.startswith("aten::") else "autograd/framework"


def _device_time(event) -> float:
    """An op's own kernel time in µs (the attribute was renamed from self_cuda_time_total in torch 2.4)."""
    return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)) or 0.0)


def _is_kernel(event) -> bool:
    return getattr(event, "device_type", None) == DeviceType.CUDA


def _largest_first(seconds: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])}


def summarize(events, step_s: float, cuda: bool) -> dict:
    """The figures of one profiled step from its `key_averages()` rows (seconds; see the module's docstring)."""
    host: dict[str, float] = {}
    device: dict[str, float] = {}
    rows = []
    kernels = 0.0
    for event in events:
        if cuda and _is_kernel(event):
            kernels += _device_time(event) / 1e6
            continue
        kind = kind_of(event.key)
        host[kind] = host.get(kind, 0.0) + event.self_cpu_time_total / 1e6
        on_device = _device_time(event) / 1e6 if cuda and event.key.startswith("aten::") else 0.0
        if on_device:
            device[kind] = device.get(kind, 0.0) + on_device
        rows.append((on_device if cuda else event.self_cpu_time_total / 1e6, event.key))
    top = [[name, round(seconds, 6)] for seconds, name in sorted(rows, reverse=True)[:8] if seconds > 0]
    return dict(step_s=round(step_s, 6), host_s=_largest_first(host), device_s=_largest_first(device) if cuda else None,
                device_busy=round(kernels / step_s, 4) if cuda and step_s > 0 else None, top=top)


def start(cuda: bool):
    """A started torch profiler over the CPU, and CUDA when it is used."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    profiler = profile(activities=activities)
    profiler.start()
    return profiler
