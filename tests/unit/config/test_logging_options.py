"""The logging options (spec 1.12, issue 11 items 2 and 6): which trackers a run gets, and every refusal as one
line naming the flag, before any model loads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from helpers import two_image_dataset, write_toml
from sdxl_lora.cli import main
from sdxl_lora.config import logging_rules
from sdxl_lora.config.build import build_run_config, logging_config, normalize
from sdxl_lora.config.parser import parse_command_line
from sdxl_lora.config.rules import check_rules
from sdxl_lora.config.schema import LogConfig

HUB_MODEL = "--pretrained_model_name_or_path=stabilityai/stable-diffusion-xl-base-1.0"
NO_WANDB = "--log_with wandb needs the wandb package: pip install wandb"


@pytest.fixture
def no_wandb(monkeypatch):
    """wandb is not installed here; the rules must not depend on that."""
    real = importlib.util.find_spec
    monkeypatch.setattr(logging_rules.importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))


def _values(*argv: str) -> dict:
    return normalize(parse_command_line(list(argv)).values, frozenset())[0]


def _problems(*argv: str) -> list[str]:
    return [p for p in check_rules(_values(*argv)) if "log" in p or "wandb" in p]


def test_tensorboard_needs_logging_dir(no_wandb):
    assert _problems("--log_with", "tensorboard") == [
        "--log_with tensorboard needs --logging_dir (the folder TensorBoard writes to)"]
    assert _problems("--log_with", "all") == [
        "--log_with all needs --logging_dir (the folder TensorBoard writes to)",
        "--log_with all needs the wandb package: pip install wandb"]


def test_wandb_without_its_package_names_the_pip_command(no_wandb, tmp_path):
    assert _problems("--log_with", "wandb") == [NO_WANDB]
    assert _problems("--log_with", "wandb", f"--logging_dir={tmp_path}") == [NO_WANDB]


def test_missing_tensorboard_package_is_refused_not_dropped(monkeypatch, tmp_path):
    # accelerate would drop an unavailable tracker with a log line and train without it.
    monkeypatch.setattr(logging_rules.importlib.util, "find_spec", lambda name, *a: None)
    assert _problems(f"--logging_dir={tmp_path}") == [
        "--logging_dir (TensorBoard logging) needs the tensorboard package: pip install tensorboard "
        "(or pip install -e '.[log]')"]


def test_logging_dir_alone_means_tensorboard(tmp_path):
    v = _values(f"--logging_dir={tmp_path}")
    assert _problems(f"--logging_dir={tmp_path}") == []
    assert logging_config(v).log_with == ("tensorboard",)
    assert logging_config(v).logging_dir == tmp_path


def test_trackers_and_defaults():
    assert logging_config(_values()) == LogConfig()
    assert logging_config(_values()).log_with == ()
    cfg = logging_config(_values("--log_with", "all", "--logging_dir", "logs", "--log_prefix", "run-",
                                 "--wandb_run_name", "first", "--log_config"))
    assert cfg == LogConfig(log_with=("tensorboard", "wandb"), logging_dir=Path("logs"), log_prefix="run-",
                            tracker_name="network_train", wandb_run_name="first", log_config=True)
    assert logging_config(_values("--log_with", "wandb", "--log_tracker_name", "mine")).tracker_name == "mine"


def test_empty_api_key_means_none(tmp_path):
    # GUIs write wandb_api_key = "" (kohya_ss) or pass --wandb_api_key "": nothing to log in with.
    assert logging_config(_values("--wandb_api_key", "")).wandb_api_key is None
    config = write_toml(tmp_path / "gui.toml", 'wandb_api_key = ""\nlog_tracker_name = ""\n')
    cfg = logging_config(_values("--config_file", str(config)))
    assert cfg.wandb_api_key is None and cfg.tracker_name == "network_train"
    assert logging_rules.logging_warnings(_values("--config_file", str(config))) == []


def test_api_key_is_not_in_the_config_repr():
    cfg = LogConfig(log_with=("wandb",), wandb_api_key="k3y-0123456789abcdef")
    assert cfg.wandb_api_key == "k3y-0123456789abcdef"
    assert "k3y-0123456789abcdef" not in repr(cfg)


def test_tracker_config_file_is_read_and_checked(tmp_path):
    good = write_toml(tmp_path / "trackers.toml", '[wandb]\ntags = ["sdxl"]\nentity = "me"\n')
    v = _values("--log_with", "tensorboard", f"--logging_dir={tmp_path}", f"--log_tracker_config={good}")
    assert _problems("--log_with", "tensorboard", f"--logging_dir={tmp_path}", f"--log_tracker_config={good}") == []
    assert logging_config(v).tracker_init_kwargs == {"wandb": {"tags": ["sdxl"], "entity": "me"}}
    # [wandb] is only used by wandb; this run logs to TensorBoard alone.
    assert logging_rules.logging_warnings(v) == [
        f"--log_tracker_config {good}: table [wandb] is ignored (this run logs to tensorboard)"]


@pytest.mark.parametrize(("text", "problem"), [
    ("[wandb\n", "invalid TOML: "),
    ('name = "run"\n', "'name' is not a table; the file holds one table of init arguments per tracker "
                       "([wandb], [tensorboard])"),
])
def test_bad_tracker_config_names_the_file(tmp_path, text, problem):
    bad = write_toml(tmp_path / "trackers.toml", text)
    (line,) = _problems(f"--logging_dir={tmp_path}", f"--log_tracker_config={bad}")
    assert line.startswith(f"--log_tracker_config {bad}: {problem}")


def test_missing_tracker_config_names_the_file(tmp_path):
    missing = tmp_path / "nope.toml"
    assert _problems(f"--logging_dir={tmp_path}", f"--log_tracker_config={missing}") == [
        f"--log_tracker_config {missing}: file not found"]


def test_options_with_nothing_to_act_on_warn(tmp_path):
    assert logging_rules.logging_warnings(_values("--wandb_run_name", "r", "--log_config", "--log_prefix", "p")) == [
        "--log_prefix has no effect without --logging_dir or --log_with",
        "--log_config has no effect without --logging_dir or --log_with"]
    assert logging_rules.logging_warnings(_values(f"--logging_dir={tmp_path}", "--wandb_api_key", "k")) == [
        "--wandb_api_key has no effect without --log_with wandb or all"]


def test_cli_check_exits_2_with_one_line(tmp_path, capsys, no_wandb):
    dataset = two_image_dataset(tmp_path)
    argv = ["check", HUB_MODEL, f"--dataset_config={dataset}", f"--output_dir={tmp_path / 'out'}",
            "--network_module=networks.lora"]
    assert main([*argv, "--log_with", "tensorboard"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "sdxl-lora: error: --log_with tensorboard needs --logging_dir (the folder TensorBoard writes to)"]
    assert main([*argv, "--log_with", "wandb"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"sdxl-lora: error: {NO_WANDB}"]
    assert main([*argv, f"--logging_dir={tmp_path / 'logs'}", "--wandb_api_key", ""]) == 0


def test_build_run_config_carries_the_log_section(tmp_path):
    dataset = two_image_dataset(tmp_path)
    parsed = parse_command_line([HUB_MODEL, f"--dataset_config={dataset}", f"--output_dir={tmp_path / 'out'}",
                                 "--network_module=networks.lora", f"--logging_dir={tmp_path / 'logs'}",
                                 "--log_prefix=lora-"])
    cfg = build_run_config(parsed.values, parsed.given)
    assert cfg.log == LogConfig(log_with=("tensorboard",), logging_dir=tmp_path / "logs", log_prefix="lora-")
