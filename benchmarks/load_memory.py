"""Peak host memory and time of loading a full-size SDXL single file (about 7 GB of fp16).

    .venv/bin/python benchmarks/load_memory.py [--workdir DIR] [--keep]

Writes an SDXL-base-shaped `.safetensors` (SGM layout, random fp16 weights, no recorded configs, so the loader
sizes the models from the shapes as it does for a real SDXL file), streaming one tensor at a time. Then loads it
with `load_sdxl` in fresh subprocesses and prints, per case, the peak resident memory (ru_maxrss) next to the
file size. Not part of the test suite: it takes minutes and about 7 GB of disk.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "fp16 (the file dtype)": dict(mixed_precision="fp16"),
    "bf16 (cast tensor by tensor)": dict(mixed_precision="bf16"),
    "fp16, --disable_mmap_load_safetensors": dict(mixed_precision="fp16", disable_mmap_load_safetensors=True),
}


def write_sdxl_file(path: Path) -> None:
    """A random-weight SDXL base single file, written tensor by tensor (memory holds one tensor at a time)."""
    import torch

    from sdxl_lora.models.checkpoint_io import write_safetensors
    from sdxl_lora.models.configs import build_empty, shipped_config
    from sdxl_lora.models.sgm_layout import COMPONENTS, layout_for, to_file_tensors

    specs = []
    for component in COMPONENTS:
        meta = build_empty(component, shipped_config(component)).state_dict()  # shapes only, no memory
        state = {k: v.to(torch.float16) for k, v in meta.items()}
        specs += list(to_file_tensors(layout_for(component, state), state))
    generator = torch.Generator().manual_seed(0)
    shapes = dict(specs)

    def random_tensor(name: str) -> torch.Tensor:
        return (torch.randn(shapes[name].shape, generator=generator) * 0.02).to(torch.float16)

    write_safetensors(path, specs, random_tensor)


def measure(path: str, flags: dict) -> dict:
    """Runs in a fresh process: load every part with load_sdxl, report peak RSS and time."""

    from sdxl_lora.config.schema import ModelConfig
    from sdxl_lora.models.load import load_sdxl

    before = _max_rss()
    start = time.perf_counter()
    models = load_sdxl(ModelConfig(pretrained_model_name_or_path=path, **flags))
    seconds = time.perf_counter() - start
    parts = (models.unet, models.vae, models.text_encoder_1, models.text_encoder_2)
    model_bytes = sum(p.numel() * p.element_size() for m in parts for p in m.parameters())
    dtypes = sorted({str(p.dtype) for m in parts for p in m.parameters()})
    return dict(seconds=seconds, peak_rss=_max_rss(), vm_hwm=_vm_hwm(), rss_before_load=before,
                model_bytes=model_bytes, dtypes=dtypes)


def _max_rss() -> int:
    """Peak resident bytes of this process (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _vm_hwm() -> int:
    """The kernel's own resident high-water mark (/proc/self/status VmHWM), as a cross-check."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sdxl_lora_bench"))
    parser.add_argument("--keep", action="store_true", help="keep the written file")
    parser.add_argument("--measure", nargs=2, metavar=("FILE", "FLAGS_JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], json.loads(args.measure[1]))))
        return
    if args.write:
        write_sdxl_file(args.write)
        return
    # This process imports no torch and does no work, so the children's peak RSS (inherited across fork+exec
    # on Linux) is their own.
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / "sdxl_random_fp16.safetensors"
    if not path.exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--write", str(path)], check=True)
        print(f"wrote {path} ({_gib(path.stat().st_size)}) in {time.perf_counter() - start:.0f} s")
    size = path.stat().st_size
    print(f"file size {_gib(size)}")
    try:
        for name, flags in CASES.items():
            out = subprocess.run([sys.executable, __file__, "--measure", str(path), json.dumps(flags)],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{name}: load {r['seconds']:.1f} s; peak RSS {_gib(r['peak_rss'])} = {r['peak_rss'] / size:.2f} x "
                  f"file (VmHWM {_gib(r['vm_hwm'])}; {_gib(r['rss_before_load'])} after imports, before loading); "
                  f"models {_gib(r['model_bytes'])} in {', '.join(r['dtypes'])}")
    finally:
        if not args.keep:
            path.unlink()


if __name__ == "__main__":
    main()
