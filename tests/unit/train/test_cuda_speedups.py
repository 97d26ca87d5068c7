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


# Pinned batches: torch's DataLoader pins a custom batch type only through its pin_memory() method, and
# Tensor.pin_memory needs CUDA, so a stand-in marks the tensors it "pins".

def _batch():
    from sdxl_lora.data.batch import Batch, Shard

    return Batch(paths=["a.png", "b.png"], captions=["a cat", "a dog"], latent_keys=[("a.png",), ("b.png",)],
                 original_size_hw=torch.tensor([[64, 64], [32, 48]]), crop_top_left=torch.zeros(2, 2, dtype=torch.long),
                 target_size_hw=torch.tensor([[64, 64], [64, 64]]), loss_weights=torch.tensor([1.0, 0.5]),
                 input_ids_1=torch.arange(6).reshape(2, 1, 3), latents=torch.randn(2, 4, 8, 8),
                 custom_attributes=[{"k": 1}, {}], shard=Shard((0, 1), 4, 2, ("a.png", "b.png", "c.png", "d.png")))


@pytest.fixture
def fake_pinning(monkeypatch):
    pinned = []

    def pin(self, *args, **kwargs):
        copy = self.clone()
        pinned.append(copy)
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    return pinned


def test_a_pinned_batch_pins_every_tensor_and_keeps_every_field(fake_pinning):
    from dataclasses import fields

    batch = _batch()
    pinned = batch.pin_memory()
    tensors = [f.name for f in fields(batch) if isinstance(getattr(batch, f.name), torch.Tensor)]
    assert sorted(tensors) == sorted(["original_size_hw", "crop_top_left", "target_size_hw", "loss_weights",
                                      "input_ids_1", "latents"])
    assert len(fake_pinning) == len(tensors)
    for f in fields(batch):
        old, new = getattr(batch, f.name), getattr(pinned, f.name)
        if isinstance(old, torch.Tensor):
            assert any(new is p for p in fake_pinning), f.name  # the pinned copy, not the original
            assert torch.equal(new, old)
        else:
            assert new == old, f.name  # lists, None fields and the shard as they were


def test_torchs_pin_memory_thread_pins_a_batch_through_its_method(fake_pinning):
    from torch.utils.data._utils.pin_memory import pin_memory

    batch = _batch()
    pinned = pin_memory(batch)
    assert type(pinned) is type(batch) and pinned.shard == batch.shard
    assert any(pinned.latents is p for p in fake_pinning)


def test_the_loader_pins_batches_only_for_a_cuda_device(tmp_path):
    from types import SimpleNamespace

    cfg = SimpleNamespace(data=SimpleNamespace(max_data_loader_n_workers=0), train=SimpleNamespace(seed=0))
    dataset = SimpleNamespace(reads_files=lambda: False)
    assert setup.data_loader(dataset, cfg, torch.device("cuda", 0)).pin_memory
    assert setup.data_loader(dataset, cfg, "cuda").pin_memory
    assert not setup.data_loader(dataset, cfg, torch.device("cpu")).pin_memory
    assert not setup.data_loader(dataset, cfg).pin_memory
