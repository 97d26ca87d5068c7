"""Configurations in the shapes users already have: sd-scripts' documented dataset TOML (config_README) and the
sectioned --config_file that kohya_ss GUI and sd-scripts users write. Parsed values, every level of the fallback
chain, --output_config round trips, and one `check` run end to end without loading a model."""

from __future__ import annotations

import json

import pytest

from helpers import make_images, write_toml
from sdxl_lora.cli import main
from sdxl_lora.config.config_file import write_config_file
from sdxl_lora.config.dataset_toml import load_datasets
from sdxl_lora.config.options import OPTIONS
from sdxl_lora.config.parser import parse_command_line
from sdxl_lora.models import load as model_load
from sdxl_lora.train import loop

# sd-scripts docs/config_README-en.md, DreamBooth part, with one more override at each level.
README_DATASET = r"""
[general]
shuffle_caption = true
caption_extension = '.txt'
keep_tokens = 1
max_bucket_reso = 2048

[[datasets]]
resolution = 1024
batch_size = 4
keep_tokens = 2
max_bucket_reso = 1536

  [[datasets.subsets]]
  image_dir = 'C:\hoge'
  class_tokens = 'hoge girl'
  num_repeats = 10
  # keep_tokens = 2 (the value of the parent datasets)

  [[datasets.subsets]]
  image_dir = 'C:\fuga'
  class_tokens = 'fuga boy'
  keep_tokens = 3

  [[datasets.subsets]]
  is_reg = true
  image_dir = 'C:\reg'
  class_tokens = 'human'
  keep_tokens = 1
  num_repeats = 1

[[datasets]]
resolution = [768, 512]
enable_bucket = true

  [[datasets.subsets]]
  image_dir = 'C:\piyo'
  caption_extension = 'cap'
  # keep_tokens = 1 (the value of [general])
"""

README_CLI = ["--train_batch_size=3", "--dataset_repeats=5", "--caption_extension=.cli", "--min_bucket_reso=320",
              "--flip_aug"]


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("model loaded")

    monkeypatch.setattr(model_load, "load_sdxl", refuse)
    monkeypatch.setattr(loop, "run", refuse)


@pytest.fixture
def readme_datasets(tmp_path):
    path = write_toml(tmp_path / "config_README.toml", README_DATASET)
    return path, load_datasets(path, parse_command_line(README_CLI).values)


def _setting(datasets, where: tuple[int, ...], key: str):
    item = datasets[where[0]] if len(where) == 1 else datasets[where[0]].subsets[where[1]]
    return getattr(item, key), item.where(key)


# (dataset[, subset], key, resolved value, where it came from: "<key path in the file>" or "--flag")
README_EXPECTED = [
    # subset > dataset > [general]
    ((0, 1), "keep_tokens", 3, "datasets[0].subsets[1].keep_tokens"),
    ((0, 0), "keep_tokens", 2, "datasets[0].keep_tokens"),
    ((0, 2), "keep_tokens", 1, "datasets[0].subsets[2].keep_tokens"),
    ((1, 0), "keep_tokens", 1, "general.keep_tokens"),
    ((1, 0), "caption_extension", ".cap", "datasets[1].subsets[0].caption_extension"),
    # [general] > command line
    ((0, 0), "caption_extension", ".txt", "general.caption_extension"),
    ((0, 0), "shuffle_caption", True, "general.shuffle_caption"),
    ((1,), "max_bucket_reso", 2048, "general.max_bucket_reso"),
    # dataset > [general]
    ((0,), "max_bucket_reso", 1536, "datasets[0].max_bucket_reso"),
    # subset-only keys
    ((0, 0), "image_dir", "C:\\hoge", "datasets[0].subsets[0].image_dir"),
    ((0, 2), "is_reg", True, "datasets[0].subsets[2].is_reg"),
    ((0, 1), "class_tokens", "fuga boy", "datasets[0].subsets[1].class_tokens"),
    # dataset-level keys
    ((0,), "resolution", (1024, 1024), "datasets[0].resolution"),
    ((1,), "resolution", (768, 512), "datasets[1].resolution"),
    ((0,), "batch_size", 4, "datasets[0].batch_size"),
    ((1,), "enable_bucket", True, "datasets[1].enable_bucket"),
    # command line, with sd-scripts' renames: --train_batch_size -> batch_size, --dataset_repeats -> num_repeats
    ((1,), "batch_size", 3, "--train_batch_size"),
    ((0, 0), "num_repeats", 10, "datasets[0].subsets[0].num_repeats"),
    ((0, 1), "num_repeats", 5, "--dataset_repeats"),
    ((1, 0), "num_repeats", 5, "--dataset_repeats"),
    ((0,), "min_bucket_reso", 320, "--min_bucket_reso"),
    ((1, 0), "flip_aug", True, "--flip_aug"),
    ((0,), "enable_bucket", False, "--enable_bucket"),
    # parser defaults (non-None) act as the command-line level, as in sd-scripts
    ((1,), "bucket_reso_steps", 64, "--bucket_reso_steps"),
    ((0, 0), "caption_separator", ",", "--caption_separator"),
    # built-in defaults: settings without a command-line fallback, or whose option defaults to None
    ((1, 0), "class_tokens", None, "datasets[1].subsets[0].class_tokens"),
    ((0, 0), "caption_prefix", None, "datasets[0].subsets[0].caption_prefix"),
    ((0,), "network_multiplier", 1.0, "datasets[0].network_multiplier"),
    ((1, 0), "is_reg", False, "datasets[1].subsets[0].is_reg"),
]


@pytest.mark.parametrize("where, key, value, origin", README_EXPECTED,
                         ids=[f"{'.'.join(map(str, w))}-{k}" for w, k, _, _ in README_EXPECTED])
def test_readme_dataset_fallback_chain(readme_datasets, where, key, value, origin):
    path, datasets = readme_datasets
    resolved, came_from = _setting(datasets, where, key)
    assert resolved == value
    assert came_from == (origin if origin.startswith("--") else f"{path}: {origin}")


def test_readme_dataset_shape(readme_datasets):
    _, datasets = readme_datasets
    assert [len(d.subsets) for d in datasets] == [3, 1]
    assert [d.key_path for d in datasets] == ["datasets[0]", "datasets[1]"]
    assert [s.is_reg for s in datasets[0].subsets] == [False, False, True]
    assert all(s.shuffle_caption for d in datasets for s in d.subsets)


def test_readme_dataset_without_command_line_uses_parser_defaults(tmp_path):
    path = write_toml(tmp_path / "config_README.toml", README_DATASET)
    datasets = load_datasets(path, parse_command_line([]).values)
    assert (datasets[1].batch_size, datasets[1].where("batch_size")) == (1, "--train_batch_size")
    assert (datasets[0].subsets[1].num_repeats, datasets[0].subsets[1].where("num_repeats")) == (1, "--dataset_repeats")
    assert datasets[0].min_bucket_reso == 256 and datasets[0].subsets[0].flip_aug is False
    assert datasets[0].subsets[0].caption_extension == ".txt"


def test_readme_dataset_is_refused_only_for_its_missing_folders(tmp_path, capsys):
    """Through the CLI the example (caption options included) fails on its four missing folders, nothing else."""
    path = write_toml(tmp_path / "config_README.toml", README_DATASET)
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"\x00not a checkpoint\xff" * 64)
    code = main(["check", f"--pretrained_model_name_or_path={model}", f"--dataset_config={path}",
                 f"--output_dir={tmp_path / 'out'}", "--network_module=networks.lora"])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 4
    for line in lines:
        assert line.startswith("sdxl-lora: error: ") and "folder not found" in line, line


# A --config_file as kohya_ss GUI / sd-scripts users write it: sections are only for reading, sd-scripts
# flattens them into one key space.
GUI_CONFIG = """
[model_arguments]
pretrained_model_name_or_path = "stabilityai/stable-diffusion-xl-base-1.0"
v2 = false
v_parameterization = false
no_half_vae = true

[additional_network_arguments]
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
network_train_unet_only = true
network_args = ["conv_dim=4", "conv_alpha=1"]

[optimizer_arguments]
optimizer_type = "AdamW"
learning_rate = 0.0001
unet_lr = 0.0001
text_encoder_lr = 5e-5
lr_scheduler = "cosine"
lr_warmup_steps = 0.05
max_grad_norm = 1.0

[dataset_arguments]
dataset_config = "/data/dataset.toml"
cache_latents = true
cache_latents_to_disk = true
debug_dataset = false
vae_batch_size = 2

[training_arguments]
output_dir = "/data/output"
output_name = "my_lora"
save_precision = "fp16"
save_every_n_epochs = 1
train_batch_size = 2
max_train_epochs = 10
mixed_precision = "bf16"
gradient_checkpointing = true
xformers = true
seed = 42
max_data_loader_n_workers = 0
max_token_length = 225

[sample_prompt_arguments]
sample_every_n_epochs = 1
sample_sampler = "euler_a"

[saving_arguments]
save_model_as = "safetensors"

[logging_arguments]
log_with = "tensorboard"
logging_dir = "/data/logs"
wandb_api_key = "do-not-write-me"
"""

GUI_KEYS = {line.split(" = ")[0] for line in GUI_CONFIG.splitlines() if " = " in line}
GUI_CLI = ["--learning_rate=3e-4", "--max_train_epochs", "2", "--output_name=from_cli"]


@pytest.fixture
def gui_parsed(tmp_path):
    path = write_toml(tmp_path / "kohya_gui.toml", GUI_CONFIG)
    return path, parse_command_line(["--config_file", str(path), *GUI_CLI])


def test_config_file_values_come_typed_from_every_section(gui_parsed):
    _, parsed = gui_parsed
    v = parsed.values
    assert v["pretrained_model_name_or_path"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert v["no_half_vae"] is True and v["v2"] is False
    assert v["network_dim"] == 32
    assert v["network_alpha"] == 16.0 and isinstance(v["network_alpha"], float)
    assert v["network_args"] == ["conv_dim=4", "conv_alpha=1"]
    assert v["text_encoder_lr"] == [5e-5]  # a bare value for an option taking several
    assert v["unet_lr"] == 1e-4 and v["max_grad_norm"] == 1.0
    assert v["lr_scheduler"] == "cosine" and v["lr_warmup_steps"] == 0.05
    assert v["cache_latents"] is True and v["vae_batch_size"] == 2
    assert v["mixed_precision"] == "bf16" and v["max_token_length"] == 225 and v["seed"] == 42
    assert v["sample_sampler"] == "euler_a" and v["save_model_as"] == "safetensors"
    assert v["log_with"] == "tensorboard" and v["wandb_api_key"] == "do-not-write-me"


def test_command_line_overrides_config_file(gui_parsed):
    _, parsed = gui_parsed
    assert parsed.values["learning_rate"] == 3e-4
    assert parsed.values["max_train_epochs"] == 2
    assert parsed.values["output_name"] == "from_cli"


def test_defaults_for_the_rest_and_given_is_exact(gui_parsed):
    path, parsed = gui_parsed
    assert parsed.given == frozenset(GUI_KEYS | {"config_file", "learning_rate", "max_train_epochs", "output_name"})
    assert parsed.values["config_file"] == str(path)
    for option in OPTIONS:
        if option.name not in parsed.given:
            assert parsed.values[option.name] == option.default, option.name
    assert parsed.values["max_train_steps"] == 1600 and parsed.values["caption_extension"] == ".caption"


def test_later_duplicate_in_another_section_wins(tmp_path):
    path = write_toml(tmp_path / "dup.toml", "[training_arguments]\nseed = 1\n[misc]\nseed = 2\n")
    assert parse_command_line(["--config_file", str(path)]).values["seed"] == 2


def test_config_file_without_toml_suffix_on_the_command_line(gui_parsed):
    path, parsed = gui_parsed
    bare = parse_command_line(["--config_file", str(path.with_suffix("")), *GUI_CLI])
    assert {k: v for k, v in bare.values.items() if k != "config_file"} == \
        {k: v for k, v in parsed.values.items() if k != "config_file"}


def _without(values: dict, *names: str) -> dict:
    return {k: v for k, v in values.items() if k not in names}


def test_written_config_reloads_to_the_same_values(gui_parsed, tmp_path):
    _, parsed = gui_parsed
    out = write_config_file(parsed.values, tmp_path / "written.toml")
    text = out.read_text(encoding="utf-8")
    assert "do-not-write-me" not in text and "wandb_api_key" not in text and "config_file" not in text
    reloaded = parse_command_line(["--config_file", str(out)])
    assert _without(reloaded.values, "config_file", "wandb_api_key") == \
        _without(parsed.values, "config_file", "wandb_api_key")
    assert reloaded.values["wandb_api_key"] is None
    assert reloaded.values["network_alpha"] == 16.0 and reloaded.values["lr_warmup_steps"] == 0.05


def test_output_config_round_trip_through_the_cli(tmp_path, capsys):
    flags = ["--pretrained_model_name_or_path=stabilityai/stable-diffusion-xl-base-1.0",
             "--network_module=networks.lora", "--network_dim", "16", "--network_alpha=8",
             "--learning_rate=1e-4", "--text_encoder_lr", "5e-5", "1e-5", "--lr_scheduler=cosine",
             "--lr_warmup_steps=5%", "--network_train_unet_only", "--output_name=my lora \"v1\"",
             f"--output_dir={tmp_path / 'out'}", "--seed=7", "--mixed_precision=bf16"]
    out = tmp_path / "saved.toml"
    assert main(["--config_file", str(tmp_path / "saved"), "--output_config", *flags]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    reloaded = parse_command_line(["--config_file", str(out)])
    direct = parse_command_line(flags)
    assert _without(reloaded.values, "config_file") == _without(direct.values, "config_file")
    assert reloaded.values["text_encoder_lr"] == [5e-5, 1e-5] and reloaded.values["lr_warmup_steps"] == 0.05
    assert reloaded.given == direct.given | {"config_file"}
    # sd-scripts refuses to overwrite: the second write is an error naming the file.
    assert main(["--config_file", str(out), "--output_config", *flags]) == 2
    assert "saved.toml already exists" in capsys.readouterr().err


SD_SCRIPTS_CONFIG = """
[model_arguments]
pretrained_model_name_or_path = "{model}"

[additional_network_arguments]
network_module = "networks.lora"
network_dim = 4
network_alpha = 2
network_train_unet_only = true

[optimizer_arguments]
optimizer_type = "AdamW"
learning_rate = 1e-3
lr_scheduler = "cosine"
lr_warmup_steps = 0.1
max_grad_norm = 1.0

[dataset_arguments]
dataset_config = "{dataset}"
cache_latents = true

[training_arguments]
output_dir = "{out}"
output_name = "example"
max_train_steps = 6
mixed_precision = "bf16"
gradient_checkpointing = true
seed = 42
max_data_loader_n_workers = 0

[sample_prompt_arguments]
sample_sampler = "ddim"

[saving_arguments]
save_model_as = "safetensors"
"""


def test_sd_scripts_style_config_passes_check_without_loading_a_model(tmp_path, capsys):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"\x00not a checkpoint\xff" * 64)  # opening it would fail with another error
    images = make_images(tmp_path / "images", [(64, 64), (96, 64), (64, 96)])
    dataset = write_toml(tmp_path / "dataset.toml", (
        "[general]\nenable_bucket = true\nmin_bucket_reso = 32\nmax_bucket_reso = 128\nbucket_reso_steps = 32\n"
        "caption_extension = '.txt'\n"
        "[[datasets]]\nresolution = 64\nbatch_size = 2\n"
        f"  [[datasets.subsets]]\n  image_dir = '{images.as_posix()}'\n  num_repeats = 2\n"))
    config = write_toml(tmp_path / "sdxl_lora.toml", SD_SCRIPTS_CONFIG.format(
        model=model.as_posix(), dataset=dataset.as_posix(), out=(tmp_path / "out").as_posix()))

    assert main(["check", "--config_file", str(config)]) == 0
    captured = capsys.readouterr()
    assert "steps: 6" in captured.out, captured.err
    assert main(["check", "--config_file", str(config), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["max_train_steps"] == 6
    assert plan["num_train_images"] == 6
    assert plan["trains"] == {"unet": True, "te1": False, "te2": False}
    assert plan["datasets"][0]["batch_size"] == 2
    assert plan["saves"][0]["path"].endswith("example.safetensors")
    assert not (tmp_path / "out").exists()
