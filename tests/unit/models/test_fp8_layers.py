"""fp8-stored layers compute like the same layer with fp8-rounded weights, and pass gradients to their input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sdxl_lora.models.fp8 import FP8, Fp8Conv2d, Fp8Linear, store_in_fp8


def _pair(make):
    torch.manual_seed(0)
    reference = make()
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(p.to(FP8).float())  # the values fp8 storage keeps
    stored = make()
    stored.load_state_dict(reference.state_dict())
    stored.requires_grad_(False)
    reference.requires_grad_(False)
    return reference, stored


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.Linear(8, 6), (3, 5, 8)),
    (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 9, 9)),
    (lambda: nn.Conv2d(4, 8, 1, groups=2, bias=False), (2, 4, 5, 5)),
])
def test_fp8_layer_matches_rounded_weights_forward_and_input_gradient(make, shape):
    reference, stored = _pair(make)
    assert store_in_fp8(stored, torch.float32) == 1
    assert isinstance(stored, (Fp8Linear, Fp8Conv2d)) and stored.weight.dtype == FP8
    x = torch.randn(shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = stored(x), reference(x_ref)
    torch.testing.assert_close(out, out_ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert stored.weight.grad is None


def test_fp8_layer_computes_in_the_compute_dtype_and_returns_grads_in_the_input_dtype():
    layer = nn.Linear(8, 4).requires_grad_(False)
    store_in_fp8(layer, torch.bfloat16)
    x = torch.randn(2, 8, requires_grad=True)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32


def test_trainable_layers_are_not_stored_in_fp8():
    with pytest.raises(ValueError, match="only frozen layers"):
        store_in_fp8(nn.Linear(2, 2), torch.bfloat16)
