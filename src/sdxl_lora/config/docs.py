"""docs/options.md from config.options.OPTIONS: `python -m sdxl_lora.config.docs > docs/options.md`."""

from __future__ import annotations

import sys

from sdxl_lora.config.config_file import toml_value
from sdxl_lora.config.options import (
    GROUPS,
    NOT_YET,
    OPTIMIZERS,
    OPTIMIZERS_ROADMAP,
    OPTIONS,
    SCHEDULERS,
    WORKS,
    Option,
)
from sdxl_lora.config.parser import status_text

TABLE_HEAD = ("| option | type | default | status | help |", "|---|---|---|---|---|")
HEADER = """\
# Command-line options

Generated from `src/sdxl_lora/config/options.py` by `python -m sdxl_lora.config.docs > docs/options.md`;
do not edit by hand.

sdxl-lora accepts every option of kohya-ss sd-scripts' `sdxl_train_network.py`, with the same names, types and
defaults, plus `--text_encoder_lr1` and `--text_encoder_lr2` from its user guide. Unique prefixes work
(`--output_n` = `--output_name`). Options can also come from `--config_file` (a TOML file; its tables are
flattened, the command line wins). There, as in sd-scripts, unknown keys are ignored (here with a warning and a
"did you mean"), an empty value (`""`, `[]`, or `false` for a string option unset by default) means unset, and
`dynamo_backend = "no"` means no compile backend; a number written as a string (`max_grad_norm = "1.0"`) is
read like the same text on the command line; a value of a type sd-scripts cannot use is an error naming the key.
One default differs: `--sample_sampler` is `euler_a` (sd-scripts: `ddim`, which gives poor SDXL samples).

Status: **works**; **not yet (capability)**: parsed, but an error when set, until that roadmap capability is
built; **refused**: never supported. Defaults are written as in a TOML config file; "unset" is sd-scripts'
None.
"""


def render_options_md() -> str:
    """The whole of docs/options.md."""
    lines = [HEADER, _summary()]
    for group in GROUPS:
        lines += ["", f"## {group}", "", *TABLE_HEAD]
        lines += [_row(option) for option in OPTIONS if option.group == group]
    lines += ["", "## Optimizer and scheduler names", ""]
    others = {"--optimizer_type": "any other name is a class path (`pytorch_optimizer.CAME`) or a `torch.optim`"
                                  " class, imported when chosen",
              "--lr_scheduler": "other classes through `--lr_scheduler_type`"}
    for flag, table in (("--optimizer_type", OPTIMIZERS), ("--lr_scheduler", SCHEDULERS)):
        works = ", ".join(f"`{name}`" for name, status in table.items() if status == WORKS)
        not_yet = ", ".join(f"`{name}`" for name, status in table.items() if status != WORKS)
        later = f"; not yet ({OPTIMIZERS_ROADMAP}): {not_yet}" if not_yet else ""
        lines.append(f"- `{flag}` works: {works}{later}; {others[flag]}.")
    return "\n".join(lines) + "\n"


def _summary() -> str:
    works = sum(option.status == WORKS for option in OPTIONS)
    not_yet = sum(option.status == NOT_YET for option in OPTIONS)
    refused = len(OPTIONS) - works - not_yet
    return f"{len(OPTIONS)} options: {works} work, {not_yet} not yet, {refused} refused."


def _row(option: Option) -> str:
    name = f"`--{option.name}`"
    cells = (name, _type_text(option), _default_text(option), status_text(option), option.help)
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _type_text(option: Option) -> str:
    text = {"int_or_float": "int or float"}.get(option.kind, option.kind)
    if option.nargs == "*":
        text = f"list of {text}"
    if option.choices is not None:
        text += ": " + ", ".join(str(choice) for choice in option.choices)
    return text


def _default_text(option: Option) -> str:
    return "unset" if option.default is None else f"`{toml_value(option.default)}`"


if __name__ == "__main__":
    sys.stdout.write(render_options_md())
