"""Trackers and validation through the real CLI (issue 11 items 2 and 3): TensorBoard event files hold the loss,
the learning rate of each group and the validation loss under sd-scripts' names; the validation curve uses fixed
timesteps and noise, so two runs give the same values."""

from __future__ import annotations

import pytest

from helpers import make_images, train_keeping_result, write_toml


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("logging")
    images = make_images(tmp / "images", [(64, 64)] * 4)
    return write_toml(tmp / "dataset.toml", (
        "[general]\nenable_bucket = false\n[[datasets]]\nresolution = 64\nbatch_size = 1\nvalidation_split = 0.25\n"
        f"  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n  caption_extension = '.txt'\n"))


def _scalars(logging_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(logging_dir.rglob("events.out.tfevents.*"))
    assert files, "no TensorBoard event file"
    tags = {}
    for file in files:
        acc = EventAccumulator(str(file))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            tags[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return tags


def _run(model, dataset, tmp):
    code, result = train_keeping_result([
        f"--pretrained_model_name_or_path={model}", f"--dataset_config={dataset}", f"--output_dir={tmp / 'out'}",
        "--network_module=networks.lora", "--network_dim=4", "--learning_rate=1e-3", "--text_encoder_lr=5e-4",
        "--optimizer_type=AdamW", "--seed=2", "--max_train_steps=4", "--max_data_loader_n_workers=0",
        f"--logging_dir={tmp / 'logs'}", "--validate_every_n_steps=2", "--validation_seed=9"])
    assert code == 0
    return result, _scalars(tmp / "logs")


def test_tensorboard_gets_losses_rates_and_validation(tiny_model_dir, dataset, tmp_path):
    result, tags = _run(tiny_model_dir, dataset, tmp_path / "a")
    # 3 training images (one held out): 3 steps per epoch, 4 steps over 2 epochs.
    assert [step for step, _ in tags["loss/current"]] == [1, 2, 3, 4]
    assert [value for _, value in tags["loss/current"]] == pytest.approx(result.losses)
    assert [value for _, value in tags["lr/unet"]] == pytest.approx([1e-3] * 4)
    assert [value for _, value in tags["lr/textencoder"]] == pytest.approx([5e-4] * 4)
    # loss/average over the first epoch's steps is their running mean.
    first = result.losses[:3]
    assert [v for _, v in tags["loss/average"]][:3] == pytest.approx(
        [first[0], sum(first[:2]) / 2, sum(first) / 3])
    # Validated before the first step too (the curve's origin), then every 2 steps.
    assert [step for step, _ in tags["loss/validation/step_average"]] == [0, 2, 4]
    assert [step for step, _ in result.validation_losses] == [0, 2, 3, 4, 4]  # steps 3 and 4 end epochs 1 and 2
    # Epoch logs: TensorBoard step = epoch; validation also at every epoch end (validate_every_n_epochs unset).
    assert [step for step, _ in tags["loss/epoch_average"]] == [1, 2]
    assert [step for step, _ in tags["loss/validation/epoch_average"]] == [1, 2]
    # The same run again: the validation curve is identical (fixed timesteps, fixed noise).
    _, again = _run(tiny_model_dir, dataset, tmp_path / "b")
    assert again["loss/validation/step_average"] == tags["loss/validation/step_average"]
