"""Frozen Linear/Conv2d layers whose weights are stored in float8_e4m3fn and computed in the training dtype.

Why not diffusers' layerwise casting: its hooks cast a layer's parameters to the compute dtype for the forward
and back to fp8 after it, in place, so the weight autograd saved for the backward pass is fp8 again by then and
the backward fails ("expected scalar type BFloat16 but found Float8_e4m3fn"); it is built for inference.
Here each layer's forward is an autograd Function that casts a copy of the weight, and saves the fp8 weight,
not the copy, for the backward: gradients flow to the input (and on to LoRA layers elsewhere) while the weight
stays frozen, and the backward holds 1 byte per weight instead of 2.
Norms, embeddings and every other layer type keep the training dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn


class _Fp8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, compute):
        ctx.save_for_backward(weight)
        ctx.x_dtype = x.dtype
        return F.linear(x.to(compute), weight.to(compute), None if bias is None else bias.to(compute))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return (grad @ weight.to(grad.dtype)).to(ctx.x_dtype), None, None, None


class _Fp8Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, compute, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)
        ctx.x_dtype, ctx.x_shape, ctx.geometry = x.dtype, x.shape, (stride, padding, dilation, groups)
        return F.conv2d(x.to(compute), weight.to(compute), None if bias is None else bias.to(compute),
                        stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad_x = torch.nn.grad.conv2d_input(ctx.x_shape, weight.to(grad.dtype), grad, *ctx.geometry)
        return grad_x.to(ctx.x_dtype), None, None, None, None, None, None, None


class Fp8Linear(nn.Linear):
    """nn.Linear with frozen float8_e4m3fn weights, computed in `fp8_compute_dtype`."""

    fp8_compute_dtype: torch.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Fp8Linear.apply(x, self.weight, self.bias, self.fp8_compute_dtype)


class Fp8Conv2d(nn.Conv2d):
    """nn.Conv2d (zero padding) with frozen float8_e4m3fn weights, computed in `fp8_compute_dtype`."""

    fp8_compute_dtype: torch.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Fp8Conv2d.apply(x, self.weight, self.bias, self.fp8_compute_dtype, self.stride, self.padding,
                                self.dilation, self.groups)


def store_in_fp8(model: nn.Module, compute: torch.dtype, keep: tuple[str, ...] = ()) -> int:
    """Store every frozen Linear/Conv2d of `model` but those named in `keep` in float8_e4m3fn, computing in
    `compute`; returns how many."""
    count = 0
    for name, module in model.named_modules():
        if name in keep:
            continue
        if type(module) is nn.Linear:
            fp8_class = Fp8Linear
        elif type(module) is nn.Conv2d and module.padding_mode == "zeros":
            fp8_class = Fp8Conv2d
        else:
            continue
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            raise ValueError(f"{name}: only frozen layers can be stored in fp8")
        module.__class__ = fp8_class
        module.fp8_compute_dtype = compute
        module.to(dtype=FP8)
        count += 1
    return count
