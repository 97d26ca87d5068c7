"""Time of scanning a dataset (file listing, captions, image headers and end markers, buckets), no decoding.

    PYTHONPATH=src .venv/bin/python benchmarks/scan_dataset.py [--images 10000] [--workdir DIR] [--keep]

Writes N small synthetic images (a mix of PNG, JPEG and WebP of different sizes, every third with a caption
file) into one DreamBooth folder, then times `build_plan` on them twice (cold and warm file-system cache) and
prints images per second. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

SIZES = ((1536, 1024), (1024, 1536), (1024, 1024), (1344, 768), (800, 1200))
FORMATS = (("png", {}), ("jpg", {"quality": 80}), ("webp", {"quality": 80}))


def write_images(folder: Path, count: int) -> None:
    """`count` images of real sizes, each a flat colour (small files with real headers; noise would take
    minutes to write), copied from one encoded template per size and format."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    templates = {}
    for k, size in enumerate(SIZES):
        for extension, options in FORMATS:
            path = folder / f"template_{k}.{extension}"
            Image.new("RGB", size, (40 * k, 90, 160)).save(path, **options)
            templates[(k, extension)] = path.read_bytes()
            path.unlink()
    for i in range(count):
        k, (extension, _) = i % len(SIZES), FORMATS[i % len(FORMATS)]
        (folder / f"img{i:06d}.{extension}").write_bytes(templates[(k, extension)])
        if i % 3 == 0:
            (folder / f"img{i:06d}.txt").write_text(f"image {i}, a test picture", encoding="utf-8")


def time_scan(folder: Path) -> tuple[float, int, int]:
    from sdxl_lora.config.dataset_toml import DatasetConfig, SubsetConfig
    from sdxl_lora.data.plan import build_plan

    dataset = DatasetConfig(subsets=(SubsetConfig(str(folder), class_tokens="sks", caption_extension=".txt"),),
                            resolution=(1024, 1024), enable_bucket=True)
    start = time.perf_counter()
    (plan,) = build_plan((dataset,)).datasets
    return time.perf_counter() - start, len(plan.images), len(plan.buckets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the synthetic images")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scan_dataset_"))
    folder = workdir / "10_sks"
    try:
        start = time.perf_counter()
        write_images(folder, args.images)
        print(f"wrote {args.images} images in {time.perf_counter() - start:.1f} s to {folder}")
        for label in ("first scan", "second scan"):
            seconds, images, buckets = time_scan(folder)
            print(f"{label}: {images} images, {buckets} buckets in {seconds:.2f} s "
                  f"({images / seconds:,.0f} images/s)")
    finally:
        if not args.keep:
            shutil.rmtree(workdir if args.workdir is None else folder, ignore_errors=True)


if __name__ == "__main__":
    main()
