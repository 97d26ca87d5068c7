"""Exact resume (issue 10 item 5): a run interrupted and resumed, twice, ends with the same LoRA as the run that
was never interrupted, bit for bit; state folders have accelerate's layout and sd-scripts' train_state keys."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_images, write_toml
from sdxl_lora.cli import main
from sdxl_lora.train import save as save_module


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    images = make_images(tmp / "images", [(64, 64)] * 3)
    return write_toml(tmp / "dataset.toml", (
        "[general]\nenable_bucket = false\n[[datasets]]\nresolution = 64\nbatch_size = 1\n"
        f"  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n  caption_extension = '.txt'\n"
        "  shuffle_caption = true\n  flip_aug = true\n  caption_dropout_rate = 0.3\n"))


def _argv(model, dataset, out, *extra):
    # Dropout (torch RNG), caption shuffling/dropout and flips (data RNG), warmup + cosine (scheduler state) and
    # AdamW moments (optimizer state) all have to come back for the runs to agree.
    return [f"--pretrained_model_name_or_path={model}", f"--dataset_config={dataset}", f"--output_dir={out}",
            "--output_name=lora", "--network_module=networks.lora", "--network_dim=4", "--network_alpha=2",
            "--network_dropout=0.1", "--learning_rate=1e-3", "--optimizer_type=AdamW", "--lr_scheduler=cosine",
            "--lr_warmup_steps=3", "--seed=11", "--max_train_steps=12", "--max_data_loader_n_workers=0",
            "--noise_offset=0.05", *extra]


def _interrupt_after(monkeypatch, step: int):
    """Stop the run right after the step save of `step` has been written, as a crash there would."""
    real = save_module.RunSaver.at_step

    def at_step(self, s, epoch, write_state):
        written = real(self, s, epoch, write_state)
        if s == step:
            raise Interrupted(s)
        return written

    monkeypatch.setattr(save_module.RunSaver, "at_step", at_step)


def _tensors(path):
    return load_file(str(path))


def test_interrupted_twice_and_resumed_equals_uninterrupted(tiny_model_dir, dataset, tmp_path, monkeypatch):
    assert main(_argv(tiny_model_dir, dataset, tmp_path / "straight")) == 0
    reference = _tensors(tmp_path / "straight" / "lora.safetensors")

    out = tmp_path / "interrupted"
    every = ["--save_every_n_steps=1", "--save_state"]
    with monkeypatch.context() as m:
        _interrupt_after(m, 5)  # mid-epoch: 3 batches per epoch, so epoch 2, batch 2
        with pytest.raises(Interrupted):
            main(_argv(tiny_model_dir, dataset, out, *every))
    state5 = out / "lora-step00000005-state"
    train_state = json.loads((state5 / "train_state.json").read_text())
    assert (train_state["current_epoch"], train_state["current_step"]) == (2, 5)  # sd-scripts' keys
    assert (train_state["epoch"], train_state["batch"]) == (1, 2)
    assert {p.name for p in state5.iterdir()} == {"model.safetensors", "optimizer.bin", "scheduler.bin",
                                                   "random_states_0.pkl", "train_state.json"}
    with monkeypatch.context() as m:
        _interrupt_after(m, 9)  # an epoch's last step
        with pytest.raises(Interrupted):
            main(_argv(tiny_model_dir, dataset, out, *every, f"--resume={state5}"))
    assert main(_argv(tiny_model_dir, dataset, out, *every, f"--resume={out / 'lora-step00000009-state'}")) == 0

    resumed = _tensors(out / "lora.safetensors")
    assert sorted(resumed) == sorted(reference)
    for key, tensor in reference.items():
        assert torch.equal(resumed[key], tensor), key
    # The state's LoRA is the step file's LoRA (training dtype float32 here), so it also loads as --network_weights.
    step12 = _tensors(out / "lora-step00000012.safetensors")
    state12 = _tensors(out / "lora-step00000012-state" / "model.safetensors")
    assert all(torch.equal(step12[k], state12[k]) for k in step12)


def test_resume_continues_the_step_count_and_the_schedule(tiny_model_dir, dataset, tmp_path, monkeypatch):
    """The resumed run's file names go on from the state's step (sd-scripts restarts at 0 without
    --skip_until_initial_step: spec 7.4 [quirk]) and it stops at --max_train_steps in total."""
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _interrupt_after(m, 4)
        with pytest.raises(Interrupted):
            main(_argv(tiny_model_dir, dataset, out, "--save_every_n_steps=4", "--save_state"))
    assert main(_argv(tiny_model_dir, dataset, out, "--save_every_n_steps=4", "--save_state",
                      f"--resume={out / 'lora-step00000004-state'}")) == 0
    names = sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors")
    assert names == ["lora-step00000004.safetensors", "lora-step00000008.safetensors",
                     "lora-step00000012.safetensors", "lora.safetensors"]
    status = json.loads((out / "lora-status.json").read_text())
    assert (status["phase"], status["step"], status["max_steps"]) == ("done", 12, 12)


def _resumed_equals_straight(model, dataset, tmp_path, monkeypatch, extra: list[str], stop: int):
    """Train straight; train again interrupted after step `stop` and resumed from its state: same LoRA, bit for
    bit. Returns the state folder the second run resumed from."""
    assert main(_argv(model, dataset, tmp_path / "straight", *extra)) == 0
    out = tmp_path / "interrupted"
    with monkeypatch.context() as m:
        _interrupt_after(m, stop)
        with pytest.raises(Interrupted):
            main(_argv(model, dataset, out, *extra, f"--save_every_n_steps={stop}", "--save_state"))
    state = out / f"lora-step{stop:08d}-state"
    assert main(_argv(model, dataset, out, *extra, f"--resume={state}")) == 0
    reference, resumed = _tensors(tmp_path / "straight" / "lora.safetensors"), _tensors(out / "lora.safetensors")
    assert sorted(resumed) == sorted(reference)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    return state


def test_resume_with_gradient_accumulation_over_an_uneven_epoch(tiny_model_dir, dataset, tmp_path, monkeypatch):
    """3 batches, accumulation 2: each epoch is a step of 2 batches and a step of 1 (accelerate applies the
    gradients at the loader's end). Interrupted after step 3 (epoch 2, batch 2), the run resumes exactly."""
    state = _resumed_equals_straight(tiny_model_dir, dataset, tmp_path, monkeypatch,
                                     ["--gradient_accumulation_steps=2", "--max_train_steps=6"], stop=3)
    assert json.loads((state / "train_state.json").read_text())["batch"] == 2


def test_resume_with_fused_backward_restores_the_per_tensor_optimizers(tiny_model_dir, dataset, tmp_path,
                                                                       monkeypatch):
    """With --fused_backward_pass the optimizer state lives in one optimizer per tensor: all of them come back."""
    _resumed_equals_straight(tiny_model_dir, dataset, tmp_path, monkeypatch,
                             ["--fused_backward_pass", "--max_train_steps=5"], stop=2)


def test_resume_with_another_network_is_one_line(tiny_model_dir, dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        with pytest.raises(Interrupted):
            main(_argv(tiny_model_dir, dataset, out, "--save_every_n_steps=1", "--save_state"))
    argv = [a for a in _argv(tiny_model_dir, dataset, out) if a != "--network_dim=4"]
    assert main([*argv, "--network_dim=8", f"--resume={out / 'lora-step00000001-state'}"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("sdxl-lora: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"sdxl-lora: error: --resume {out / 'lora-step00000001-state'}: ")
    assert "shape" in errors[0] and "Traceback" not in err


def test_resume_with_loader_workers_kept_between_epochs(tiny_model_dir, dataset, tmp_path, monkeypatch):
    """Workers that read the images (no latent cache) live for the whole run, across epochs; the resumed epoch
    gets a loader of its own. The run ends as if never interrupted."""
    _resumed_equals_straight(tiny_model_dir, dataset, tmp_path, monkeypatch, ["--max_data_loader_n_workers=2"],
                             stop=4)
