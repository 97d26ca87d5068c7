"""--optimizer_args / --lr_scheduler_args parsed as sd-scripts parses them, and the optimizer rules, before any
model loads."""

from __future__ import annotations

import pytest

from sdxl_lora.config.build import build_run_config
from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.optimizer_args import parse_key_values, resolved_optimizer_type
from sdxl_lora.config.parser import parse_command_line
from sdxl_lora.config.rules import check_rules


@pytest.mark.parametrize(("item", "key", "value"), [
    ("betas=0.9,0.99", "betas", (0.9, 0.99)),          # a bare comma list is a tuple (ast.literal_eval)
    ("betas=[0.9,0.99]", "betas", [0.9, 0.99]),
    ("betas=(0.9, 0.999)", "betas", (0.9, 0.999)),
    ("weight_decay=0.01", "weight_decay", 0.01),
    ("relative_step=False", "relative_step", False),
    ("relative_step=false", "relative_step", False),   # sd-scripts would crash; same meaning
    ("d_coef=2", "d_coef", 2),
    ("eps=1e-8", "eps", 1e-8),
    ("decay_type='linear'", "decay_type", "linear"),
    ("step_rules='1:10,0.1'", "step_rules", "1:10,0.1"),
    (" safeguard_warmup = True ", "safeguard_warmup", True),
])
def test_values_are_python_literals(item, key, value):
    parsed, problems = parse_key_values("optimizer_args", [item])
    assert problems == [] and parsed == {key: value} and type(parsed[key]) is type(value)


def test_several_pairs_in_one_item_are_split_at_spaces_before_a_key():
    parsed, problems = parse_key_values("optimizer_args", ["weight_decay=0.1 betas=0.9, 0.99 decouple=True"])
    assert problems == [] and parsed == {"weight_decay": 0.1, "betas": (0.9, 0.99), "decouple": True}


@pytest.mark.parametrize(("item", "fragment"), [
    ("weight_decay", "weight_decay: expected key=value"),
    ("decay=linear", "decay=linear: the value 'linear' is not a Python literal"),
    ("1x=2", "1x=2: '1x' is not a valid argument name"),
])
def test_bad_items_name_the_flag_and_the_item(item, fragment):
    _, problems = parse_key_values("lr_scheduler_args", [item])
    assert problems == [f"--lr_scheduler_args {fragment}" + problems[0].split(fragment, 1)[1]]


def test_a_key_given_twice_is_refused():
    assert parse_key_values("optimizer_args", ["eps=1", "eps=2"])[1] == ["--optimizer_args: eps is given twice"]


def _problems(*argv) -> list[str]:
    return check_rules(parse_command_line(list(argv)).values)


def test_rules_check_common_values_and_reserved_keys():
    problems = _problems("--optimizer_args", "betas=0.9", "weight_decay=-1", "lr=3")
    assert "--optimizer_args betas=0.9: expected 2 or 3 numbers in [0, 1), e.g. betas=0.9,0.999" in problems
    assert "--optimizer_args weight_decay=-1: must be a number, not negative" in problems
    assert "--optimizer_args lr: set by the trainer (use --learning_rate / --unet_lr)" in problems


def test_legacy_flags_stand_for_adamw8bit_and_lion():
    assert resolved_optimizer_type(parse_command_line(["--use_8bit_adam"]).values) == "AdamW8bit"
    assert resolved_optimizer_type(parse_command_line(["--use_lion_optimizer"]).values) == "Lion"
    assert resolved_optimizer_type(parse_command_line([]).values) == "AdamW"
    assert "--use_8bit_adam cannot be combined with --optimizer_type or --use_lion_optimizer" in _problems(
        "--use_8bit_adam", "--optimizer_type", "AdamW")


def test_adaptive_optimizers_refuse_different_rates_that_would_fail_at_the_first_step():
    problems = _problems("--optimizer_type", "prodigy", "--learning_rate", "1", "--text_encoder_lr", "0.5")
    assert any(p.startswith("--optimizer_type prodigy needs one learning rate") for p in problems)
    assert not any("needs one learning rate" in p for p in _problems(
        "--optimizer_type", "prodigy", "--learning_rate", "1", "--text_encoder_lr", "0.5",
        "--network_train_unet_only"))


def test_adafactor_relative_step_refuses_warmup_and_relative_step_false_takes_the_scheduler():
    problems = _problems("--optimizer_type", "Adafactor", "--lr_scheduler", "cosine", "--lr_warmup_steps", "5")
    assert any("Adafactor with relative_step" in p for p in problems)
    assert not any("warmup" in p for p in _problems(
        "--optimizer_type", "Adafactor", "--optimizer_args", "relative_step=False", "--lr_scheduler", "cosine",
        "--lr_warmup_steps", "5"))


def _config(tmp_path, *argv):
    from PIL import Image

    (tmp_path / "1_x").mkdir(exist_ok=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "1_x" / "a.png")
    (tmp_path / "model.safetensors").write_bytes(b"")
    return build_run_config(parse_command_line([
        f"--pretrained_model_name_or_path={tmp_path / 'model.safetensors'}", f"--output_dir={tmp_path / 'out'}",
        "--network_module=networks.lora", f"--train_data_dir={tmp_path}", "--resolution=64", *argv]).values)


def test_the_frozen_config_carries_the_parsed_arguments_and_the_adafactor_schedule(tmp_path):
    cfg = _config(tmp_path, "--optimizer_type", "adafactor", "--optimizer_args", "scale_parameter=False",
                  "--lr_scheduler", "cosine")
    assert cfg.optim.optimizer_args == (("scale_parameter", False),)
    assert cfg.optim.lr_scheduler == "adafactor"  # relative_step defaults to True (sd-scripts)
    cfg = _config(tmp_path, "--use_8bit_adam", "--optimizer_args", "betas=0.9,0.99", "weight_decay=0.01")
    assert cfg.optim.optimizer_type == "AdamW8bit"
    assert dict(cfg.optim.optimizer_args) == {"betas": (0.9, 0.99), "weight_decay": 0.01}


def test_unparsable_arguments_fail_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError, match="--optimizer_args decay=linear: the value 'linear'"):
        _config(tmp_path, "--optimizer_args", "decay=linear")


def test_noise_and_loss_options_reach_their_frozen_sub_configs(tmp_path):
    cfg = _config(tmp_path, "--noise_offset=0.05", "--noise_offset_random_strength", "--adaptive_noise_scale=0.01",
                  "--multires_noise_iterations=6", "--multires_noise_discount=0.2", "--ip_noise_gamma=0.1",
                  "--ip_noise_gamma_random_strength", "--min_timestep=100", "--max_timestep=900",
                  "--zero_terminal_snr", "--v_parameterization", "--loss_type=smooth_l1",
                  "--huber_schedule=exponential", "--huber_c=0.2", "--huber_scale=1.5", "--min_snr_gamma=5",
                  "--scale_v_pred_loss_like_noise_pred", "--debiased_estimation_loss")
    n, loss = cfg.noise, cfg.loss
    assert (n.noise_offset, n.noise_offset_random_strength, n.adaptive_noise_scale) == (0.05, True, 0.01)
    assert (n.multires_noise_iterations, n.multires_noise_discount) == (6, 0.2)
    assert (n.ip_noise_gamma, n.ip_noise_gamma_random_strength, n.zero_terminal_snr) == (0.1, True, True)
    assert (n.min_timestep, n.max_timestep) == (100, 900)
    assert (loss.v_parameterization, loss.loss_type, loss.huber_schedule) == (True, "smooth_l1", "exponential")
    assert (loss.huber_c, loss.huber_scale, loss.min_snr_gamma) == (0.2, 1.5, 5.0)
    assert loss.scale_v_pred_loss_like_noise_pred and loss.debiased_estimation_loss
    defaults = _config(tmp_path)
    assert (defaults.noise.min_timestep, defaults.noise.max_timestep, defaults.loss.loss_type) == (0, 1000, "l2")


def test_noise_and_loss_rules():
    problems = _problems("--adaptive_noise_scale=0.1", "--v_pred_like_loss=0.5", "--v_parameterization",
                         "--loss_type=huber", "--huber_c=0", "--min_snr_gamma=-1")
    assert "--adaptive_noise_scale needs --noise_offset" in problems
    assert "--v_pred_like_loss cannot be used with --v_parameterization" in problems
    assert "--huber_c=0.0: must be in (0, 1] (the exponential and snr schedules need it)" in problems
    assert "--min_snr_gamma=-1.0: must be a finite number, not negative" in problems


def test_a_zero_adaptive_noise_scale_without_offset_is_a_no_op_not_an_error():
    # kohya_ss GUI configs write adaptive_noise_scale = 0 next to noise_offset = 0.
    assert "--adaptive_noise_scale needs --noise_offset" not in _problems("--adaptive_noise_scale=0",
                                                                          "--noise_offset=0")
    assert "--adaptive_noise_scale needs --noise_offset" in _problems("--adaptive_noise_scale=0.02",
                                                                      "--noise_offset=0")
