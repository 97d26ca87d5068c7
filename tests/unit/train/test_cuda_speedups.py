"""CUDA-only speed settings, checked on the CPU with a stand-in torch.cuda: TF32 on Ampere and later."""

from __future__ import annotations

import pytest
import torch

from sdxl_lora.train import setup


@pytest.fixture
def tf32_flags():
    """Start from TF32 off and put torch's process-wide flags back afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _fake_gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (9, 0)])
def test_ampere_and_later_use_tf32(tf32_flags, monkeypatch, capability):
    _fake_gpu(monkeypatch, capability)
    assert setup.allow_tf32(torch.device("cuda", 0))
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("capability", [(7, 5), (6, 1)])
def test_older_gpus_keep_full_float32(tf32_flags, monkeypatch, capability):
    _fake_gpu(monkeypatch, capability)
    assert not setup.allow_tf32("cuda")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_the_cpu_changes_nothing_even_beside_an_ampere_gpu(tf32_flags, monkeypatch):
    _fake_gpu(monkeypatch, (9, 0))
    assert not setup.allow_tf32(torch.device("cpu"))
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
