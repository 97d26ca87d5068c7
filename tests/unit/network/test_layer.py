"""The lean LoRA layer (network/layer.py) against `W x + b + alpha / r * B A x` written out by hand: outputs and
gradients for Linear (2-D and 3-D inputs), 1x1 and 3x3 Conv2d, an fp8-stored base, and sd-scripts' dropouts."""

import math

import pytest
import torch
from torch import nn

from sdxl_lora.models.fp8 import FP8, store_in_fp8
from sdxl_lora.network.layer import Dropouts, LoraLayer

RANK, ALPHA = 4, 2.0  # scale 0.5


def _layer(base: nn.Module, dropouts: Dropouts | None = None) -> LoraLayer:
    base.requires_grad_(False)
    layer = LoraLayer(base, RANK, ALPHA, dropouts)
    nn.init.normal_(layer.lora_B["default"].weight)  # up starts at 0; a trained one is not
    return layer


def _by_hand_linear(x, weight, bias, down, up):
    """W x + b + alpha / r * B (A x), one token at a time through plain sums of products."""
    out = torch.einsum("...i,oi->...o", x, weight) + bias
    hidden = torch.einsum("...i,ri->...r", x, down)
    return out + (ALPHA / RANK) * torch.einsum("...r,or->...o", hidden, up)


def _check_grads(layer, x, expected_fn):
    """Output and the gradients to x, down and up equal those of the hand-written expression."""
    down, up = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x1 = x.clone().requires_grad_(True)
    out = layer(x1)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    x2, d2, u2 = (t.detach().clone().requires_grad_(True) for t in (x, down, up))
    expected = expected_fn(x2, d2, u2)
    expected.backward(grad_out)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(down.grad, d2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(up.grad, u2.grad, rtol=1e-5, atol=1e-5)
    assert layer.base_layer.weight.grad is None


@pytest.mark.parametrize("shape", [(5, 12), (2, 7, 12)])
def test_linear_output_and_gradients_by_hand(shape):
    torch.manual_seed(0)
    layer = _layer(nn.Linear(12, 10))
    weight, bias = layer.base_layer.weight, layer.base_layer.bias
    _check_grads(layer, torch.randn(shape), lambda x, d, u: _by_hand_linear(x, weight, bias, d, u))


def test_linear_without_bias_and_with_a_hooked_base():
    torch.manual_seed(0)
    layer = _layer(nn.Linear(12, 10, bias=False))
    calls = []
    layer.base_layer.register_forward_hook(lambda *_: calls.append(1))  # e.g. ZeRO-3 gathering its weights
    weight = layer.base_layer.weight
    _check_grads(layer, torch.randn(3, 12), lambda x, d, u: _by_hand_linear(x, weight, 0.0, d, u))
    assert calls == [1]


def _by_hand_conv(x, base: nn.Conv2d, down, up):
    """base conv + alpha / r * up (1x1) applied to down (the base's kernel, stride and padding): both convs as
    sums over unfolded patches."""
    def conv(inp, w, stride, padding):
        k = w.shape[2:]
        cols = nn.functional.unfold(inp, k, padding=padding, stride=stride)  # (N, C*kh*kw, L)
        out = torch.einsum("ncl,oc->nol", cols, w.reshape(w.shape[0], -1))
        h = (inp.shape[2] + 2 * padding[0] - k[0]) // stride[0] + 1
        return out.reshape(inp.shape[0], w.shape[0], h, -1)
    out = conv(x, base.weight, base.stride, base.padding) + base.bias[:, None, None]
    hidden = conv(x, down, base.stride, base.padding)
    return out + (ALPHA / RANK) * conv(hidden, up, (1, 1), (0, 0))


@pytest.mark.parametrize("kernel, stride, padding", [(1, 1, 0), (3, 1, 1), (3, 2, 1)])
def test_conv_output_and_gradients_by_hand(kernel, stride, padding):
    torch.manual_seed(0)
    base = nn.Conv2d(6, 8, kernel, stride, padding)
    layer = _layer(base)
    down = layer.lora_A["default"].weight
    assert down.shape == (RANK, 6, kernel, kernel) and layer.lora_B["default"].weight.shape == (8, RANK, 1, 1)
    _check_grads(layer, torch.randn(2, 6, 7, 7), lambda x, d, u: _by_hand_conv(x, base, d, u))


def test_init_is_kaiming_uniform_down_and_zero_up():
    torch.manual_seed(0)
    layer = LoraLayer(nn.Linear(400, 300), RANK, ALPHA)
    down, up = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    bound = 1 / math.sqrt(400)  # kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert down.abs().max() <= bound and down.abs().max() > 0.95 * bound
    assert abs(down.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    assert torch.all(up == 0) and layer.scaling["default"] == 0.5


def test_fp8_base_keeps_its_storage_and_lora_trains_in_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10)).requires_grad_(False)
    reference = model[0].weight.to(FP8).to(torch.float32)  # what the fp8 layer computes with
    store_in_fp8(model, torch.float32)
    model[0].compute_dtype = torch.float32  # as models/precision.py marks every frozen layer
    layer = _layer(model[0])
    assert layer.base_layer.weight.dtype == FP8 and layer.lora_A["default"].weight.dtype == torch.float32
    bias = layer.base_layer.bias.float()
    _check_grads(layer, torch.randn(2, 3, 12), lambda x, d, u: _by_hand_linear(x, reference, bias, d, u))


def test_input_in_another_dtype_without_autocast_is_cast_for_lora_only():
    torch.manual_seed(0)
    layer = _layer(nn.Linear(12, 10).to(torch.bfloat16))
    layer.lora_A["default"].float()
    layer.lora_B["default"].float()
    x = torch.randn(3, 12, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    base = layer.base_layer
    expected = _by_hand_linear(x.float(), base.weight.float(), base.bias.float(), layer.lora_A["default"].weight,
                               layer.lora_B["default"].weight)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


def _lora_part(layer, x):
    """scale * up(dropped(down(x))) with up = [I; 0], so the first `rank` outputs are scale x the dropped hidden."""
    with torch.no_grad():
        up = layer.lora_B["default"].weight
        up.zero_()
        up[:RANK].copy_(torch.eye(RANK))
        return ((layer(x) - layer.base_layer(x)) / layer.scaling["default"])[..., :RANK]


def test_neuron_dropout_on_down_output_in_training_only():
    torch.manual_seed(0)
    layer = _layer(nn.Linear(12, 10), Dropouts(neuron=0.5))
    x = torch.randn(512, 12)
    plain = x @ layer.lora_A["default"].weight.T
    dropped = _lora_part(layer, x)
    kept = dropped.abs() > 1e-6
    assert 0.4 < kept.float().mean() < 0.6
    torch.testing.assert_close(dropped[kept], 2 * plain[kept], rtol=1e-4, atol=1e-5)  # kept x 1 / (1 - 0.5)
    layer.train(False)
    torch.testing.assert_close(_lora_part(layer, x), plain, rtol=1e-4, atol=1e-5)


def test_rank_dropout_masks_batch_and_rank_and_rescales():
    torch.manual_seed(0)
    layer = _layer(nn.Linear(12, 10), Dropouts(rank=0.5))
    x = torch.randn(256, 3, 12)
    plain = x @ layer.lora_A["default"].weight.T
    dropped = _lora_part(layer, x)
    kept = dropped.abs() > 1e-6
    assert torch.equal(kept, kept[:, :1, :].expand_as(kept))  # one (batch, rank) mask across the sequence
    assert 0.35 < kept[:, 0, :].float().mean() < 0.65
    torch.testing.assert_close(dropped[kept], 2 * plain[kept], rtol=1e-4, atol=1e-5)
    layer.train(False)
    torch.testing.assert_close(_lora_part(layer, x), plain, rtol=1e-4, atol=1e-5)


def test_module_dropout_drops_whole_calls_in_training_only():
    torch.manual_seed(0)
    layer = _layer(nn.Linear(12, 10), Dropouts(module=0.5))
    x = torch.randn(4, 12)
    dropped = sum(bool(torch.all(_lora_part(layer, x) == 0)) for _ in range(200))
    assert 60 < dropped < 140
    layer.train(False)
    assert not any(bool(torch.all(_lora_part(layer, x) == 0)) for _ in range(20))


def test_no_dropout_set_means_no_random_numbers_drawn():
    layer = _layer(nn.Linear(12, 10), Dropouts(neuron=0.0, rank=None, module=0.0))
    assert layer.dropouts is None
    state = torch.get_rng_state()
    layer(torch.randn(3, 12, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.get_rng_state(), state)
