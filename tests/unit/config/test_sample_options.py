"""--sample_* options (spec 1.11): the schedule they give, what is refused up front, what only warns."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdxl_lora.config.build import normalize, sample_config
from sdxl_lora.config.parser import parse_command_line
from sdxl_lora.config.sampling import sample_problems, sample_warnings
from sdxl_lora.config.schema import SampleConfig


def _values(*argv: str) -> dict:
    return normalize(parse_command_line(list(argv)).values, frozenset())[0]


def test_nothing_given_means_no_sampling_and_euler_a():
    v = _values()
    assert sample_config(v) == SampleConfig(prompts=None, every_n_steps=None, every_n_epochs=None, at_first=False,
                                            sampler="euler_a")
    assert sample_problems(v) == [] and sample_warnings(v) == []


def test_a_full_schedule_is_carried_over():
    v = _values("--sample_prompts=p.txt", "--sample_every_n_steps=50", "--sample_at_first",
                "--sample_sampler=k_dpm_2_a")
    assert sample_config(v) == SampleConfig(prompts=Path("p.txt"), every_n_steps=50, every_n_epochs=None,
                                            at_first=True, sampler="k_dpm_2_a")
    assert sample_warnings(v) == []


def test_epochs_turn_step_sampling_off_with_a_warning():
    v = _values("--sample_prompts=p.json", "--sample_every_n_steps=50", "--sample_every_n_epochs=2")
    assert (sample_config(v).every_n_steps, sample_config(v).every_n_epochs) == (None, 2)
    assert sample_warnings(v) == ["--sample_every_n_steps is ignored: --sample_every_n_epochs is set (as sd-scripts)"]


@pytest.mark.parametrize("flag", ["sample_every_n_steps", "sample_every_n_epochs"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_zero_or_less_turns_a_schedule_off_with_a_warning(flag, value):
    v = _values("--sample_prompts=p.toml", "--sample_at_first", f"--{flag}={value}")
    cfg = sample_config(v)
    assert (cfg.every_n_steps, cfg.every_n_epochs, cfg.at_first) == (None, None, True)
    assert sample_warnings(v) == [f"--{flag}={value}: 0 or less turns it off (as sd-scripts)"]
    assert sample_problems(v) == []


def test_a_schedule_without_prompts_is_refused():
    assert sample_problems(_values("--sample_every_n_steps=10", "--sample_at_first")) == [
        "--sample_every_n_steps and --sample_at_first needs --sample_prompts (a .txt, .toml or .json prompt file)"]
    assert sample_problems(_values("--sample_every_n_epochs=0")) == []  # off: nothing to refuse


def test_prompts_without_a_schedule_warn_and_a_lone_sampler_is_silent():
    assert sample_warnings(_values("--sample_prompts=p.txt")) == [
        "--sample_prompts without --sample_every_n_steps, --sample_every_n_epochs or --sample_at_first: "
        "no samples are made"]
    v = _values("--sample_sampler=ddim")  # GUIs always write it
    assert sample_problems(v) == [] and sample_warnings(v) == []
    assert sample_config(v).sampler == "ddim"


def test_a_prompt_file_of_another_type_is_refused():
    assert sample_problems(_values("--sample_prompts=p.yaml")) == [
        "--sample_prompts p.yaml: expected a .txt, .toml or .json file"]


def test_the_run_config_carries_the_sample_section(tmp_path, tiny_model_dir):
    from helpers import two_image_dataset
    from sdxl_lora.config.build import build_run_config

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo --w 64 --h 64\n")
    parsed = parse_command_line([
        f"--pretrained_model_name_or_path={tiny_model_dir}", f"--dataset_config={two_image_dataset(tmp_path)}",
        f"--output_dir={tmp_path / 'out'}", "--network_module=networks.lora", f"--sample_prompts={prompts}",
        "--sample_every_n_epochs=1"])
    cfg = build_run_config(parsed.values, parsed.given)
    assert cfg.sample == SampleConfig(prompts=prompts, every_n_epochs=1)
