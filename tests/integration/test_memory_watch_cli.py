"""The first steps' peak-memory check runs inside real training (the CLI on the tiny model): on a CPU it reads
nothing; on a card whose peak is near its memory (faked here) it warns once, naming flags to change."""

from __future__ import annotations

import torch

from helpers import make_images, train_keeping_result
from sdxl_lora.train import memory_counts


def test_training_reads_the_peak_in_the_first_steps_and_warns_once(tmp_path, tiny_model_dir, monkeypatch, capsys):
    calls, real = [], memory_counts.MemoryWatch.after_step

    def as_if_cuda(self, step, device):
        calls.append((step, torch.device(device).type))
        return real(self, step, torch.device("cuda"))

    monkeypatch.setattr(memory_counts.MemoryWatch, "after_step", as_if_cuda)
    monkeypatch.setattr(memory_counts, "device_peak", lambda device: (int(7.8 * 2**30), 8 * 2**30))
    make_images(tmp_path / "train" / "1_cat", [(64, 64)])
    argv = [f"--pretrained_model_name_or_path={tiny_model_dir}", f"--train_data_dir={tmp_path / 'train'}",
            "--resolution=64", f"--output_dir={tmp_path / 'out'}", "--network_module=networks.lora",
            "--network_dim=2", "--max_train_steps=4", "--seed=0", "--max_data_loader_n_workers=0"]
    code, _ = train_keeping_result(argv)
    assert code == 0
    assert calls == [(1, "cpu"), (2, "cpu"), (3, "cpu"), (4, "cpu")]  # after every optimizer step
    warnings = [line for line in capsys.readouterr().err.splitlines() if "GPU memory peaked" in line]
    assert len(warnings) == 1
    assert "7.8 GiB of 8.0 GiB in the first 1 steps" in warnings[0]
    assert "--gradient_checkpointing" in warnings[0] and "--cache_latents" in warnings[0]
