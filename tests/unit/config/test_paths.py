"""Every path-valued option is checked with the other problems, before any weight is read (issue 7 item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.options import OPTIONS_BY_NAME
from sdxl_lora.config.paths import PATH_RULES, path_problems
from sdxl_lora.config.sources import detect_source


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "file.safetensors").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "vae_dir" / "vae").mkdir(parents=True)
    (tmp_path / "vae_dir" / "vae" / "config.json").write_text("{}")
    # sd-scripts' train_state.json has only its two counters; ours names the format.
    for name, text in (("kohya_state", '{"current_epoch": 2, "current_step": 10}'),
                       ("our_state", '{"current_epoch": 2, "current_step": 10, "format": "sdxl-lora-state-1"}')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train_state.json").write_text(text)
    return tmp_path


def test_every_rule_names_a_real_option():
    assert set(PATH_RULES) <= set(OPTIONS_BY_NAME)


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("vae", "missing.safetensors", "no such file or folder, and not a hub id (owner/name)"),
    ("vae", "vaes/sdxl_vae.safetensors", "no such file or folder, and not a hub id (owner/name)"),
    ("vae", "notes.txt", "a file, but not a checkpoint (expected .safetensors, .ckpt, .pt, .pth, .bin)"),
    ("vae", "folder", "folder has neither config.json nor vae/config.json (not a diffusers VAE)"),
    ("network_weights", "missing.safetensors", "file not found"),
    ("network_weights", "folder", "folder without pytorch_lora_weights.safetensors (not a diffusers LoRA folder)"),
    ("resume", "missing_state", "folder not found"),
    ("resume", "file.safetensors", "is a file, not a folder"),
    ("resume", "folder", "not a state folder (no train_state.json)"),
    ("resume", "kohya_state", "a state folder written by sd-scripts, which cannot be resumed exactly; start from "
                              "its weights with --network_weights kohya_state/model.safetensors"),
    ("in_json", "meta.json", "file not found"),
    ("sample_prompts", "prompts.txt", "file not found"),
    ("log_tracker_config", "tracker.toml", "file not found"),
    ("conditioning_data_dir", "masks", "folder not found"),
    ("tokenizer_cache_dir", "notes.txt", "exists and is not a folder"),
    ("metadata_thumbnail", "thumb.png", "file not found"),
    ("output_dir", "notes.txt", "exists and is not a folder"),
    ("logging_dir", "notes.txt", "exists and is not a folder"),
    ("console_log_file", "no_dir/log.txt", "its folder does not exist"),
    ("console_log_file", "folder", "is a folder, not a file"),
    ("offload_param_nvme_path", "nvme", "folder not found"),
])
def test_a_bad_path_is_one_line_naming_the_flag(tree, monkeypatch, name, value, problem):
    monkeypatch.chdir(tree)
    assert path_problems({name: value}) == [f"--{name} {value}: {problem}"]


@pytest.mark.parametrize(("name", "value"), [
    ("vae", "file.safetensors"), ("vae", "vae_dir"), ("vae", "madebyollin/sdxl-vae-fp16-fix"),
    ("network_weights", "file.safetensors"), ("resume", "our_state"), ("conditioning_data_dir", "folder"),
    ("tokenizer_cache_dir", "not_yet_created"), ("metadata_thumbnail", "data:image/png;base64,AAAA"),
    ("metadata_thumbnail", "notes.txt"), ("output_dir", "new_out"), ("logging_dir", "folder"),
    ("console_log_file", "folder/log.txt"),
])
def test_usable_paths_pass(tree, monkeypatch, name, value):
    monkeypatch.chdir(tree)
    assert path_problems({name: value}) == []


def test_network_weights_may_be_a_diffusers_lora_folder(tree, monkeypatch):
    monkeypatch.chdir(tree)
    (tree / "folder" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    assert path_problems({"network_weights": "folder"}) == []


def test_every_item_of_a_list_is_checked(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert path_problems({"base_weights": ["file.safetensors", "gone.safetensors"]}) == [
        "--base_weights gone.safetensors: file not found"]


def test_paths_that_are_not_local_here_are_not_checked(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert path_problems({"resume": "owner/repo/state", "resume_from_huggingface": True}) == []
    assert path_problems({"in_json": "meta.json", "dataset_config": "d.toml"}) == []
    assert path_problems({"vae": None, "resume": "", "base_weights": []}) == []


def test_a_missing_model_file_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="models/sdxl.safetensors: no such file or folder"):
        detect_source("models/sdxl.safetensors")
    assert detect_source("stabilityai/stable-diffusion-xl-base-1.0") == "hub_id"
