"""Every sampler name sd-scripts accepts builds the diffusers scheduler of spec 8.2, with the SDXL schedule."""

from __future__ import annotations

import importlib.util

import pytest

from sdxl_lora.config.options import SAMPLERS
from sdxl_lora.sample.samplers import build_sampler

SPEC_8_2 = {
    "ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler", "k_lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler", "k_euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler", "k_euler_a": "EulerAncestralDiscreteScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler", "dpmsolver++": "DPMSolverMultistepScheduler",
    "dpmsingle": "DPMSolverSinglestepScheduler", "heun": "HeunDiscreteScheduler",
    "dpm_2": "KDPM2DiscreteScheduler", "k_dpm_2": "KDPM2DiscreteScheduler",
    "dpm_2_a": "KDPM2AncestralDiscreteScheduler", "k_dpm_2_a": "KDPM2AncestralDiscreteScheduler",
}
"""Written from the spec's table, not from samplers.py."""
SCIPY = importlib.util.find_spec("scipy") is not None


def test_every_command_line_choice_is_in_the_spec_table():
    assert set(SAMPLERS) | {"ddpm"} == set(SPEC_8_2)


@pytest.mark.parametrize("name", sorted(SPEC_8_2))
@pytest.mark.parametrize("v_parameterization", [False, True])
def test_each_name_builds_its_scheduler_with_the_sdxl_schedule(name, v_parameterization):
    if SPEC_8_2[name] == "LMSDiscreteScheduler" and not SCIPY:  # diffusers' LMS needs scipy
        with pytest.raises(ImportError, match=f"sampler {name} needs scipy: pip install scipy"):
            build_sampler(name, v_parameterization)
        return
    scheduler = build_sampler(name, v_parameterization)
    assert type(scheduler).__name__ == SPEC_8_2[name]
    config = scheduler.config
    assert (config.num_train_timesteps, config.beta_start, config.beta_end, config.beta_schedule) == (
        1000, 0.00085, 0.012, "scaled_linear")
    assert config.prediction_type == ("v_prediction" if v_parameterization else "epsilon")
    if name.startswith("dpmsolver"):
        assert config.algorithm_type == name
    if "clip_sample" in config:
        assert config.clip_sample is False  # clipping x0 to [-1, 1] is for pixel-space models


def test_names_are_case_insensitive_and_unknown_names_are_refused():
    assert type(build_sampler("Euler_A")).__name__ == "EulerAncestralDiscreteScheduler"
    with pytest.raises(ValueError, match="unknown sampler 'k_magic'"):
        build_sampler("k_magic")
