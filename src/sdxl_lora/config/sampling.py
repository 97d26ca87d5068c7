"""The --sample_* options (spec 1.11): the schedule they give, what is refused before any model loads, and what
only gets a warning. The prompt file's contents are read by sample.prompts (train.check calls it before loading).

As sd-scripts: N <= 0 turns a schedule off (with a warning); --sample_every_n_epochs, when set, turns step
sampling off. Unlike sd-scripts, a schedule without --sample_prompts is an error here (sd-scripts stops at the
first sample), and a prompt file with no schedule gets a warning. --sample_sampler alone is accepted silently:
GUIs always write it.
"""

from __future__ import annotations

from pathlib import Path

PROMPT_SUFFIXES = (".txt", ".toml", ".json")
SCHEDULE_FLAGS = ("sample_every_n_steps", "sample_every_n_epochs", "sample_at_first")


def _every(v: dict, name: str) -> int | None:
    value = v.get(name)
    return value if value is not None and value > 0 else None


def sample_schedule(v: dict) -> tuple[int | None, int | None, bool]:
    """(every_n_steps, every_n_epochs, at_first) in effect: N <= 0 is off; epochs, when set, turn steps off."""
    epochs = _every(v, "sample_every_n_epochs")
    steps = None if epochs else _every(v, "sample_every_n_steps")
    return steps, epochs, bool(v.get("sample_at_first"))


def sample_problems(v: dict) -> list[str]:
    """A schedule without a prompt file; a prompt file of another type."""
    out = []
    scheduled = [flag for flag, on in zip(SCHEDULE_FLAGS, sample_schedule(v), strict=True) if on]
    prompts = v.get("sample_prompts")
    if scheduled and not prompts:
        out.append(f"--{' and --'.join(scheduled)} needs --sample_prompts (a .txt, .toml or .json prompt file)")
    if prompts and Path(str(prompts)).suffix.lower() not in PROMPT_SUFFIXES:
        out.append(f"--sample_prompts {prompts}: expected a .txt, .toml or .json file")
    return out


def sample_warnings(v: dict) -> list[str]:
    """Sample settings that are given but change nothing, each named."""
    out = []
    for name in SCHEDULE_FLAGS[:2]:
        if v.get(name) is not None and v[name] <= 0:
            out.append(f"--{name}={v[name]}: 0 or less turns it off (as sd-scripts)")
    if _every(v, "sample_every_n_epochs") and _every(v, "sample_every_n_steps"):
        out.append("--sample_every_n_steps is ignored: --sample_every_n_epochs is set (as sd-scripts)")
    if v.get("sample_prompts") and not any(sample_schedule(v)):
        out.append("--sample_prompts without --sample_every_n_steps, --sample_every_n_epochs or --sample_at_first: "
                   "no samples are made")
    return out
