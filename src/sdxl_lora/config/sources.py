"""What kind of model source --pretrained_model_name_or_path names, decided explicitly from the path alone.

Pure path logic, so validation can run it before any model is loaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from sdxl_lora.config.errors import ConfigError

SourceKind = Literal["diffusers_dir", "single_file", "hub_id"]
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
FLAG = "--pretrained_model_name_or_path"
# owner/name as the Hugging Face Hub spells repo ids: one slash, letters, digits, "-", "_", "."
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def detect_source(path_or_id: str) -> SourceKind:
    """Which kind of model source `path_or_id` names; raises ConfigError (one line) when it names none."""
    path = Path(path_or_id).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            expected = ", ".join(SINGLE_FILE_SUFFIXES)
            raise ConfigError(f"{FLAG} {path_or_id}: a file, but not a checkpoint (expected {expected})")
        return "single_file"
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ConfigError(f"{FLAG} {path_or_id}: folder has no model_index.json (not diffusers)")
        return "diffusers_dir"
    if looks_like_hub_id(path_or_id):
        return "hub_id"
    raise ConfigError(f"{FLAG} {path_or_id}: no such file or folder, and not a hub id (owner/name)")


def looks_like_hub_id(text: str) -> bool:
    """'owner/name' as the Hugging Face Hub spells repo ids; a name ending in a checkpoint suffix
    ('models/sdxl.safetensors') is a missing file, not a repo."""
    if Path(text).suffix.lower() in SINGLE_FILE_SUFFIXES:
        return False
    return bool(_HUB_ID.match(text)) and ".." not in text and "--" not in text
