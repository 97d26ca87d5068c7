"""--full_fp16 (issue 10 item 9): fp16 LoRA weights and gradients, stepped through float32 master copies, so that
AdamW trains instead of breaking down; the state keeps the masters, so resuming is exact."""

from __future__ import annotations

import math

import torch
from safetensors.torch import load_file

from helpers import train_keeping_result, two_image_dataset


def test_full_fp16_trains_with_adamw_and_saves_fp16(tiny_model_dir, tmp_path):
    dataset = two_image_dataset(tmp_path)
    out = tmp_path / "out"
    code, result = train_keeping_result([
        f"--pretrained_model_name_or_path={tiny_model_dir}", f"--dataset_config={dataset}", f"--output_dir={out}",
        "--network_module=networks.lora", "--network_dim=4", "--learning_rate=1e-3", "--optimizer_type=AdamW",
        "--seed=1", "--max_train_steps=3", "--max_data_loader_n_workers=0", "--network_train_unet_only",
        "--mixed_precision=fp16", "--full_fp16", "--save_state_on_train_end"])
    assert code == 0 and all(math.isfinite(x) for x in result.losses) and len(result.losses) == 3
    saved = load_file(str(out / "last.safetensors"))
    ups = [v for k, v in saved.items() if k.endswith("lora_up.weight")]
    assert {v.dtype for k, v in saved.items() if not k.endswith(".alpha")} == {torch.float16}
    assert all(v.isfinite().all() for v in saved.values())
    assert all(v.abs().max() > 0 for v in ups)  # up weights start at zero: every one was trained
    state = torch.load(out / "last-state" / "optimizer.bin", weights_only=False)
    masters = state["fp32_masters"]
    assert {m.dtype for m in masters} == {torch.float32}
    # The fp16 weights are the masters rounded to fp16 (the optimizer state is the float32 truth).
    weights = [v for k, v in sorted(saved.items()) if not k.endswith(".alpha")]
    assert sorted(m.to(torch.float16).abs().sum().item() for m in masters) == sorted(
        w.abs().sum().item() for w in weights)
