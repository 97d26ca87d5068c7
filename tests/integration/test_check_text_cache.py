"""`sdxl-lora check` counts what training does: frozen text encoders with fixed captions get their outputs cached
by themselves (train/setup.py auto_text_cache), so the estimate counts them as off the device."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from helpers import make_images
from sdxl_lora.cli import main
from sdxl_lora.config.dataset_toml import DatasetConfig, SubsetConfig
from sdxl_lora.train.setup import auto_text_cache_expected, text_cache_bytes

NOTE = "frozen text encoders and fixed captions"


@pytest.fixture
def argv(tmp_path, tiny_model_dir):
    make_images(tmp_path / "train" / "1_cat", [(64, 64)] * 2)
    return [f"--pretrained_model_name_or_path={tiny_model_dir}", f"--train_data_dir={tmp_path / 'train'}",
            "--resolution=64", f"--output_dir={tmp_path / 'out'}", "--network_module=networks.lora",
            "--network_dim=4", "--mixed_precision=bf16", "--max_train_steps=2", "--seed=1"]


def _memory(capsys, argv):
    assert main(["check", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)["memory"]


def test_check_counts_auto_cached_text_encoders_as_off_the_device(argv, capsys):
    cached = _memory(capsys, [*argv, "--network_train_unet_only"])
    assert cached["training_bytes"]["text encoder weights"] == 0
    assert cached["caching_bytes"] > 0 and any(NOTE in line for line in cached["lines"])
    for live in (_memory(capsys, [*argv, "--network_train_unet_only", "--shuffle_caption"]),  # captions change
                 _memory(capsys, argv)):  # the text encoders' LoRA trains
        assert live["training_bytes"]["text encoder weights"] > 0
        assert not any(NOTE in line for line in live["lines"])


def _cfg(**subset):
    dataset = DatasetConfig(resolution=(64, 64), batch_size=1, subsets=(SubsetConfig(image_dir="x", **subset),))
    return SimpleNamespace(data=SimpleNamespace(cache_text_encoder_outputs_to_disk=False, datasets=(dataset,)),
                           network=SimpleNamespace(train_text_encoder=False))


def test_the_expected_decision_needs_fixed_captions_and_a_cache_no_larger_than_the_encoders():
    # 10 captions x (77 x 2048 + 1280) floats x 4 bytes, by hand: 10 x 158,976 x 4 = 6,359,040.
    assert text_cache_bytes(10, (77, 2048), 1280) == 6_359_040
    assert auto_text_cache_expected(_cfg(), 10, (77, 2048), 1280, 6_359_040)
    assert not auto_text_cache_expected(_cfg(), 10, (77, 2048), 1280, 6_359_039)
    assert not auto_text_cache_expected(_cfg(caption_dropout_rate=0.1), 10, (77, 2048), 1280, 10**9)
