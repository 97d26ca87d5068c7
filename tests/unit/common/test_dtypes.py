"""common/dtypes.py: the names of --mixed_precision and --save_precision (spec 1.2, 1.10)."""

from __future__ import annotations

import pytest
import torch

from sdxl_lora.common.dtypes import dtype_named


@pytest.mark.parametrize(("name", "dtype"), [
    ("no", torch.float32), ("float", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16), (None, None),
])
def test_precision_names(name, dtype):
    assert dtype_named(name) == dtype


def test_unknown_name_is_named():
    with pytest.raises(ValueError, match="'fp8'"):
        dtype_named("fp8")
