"""Tensor dtypes by the names sd-scripts' precision flags use (--mixed_precision, --save_precision)."""

from __future__ import annotations

import torch

DTYPES = {"no": torch.float32, "float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""--mixed_precision no/fp16/bf16 (no = float32) and --save_precision float/fp16/bf16."""


def dtype_named(name: str | None) -> torch.dtype | None:
    """The dtype a precision flag names; None (the flag not given) stays None."""
    if name is None:
        return None
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown precision {name!r}; expected one of {', '.join(DTYPES)}") from None
