"""Hashes of the base model and VAE files for metadata (spec 4.1), computed in a background thread.

`ss_sd_model_hash` (legacy): the first 8 hex digits of SHA-256 over the 0x10000 bytes at offset 0x100000;
`ss_new_sd_model_hash`: SHA-256 of the whole file; the same pair for --vae (`ss_vae_hash`, `ss_new_vae_hash`).
sd-scripts hashes a 7 GB checkpoint (about 20 s) before the first step; here the thread starts once the models
are loaded (the file is then in the page cache: started beside the load, it made the disk serve two streams) and
the first save waits for it. It runs at the lowest CPU priority, so it takes only cores that training leaves
idle. Hub ids and diffusers folders get no hash (sd-scripts cannot hash a folder either).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

LEGACY_OFFSET, LEGACY_LENGTH = 0x100000, 0x10000
CHUNK = 1 << 20


def legacy_hash(path: str | Path) -> str:
    """sd-webui's old model hash: SHA-256 of 64 KiB at 1 MiB, first 8 hex digits."""
    with open(path, "rb") as f:
        f.seek(LEGACY_OFFSET)
        return hashlib.sha256(f.read(LEGACY_LENGTH)).hexdigest()[:8]


def sha256_file(path: str | Path) -> str:
    """SHA-256 of the whole file, read in 1 MiB chunks (hashlib releases the GIL on them)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def lowest_priority() -> None:
    """Give the calling thread the lowest scheduling priority (nice 19) where threads have their own (Linux)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # no setpriority (Windows), or not allowed
        pass


class ModelHashes:
    """The base-model and VAE hash keys, computed once in a daemon thread started by the constructor."""

    def __init__(self, model: str | None, vae: str | None = None):
        self._files = {key: Path(p) for key, p in (("sd_model", model), ("vae", vae)) if p and Path(p).is_file()}
        self._keys: dict[str, str] = {}
        self._thread = threading.Thread(target=self._compute, name="sdxl-lora-model-hashes", daemon=True)
        self._thread.start()

    def _compute(self) -> None:
        lowest_priority()
        for key, path in self._files.items():
            try:
                self._keys[f"ss_{key}_hash"] = legacy_hash(path)
                self._keys[f"ss_new_{key}_hash"] = sha256_file(path)
            except OSError as err:
                log.warning("could not hash %s for the metadata: %s", path, err)

    def metadata(self) -> dict[str, str]:
        """The hash keys; waits for the thread the first time (usually long finished by the first save)."""
        self._thread.join()
        return dict(self._keys)
