"""Two processes on the CPU (gloo), launched as users launch them (docs/multi-gpu.md): the world size is 2, both
processes end with the same LoRA, one set of files is written, and the result is that of one process training the
same global batch; a state saved by one process resumes on two; the launch that would start lone copies is refused.
Each launch costs 10-20 s on two cores, so the runs are shared by the tests of this module."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import make_images, write_toml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRIPT = str(ROOT / "sdxl_train_network.py")
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
TWO_ON_CPU = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]


def _argv(model: Path, toml: Path, out: Path, *extra: str) -> list[str]:
    return [SCRIPT, "--pretrained_model_name_or_path", str(model), "--dataset_config", str(toml),
            "--output_dir", str(out), "--output_name", "m", "--network_module", "networks.lora", "--network_dim", "2",
            "--max_train_steps", "4", "--learning_rate", "0.1", "--optimizer_type", "SGDNesterov", "--seed", "0",
            "--max_data_loader_n_workers", "0", "--lr_scheduler", "cosine", "--lr_warmup_steps", "0.25",
            "--validation_split", "0.2",
            "--save_every_n_steps", "2", "--save_state", *extra]


def _run(cmd: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    run = subprocess.run(cmd, capture_output=True, text=True, env=dict(ENV, **env), timeout=600, cwd=cwd)
    assert run.returncode == 0, run.stderr[-4000:]
    return run


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """Six images, one held out for validation, five that train (global batches 2, 2, 1 per epoch), 4 steps, a
    warmup of 1 step: one process with batch_size 2 (A); two processes with batch_size 1 (B); two processes
    resuming A's step-2 state (C)."""
    tmp = tmp_path_factory.mktemp("ddp")
    images = make_images(tmp / "img", [(64, 64)] * 6)
    tomls = {bs: write_toml(tmp / f"bs{bs}.toml", (
        f"[[datasets]]\nresolution = 64\nbatch_size = {bs}\n  [[datasets.subsets]]\n  image_dir = '{images}'\n"
        "  caption_extension = '.txt'\n")) for bs in (1, 2)}
    one = _run([sys.executable, *_argv(tiny_model_dir, tomls[2], tmp / "one")], tmp)
    two = _run([*TWO_ON_CPU, *_argv(tiny_model_dir, tomls[1], tmp / "two")], tmp, ACCELERATE_USE_CPU="1")
    resumed = _run([*TWO_ON_CPU, *_argv(tiny_model_dir, tomls[1], tmp / "resumed", "--resume",
                                        str(tmp / "one" / "m-step00000002-state"))], tmp, ACCELERATE_USE_CPU="1")
    return tmp, one, two, resumed


def _assert_same_lora(a: Path, b: Path) -> None:
    """Equal up to float rounding (summation order), relative to each tensor's largest entry. SGD keeps rounding
    at that level; Adam would amplify it where a gradient is near zero (its update is about lr x sign)."""
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    for key in first:
        scale = first[key].float().abs().max().item()
        assert (second[key].float() - first[key].float()).abs().max().item() <= 1e-4 * scale, key


def test_two_processes_train_what_one_process_trains_with_twice_the_batch(runs):
    tmp, one, two, _ = runs
    log = two.stdout + two.stderr
    assert len(re.findall(r"2 processes \(DistributedType\.MULTI_CPU\), this is process [01]", log)) == 2
    assert "global batch 2 = batch size 1 x 2 processes x 1 accumulation; batches per epoch 3" in log
    assert "the 2 processes hold the same LoRA weights" in log
    losses = re.compile(r"average loss first \S+ -> last \S+")  # the mean over the processes, read alike
    assert losses.findall(two.stdout) == losses.findall(one.stdout) != []
    validation = re.compile(r"validation loss (\S+) at step (\d+)")  # the held-out batch of 1: one process idle
    pairs = list(zip(validation.findall(one.stderr), validation.findall(two.stderr), strict=True))
    assert len(pairs) == 3 and all(a[1] == b[1] and abs(float(a[0]) - float(b[0])) <= 1e-5 for a, b in pairs)
    assert sorted(p.name for p in (tmp / "two").iterdir()) == sorted(p.name for p in (tmp / "one").iterdir())
    assert two.stdout.count("saved ") == one.stdout.count("saved ")  # only the main process writes
    state = tmp / "two" / "m-state"
    assert sorted(p.name for p in state.glob("random_states_*.pkl")) == ["random_states_0.pkl",
                                                                          "random_states_1.pkl"]
    _assert_same_lora(tmp / "one" / "m.safetensors", tmp / "two" / "m.safetensors")


def test_a_state_of_one_process_resumes_on_two(runs):
    tmp, _, _, resumed = runs
    assert "holds no random states of process 1" in resumed.stderr
    assert "resumed from" in resumed.stderr
    _assert_same_lora(tmp / "one" / "m.safetensors", tmp / "resumed" / "m.safetensors")


def test_another_global_batch_is_refused_on_resume(runs, tiny_model_dir):
    tmp = runs[0]
    run = subprocess.run([*TWO_ON_CPU, *_argv(tiny_model_dir, tmp / "bs2.toml", tmp / "other", "--resume",
                                              str(tmp / "one" / "m-step00000002-state"))],
                         capture_output=True, text=True, env=dict(ENV, ACCELERATE_USE_CPU="1"), timeout=600, cwd=tmp)
    # Each process says it; two processes may write at the same moment, so a line can run into another's.
    assert (f"sdxl-lora: error: --resume {tmp / 'one' / 'm-step00000002-state'}: saved with global batch "
            "sizes [2] (batch_size x processes), this run has [4] on 2 processes: its position would mean "
            "other images; keep batch_size x processes the same (e.g. set --train_batch_size or the "
            "dataset batch_size)") in run.stderr, run.stderr[-3000:]
    assert "2" in re.findall(r"exitcode\s*:\s*(\d+)", run.stderr), run.stderr[-3000:]  # the other may be stopped


def test_a_launch_of_lone_copies_is_refused(runs, tiny_model_dir):
    """`accelerate launch --multi_gpu` without a GPU starts two processes that each train alone
    (reference/environment.md section 8)."""
    tmp = runs[0]
    env = {k: v for k, v in ENV.items() if k != "ACCELERATE_USE_CPU"}
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", *_argv(tiny_model_dir, tmp / "bs1.toml", tmp / "lone")]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp)
    assert ("sdxl-lora: error: 2 processes were launched (WORLD_SIZE=2) but each one trains alone (world size "
            "1): no GPU was found for --multi_gpu; check the GPUs (nvidia-smi), or on CPU launch with "
            "ACCELERATE_USE_CPU=1 (ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ..., "
            "or torchrun)") in run.stdout + run.stderr, run.stderr[-3000:]
    codes = re.findall(r"exitcode\s*:\s*(\d+)", run.stderr)
    assert codes and set(codes) == {"2"}, run.stderr[-3000:]
    assert not (tmp / "lone").exists()


def test_a_non_finite_loss_stops_both_processes_with_one_message(tmp_path, tiny_model_dir):
    images = make_images(tmp_path / "img", [(64, 64)] * 4)
    toml = write_toml(tmp_path / "bs1.toml", (
        f"[[datasets]]\nresolution = 64\nbatch_size = 1\n  [[datasets.subsets]]\n  image_dir = '{images}'\n"
        "  caption_extension = '.txt'\n"))
    argv = [SCRIPT, "--pretrained_model_name_or_path", str(tiny_model_dir), "--dataset_config", str(toml),
            "--output_dir", str(tmp_path / "out"), "--network_module", "networks.lora", "--network_dim", "2",
            "--max_train_steps", "6", "--learning_rate", "1e12", "--optimizer_type", "SGDNesterov",
            "--network_train_unet_only", "--seed", "0", "--max_data_loader_n_workers", "0"]
    run = subprocess.run([*TWO_ON_CPU, *argv], capture_output=True, text=True,
                         env=dict(ENV, ACCELERATE_USE_CPU="1"), timeout=600, cwd=tmp_path)
    # Each process prints the same line (the launcher may stop one before it does) and exits 1.
    ours = {line for line in run.stderr.splitlines() if line.startswith("sdxl-lora")}
    assert len(ours) == 1 and ours.pop().startswith("sdxl-lora: training stopped: loss is not finite at step "), \
        run.stderr[-3000:]
    assert "1" in re.findall(r"exitcode\s*:\s*(-?\d+)", run.stderr), run.stderr[-3000:]
