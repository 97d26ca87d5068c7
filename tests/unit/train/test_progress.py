"""Losses read on demand (one sync for many steps) and the status file a GUI reads (issue 10 item 7)."""

from __future__ import annotations

import json

import pytest
import torch

from sdxl_lora.train.progress import LossMeter, NonFiniteLoss, Progress


def test_losses_stay_on_the_device_until_read():
    meter = LossMeter()
    for step, value in enumerate([1.0, 0.5, 0.25], start=1):
        meter.add(step, torch.tensor(value), [{"name": "unet", "lr": 1e-4}], epoch=0, step_in_epoch=step - 1)
    assert meter.values == []  # nothing read yet
    read = meter.read()
    assert [(p.step, v) for p, v in read] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert meter.values == [1.0, 0.5, 0.25] and meter.read() == []


def test_the_first_non_finite_step_is_named():
    meter = LossMeter()
    meter.add(7, torch.tensor(1.0), [], ("a.png",))
    meter.add(8, torch.tensor(float("inf")), [{"name": "unet", "lr": 2e-4}], ("b.png",))
    meter.add(9, torch.tensor(float("nan")), [], ("c.png",))
    with pytest.raises(NonFiniteLoss) as err:
        meter.read()
    pending = err.value.pending
    assert (pending.step, pending.paths, pending.rates) == (8, ("b.png",), [{"name": "unet", "lr": 2e-4}])


def test_status_file_tells_a_gui_where_the_run_is(tmp_path):
    path = tmp_path / "lora-status.json"
    progress = Progress(path, total_steps=10, num_epochs=2, start_step=4, enabled=True)
    progress.advance(5, epoch=0)
    progress.advance(6, epoch=1)
    progress.show(0.75, [1e-4, 5e-5])
    status = json.loads(path.read_text())
    assert (status["phase"], status["step"], status["max_steps"], status["epoch"], status["num_epochs"]) == (
        "training", 6, 10, 2, 2)
    assert status["loss"] == 0.75 and status["lr"] == [1e-4, 5e-5]
    # Two steps done in this process: ETA = 4 remaining steps x seconds per step.
    assert status["eta_s"] == pytest.approx(4 * status["s_per_step"])
    progress.saved(tmp_path / "lora-step00000006.safetensors")
    progress.finish("done")
    status = json.loads(path.read_text())
    assert status["phase"] == "done" and status["eta_s"] == 0.0
    assert status["last_saved"].endswith("lora-step00000006.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["lora-status.json"]  # no temporary left


def test_other_processes_write_no_status(tmp_path):
    progress = Progress(tmp_path / "s.json", total_steps=3, num_epochs=1, start_step=0, enabled=False)
    progress.advance(1, epoch=0)
    progress.finish("done")
    assert not (tmp_path / "s.json").exists()
