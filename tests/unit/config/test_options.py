"""The option table, the parser built from it, and docs/options.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdxl_lora.config.docs import render_options_md
from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.options import GROUPS, NOT_YET, OPTIONS, OPTIONS_BY_NAME, WORKS
from sdxl_lora.config.parser import build_parser, parse_command_line

TESTS = Path(__file__).resolve().parents[2]
SPEC_ROWS = [line.split(None, 2) for line in (TESTS / "assets" / "sd_scripts_options.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
"""(name, type, default as JSON) of every option, written from the spec (section 1), not from options.py."""
SD_SCRIPTS_NAMES = [name for name, _, _ in SPEC_ROWS]
ROADMAP = {"model loading", "dataset pipeline", "LoRA network", "training loop", "sampling and logging",
           "multi-process", "benchmarks"}
WORKING = {
    "pretrained_model_name_or_path", "dataset_config", "output_dir", "output_name", "network_module",
    "network_dim", "network_alpha", "learning_rate", "optimizer_type", "lr_scheduler", "max_train_steps",
    "max_train_epochs", "mixed_precision", "seed", "save_model_as", "network_train_unet_only",
    "cache_latents", "gradient_checkpointing", "config_file", "output_config", "console_log_level",
    "console_log_file", "console_log_simple", "train_batch_size", "max_grad_norm", "unet_lr",
    "text_encoder_lr", "text_encoder_lr1", "text_encoder_lr2", "gradient_accumulation_steps", "resolution",
    "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "caption_extension",
    "dataset_repeats", "vae_batch_size", "max_data_loader_n_workers", "persistent_data_loader_workers",
    "lr_warmup_steps",
}


def sample_argument(name: str, tmp_path: Path) -> tuple[list[str], object]:
    """Command-line words that set the option, and the value they should parse to."""
    option = OPTIONS_BY_NAME[name]
    if name == "config_file":
        (tmp_path / "run.toml").write_text("")
        return ["--config_file", str(tmp_path / "run.toml")], str(tmp_path / "run.toml")
    if name == "output_config":
        return ["--output_config", "--config_file", str(tmp_path / "new.toml")], True
    if option.kind == "flag":
        return [f"--{name}"], True
    if option.choices is not None:
        text, value = str(option.choices[-1]), option.choices[-1]
    else:
        text, value = {"int": ("3", 3), "float": ("0.5", 0.5), "int_or_float": ("0.25", 0.25),
                       "str": ("x y", "x y")}[option.kind]
    if option.nargs == "*":
        return [f"--{name}", text, text], [value, value]
    return [f"--{name}", text], value


OUR_OPTIONS = {"skip_bad_files"}
"""Options sd-scripts does not have."""
OUR_DEFAULTS = {"sample_sampler": "euler_a"}
"""Defaults that differ from sd-scripts' on purpose (its ddim gives poor SDXL samples; issue 11)."""


def test_the_table_declares_exactly_the_sd_scripts_options_plus_the_guides_two():
    names = [option.name for option in OPTIONS]
    assert len(names) == len(set(names)) == 198 + len(OUR_OPTIONS)
    assert sorted(set(names) - OUR_OPTIONS) == sorted(SD_SCRIPTS_NAMES)
    assert {"text_encoder_lr1", "text_encoder_lr2", "config_file", "output_config"} <= set(names)


@pytest.mark.parametrize(("name", "kind", "default"), SPEC_ROWS, ids=SD_SCRIPTS_NAMES)
def test_type_and_default_are_the_specs(name, kind, default):
    option = OPTIONS_BY_NAME[name]
    expected = OUR_DEFAULTS.get(name, json.loads(default))
    assert (option.kind + ("*" if option.nargs == "*" else ""), option.default) == (kind, expected)
    assert type(option.default) in ({type(json.loads(default))} | ({int, float} if kind == "float" else set()))


@pytest.mark.parametrize("name", SD_SCRIPTS_NAMES)
def test_every_option_is_accepted(name, tmp_path):
    argv, expected = sample_argument(name, tmp_path)
    parsed = parse_command_line(argv)
    assert parsed.values[name] == expected
    assert name in parsed.given


def test_defaults_are_sd_scripts_defaults():
    parsed = parse_command_line([])
    assert parsed.given == frozenset()
    assert parsed.output_config_path is None
    assert parsed.values == {option.name: option.default for option in OPTIONS}
    assert parsed.values["learning_rate"] == 2.0e-6
    assert parsed.values["max_train_steps"] == 1600
    assert parsed.values["save_model_as"] == "safetensors"
    assert parsed.values["lr_warmup_steps"] == 0


def test_statuses_are_data():
    assert WORKING <= {option.name for option in OPTIONS if option.status == WORKS}
    assert OPTIONS_BY_NAME["v2"].status == "refused: SD2 flag; this trainer is SDXL only"
    for option in OPTIONS:
        if option.status == NOT_YET:
            assert option.roadmap in ROADMAP, option.name
        assert option.group in GROUPS, option.name
        assert option.help and "\n" not in option.help, option.name
    assert {option.name for option in OPTIONS if option.secret} == {"wandb_api_key", "huggingface_token"}


def test_text_encoder_help_names_the_encoders_right():
    for name in ("text_encoder_lr", "text_encoder_lr1", "text_encoder_lr2"):
        assert "encoder 1 = CLIP ViT-L/14, encoder 2 = OpenCLIP ViT-bigG/14" in OPTIONS_BY_NAME[name].help


def test_help_groups_follow_the_guide_and_help_exits_zero(capsys):
    parser = build_parser()
    titles = [group.title for group in parser._action_groups if group.title in GROUPS]
    assert titles == list(GROUPS)
    with pytest.raises(SystemExit) as exit_info:
        parse_command_line(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "sdxl_train_network.py" in out and "--lr_warmup_steps" in out and "'N%'" in out


def test_build_parser_with_defaults_gives_a_full_namespace():
    namespace = build_parser().parse_args(["--seed", "1"])
    assert namespace.seed == 1 and namespace.lr_scheduler == "constant" and namespace.cache_latents is False


def test_unique_prefix_is_accepted():
    parsed = parse_command_line(["--output_n", "x", "--learning", "1e-4"])
    assert parsed.values["output_name"] == "x"
    assert parsed.values["learning_rate"] == 1e-4
    assert parsed.given == {"output_name", "learning_rate"}


def test_ambiguous_prefix_is_one_line_error():
    with pytest.raises(ConfigError) as error:
        parse_command_line(["--output", "x"])
    assert error.value.problems[0].startswith("ambiguous option: --output could match")


def test_unknown_option_suggests_the_nearest():
    with pytest.raises(ConfigError) as error:
        parse_command_line(["--lerning_rate", "1e-4", "--seed", "1", "--netwrk_dim=4"])
    assert error.value.problems == [
        "unknown option --lerning_rate (did you mean --learning_rate?)",
        "unknown option --netwrk_dim (did you mean --network_dim?)",
    ]


def test_stray_value_is_named():
    with pytest.raises(ConfigError, match="unexpected argument '8'"):
        parse_command_line(["--network_dim", "4", "8"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--mixed_precision", "fp32"], "--mixed_precision: invalid choice 'fp32' (choose from no, fp16, bf16)"),
    (["--max_token_length", "100"], "--max_token_length: invalid choice 100 (choose from 75, 150, 225)"),
    (["--seed", "abc"], "--seed: invalid integer 'abc'"),
    (["--learning_rate", "fast"], "--learning_rate: invalid number 'fast'"),
    (["--seed"], "--seed: expects a value"),
    (["--cache_latents=yes"], "--cache_latents: is a flag and takes no value, got 'yes'"),
    (["--output_config"], "--output_config needs --config_file (the path to write)"),
])
def test_bad_values_are_one_line_errors_naming_the_flag(argv, message):
    with pytest.raises(ConfigError) as error:
        parse_command_line(argv)
    assert error.value.problems == [message]


@pytest.mark.parametrize(("text", "value"), [
    ("10", 10), ("0", 0), ("0.1", 0.1), ("5%", 0.05), ("150%", 1.5),
])
def test_warmup_steps_accept_steps_fractions_and_percentages(text, value):
    parsed = parse_command_line(["--lr_warmup_steps", text])
    assert parsed.values["lr_warmup_steps"] == pytest.approx(value)
    assert type(parsed.values["lr_warmup_steps"]) is type(value)


def test_warmup_steps_reject_a_non_integer_above_one():
    with pytest.raises(ConfigError, match="--lr_warmup_steps: invalid value 1.5"):
        parse_command_line(["--lr_warmup_steps", "1.5"])


def test_negative_numbers_and_empty_lists_parse():
    parsed = parse_command_line(["--noise_offset", "-0.1", "--text_encoder_lr", "--seed", "-3"])
    assert parsed.values["noise_offset"] == -0.1
    assert parsed.values["text_encoder_lr"] is None  # no value: unset, as sd-scripts reads an empty list
    assert parsed.values["seed"] == -3


def test_docs_are_up_to_date():
    """Regenerate with: python -m sdxl_lora.config.docs > docs/options.md"""
    assert (TESTS.parent / "docs" / "options.md").read_text() == render_options_md()
