"""Every path-valued option checked before any model weight is read (issue 7): one rule per option, as data.

Pure file-system look-ups (no file is opened), so `sdxl-lora check` reports a missing --vae together with every
other problem. --pretrained_model_name_or_path is checked by config.sources; --dataset_config, --train_data_dir
and --reg_data_dir when the datasets are read (config.dataset_toml).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sdxl_lora.config.sources import SINGLE_FILE_SUFFIXES, looks_like_hub_id

STATE_FORMAT = "sdxl-lora-state-1"
"""Written into every state folder's train_state.json (key "format"); --resume accepts folders that have it."""


def _file(path: Path) -> str:
    if path.is_dir():
        return "is a folder, not a file"
    return "" if path.is_file() else "file not found"


def _folder(path: Path) -> str:
    if path.is_file():
        return "is a file, not a folder"
    return "" if path.is_dir() else "folder not found"


def _not_a_file(path: Path) -> str:
    """A folder that is created when missing."""
    return "exists and is not a folder" if path.exists() and not path.is_dir() else ""


def _new_file(path: Path) -> str:
    """A file that is written: its folder must exist."""
    if path.is_dir():
        return "is a folder, not a file"
    return "" if path.resolve().parent.is_dir() else "its folder does not exist"


def _vae(path: Path) -> str:
    """A checkpoint file, a diffusers VAE folder (config.json at its root or in vae/), or a hub id."""
    if path.is_file():
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            return ""
        return f"a file, but not a checkpoint (expected {', '.join(SINGLE_FILE_SUFFIXES)})"
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "vae" / "config.json").is_file():
            return ""
        return "folder has neither config.json nor vae/config.json (not a diffusers VAE)"
    return "" if looks_like_hub_id(str(path)) else "no such file or folder, and not a hub id (owner/name)"


def _lora_weights(path: Path) -> str:
    """A LoRA file, or a diffusers LoRA folder (pytorch_lora_weights.safetensors or .bin inside)."""
    if path.is_dir():
        if any((path / f"pytorch_lora_weights.{ext}").is_file() for ext in ("safetensors", "bin")):
            return ""
        return "folder without pytorch_lora_weights.safetensors (not a diffusers LoRA folder)"
    return _file(path)


def _state_folder(path: Path) -> str:
    """A state folder written by sdxl-lora (its train_state.json names the format). sd-scripts' state folders are
    refused: their optimizer state is keyed by sd-scripts' parameter order, which cannot be mapped safely."""
    problem = _folder(path)
    if problem:
        return problem
    marker = path / "train_state.json"
    if not marker.is_file():
        return "not a state folder (no train_state.json)"
    if STATE_FORMAT not in marker.read_text(errors="replace"):
        return (f"a state folder written by sd-scripts, which cannot be resumed exactly; start from its weights "
                f"with --network_weights {path / 'model.safetensors'}")
    return ""


def _thumbnail(path: Path) -> str:
    return "" if str(path).startswith("data:") else _file(path)


PATH_RULES: dict[str, Callable[[Path], str]] = {
    "vae": _vae,
    "network_weights": _lora_weights,
    "base_weights": _file,
    "resume": _state_folder,
    "in_json": _file,
    "sample_prompts": _file,
    "log_tracker_config": _file,
    "conditioning_data_dir": _folder,
    "tokenizer_cache_dir": _not_a_file,
    "metadata_thumbnail": _thumbnail,
    "output_dir": _not_a_file,
    "logging_dir": _not_a_file,
    "console_log_file": _new_file,
    "offload_optimizer_nvme_path": _folder,
    "offload_param_nvme_path": _folder,
}
"""Path-valued option -> check returning '' or what is wrong with the path."""


def _skipped(v: dict) -> set[str]:
    """Options whose value is not a local path in this run."""
    skipped = set()
    if v.get("resume_from_huggingface"):
        skipped.add("resume")  # 'owner/repo/path[:revision[:type]]' on the Hub
    if v.get("dataset_config"):
        skipped.add("in_json")  # ignored (with a warning) when --dataset_config is given
    return skipped


def path_problems(v: dict) -> list[str]:
    """'--flag value: what is wrong' for each given path that cannot be used."""
    out = []
    for name, check in PATH_RULES.items():
        value = v.get(name)
        if not value or name in _skipped(v):
            continue
        for item in value if isinstance(value, list) else [value]:
            problem = check(Path(str(item)).expanduser())
            if problem:
                out.append(f"--{name} {item}: {problem}")
    return out
