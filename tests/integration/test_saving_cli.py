"""Saving along the way (issue 10 items 5 and 6): sd-scripts' names and deletion rules through the real CLI, a
non-finite loss that stops the run with the last good files intact, a process killed in the middle of a save,
and --initial_step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from safetensors.torch import load_file

from helpers import train_keeping_result, two_image_dataset
from sdxl_lora.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return two_image_dataset(tmp_path_factory.mktemp("saving"))  # 2 batches per epoch


def _argv(model, dataset, out, *extra):
    return [f"--pretrained_model_name_or_path={model}", f"--dataset_config={dataset}", f"--output_dir={out}",
            "--network_module=networks.lora", "--network_dim=4", "--learning_rate=1e-3", "--optimizer_type=AdamW",
            "--seed=3", "--max_data_loader_n_workers=0", "--network_train_unet_only", *extra]


def _visible(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_epoch_saves_are_thinned_as_sd_scripts_does(tiny_model_dir, dataset, tmp_path):
    """Every epoch but the last is saved; --save_last_n_epochs 2 keeps epochs 2 and 3 of 4, and
    --save_last_n_epochs_state 1 keeps only the newest state. Without --output_name: 'epoch', 'last'."""
    out = tmp_path / "out"
    assert main(_argv(tiny_model_dir, dataset, out, "--max_train_epochs=4", "--save_every_n_epochs=1",
                      "--save_last_n_epochs=2", "--save_state", "--save_last_n_epochs_state=1")) == 0
    assert _visible(out) == ["README.md", "epoch-000002.safetensors", "epoch-000003-state", "epoch-000003.safetensors",
                             "last-state", "last-status.json", "last.safetensors"]
    assert json.loads((out / "epoch-000003-state" / "train_state.json").read_text())["current_step"] == 6
    assert load_file(str(out / "epoch-000002.safetensors"))  # whole files


def test_step_saves_and_their_states_are_thinned(tiny_model_dir, dataset, tmp_path):
    out = tmp_path / "out"
    assert main(_argv(tiny_model_dir, dataset, out, "--output_name=s", "--max_train_steps=6",
                      "--save_every_n_steps=2", "--save_last_n_steps=2", "--save_state_on_train_end")) == 0
    # At step 6: 6 - 2 - 1 = 3, rounded down to a multiple of 2 -> the save of step 2 goes; 4 and 6 stay.
    # --save_state_on_train_end: one state, at the end.
    assert _visible(out) == ["README.md", "s-state", "s-status.json", "s-step00000004.safetensors",
                             "s-step00000006.safetensors", "s.safetensors"]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_save(tiny_model_dir, dataset, tmp_path,
                                                                        monkeypatch, capsys):
    from sdxl_lora.train import loss as losses

    real, calls = losses.training_loss, []

    def breaks_at_step_3(*args, **kwargs):
        calls.append(1)
        value = real(*args, **kwargs)
        return value * float("nan") if len(calls) >= 3 else value

    monkeypatch.setattr(losses, "training_loss", breaks_at_step_3)
    out = tmp_path / "out"
    code, _ = train_keeping_result(_argv(tiny_model_dir, dataset, out, "--output_name=n", "--max_train_steps=6",
                                         "--save_every_n_steps=1", "--save_state"))
    assert code == 1
    err = capsys.readouterr().err
    assert "loss is not finite at step 3" in err and "mixed precision no" in err and "lower --learning_rate" in err
    assert _visible(out) == ["n-status.json", "n-step00000001-state", "n-step00000001.safetensors",
                             "n-step00000002-state", "n-step00000002.safetensors"]
    good = load_file(str(out / "n-step00000002.safetensors"))
    assert all(t.isfinite().all() for t in good.values())
    status = json.loads((out / "n-status.json").read_text())
    assert status["phase"] == "failed" and "step 3" in status["error"]


KILLER = textwrap.dedent("""
    import os, signal, sys
    import {module} as target
    real = target.{function}
    def killing(*args, **kwargs):
        if all(part in str(args[1]) for part in os.environ["KILL_WHEN"].split(",")):
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: as a power cut or the OOM killer
        return real(*args, **kwargs)
    target.{function} = killing
    from sdxl_lora.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize(("module", "function", "kill_when"), [
    ("safetensors.torch", "save_file", "lora-step00000003.safetensors"),  # halfway into the LoRA file of step 3
    ("torch", "save", "lora-step00000003-state,optimizer.bin"),  # halfway into the state folder of step 3
])
def test_sigkill_during_a_save_leaves_the_previous_files_valid(tiny_model_dir, dataset, tmp_path, module, function,
                                                               kill_when):
    out = tmp_path / "out"
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(module=module, function=function))
    env = dict(os.environ, KILL_WHEN=kill_when, PYTHONPATH=os.pathsep.join(sys.path))
    argv = _argv(tiny_model_dir, dataset, out, "--output_name=lora", "--max_train_steps=4",
                 "--save_every_n_steps=1", "--save_state")
    run = subprocess.run([sys.executable, str(script), *argv], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == -9, run.stderr[-2000:]
    visible = _visible(out)
    assert "lora-step00000003-state" not in visible and "lora.safetensors" not in visible
    assert ("lora-step00000003.safetensors" in visible) == (function == "save")  # the file came before the state
    for name in ("lora-step00000001.safetensors", "lora-step00000002.safetensors"):
        assert load_file(str(out / name))
    # The newest complete state resumes to the end.
    assert main(_argv(tiny_model_dir, dataset, out, "--output_name=lora", "--max_train_steps=4",
                      f"--resume={out / 'lora-step00000002-state'}")) == 0
    assert load_file(str(out / "lora.safetensors"))


def test_initial_step_skips_to_that_step(tiny_model_dir, dataset, tmp_path):
    """--initial_step 3 --skip_until_initial_step of 4 steps: one step is trained (the second batch of
    epoch 2), numbered 4."""
    code, result = train_keeping_result(_argv(tiny_model_dir, dataset, tmp_path / "out", "--output_name=i",
                                              "--max_train_steps=4", "--initial_step=3",
                                              "--skip_until_initial_step", "--save_every_n_steps=1"))
    assert code == 0
    assert (result.steps, len(result.losses)) == (4, 1)
    assert _visible(tmp_path / "out") == ["README.md", "i-status.json", "i-step00000004.safetensors", "i.safetensors"]
