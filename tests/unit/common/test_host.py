"""Released frozen weights give their memory back to the system, not only to the allocator."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from sdxl_lora.common.host import return_freed_memory
from sdxl_lora.train.setup import release

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@glibc
def test_it_can_ask_glibc():
    assert return_freed_memory() is True


@glibc
def test_release_returns_the_weights_memory_to_the_system():
    # 3,000 weights of 64 KiB: under glibc's mmap threshold, so they live in its heap, where a freed block stays
    # resident (for reuse) until malloc_trim. Every 10th block is kept by another module, so the freed space is
    # not one free run at the top of the heap that glibc would give back by itself.
    modules = [torch.nn.Linear(128, 128, bias=False) for _ in range(3000)]  # 128 x 128 float32 = 64 KiB
    kept = [m.weight.data.clone() for m in modules[::10]]
    for m in modules:
        m.weight.data.fill_(1.0)  # touch every page
    before = _rss_mib()
    release(*modules)
    freed = before - _rss_mib()
    assert freed > 0.6 * 3000 * 64 / 1024, f"only {freed:.0f} MiB of about 187 MiB came back"
    assert all(m.weight.device.type == "meta" for m in modules) and len(kept) == 300
