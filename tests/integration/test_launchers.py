"""The entry points users type: `sdxl-lora tiny-model`, and `accelerate launch sdxl_train_network.py ...`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

from helpers import make_images, write_toml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_tiny_model_command_then_accelerate_launch_trains(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    model = tmp_path / "tiny"
    made = subprocess.run([str(BIN / "sdxl-lora"), "tiny-model", str(model)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert made.returncode == 0, made.stderr
    assert (model / "model_index.json").exists() and (model / "tokenizer_2").is_dir()

    images = make_images(tmp_path / "img", [(64, 64), (64, 64)])
    toml = write_toml(tmp_path / "ds.toml", (
        f"[[datasets]]\nresolution = 64\nbatch_size = 2\n  [[datasets.subsets]]\n  image_dir = '{images}'\n"
        "  caption_extension = '.txt'\n"))
    cmd = [str(BIN / "accelerate"), "launch", "--num_processes", "1", "--num_machines", "1", "--cpu",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "sdxl_train_network.py"),
           "--pretrained_model_name_or_path", str(model), "--dataset_config", str(toml),
           "--output_dir", str(tmp_path / "out"), "--output_name", "launched", "--network_module", "networks.lora",
           "--network_dim", "2", "--max_train_steps", "2", "--learning_rate", "1e-3", "--seed", "0",
           "--max_data_loader_n_workers", "0"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "out" / "launched.safetensors"
    assert out.exists() and "saved" in run.stdout
    with safe_open(out, "pt") as f:
        assert any(k.startswith("lora_unet_input_blocks_4_1_") for k in f.keys())


def test_convert_command_round_trip(tmp_path, tiny_model_dir):
    from sdxl_lora.cli import main

    single = tmp_path / "tiny.safetensors"
    assert main(["convert", str(tiny_model_dir), str(single)]) == 0
    with safe_open(single, "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("conditioner.embedders.1.model.") for k in keys)
    assert main(["convert", str(single), str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "model_index.json").exists()
