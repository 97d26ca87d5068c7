"""Loss reduction (spec 5.3 to 5.5), against numbers worked out by hand."""

from __future__ import annotations

import torch

from sdxl_lora.train.loss import per_sample_l2, weighted_mean


def test_per_sample_mean_of_squared_error():
    pred = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).view(2, 1, 2, 2)
    # sample 0: (0 + 4 + 9 + 16) / 4 = 7.25; sample 1: 4 * 1 / 4 = 1
    assert per_sample_l2(pred, target).tolist() == [7.25, 1.0]


def test_computed_in_float32_even_from_a_bf16_prediction():
    """256 is exact in bf16 and 257 is not: in float32 the error is 1, in bf16 it would round to 0 or 4."""
    pred = torch.full((1, 1, 1, 1), 256.0, dtype=torch.bfloat16)
    target = torch.full((1, 1, 1, 1), 257.0)
    out = per_sample_l2(pred, target)
    assert out.dtype == torch.float32 and out.tolist() == [1.0]


def test_alpha_mask_is_area_resized_and_the_mean_stays_over_all_elements():
    """Mask 2x4 at image size -> latent 1x2 by area: left half [[1,0],[0,0]] -> 0.25, right half all 1 -> 1.
    Element losses (2-0)^2 = 4 and (3-0)^2 = 9 -> (0.25*4 + 1*9) / 2 = 5, not normalised by the mask area."""
    pred = torch.tensor([2.0, 3.0]).view(1, 1, 1, 2)
    target = torch.zeros(1, 1, 1, 2)
    mask = torch.tensor([[[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]])
    assert per_sample_l2(pred, target, mask).tolist() == [5.0]


def test_mask_applies_to_every_channel_and_zero_mask_gives_zero():
    pred = torch.ones(2, 4, 2, 2)
    target = torch.zeros(2, 4, 2, 2)
    mask = torch.stack([torch.zeros(8, 8), torch.ones(8, 8)])
    mask[0, :4, :4] = 1.0  # one latent pixel of four, in every channel: 1/4
    assert per_sample_l2(pred, target, mask).tolist() == [0.25, 1.0]


def test_per_sample_weights_then_batch_mean():
    """prior_loss_weight scales regularisation samples before the batch mean: (1*1 + 0.5*3) / 2 = 1.25."""
    assert weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.5])).item() == 1.25
