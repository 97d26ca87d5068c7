"""Outputs appear whole or not at all: write to a temporary name beside the target, then rename it into place.

The temporary name is made by hand (hidden, with the process id and a random part), not by `tempfile`, so the
file or folder gets the usual permissions (umask) rather than tempfile's owner-only ones; a file whose writer made
it owner-only anyway (safetensors 0.8's save_file writes 0600) gets them before the rename, so a LoRA is as
readable as sd-scripts' (0644 under the usual umask 022) to a web UI running as another user. It sits in the
target's folder, so the final rename never crosses a file system and is atomic.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the mask means setting it; put back at once
    os.umask(mask)
    return mask


UMASK = _umask()


def _temporary_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A path beside `target` for the block to write one file to; renamed onto `target` when the block succeeds
    (replacing an existing file), removed when it fails. Creates the target's folder when needed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(target)
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """An empty folder beside `target` for the block to fill; renamed to `target` when the block succeeds, removed
    with its contents when it fails. `target` must not exist or be an empty folder (FileExistsError otherwise)."""
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not an empty folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(target)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
