"""--deepspeed through the real CLI: without DeepSpeed installed the run stops before any model loads with one
line naming the flag; with it installed (pip install -e '.[deepspeed]'; skipped otherwise), one launched CPU
process trains the tiny SDXL with ZeRO-2 and ZeRO-3 to the LoRA weights a plain run writes.

Each run is a fresh process: accelerate keeps DeepSpeed in process-wide state and environment variables."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_images, write_toml

ROOT = Path(__file__).resolve().parents[2]
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def _dataset(tmp_path):
    images = make_images(tmp_path / "img", [(64, 64), (64, 64), (64, 64), (64, 64)])
    return write_toml(tmp_path / "ds.toml", (
        f"[[datasets]]\nresolution = 64\nbatch_size = 2\n  [[datasets.subsets]]\n  image_dir = '{images}'\n"
        "  caption_extension = '.txt'\n"))


def _argv(model, dataset, out):
    return ["--pretrained_model_name_or_path", str(model), "--dataset_config", str(dataset), "--output_dir",
            str(out), "--output_name", "lora", "--network_module", "networks.lora", "--network_dim", "2",
            "--max_train_steps", "2", "--learning_rate", "1e-3", "--seed", "0", "--max_data_loader_n_workers", "0"]


@pytest.mark.skipif(HAS_DEEPSPEED, reason="DeepSpeed is installed")
def test_without_deepspeed_the_run_stops_before_loading_with_one_line(tmp_path, tiny_model_dir, capsys):
    from sdxl_lora.cli import main

    out = tmp_path / "out"
    assert main(["train", *_argv(tiny_model_dir, _dataset(tmp_path), out), "--deepspeed"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "sdxl-lora: error: --deepspeed: DeepSpeed is not installed: pip install deepspeed (or pip install -e "
        "'.[deepspeed]'; docs/deepspeed.md)"]
    assert not out.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(tmp_path, name, model, dataset, *extra, launched=True) -> tuple[list[str], dict]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    if launched:  # what `accelerate launch --num_processes 1` sets for its one process
        env |= {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    out = tmp_path / name
    run = subprocess.run([sys.executable, str(ROOT / "sdxl_train_network.py"), *_argv(model, dataset, out), *extra],
                         capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    return sorted(p.name for p in out.iterdir()), load_file(out / "lora.safetensors")


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="DeepSpeed is not installed (pip install -e '.[deepspeed]')")
@pytest.mark.slow
def test_zero2_and_zero3_train_what_a_plain_run_trains(tmp_path, tiny_model_dir):
    dataset = _dataset(tmp_path)
    files, plain = _train(tmp_path, "plain", tiny_model_dir, dataset, launched=False)
    # ZeRO-2 keeps whole parameters and reduces gradients in one flat buffer: the same steps up to rounding.
    # ZeRO-3 also partitions the parameters and gathers them per module: the LoRA weights of the text encoders
    # and U-Net in one module, saved whole (gathered) by the saver. Adam divides by the root of tiny squared
    # gradients in the first steps, which amplifies summation-order rounding (about 1e-4 seen here).
    for name, extra, atol in (("zero2", ("--zero_stage", "2"), 1e-5), ("zero3", ("--zero_stage", "3"), 5e-4)):
        names, trained = _train(tmp_path, name, tiny_model_dir, dataset, "--deepspeed", *extra)
        assert names == files
        assert trained.keys() == plain.keys()
        for key, value in plain.items():
            assert trained[key].shape == value.shape, key
            torch.testing.assert_close(trained[key], value, atol=atol, rtol=0, msg=f"{name}: {key}")
        moved = [k for k in plain if k.endswith("lora_up.weight") and trained[k].abs().max() > 0]
        assert moved, f"{name}: every LoRA up weight is still zero: it did not train"


ZERO3_SCRIPT = """
import json, torch
from accelerate import Accelerator
from sdxl_lora.config.schema import DistributedConfig
from sdxl_lora.train.distributed import TrainedModels, deepspeed_plugin, full_parameters
plugin = deepspeed_plugin(DistributedConfig(deepspeed=True, zero_stage=3), mixed_precision="no",
                          gradient_accumulation_steps=1, max_grad_norm=1.0, micro_batch_size=1, world_size=1)
accelerator = Accelerator(deepspeed_plugin=plugin)
torch.manual_seed(0)
layer = torch.nn.Linear(600, 600, bias=False)  # 360,000 values: above ZeRO-3's persistence threshold (1e5)
start = layer.weight.detach().clone()
optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2)
_, optimizer = accelerator.prepare(TrainedModels({"layer": layer}), optimizer)
accelerator.backward(layer(torch.ones(1, 600)).pow(2).mean())
outside = layer.weight.numel()
with full_parameters([layer.weight]):
    inside = list(layer.weight.shape)
    moved = (layer.weight - start).abs().max().item()
print(json.dumps({"outside": outside, "inside": inside, "moved": moved}))
"""


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="DeepSpeed is not installed (pip install -e '.[deepspeed]')")
def test_zero3_weights_are_whole_only_inside_full_parameters(tmp_path):
    import json

    env = dict(os.environ, OMP_NUM_THREADS="2", LOCAL_RANK="0", RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    run = subprocess.run([sys.executable, "-c", ZERO3_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["outside"] == 0  # partitioned: this process holds its share in ds_tensor, the weight is empty
    assert seen["inside"] == [600, 600]
    assert 0 < seen["moved"] < 0.1  # the trained values (one AdamW step of lr 1e-2), not the initial ones
