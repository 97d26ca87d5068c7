"""Process-level set-up of a command: no optional imports nobody asked for, no library chatter, and the refusal of
a multi-process launch whose processes do not see each other. Called by cli, the demo and the training loop."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from sdxl_lora.config.errors import ConfigError

# The process-count variables accelerate reads (torchrun / accelerate launch --multi_gpu, then MPI launchers).
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def refuse_lone_copies(num_processes: int, environ: dict | None = None) -> None:
    """A launcher started several processes but accelerate made each of them a world of its own (`accelerate
    launch --multi_gpu` on a machine without GPUs: every process trains alone, the same LoRA N times, and they
    overwrite each other's files). Called once the Accelerator exists; every process says why and exits 2 (a
    launcher may stop the others as soon as one exits, so each one says it)."""
    environ = os.environ if environ is None else environ
    name, size = next(((v, environ[v]) for v in WORLD_SIZE_VARS if environ.get(v, "").strip()), ("", "1"))
    if num_processes > 1 or not size.strip().isdigit() or int(size) <= 1:
        return
    raise ConfigError([
        f"{size} processes were launched ({name}={size}) but each one trains alone (world size 1): no GPU "
        "was found for --multi_gpu; check the GPUs (nvidia-smi), or on CPU launch with ACCELERATE_USE_CPU=1 "
        "(ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ..., or torchrun)"])


def quiet_libraries(verbose: bool = False) -> None:
    """Silence library chatter that tells a user nothing: transformers and diffusers log errors only (warnings too
    with --console_log_level DEBUG) and draw no progress bars, and bitsandbytes' kernel probe is not logged; our
    step bar and one line per model-loading phase (models/phases.py) say what happens. Called when a command
    starts, never when a module is imported."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    level = logging.WARNING if verbose else logging.ERROR
    for library in (transformers_logging, diffusers_logging):
        library.set_verbosity(level)
        library.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(level)


def needs_bitsandbytes(optimizer_type: str) -> bool:
    """sd-scripts' bitsandbytes optimizers: AdamW8bit, Lion8bit, SGDNesterov8bit, AdEMAMix8bit, the Paged* ones,
    or a `bitsandbytes.optim.<Class>` path."""
    name = optimizer_type.lower()
    return "8bit" in name or name.startswith(("paged", "bitsandbytes."))


@contextlib.contextmanager
def optional_imports_off(needed: bool = False) -> Iterator[None]:
    """Keep bitsandbytes unimported during the block unless `needed`.

    diffusers, transformers and peft import it whenever it is installed (it costs seconds, and on CPUs with
    AVX512-BF16 it logs a failed kernel download). A None entry in sys.modules makes `importlib.util.find_spec`
    answer "not installed", which is what those libraries check, once, when they are first imported; so it is
    set only in a process that has not imported them yet (a fresh command; not a notebook or test session that
    already has them). The entry is removed afterwards, so a later run in the same process may still import it.
    """
    probing = ("diffusers", "transformers", "peft", "accelerate", "bitsandbytes")
    block = not needed and not any(name in sys.modules for name in probing)
    if block:
        sys.modules["bitsandbytes"] = None
    try:
        yield
    finally:
        if block and "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
            del sys.modules["bitsandbytes"]
