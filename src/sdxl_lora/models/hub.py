"""Hugging Face hub ids, resolved from the local cache only: this trainer never downloads.

The cache location is read from the environment when called (HF_HUB_CACHE, else HF_HOME/hub, else
XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub), the same order huggingface_hub uses.
"""

from __future__ import annotations

import os
from pathlib import Path

from sdxl_lora.models.errors import ModelLoadError


def hub_home() -> Path:
    """HF_HOME as huggingface_hub computes it, read now."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(os.path.expandvars(os.environ.get("HF_HOME", str(default)))).expanduser()


def hub_cache_dir() -> Path:
    """Where cached hub repositories live (models--owner--name/...)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(os.path.expandvars(explicit)).expanduser() if explicit else hub_home() / "hub"


def resolve_cached(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of a cached hub model; ModelLoadError (one line) when it is not cached."""
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True)
    except (OSError, ValueError):  # LocalEntryNotFoundError is an OSError
        raise ModelLoadError(f"{repo_id}: not in the local Hugging Face cache (HF_HOME={hub_home()}, cache {cache}) "
                             "and this machine is offline; download it first or give a local path") from None
    return Path(folder)
