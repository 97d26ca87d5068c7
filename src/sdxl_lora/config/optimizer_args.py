"""--optimizer_args / --lr_scheduler_args (spec 1.7) and the optimizer name, parsed from plain values.

sd-scripts splits each item on its one '=' and reads the value with `ast.literal_eval`, so `betas=0.9,0.99` is the
tuple (0.9, 0.99), `betas=[0.9,0.99]` a list, `relative_step=False` a bool. Here the same, plus two conveniences
sd-scripts would crash on: `true`/`false` in any case are bools, and one item holding several pairs separated by
spaces (`"weight_decay=0.01 betas=0.9,0.99"`, as hand-written TOML strings do) is split into them.
"""

from __future__ import annotations

import ast
import re

_PAIR_START = re.compile(r"\s+(?=[A-Za-z_][A-Za-z0-9_]*\s*=)")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_key_values(flag: str, items) -> tuple[dict[str, object], list[str]]:
    """`key=value` items -> ({key: literal value}, problems naming --flag and the item)."""
    values: dict[str, object] = {}
    problems: list[str] = []
    for item in items or []:
        for pair in _PAIR_START.split(str(item).strip()):
            key, value, problem = _parse_pair(pair)
            if problem:
                problems.append(f"--{flag} {pair}: {problem}")
            elif key in values:
                problems.append(f"--{flag}: {key} is given twice")
            else:
                values[key] = value
    return values, problems


def _parse_pair(pair: str) -> tuple[str, object, str]:
    if pair.count("=") == 0:
        return "", None, "expected key=value"
    key, text = (part.strip() for part in pair.split("=", 1))
    if not _KEY.match(key):
        return "", None, f"{key!r} is not a valid argument name"
    if text.lower() in ("true", "false"):
        return key, text.lower() == "true", ""
    try:
        return key, ast.literal_eval(text), ""
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return "", None, (f"the value {text!r} is not a Python literal (numbers, True/False, None, "
                          f"'quoted text', tuples like 0.9,0.99 or lists like [0.9,0.99])")


def resolved_optimizer_type(values: dict) -> str:
    """--optimizer_type as given (case kept, for class paths), 'AdamW' when empty; the legacy flags
    --use_8bit_adam and --use_lion_optimizer stand for AdamW8bit and Lion (their conflicts are rules.py's)."""
    if values.get("optimizer_type"):
        return str(values["optimizer_type"])
    if values.get("use_8bit_adam"):
        return "AdamW8bit"
    if values.get("use_lion_optimizer"):
        return "Lion"
    return "AdamW"


def adafactor_relative_step(kwargs: dict) -> bool:
    """Adafactor's step size mode as sd-scripts decides it: relative_step defaults to True and is forced on by
    warmup_init=True. With it the optimizer sets its own step size from --learning_rate as the initial LR."""
    return bool(kwargs.get("relative_step", True)) or bool(kwargs.get("warmup_init", False))


def is_schedule_free(optimizer_type: str) -> bool:
    """sd-scripts treats every name ending in 'schedulefree' (any case, class paths included) as schedule-free:
    it keeps a constant LR and needs optimizer.train() / optimizer.eval() around training and saving."""
    return optimizer_type.lower().endswith("schedulefree")
