"""Cache entries on disk: where they live, how they are named, written and read back.

Layout: a hidden folder `.sdxl-lora-cache` inside each image folder, so the cache travels with the dataset and
two datasets never share entries by accident; inside, `<kind>/<2 hex>/<64 hex>.safetensors`. The name is the
SHA-256 of everything that shapes the entry (file size and mtime, bucket, crop, flip, interpolation, the
encoder's identity; or the exact caption), so a changed input simply gets a new entry, and 256 shard folders
keep 100,000 images at about 400 files per folder. Entries are written to a temporary name and renamed into
place (common.files), so an interrupted run leaves only whole entries (a run killed while writing may leave a
hidden `.tmp` file, which is never read).
Old entries are never deleted: delete the `.sdxl-lora-cache` folders to reclaim their space.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from sdxl_lora.common.files import atomic_path

CACHE_DIR = ".sdxl-lora-cache"
FORMAT = "sdxl-lora cache 1"


class CacheEntryError(Exception):
    """An entry that cannot be used (unreadable, wrong key, wrong shape, not finite)."""


def digest(*parts: object) -> str:
    """SHA-256 hex of the parts, separated so that ("ab", "c") and ("a", "bc") differ."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()


def entry_path(image_path: str | Path, kind: str, name: str) -> Path:
    """`<image folder>/.sdxl-lora-cache/<kind>/<name[:2]>/<name>.safetensors`."""
    return Path(image_path).parent / CACHE_DIR / kind / name[:2] / f"{name}.safetensors"


def file_fingerprint(path: str | Path) -> str:
    """Size and modification time of a file: changes whenever the file is rewritten."""
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def module_identity(*modules) -> str:
    """Cheap fingerprint of frozen models: their configs, every tensor's name, dtype and shape, and 64 evenly
    spaced values of each tensor (enough to tell two trainings or precisions apart without hashing gigabytes)."""
    h = hashlib.sha256()
    for module in modules:
        config = getattr(module, "config", None)
        if config is not None:
            values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
            values = {k: v for k, v in values.items() if not k.startswith("_") and not k.endswith("_version")}
            h.update(json.dumps(values, sort_keys=True, default=str).encode())
        for name, tensor in module.state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 64)][:64].to("cpu", torch.float64)
            h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:32]


def write_entry(path: Path, tensors: dict[str, torch.Tensor], key: str) -> None:
    """Write atomically: a temporary name beside the target, then rename over it."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata={"format": FORMAT, "key": key})


def read_entry(path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of an entry; with `key`, also check that it was written for that key."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for a damaged file
        raise CacheEntryError(f"unreadable ({type(err).__name__}: {err})") from err
    if meta.get("format") != FORMAT or (key is not None and meta.get("key") != key):
        raise CacheEntryError("written for other inputs")
    return tensors


def check_tensor(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...] | None) -> torch.Tensor:
    """tensors[name], which must exist, have `shape` (when given) and be finite."""
    if name not in tensors:
        raise CacheEntryError(f"has no {name!r}")
    tensor = tensors[name]
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise CacheEntryError(f"{name!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise CacheEntryError(f"{name!r} is not finite")
    return tensor
