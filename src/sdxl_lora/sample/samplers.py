"""Sampler names (sd-scripts' --sample_sampler and the per-prompt `--ss`) -> diffusers schedulers (spec 8.2).

Every scheduler is built as sd-scripts builds it: 1000 training steps, `scaled_linear` betas 0.00085-0.012 (the
SDXL training schedule), `v_prediction` with --v_parameterization, and `algorithm_type` = the name for
dpmsolver / dpmsolver++. One difference: sd-scripts forces `clip_sample` on for DDIM and DDPM, which clips the
predicted clean latents to [-1, 1] -- meant for pixel-space models, it washes out SDXL's latents (part of why its
default `ddim` gives poor SDXL samples); here `clip_sample` is off, as in SDXL's own scheduler configs.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

DEFAULT_SAMPLER = "euler_a"
"""sd-scripts defaults to ddim; Euler ancestral gives good SDXL samples in few steps."""

SCHEDULER_CLASSES: Mapping[str, str] = MappingProxyType({
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "k_lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "k_euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "k_euler_a": "EulerAncestralDiscreteScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler",
    "dpmsingle": "DPMSolverSinglestepScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm_2": "KDPM2DiscreteScheduler",
    "k_dpm_2": "KDPM2DiscreteScheduler",
    "dpm_2_a": "KDPM2AncestralDiscreteScheduler",
    "k_dpm_2_a": "KDPM2AncestralDiscreteScheduler",
})
"""Sampler name -> diffusers scheduler class name. `ddpm` is for prompts only (sd-scripts leaves it out of the
--sample_sampler choices)."""

_EXTRA_ARGS: Mapping[str, Mapping[str, object]] = MappingProxyType({
    # diffusers (since 0.26) refuses first-order DPM-Solver's default final sigma of zero.
    "dpmsolver": {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    "dpmsolver++": {"algorithm_type": "dpmsolver++"},
    # diffusers switches this on itself for its default final sigma of zero, warning at every build.
    "dpmsingle": {"lower_order_final": True},
    "ddim": {"clip_sample": False},
    "ddpm": {"clip_sample": False},
})

MIN_STEPS: Mapping[str, int] = MappingProxyType({"pndm": 4})
"""Samplers that fail below a number of steps: PNDM's Runge-Kutta warm-up needs 4 (sd-scripts crashes there)."""

NEEDS_PACKAGE: Mapping[str, str] = MappingProxyType({"lms": "scipy", "k_lms": "scipy"})
"""Samplers whose diffusers scheduler needs a package that is not a dependency of sdxl-lora."""

TRAIN_STEPS, BETA_START, BETA_END, BETA_SCHEDULE = 1000, 0.00085, 0.012, "scaled_linear"


def missing_package(name: str) -> str | None:
    """The package sampler `name` needs and that is not installed, or None."""
    import importlib.util

    package = NEEDS_PACKAGE.get(name.lower())
    return package if package and importlib.util.find_spec(package) is None else None


def build_sampler(name: str, v_parameterization: bool = False):
    """A fresh diffusers scheduler for `name` (a key of SCHEDULER_CLASSES, any case)."""
    import diffusers

    key = name.lower()
    if key not in SCHEDULER_CLASSES:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SCHEDULER_CLASSES)}")
    if missing_package(key):
        raise ImportError(f"sampler {key} needs {missing_package(key)}: pip install {missing_package(key)}")
    kwargs = dict(num_train_timesteps=TRAIN_STEPS, beta_start=BETA_START, beta_end=BETA_END,
                  beta_schedule=BETA_SCHEDULE, **_EXTRA_ARGS.get(key, {}))
    if v_parameterization:
        kwargs["prediction_type"] = "v_prediction"
    return getattr(diffusers, SCHEDULER_CLASSES[key])(**kwargs)
