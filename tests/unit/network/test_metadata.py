"""The ss_* / modelspec.* / sshs_* writer (spec 4), against strings worked out by hand from the spec."""

import hashlib
import json
import struct
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sdxl_lora.network import metadata as md

NEW_YEAR_2026_UTC = 1767225600.0  # 2026-01-01T00:00:00Z: 56 years incl. 14 leap days -> 20454 days x 86400 s


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _facts(**kw):
    values = dict(session_id=1234, training_started_at=1767225600.5, num_train_images=40, num_reg_images=10,
                  num_batches_per_epoch=20, num_epochs=3, optimizer="torch.optim.adamw.AdamW",
                  text_encoder_lr=5e-05)
    return md.RunFacts(**(values | kw))


ARGS = dict(output_name="mychar", learning_rate=0.0001, unet_lr=None, network_module="networks.lora",
            network_dim=8, network_alpha=4.0, network_dropout=None, full_fp16=False, mixed_precision="bf16",
            max_train_steps=60, seed=42, resolution="1024,768", clip_skip=None, gradient_checkpointing=True,
            pretrained_model_name_or_path="stabilityai/stable-diffusion-xl-base-1.0")


def test_run_keys_are_str_of_python_values():
    meta = md.training_metadata(ARGS, _facts())
    expected = {
        "ss_session_id": "1234", "ss_training_started_at": "1767225600.5", "ss_output_name": "mychar",
        "ss_learning_rate": "0.0001", "ss_unet_lr": "None", "ss_text_encoder_lr": "5e-05",
        "ss_num_train_images": "40", "ss_num_reg_images": "10", "ss_num_batches_per_epoch": "20",
        "ss_num_epochs": "3", "ss_max_train_steps": "60", "ss_network_module": "networks.lora",
        "ss_network_dim": "8", "ss_network_alpha": "4.0", "ss_network_dropout": "None",
        "ss_mixed_precision": "bf16", "ss_full_fp16": "False", "ss_v2": "None", "ss_seed": "42",
        "ss_gradient_checkpointing": "True", "ss_base_model_version": "sdxl_base_v1-0",
        "ss_optimizer": "torch.optim.adamw.AdamW", "ss_clip_skip": "None", "ss_num_validation_images": "0",
    }
    assert {k: meta[k] for k in expected} == expected
    assert all(isinstance(v, str) for v in meta.values())
    assert "ss_network_args" not in meta  # only when --network_args was given


def test_network_args_json_carries_the_injected_dropout():
    meta = md.training_metadata(ARGS | {"network_args": ["conv_dim=4", "conv_alpha=1"]}, _facts())
    assert meta["ss_network_args"] == '{"conv_dim": "4", "conv_alpha": "1", "dropout": null}'
    meta = md.training_metadata(ARGS | {"network_args": ["conv_dim=4"], "network_dropout": 0.1}, _facts())
    assert meta["ss_network_args"] == '{"conv_dim": "4", "dropout": 0.1}'


def test_model_name_is_the_hub_id_as_given_and_the_basename_of_an_existing_file(tmp_path):
    meta = md.training_metadata(ARGS, _facts())
    assert meta["ss_sd_model_name"] == "stabilityai/stable-diffusion-xl-base-1.0"
    model = tmp_path / "sd_xl_base_1.0.safetensors"
    model.write_bytes(b"x")
    meta = md.training_metadata(ARGS | {"pretrained_model_name_or_path": str(model)}, _facts())
    assert meta["ss_sd_model_name"] == "sd_xl_base_1.0.safetensors"


def test_dataset_description_is_json():
    facts = _facts(tag_frequency={"img": {"1girl": 3}}, dataset_dirs={"img": {"n_repeats": 10, "img_count": 4}})
    meta = md.training_metadata(ARGS, facts)
    assert meta["ss_tag_frequency"] == '{"img": {"1girl": 3}}'
    assert meta["ss_dataset_dirs"] == '{"img": {"n_repeats": 10, "img_count": 4}}'


def test_no_metadata_keeps_only_the_minimum_keys():
    meta = md.training_metadata(ARGS | {"no_metadata": True, "network_args": ["conv_dim=4"]}, _facts())
    assert meta == {"ss_v2": "None", "ss_base_model_version": "sdxl_base_v1-0",
                    "ss_network_module": "networks.lora", "ss_network_dim": "8", "ss_network_alpha": "4.0",
                    "ss_network_args": '{"conv_dim": "4", "dropout": null}'}
    saved = md.at_save(meta, ARGS | {"no_metadata": True}, steps=5, epoch=1, now=NEW_YEAR_2026_UTC)
    assert "ss_steps" not in saved and saved["modelspec.title"] == "mychar"


def test_save_keys_and_modelspec(utc):
    saved = md.at_save({"ss_v2": "None"}, ARGS, steps=30, epoch=2, now=NEW_YEAR_2026_UTC)
    assert saved["ss_steps"] == "30" and saved["ss_epoch"] == "2"
    assert saved["ss_training_finished_at"] == "1767225600.0"
    spec = {k: v for k, v in saved.items() if k.startswith("modelspec.")}
    assert spec == {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.implementation_version": spec["modelspec.implementation_version"],
        "modelspec.title": "mychar",
        "modelspec.resolution": "1024x768",
        "modelspec.date": "2026-01-01T00:00:00",
        "modelspec.prediction_type": "epsilon",
    }


@pytest.mark.parametrize(("extra", "key", "value"), [
    ({"output_name": None}, "modelspec.title", "LoRA@1767225600.0"),
    ({"metadata_title": "Nice"}, "modelspec.title", "Nice"),
    ({"resolution": "512"}, "modelspec.resolution", "512x512"),
    ({"resolution": None}, "modelspec.resolution", "1024x1024"),
    ({"min_timestep": 100}, "modelspec.timestep_range", "100,1000"),
    ({"max_timestep": 900}, "modelspec.timestep_range", "0,900"),
    ({"clip_skip": 2}, "modelspec.encoder_layer", "2"),
    ({"v_parameterization": True}, "modelspec.prediction_type", "v"),
    ({"metadata_author": "me", "metadata_tags": "a,b"}, "modelspec.tags", "a,b"),
])
def test_modelspec_options(utc, extra, key, value):
    assert md.modelspec(ARGS | extra, NEW_YEAR_2026_UTC)[key] == value


def test_sshs_hashes_follow_spec_4_2(tmp_path):
    small = {"w": torch.tensor([1.0, 2.0])}
    meta = md.with_sshs_hashes(small, {"ss_a": "1", "modelspec.title": "t"})
    # the data section is the two little-endian float32 values; the file is far shorter than 0x100000 bytes
    assert meta["sshs_model_hash"] == hashlib.sha256(struct.pack("<2f", 1.0, 2.0)).hexdigest()
    assert meta["sshs_legacy_hash"] == hashlib.sha256(b"").hexdigest()[:8] == "e3b0c442"

    big = {"w": torch.arange(0x50000, dtype=torch.float32)}  # 1.25 MiB of data
    meta = md.with_sshs_hashes(big, {"ss_a": "1", "modelspec.title": "t"})
    path = tmp_path / "ss_only.safetensors"
    save_file(big, path, metadata={"ss_a": "1"})  # the serialisation the legacy hash is defined on
    raw = path.read_bytes()
    assert meta["sshs_legacy_hash"] == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]
    assert meta["sshs_model_hash"] == hashlib.sha256(big["w"].numpy().tobytes()).hexdigest()
    with safe_open(path, "pt") as f:
        assert json.loads(json.dumps(f.metadata())) == {"ss_a": "1"}
