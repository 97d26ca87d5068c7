"""Logging through accelerate's trackers (spec 1.12, 5.8, 8.3): names, steps and values as sd-scripts logs them,
read back from real TensorBoard event files; wandb through a recording stand-in (the package is not installed)."""

from __future__ import annotations

import io
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from sdxl_lora.config.schema import LogConfig
from sdxl_lora.train.tracking import (
    LossAverage,
    Trackers,
    accelerator_kwargs,
    group_rates,
    init_kwargs,
    sanitised_config,
)

KEY = "wandb-key-5f3c9a0d1e2b4c6d8e0f1a2b3c4d5e6f7a8b9c0d"


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# 2026-12-01 14:05:09 UTC
NOW = datetime(2026, 12, 1, 14, 5, 9, tzinfo=UTC).timestamp()


def test_accelerator_kwargs_name_the_timestamped_run_folder(utc, tmp_path):
    cfg = LogConfig(log_with=("tensorboard",), logging_dir=tmp_path, log_prefix="lora-")
    assert accelerator_kwargs(cfg, now=NOW) == {"log_with": ["tensorboard"],
                                                "project_dir": str(tmp_path / "lora-20261201140509")}
    assert accelerator_kwargs(LogConfig(log_with=("wandb",)), now=NOW) == {"log_with": ["wandb"], "project_dir": None}
    assert accelerator_kwargs(LogConfig(logging_dir=tmp_path)) == {}  # no tracker: Accelerator unchanged


def test_sanitised_config_drops_secrets_and_paths_and_stringifies():
    args = {
        "learning_rate": 1e-4, "seed": 42, "cache_latents": True, "output_name": "my_lora", "sample_prompts": None,
        "network_args": ["conv_dim=4", "conv_alpha=1"], "text_encoder_lrs": (None, 5e-05),
        "resolution": "1024,1024", "output_path": Path("a/b"),
        "wandb_api_key": KEY, "huggingface_token": "hf_token", "pretrained_model_name_or_path": "/m/sdxl",
        "vae": "/m/vae", "tokenizer_cache_dir": "/t", "train_data_dir": "/d", "conditioning_data_dir": "/c",
        "reg_data_dir": "/r", "output_dir": "/o", "logging_dir": "/l",
    }
    assert sanitised_config(args) == {
        "learning_rate": 1e-4, "seed": 42, "cache_latents": True, "output_name": "my_lora", "sample_prompts": None,
        "network_args": "['conv_dim=4', 'conv_alpha=1']", "text_encoder_lrs": "(None, 5e-05)",
        "resolution": "1024,1024", "output_path": "a/b",
    }


def test_group_rates_use_group_names_and_d_times_lr():
    assert group_rates([{"name": "textencoder", "lr": 5e-5}, {"name": "unet", "lr": 1e-4}]) == {
        "textencoder": 5e-5, "unet": 1e-4}
    # Prodigy / D-Adaptation: lr is a multiplier (1.0 here, 0.5 after warmup) of the adapted step size d.
    assert group_rates([{"name": "unet", "lr": 0.5, "d": 2e-4}, {"lr": 1.0, "d": 1e-6}]) == {
        "unet": 0.5, "d*lr/unet": 1e-4, "group1": 1.0, "d*lr/group1": 1e-6}


def test_loss_average_replaces_the_same_slot_of_the_last_epoch():
    average = LossAverage()
    assert average.average == 0.0
    for step, loss in enumerate([1.0, 2.0, 3.0]):
        average.add(0, step, loss)
    assert average.average == pytest.approx(2.0)
    average.add(1, 0, 4.0)  # slots 4, 2, 3
    assert average.average == pytest.approx(3.0)
    average.add(1, 1, 8.0)  # slots 4, 8, 3
    assert average.average == pytest.approx(5.0)


def test_init_kwargs_keep_the_file_and_add_run_name_and_folder():
    cfg = LogConfig(log_with=("tensorboard", "wandb"), wandb_run_name="run1",
                    tracker_init_kwargs={"wandb": {"tags": ["a"]}, "tensorboard": {"flush_secs": 5}})
    assert init_kwargs(cfg, "/logs/x") == {"wandb": {"tags": ["a"], "name": "run1", "dir": "/logs/x"},
                                           "tensorboard": {"flush_secs": 5}}
    named = LogConfig(log_with=("wandb",), wandb_run_name="run1", tracker_init_kwargs={"wandb": {"name": "file"}})
    assert init_kwargs(named, None) == {"wandb": {"name": "file"}}  # the file wins
    assert init_kwargs(LogConfig(log_with=("tensorboard",), wandb_run_name="run1"), "/x") == {}


def _png(path: Path) -> np.ndarray:
    pixels = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3) * 5
    Image.fromarray(pixels).save(path)
    return pixels


def _files_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in root.rglob("*") if p.is_file()]


def test_tensorboard_event_files_hold_losses_lrs_validation_and_image(tmp_path, caplog, utc):
    from accelerate import Accelerator
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = LogConfig(log_with=("tensorboard",), logging_dir=tmp_path / "logs", log_prefix="lora-",
                    tracker_name="my_project", wandb_api_key=KEY, log_config=True)
    accelerator = Accelerator(cpu=True, **accelerator_kwargs(cfg, now=NOW))
    trackers = Trackers(cfg)
    args = {"learning_rate": 1e-4, "network_args": ["conv_dim=4"], "wandb_api_key": KEY,
            "output_dir": str(tmp_path / "private-output")}
    sample = tmp_path / "sample.png"
    pixels = _png(sample)
    with caplog.at_level(logging.DEBUG):
        trackers.start(accelerator, args)
        trackers.log_step(1, 1, 0.5, 0.5, {"textencoder": 5e-5, "unet": 1e-4})
        trackers.log_step(2, 1, 0.25, 0.375, {"textencoder": 5e-5, "unet": 2e-4})
        trackers.log_validation(2, 1, 0.625, 0.375)
        trackers.log_images(2, [(sample, "a red cube")])
        trackers.log_step(3, 2, 0.125, 0.1875, {"textencoder": 5e-5, "unet": 2e-4})
        trackers.log_epoch(1, 3, 0.3125)
        trackers.log_validation(3, 1, 0.5, 0.3125, epoch_end=True)
        trackers.end()
    accelerator.end_training()  # after end(): closing twice is harmless

    run = tmp_path / "logs" / "lora-20261201140509" / "my_project"
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()

    def series(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    assert set(events.Tags()["scalars"]) == {
        "loss/current", "loss/average", "lr/textencoder", "lr/unet", "loss/epoch_average",
        "loss/validation/step_average", "loss/validation/step_divergence",
        "loss/validation/epoch_average", "loss/validation/epoch_divergence"}
    assert series("loss/current") == [(1, 0.5), (2, 0.25), (3, 0.125)]
    assert series("loss/average") == [(1, 0.5), (2, 0.375), (3, 0.1875)]
    assert series("lr/unet") == [(1, pytest.approx(1e-4)), (2, pytest.approx(2e-4)), (3, pytest.approx(2e-4))]
    assert series("lr/textencoder") == [(s, pytest.approx(5e-5)) for s in (1, 2, 3)]
    assert series("loss/epoch_average") == [(1, 0.3125)]  # TensorBoard step = epoch
    assert series("loss/validation/step_average") == [(2, 0.625)]
    assert series("loss/validation/step_divergence") == [(2, 0.25)]  # 0.625 - 0.375
    assert series("loss/validation/epoch_average") == [(1, 0.5)]
    assert series("loss/validation/epoch_divergence") == [(1, 0.1875)]  # 0.5 - 0.3125
    assert events.Tags()["images"] == ["sample_0"]
    (image,) = events.Images("sample_0")
    assert image.step == 2 and (image.width, image.height) == (8, 6)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(image.encoded_image_string))), pixels)
    assert "sample_0/prompt/text_summary" in events.Tags()["tensors"]

    # --log_config wrote the options (hparams), without the key and without the output path.
    written = _files_bytes(tmp_path / "logs")
    assert any(b"conv_dim=4" in data for _, data in written)
    assert [p for p, data in written if KEY.encode() in data or b"private-output" in data] == []
    assert not any(KEY in record.getMessage() for record in caplog.records)


def test_nothing_configured_or_not_main_process_does_nothing(tmp_path):
    class Refuses:
        is_main_process = True
        logging_dir = None

        def init_trackers(self, *a, **k):
            pytest.fail("no tracker is configured")

    none = Trackers(LogConfig())
    none.start(Refuses(), {})
    none.log_step(1, 1, 0.5, 0.5, {"unet": 1e-4})
    none.log_epoch(1, 1, 0.5)
    none.log_validation(1, 1, 0.5, 0.5)
    none.log_images(1, [(tmp_path / "missing.png", "p")])
    none.end()
    other = Refuses()
    other.is_main_process = False
    Trackers(LogConfig(log_with=("tensorboard",), logging_dir=tmp_path)).start(other, {})


class _Recorder:
    """A tracker as accelerate wraps it, recording calls."""

    def __init__(self, name: str):
        self.name, self.calls, self.metrics, self.finished = name, [], [], False
        self.tracker = self

    def log(self, values, step=None, **kwargs):
        self.calls.append((values, step, kwargs))

    def define_metric(self, name, hidden=False):
        self.metrics.append((name, hidden))

    def finish(self):
        self.finished = True


class _FakeAccelerator:
    is_main_process = True

    def __init__(self, folder, names=("wandb",)):
        self.logging_dir, self.names, self.trackers, self.started = folder, names, [], None

    def init_trackers(self, project_name, config=None, init_kwargs=None):
        self.started = (project_name, config, init_kwargs)
        self.trackers = [_Recorder(name) for name in self.names]

    def get_tracker(self, name, unwrap=False):
        return next(t for t in self.trackers if t.name == name)


@pytest.fixture
def fake_wandb(monkeypatch):
    logins = []
    module = SimpleNamespace(login=lambda key: logins.append(key),
                             Image=lambda path, caption: ("image", path, caption))
    monkeypatch.setitem(sys.modules, "wandb", module)
    return logins


def test_wandb_gets_login_run_name_steps_and_captioned_samples(tmp_path, fake_wandb, caplog):
    cfg = LogConfig(log_with=("tensorboard", "wandb"), logging_dir=tmp_path, wandb_run_name="run1",
                    wandb_api_key=KEY, log_config=True, tracker_init_kwargs={"wandb": {"tags": ["x"]}})
    folder = tmp_path / "run-folder"
    accelerator = _FakeAccelerator(str(folder), names=("tensorboard", "wandb"))
    trackers = Trackers(cfg)
    with caplog.at_level(logging.DEBUG):
        trackers.start(accelerator, {"seed": 1, "wandb_api_key": KEY})
    assert fake_wandb == [KEY] and folder.is_dir()
    assert accelerator.started == ("network_train", {"seed": 1},
                                   {"wandb": {"tags": ["x"], "name": "run1", "dir": str(folder)}})
    tensorboard, wandb = accelerator.trackers
    assert wandb.metrics == [("epoch", True), ("val_step", True), ("global_step", True)]

    samples = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in samples:
        _png(path)
    tensorboard.add_image = tensorboard.add_text = tensorboard.flush = lambda *a, **k: None
    trackers.log_images(0, [(samples[0], "first prompt"), (samples[1], "second prompt")])
    trackers.log_step(7, 2, 0.5, 0.25, {"unet": 1e-4, "d*lr/unet": 2e-4})
    trackers.log_epoch(2, 7, 0.25)
    assert wandb.calls == [
        ({"sample_0": ("image", str(samples[0]), "first prompt"),
          "sample_1": ("image", str(samples[1]), "second prompt")}, None, {"commit": False}),
        ({}, 0, {}),  # step 0 (--sample_at_first) commits the samples at once, as sd-scripts
        ({"loss/current": 0.5, "loss/average": 0.25, "lr/unet": 1e-4, "lr/d*lr/unet": 2e-4, "global_step": 7,
          "epoch": 2}, None, {}),
        ({"loss/epoch_average": 0.25, "global_step": 7, "epoch": 2}, None, {}),
    ]
    assert tensorboard.calls == [
        ({"loss/current": 0.5, "loss/average": 0.25, "lr/unet": 1e-4, "lr/d*lr/unet": 2e-4}, 7, {}),
        ({"loss/epoch_average": 0.25}, 2, {}),
    ]
    trackers.end()
    assert tensorboard.finished and wandb.finished
    assert not any(KEY in record.getMessage() for record in caplog.records)


def test_no_login_without_a_key(tmp_path, fake_wandb):
    Trackers(LogConfig(log_with=("wandb",))).start(_FakeAccelerator(None), {})
    assert fake_wandb == []


@pytest.fixture(scope="module")
def tiny_lora():
    from sdxl_lora.config.schema import NetworkConfig
    from sdxl_lora.models.tiny import build_tiny_pipeline
    from sdxl_lora.network.lora import apply_lora

    tiny = build_tiny_pipeline(seed=0)
    return apply_lora(tiny.unet, tiny.text_encoder, tiny.text_encoder_2, NetworkConfig(network_dim=2))


@pytest.mark.parametrize(("optimizer_type", "expected"), [
    ("AdamW", {"textencoder": 5e-5, "unet": 1e-4}),
    # Prodigy starts from d0 = 1e-6 and takes --learning_rate as the multiplier of d (1.0 here).
    ("Prodigy", {"textencoder": 1.0, "d*lr/textencoder": 1e-6, "unet": 1.0, "d*lr/unet": 1e-6}),
])
def test_group_rates_of_the_networks_prepared_optimizer(tiny_lora, optimizer_type, expected):
    from accelerate import Accelerator

    from sdxl_lora.config.schema import NetworkConfig, OptimConfig
    from sdxl_lora.network.groups import param_groups
    from sdxl_lora.train.optim import build_optimizer
    from sdxl_lora.train.schedulers import build_scheduler

    if optimizer_type == "Prodigy":
        pytest.importorskip("prodigyopt")
        cfg = OptimConfig(optimizer_type="Prodigy", learning_rate=1.0)
    else:
        cfg = OptimConfig(optimizer_type="AdamW", learning_rate=1e-4, text_encoder_lr=(5e-5, 5e-5))
    optimizer = build_optimizer(cfg, param_groups(tiny_lora, NetworkConfig(), cfg))
    optimizer, scheduler = Accelerator(cpu=True).prepare(optimizer, build_scheduler(cfg, optimizer, 10))
    assert group_rates(optimizer.param_groups) == pytest.approx(expected)


def test_lr_snapshot_leaves_a_tensor_lr_unread_until_group_rates():
    """Adafactor's relative step writes a tensor lr: the step loop only snapshots it (no device sync)."""
    import torch

    from sdxl_lora.train.tracking import lr_snapshot

    lr = torch.tensor(0.01)
    groups = [{"name": "unet", "lr": lr, "params": [], "weight_decay": 0.0}, {"lr": 2e-4, "d": 3.0, "params": []}]
    snapshot = lr_snapshot(groups)
    assert snapshot == [{"name": "unet", "lr": lr}, {"lr": 2e-4, "d": 3.0}] and snapshot[0]["lr"] is lr
    assert group_rates(snapshot) == pytest.approx({"unet": 0.01, "group1": 2e-4, "d*lr/group1": 6e-4})
