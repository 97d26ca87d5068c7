"""The validation options (spec 1.13): ValidationConfig, their checks and warnings, and what `sdxl-lora check`
shows of the held-out images."""

from __future__ import annotations

import logging

import pytest

from helpers import make_images, write_toml
from sdxl_lora.config.build import build_run_config
from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.parser import parse_command_line
from sdxl_lora.config.schema import ValidationConfig


@pytest.fixture
def base(tmp_path):
    images = make_images(tmp_path / "img", [(64, 64)] * 5)
    toml = write_toml(tmp_path / "d.toml", "[[datasets]]\nresolution = 64\nbatch_size = 2\n"
                      f"[[datasets.subsets]]\nimage_dir = '{images.as_posix()}'\ncaption_extension = '.txt'\n")
    model = tmp_path / "model.safetensors"  # looks like a checkpoint by name; nothing here opens it
    model.write_bytes(b"\x00")
    return [f"--pretrained_model_name_or_path={model}", f"--dataset_config={toml}",
            f"--output_dir={tmp_path / 'out'}", "--network_module=networks.lora", "--seed=3"]


def _config(argv):
    parsed = parse_command_line(argv)
    return build_run_config(parsed.values, parsed.given)


def test_validation_config_from_the_flags(base):
    cfg = _config([*base, "--validation_split=0.4", "--validation_seed=9", "--validate_every_n_steps=5",
                   "--validate_every_n_epochs=2", "--max_validation_steps=3"])
    assert cfg.validation == ValidationConfig(split=0.4, seed=9, every_n_steps=5, every_n_epochs=2, max_steps=3)
    assert cfg.data.datasets[0].validation_split == 0.4 and cfg.data.datasets[0].validation_seed == 9


def test_validation_seed_falls_back_to_seed(base):
    cfg = _config([*base, "--validation_split=0.4"])
    assert cfg.validation.seed == 3 and cfg.data.datasets[0].validation_seed == 3
    assert cfg.data.datasets[0].where("validation_seed") == "--seed"


@pytest.mark.parametrize("flag", ["--validate_every_n_steps=0", "--validate_every_n_epochs=0",
                                  "--max_validation_steps=-1"])
def test_validation_counts_must_be_positive(base, flag):
    with pytest.raises(ConfigError) as err:
        _config([*base, "--validation_split=0.4", flag])
    assert err.value.problems == [f"{flag}: must be at least 1"]


def test_validation_split_flag_out_of_range(base):
    with pytest.raises(ConfigError) as err:
        _config([*base, "--validation_split=1"])
    assert err.value.problems == ["--validation_split=1.0: must be at least 0 and below 1 (the fraction of each "
                                  "subset's training images held out for validation)"]


def test_a_split_of_five_images_that_holds_none_out_names_the_flag(base):
    with pytest.raises(ConfigError) as err:  # ceil(5 x 0.9) = 5
        _config([*base, "--validation_split=0.1"])
    assert err.value.problems == ["--validation_split=0.1: holds out no image of datasets[0] (a subset of n images "
                                  "keeps ceil(n x (1 - split)) for training); raise it to at least 0.2 or set it "
                                  "to 0"]


def test_validation_flags_without_a_split_warn(base, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = _config([*base, "--validate_every_n_steps=5", "--validation_seed=1"])
    assert cfg.validation.every_n_steps == 5
    assert ("--validate_every_n_steps, --validation_seed: no validation loss is computed because no dataset "
            "holds images out") in caplog.text


def test_check_shows_the_held_out_images(base):
    from sdxl_lora.train.check import build_check, render_plan

    cfg = _config([*base, "--validation_split=0.4"])  # 5 images: 3 train, 2 held out, one batch of 2
    doc = build_check(cfg)
    assert doc["num_validation_images"] == 2 and doc["num_train_images"] == 3
    (dataset,) = doc["datasets"]
    assert dataset["validation"]["num_images"] == 2 and dataset["validation"]["batches"] == 1
    assert {p for p in dataset["validation"]["paths"]}.isdisjoint(i["path"] for i in dataset["images"])
    text = render_plan(cfg)
    assert "3 training images x 1 repeats, 2 held out for validation" in text
    assert "validation (validation_split 0.4): 2 images in 1 batches: img0" in text
    assert "regularisation: 0; validation: 2" in text
