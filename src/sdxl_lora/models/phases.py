"""One log line per model-loading phase with its time, in place of the libraries' progress bars (off, cli.py)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)
LABELS = {"unet": "U-Net", "vae": "VAE", "te1": "text encoder 1", "te2": "text encoder 2"}


@contextlib.contextmanager
def loading(component: str) -> Iterator[None]:
    """Log `loaded <component> in <seconds> s` when the block succeeds."""
    started = time.perf_counter()
    yield
    log.info("loaded %s in %.1f s", LABELS[component], time.perf_counter() - started)
