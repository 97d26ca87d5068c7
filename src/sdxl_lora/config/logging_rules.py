"""The logging options (spec 1.12): which trackers a run uses, what they need, and the --log_tracker_config file.

Problems stop the run before any model loads (one line each, naming the flag or the file); options that have
nothing to act on are accepted with a warning, as sd-scripts accepts them (GUIs write them always).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import tomli

TRACKERS = ("tensorboard", "wandb")
"""The trackers --log_with names; 'all' is both (sd-scripts' help: 'TensorBoard and WandB are both used')."""
DEFAULT_TRACKER_NAME = "network_train"
"""sd-scripts' project name for network training when --log_tracker_name is not given."""
_PACKAGES = {
    "tensorboard": ("pip install tensorboard (or pip install -e '.[log]')", ("tensorboard", "tensorboardX")),
    "wandb": ("pip install wandb", ("wandb",)),
}
_NEEDS_A_TRACKER = ("log_prefix", "log_tracker_name", "log_tracker_config", "log_config")
_NEEDS_WANDB = ("wandb_run_name", "wandb_api_key")


def trackers_for(v: dict) -> tuple[str, ...]:
    """The trackers of a run: --log_with, 'all' as both, and TensorBoard when only --logging_dir is given."""
    log_with = v.get("log_with")
    if not log_with:
        return ("tensorboard",) if v.get("logging_dir") else ()
    return TRACKERS if log_with == "all" else (log_with,)


def _what(v: dict) -> str:
    return f"--log_with {v['log_with']}" if v.get("log_with") else "--logging_dir (TensorBoard logging)"


def logging_problems(v: dict) -> list[str]:
    """--log_with tensorboard/all without --logging_dir; a tracker whose package is missing; a bad tracker file."""
    out = []
    trackers = trackers_for(v)
    if "tensorboard" in trackers and not v.get("logging_dir"):
        out.append(f"--log_with {v['log_with']} needs --logging_dir (the folder TensorBoard writes to)")
    for tracker in trackers:
        hint, modules = _PACKAGES[tracker]
        if not any(importlib.util.find_spec(module) for module in modules):
            out.append(f"{_what(v)} needs the {tracker} package: {hint}")
    path = v.get("log_tracker_config")
    if path and Path(path).expanduser().is_file():  # a missing file is reported by config.paths
        out += read_tracker_config(path)[1]
    return out


def read_tracker_config(path: str | Path) -> tuple[dict, list[str]]:
    """--log_tracker_config: a TOML file with one table of init arguments per tracker ([wandb], [tensorboard]),
    passed to accelerate's init_trackers as init_kwargs. Returns (content, problems naming the file)."""
    path = Path(path).expanduser()
    try:
        with path.open("rb") as file:
            content = tomli.load(file)
    except OSError as error:
        return {}, [f"--log_tracker_config {path}: cannot read it ({error.strerror})"]
    except (tomli.TOMLDecodeError, UnicodeDecodeError) as error:
        return {}, [f"--log_tracker_config {path}: invalid TOML: {error}"]
    problems = [f"--log_tracker_config {path}: '{key}' is not a table; the file holds one table of init arguments "
                "per tracker ([wandb], [tensorboard])" for key, value in content.items() if not isinstance(value, dict)]
    return content, problems


def logging_warnings(v: dict) -> list[str]:
    """Options accepted but with nothing to act on in this run (sd-scripts ignores them silently)."""
    trackers, out = trackers_for(v), []
    if not trackers:
        out += [f"--{name} has no effect without --logging_dir or --log_with" for name in _NEEDS_A_TRACKER
                if v.get(name)]
    if trackers and "wandb" not in trackers:
        out += [f"--{name} has no effect without --log_with wandb or all" for name in _NEEDS_WANDB if v.get(name)]
    path = v.get("log_tracker_config")
    if trackers and path:
        content, problems = read_tracker_config(path)
        if not problems:
            out += [f"--log_tracker_config {Path(path).expanduser()}: table [{key}] is ignored (this run logs to "
                    f"{' and '.join(trackers)})" for key in content if key not in trackers]
    return out
