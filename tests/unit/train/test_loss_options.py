"""Loss options of spec 5.3/5.4 against numbers worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from sdxl_lora.config.schema import LossConfig
from sdxl_lora.train import loss as L


def _pair(d: float, n: int = 2):
    """pred - target = d in every element of n samples of shape (1, 1, 1)."""
    return torch.full((n, 1, 1, 1), d), torch.zeros(n, 1, 1, 1)


def test_element_losses():
    pred, target = _pair(1.2)
    c = torch.tensor([0.5, 0.9])
    # huber: 2c (sqrt(d^2 + c^2) - c): c 0.5 -> sqrt(1.69) = 1.3 -> 2 x 0.5 x 0.8 = 0.8; c 0.9 -> 1.5 -> 1.08
    assert L.element_loss(pred, target, "huber", c).flatten().tolist() == pytest.approx([0.8, 1.08])
    # smooth_l1: 2 (sqrt(d^2 + c^2) - c) -> 1.6 and 1.2
    assert L.element_loss(pred, target, "smooth_l1", c).flatten().tolist() == pytest.approx([1.6, 1.2])
    assert L.element_loss(pred, target, "l2").flatten().tolist() == pytest.approx([1.44, 1.44])
    assert L.element_loss(-pred, target, "l1").flatten().tolist() == pytest.approx([1.2, 1.2])


def test_huber_thresholds_per_schedule():
    t = torch.tensor([0, 500, 1])
    alphas = torch.tensor([0.8, 0.5, 0.5])
    constant = LossConfig(loss_type="huber", huber_schedule="constant", huber_c=0.1, huber_scale=2.0)
    assert L.huber_c(t, alphas, constant).tolist() == pytest.approx([0.2, 0.2, 0.2])
    # exponential: exp(-t ln(10) / 1000) x scale: t = 500 -> 1 / sqrt(10)
    expo = LossConfig(loss_type="smooth_l1", huber_schedule="exponential", huber_c=0.1, huber_scale=3.0)
    assert L.huber_c(t[:2], alphas, expo).tolist() == pytest.approx([3.0, 3.0 / math.sqrt(10)])
    # snr: a = 0.8 -> sigma = sqrt(0.2 / 0.8) = 0.5 -> 0.9 / 1.5^2 + 0.1 = 0.5; a = 0.5 -> sigma 1 -> 0.325
    snr = LossConfig(loss_type="huber", huber_schedule="snr", huber_c=0.1, huber_scale=7.0)
    assert L.huber_c(torch.tensor([0, 1]), alphas, snr).tolist() == pytest.approx([0.5, 0.325])
    assert L.huber_c(t, alphas, LossConfig(loss_type="l2")) is None


SNR = torch.tensor([1.0, 4.0, 2000.0])
ONES = torch.ones(3)


@pytest.mark.parametrize(("cfg", "expected"), [
    # min(SNR, 2) / SNR
    (LossConfig(min_snr_gamma=2), [1.0, 0.5, 2 / 2000]),
    # min(SNR, 2) / (SNR + 1) for v-prediction
    (LossConfig(min_snr_gamma=2, v_parameterization=True), [0.5, 0.4, 2 / 2001]),
    # SNR' / (SNR' + 1), SNR' = min(SNR, 1000)
    (LossConfig(scale_v_pred_loss_like_noise_pred=True, v_parameterization=True), [0.5, 0.8, 1000 / 1001]),
    # 1 + 0.5 / s: s = 0.5 -> 2, s = 0.8 -> 1.625, s = 1000/1001 -> 1 + 0.5 x 1.001
    (LossConfig(v_pred_like_loss=0.5), [2.0, 1.625, 1.5005]),
    # 1 / sqrt(SNR'), and 1 / (SNR' + 1) for v
    (LossConfig(debiased_estimation_loss=True), [1.0, 0.5, 1 / math.sqrt(1000)]),
    (LossConfig(debiased_estimation_loss=True, v_parameterization=True), [0.5, 0.2, 1 / 1001]),
    # in order: Min-SNR (x min(SNR,5)/SNR: 1, 1, 5/2000) then debiased (x 1, 0.5, 1/sqrt(1000))
    (LossConfig(min_snr_gamma=5, debiased_estimation_loss=True), [1.0, 0.5, 5 / 2000 / math.sqrt(1000)]),
    (LossConfig(), [1.0, 1.0, 1.0]),
])
def test_snr_weightings(cfg, expected):
    assert L.snr_weighting(ONES, SNR, cfg).tolist() == pytest.approx(expected)


def test_training_loss_in_sd_scripts_order():
    """Two samples, l2: per-sample means 4 and 1; weights 1 and 0.5 -> 4 and 0.5; Min-SNR gamma 1 with the
    SNR table [4, 0.5] (not the alphas, which zero-terminal rescaling may have changed): x 1/4 and x 1 ->
    1 and 0.5; batch mean 0.75."""
    pred = torch.tensor([2.0, 1.0]).view(2, 1, 1, 1).expand(2, 4, 2, 2)
    target = torch.zeros(2, 4, 2, 2)
    out = L.training_loss(pred, target, torch.tensor([0, 1]), cfg=LossConfig(min_snr_gamma=1.0),
                          alphas_cumprod=torch.tensor([0.0, 0.0]), snr_table=torch.tensor([4.0, 0.5]),
                          loss_weights=torch.tensor([1.0, 0.5]))
    assert out.item() == pytest.approx(0.75)


def test_training_loss_masks_before_the_mean():
    """Mask of sample 0 keeps half its latent pixels: l1 |3| x (2 of 4) / 4 = 1.5; sample 1 unmasked: 3.
    Mean 2.25."""
    pred = torch.full((2, 1, 2, 2), 3.0)
    mask = torch.ones(2, 4, 4)
    mask[0, :, 2:] = 0
    out = L.training_loss(pred, torch.zeros(2, 1, 2, 2), torch.tensor([0, 0]), cfg=LossConfig(loss_type="l1"),
                          alphas_cumprod=torch.tensor([0.5]), snr_table=torch.tensor([1.0]),
                          loss_weights=torch.ones(2), mask=mask)
    assert out.item() == pytest.approx(2.25)
