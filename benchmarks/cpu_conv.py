"""A frozen SDXL convolution on the CPU, three ways: where oneDNN's per-call weight re-layout costs more than it saves.

    python benchmarks/cpu_conv.py [--rounds 8]

For each of the U-Net's 3x3 (and one 1x1) convolution shapes at the feature-map sizes of 256 px and 512 px
training (batch 1 and 4), times forward + backward to the input (the weights are frozen, as in LoRA training)
with: torch's default CPU path (oneDNN, which re-lays out the weight on every call), the native path
(torch.backends.mkldnn disabled: im2col + BLAS) and an explicit unfold + matmul. Prints one JSON line per shape
(median milliseconds). Figures and what was concluded: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

# (batch, in channels, out channels, map side, kernel): SDXL's level-2 (1280), level-1 (640) and level-0 (320)
# convolutions at 256 px (8, 16, 32 latent pixels per side) and 512 px.
SHAPES = ((1, 1280, 1280, 8, 3), (1, 2560, 1280, 8, 3), (4, 1280, 1280, 8, 3), (1, 1280, 1280, 16, 3),
          (1, 640, 640, 16, 3), (1, 1920, 640, 16, 3), (1, 320, 320, 32, 3), (1, 2560, 1280, 8, 1))


def unfold_conv(x, weight, bias, kernel):
    n, c, h, w = x.shape
    cols = x.reshape(n, c, h * w) if kernel == 1 else F.unfold(x, kernel, padding=kernel // 2)
    return (torch.matmul(weight.reshape(weight.shape[0], -1), cols) + bias[:, None]).view(n, -1, h, w)


def median_ms(fn, rounds: int) -> float:
    fn(), fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 2)


def time_shape(batch: int, c_in: int, c_out: int, side: int, kernel: int, rounds: int) -> dict:
    x = torch.randn(batch, c_in, side, side, requires_grad=True)
    weight, bias = torch.randn(c_out, c_in, kernel, kernel) * 0.01, torch.randn(c_out)

    def forward_backward(conv):
        def run():
            conv(x, weight, bias).sum().backward()
            x.grad = None
        return run

    default = forward_backward(lambda x, w, b: F.conv2d(x, w, b, padding=kernel // 2))
    line = dict(batch=batch, c_in=c_in, c_out=c_out, side=side, kernel=kernel,
                gflop=round(2 * batch * side * side * c_in * c_out * kernel * kernel / 1e9, 2),
                onednn_ms=median_ms(default, rounds))
    torch.backends.mkldnn.enabled = False
    try:
        line["native_ms"] = median_ms(default, rounds)
    finally:
        torch.backends.mkldnn.enabled = True
    line["unfold_matmul_ms"] = median_ms(forward_backward(lambda x, w, b: unfold_conv(x, w, b, kernel)), rounds)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    opts = parser.parse_args()
    torch.manual_seed(0)
    for shape in SHAPES:
        print(json.dumps(time_shape(*shape, opts.rounds)), flush=True)


if __name__ == "__main__":
    main()
