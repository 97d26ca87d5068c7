"""--config_file (sd-scripts' flattening, values read as sd-scripts can use them) and --output_config."""

from __future__ import annotations

import pytest

from sdxl_lora.config.config_file import (
    load_config_file,
    read_config_file,
    render_output_config,
    write_config_file,
)
from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.options import OPTIONS
from sdxl_lora.config.parser import parse_command_line, write_output_config


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_tables_are_flattened_and_later_duplicates_win(tmp_path):
    config = write(tmp_path / "run.toml", """
seed = 1
[model]
pretrained_model_name_or_path = "base.safetensors"
mixed_precision = "bf16"
[training]
learning_rate = 1
seed = 2
text_encoder_lr = [1e-5, 2e-5]
""")
    assert load_config_file(config) == {
        "seed": 2, "pretrained_model_name_or_path": "base.safetensors", "mixed_precision": "bf16",
        "learning_rate": 1.0, "text_encoder_lr": [1e-5, 2e-5],
    }


def test_command_line_beats_config_file_beats_defaults(tmp_path):
    write(tmp_path / "run.toml", 'seed = 1\noutput_name = "from_file"\n[net]\nnetwork_dim = 8\n')
    parsed = parse_command_line(["--config_file", str(tmp_path / "run"), "--seed", "5"])
    assert parsed.values["seed"] == 5
    assert parsed.values["output_name"] == "from_file"
    assert parsed.values["network_dim"] == 8
    assert parsed.values["max_train_steps"] == 1600
    assert parsed.given == {"config_file", "seed", "output_name", "network_dim"}


def test_toml_suffix_is_appended_and_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError) as error:
        parse_command_line(["--config_file", str(tmp_path / "absent")])
    assert error.value.problems == [f"--config_file: {tmp_path / 'absent.toml'} not found"]


def test_invalid_toml_is_named(tmp_path):
    write(tmp_path / "bad.toml", "seed = = 1\n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_config_file(tmp_path / "bad.toml")


def test_every_bad_key_is_reported_with_file_and_key_path(tmp_path):
    config = write(tmp_path / "run.toml", """
lerning_rate = 1e-4
max_train_steps = "a hundred"
[training]
mixed_precision = "fp32"
cache_latents = "yes"
config_file = "other.toml"
""")
    with pytest.raises(ConfigError) as error:
        load_config_file(config)
    assert error.value.problems == [
        f"{config}: max_train_steps: expected an integer, got string \"a hundred\"",
        f"{config}: training.mixed_precision: invalid choice 'fp32' (choose from no, fp16, bf16)",
        f"{config}: training.cache_latents: expected true or false, got string \"yes\"",
        f"{config}: training.config_file: --config_file is only allowed on the command line",
    ]


def test_unknown_keys_are_ignored_with_one_warning_each(tmp_path):
    config = write(tmp_path / "run.toml", """
lerning_rate = 1e-4
epoch = 10
[extra]
noise_offset_type = "Original"
seed = 3
""")
    values, warnings = read_config_file(config)
    assert values == {"seed": 3}
    assert warnings == [
        f"{config}: lerning_rate: unknown option, ignored (as sd-scripts does) (did you mean learning_rate?)",
        f"{config}: epoch: unknown option, ignored (as sd-scripts does)",
        f"{config}: extra.noise_offset_type: unknown option, ignored (as sd-scripts does)"
        " (did you mean noise_offset?)",
    ]


def test_numbers_written_as_strings_read_like_the_command_line(tmp_path):
    config = write(tmp_path / "run.toml", """
max_grad_norm = "1.0"
learning_rate = "1e-4"
max_train_steps = "100"
lr_warmup_steps = "0.1"
max_token_length = "150"
text_encoder_lr = ["1e-5", 2e-5]
""")
    assert load_config_file(config) == {
        "max_grad_norm": 1.0, "learning_rate": 1e-4, "max_train_steps": 100, "lr_warmup_steps": 0.1,
        "max_token_length": 150, "text_encoder_lr": [1e-5, 2e-5],
    }


@pytest.mark.parametrize("line", [
    'resume = ""', "resume = false", 'vae = ""', 'network_weights = ""', "network_args = []",
    'network_args = ""', "optimizer_args = []", "lr_scheduler_args = []", 'dynamo_backend = "no"',
    'dynamo_backend = "NO"', 'max_train_epochs = ""', "base_weights = []", "sample_prompts = false",
    "network_args = false",
])
def test_empty_values_mean_unset(tmp_path, line):
    config = write(tmp_path / "run.toml", line + "\n")
    parsed = parse_command_line(["--config_file", str(config)])
    key = line.split(" ")[0]
    assert parsed.values[key] == next(o.default for o in OPTIONS if o.name == key)
    assert key not in parsed.given


def test_empty_command_line_only_keys_are_ignored(tmp_path):
    assert load_config_file(write(tmp_path / "run.toml", 'config_file = ""\noutput_config = false\n')) == {}


def test_a_later_empty_duplicate_unsets(tmp_path):
    config = write(tmp_path / "run.toml", 'vae = "a.safetensors"\n[more]\nvae = ""\n')
    assert load_config_file(config) == {}


@pytest.mark.parametrize(("line", "problem"), [
    ("max_grad_norm = \"one\"", "expected a number, got string \"one\""),
    ("cache_latents = \"true\"", "expected true or false, got string \"true\""),
    ("max_train_steps = false", "expected an integer, got boolean false"),
    ("seed = false", "expected an integer, got boolean false"),
    ("output_config = true", "--output_config is only allowed on the command line"),
    ("resume = true", "expected a string, got boolean true"),
    ("dynamo_backend = \"nope\"", "invalid choice 'nope' (choose from eager, aot_eager, inductor,"
     " aot_ts_nvfuser, nvprims_nvfuser, cudagraphs, ofi, fx2trt, onnxrt, tensort, ipex, tvm)"),
])
def test_values_sd_scripts_cannot_use_stay_errors(tmp_path, line, problem):
    config = write(tmp_path / "run.toml", line + "\n")
    with pytest.raises(ConfigError) as error:
        load_config_file(config)
    assert error.value.problems == [f"{config}: {line.split(' ')[0]}: {problem}"]


def test_empty_values_on_the_command_line_mean_unset():
    parsed = parse_command_line(["--resume", "", "--network_args", "--vae="])
    assert parsed.values["resume"] is None and parsed.values["network_args"] is None
    assert parsed.values["vae"] is None
    assert parsed.given == frozenset()


def test_values_are_converted_to_the_option_type(tmp_path):
    config = write(tmp_path / "run.toml", """
network_alpha = 4
lr_warmup_steps = "5%"
lr_decay_steps = 0.5
text_encoder_lr = 1e-5
network_args = ["conv_dim=4", "conv_alpha=1"]
max_token_length = 225
""")
    values = load_config_file(config)
    assert values["network_alpha"] == 4.0 and isinstance(values["network_alpha"], float)
    assert values["lr_warmup_steps"] == pytest.approx(0.05)
    assert values["lr_decay_steps"] == 0.5
    assert values["text_encoder_lr"] == [1e-5]
    assert values["network_args"] == ["conv_dim=4", "conv_alpha=1"]
    assert values["max_token_length"] == 225


@pytest.mark.parametrize(("line", "problem"), [
    ("network_dim = 4.0", "expected an integer, got float 4.0"),
    ("network_dim = true", "expected an integer, got boolean true"),
    ("resolution = 1024", "expected a string, got integer 1024"),
    ("lr_warmup_steps = 1.5",
     "invalid value 1.5: a step count must be an integer; a fraction must be below 1"
     " (write 'N%' for N/100 of all steps)"),
    ("network_args = [1]", "expected a string, got integer 1"),
    ("max_token_length = 100", "invalid choice 100 (choose from 75, 150, 225)"),
])
def test_wrong_types_are_errors(tmp_path, line, problem):
    config = write(tmp_path / "run.toml", line + "\n")
    key = line.split(" ")[0]
    with pytest.raises(ConfigError) as error:
        load_config_file(config)
    assert error.value.problems == [f"{config}: {key}: {problem}"]


def test_output_config_round_trip(tmp_path):
    tricky = 'a "quoted" \\ back\\slash\nnew\tline \x01 \x7f é 日本'
    argv = [
        "--pretrained_model_name_or_path", tricky, "--learning_rate", "1e-4", "--seed", "7",
        "--lr_warmup_steps", "5%", "--lr_decay_steps", "20", "--text_encoder_lr", "1e-5", "3e-5",
        "--network_args", "conv_dim=4", "a=b=c", "--base_weights", "--cache_latents", "--network_alpha", "1",
        "--max_grad_norm", "0", "--noise_offset", "1e20", "--unet_lr", "-0.0",
        "--wandb_api_key", "SECRET1", "--huggingface_token", "SECRET2",
    ]
    target = tmp_path / "out.toml"
    parsed = parse_command_line([*argv, "--output_config", "--config_file", str(tmp_path / "out")])
    assert parsed.output_config_path == target
    assert not target.exists()
    assert write_output_config(parsed, parsed.output_config_path) == target

    text = target.read_text(encoding="utf-8")
    assert "SECRET" not in text and "wandb_api_key" not in text and "huggingface_token" not in text
    assert "config_file" not in text and "output_config" not in text
    assert "network_alpha" not in text  # equal to the default 1.0
    reloaded = parse_command_line(["--config_file", str(target)])
    expected = parse_command_line(argv).values | {"wandb_api_key": None, "huggingface_token": None}
    assert reloaded.values | {"config_file": None} == expected
    assert [tmp_path / "out.toml"] == list(tmp_path.iterdir())


def test_output_config_writes_the_command_line_only_and_never_overwrites(tmp_path):
    existing = write(tmp_path / "run.toml", "seed = 1\n")
    with pytest.raises(ConfigError, match="run.toml already exists"):
        parse_command_line(["--config_file", str(existing), "--output_config"])
    with pytest.raises(ConfigError, match="already exists"):
        write_config_file({"seed": 2}, existing)
    assert existing.read_text() == "seed = 1\n"


def test_output_config_needs_an_existing_folder(tmp_path):
    parsed = parse_command_line(["--output_config", "--config_file", str(tmp_path / "no" / "run.toml")])
    with pytest.raises(ConfigError, match="does not exist"):
        write_output_config(parsed)


def test_secrets_are_never_rendered():
    values = {option.name: option.default for option in OPTIONS}
    values |= {"wandb_api_key": "k", "huggingface_token": "t", "seed": 3}
    assert render_output_config(values) == "seed = 3\n"
