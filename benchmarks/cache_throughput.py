"""Latent-cache throughput: N synthetic images encoded by the tiny SDXL VAE, to memory and to disk.

Reports images/s for: caching to memory; caching to disk (cold: every entry encoded and written); a second
disk run that finds everything cached (entries read back and checked), and the same with --skip_cache_check
(only existence). With the tiny VAE the figures measure the cache machinery (image decode, resize, batching,
file writes and checks), not a real SDXL VAE, whose encode dominates on a GPU.
Usage: python benchmarks/cache_throughput.py [--n 10000] [--size 128] [--vae_batch_size 8] [--threads N]
       [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path


def make_images(folder: Path, n: int, size: int) -> list[Path]:
    """n PNGs of size x size: smooth random gradients (compress like photos, unlike noise)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    paths = []
    for i in range(n):
        a, b, c = rng.random((3, 3), dtype=np.float32)
        pixels = (a[None, None] * ramp[:, None, None] + b[None, None] * ramp[None, :, None]) * 127 + c * 60
        paths.append(folder / f"img{i:06d}.png")
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(paths[-1], compress_level=1)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (the bucket)")
    parser.add_argument("--vae_batch_size", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=None, help="where to write images and cache (default: tmp)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is fastest for the tiny VAE on a busy machine)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from sdxl_lora.data.cache_files import module_identity
    from sdxl_lora.data.latent_cache import LatentCacheSettings, LatentJob, LatentKey, build_latent_cache
    from sdxl_lora.data.sources import latent_names
    from sdxl_lora.data.vae_encode import encode_images, latent_seed
    from sdxl_lora.models.tiny import build_tiny_pipeline

    root = Path(tempfile.mkdtemp(prefix="cache-bench-", dir=args.dir))
    try:
        start = time.perf_counter()
        paths = make_images(root / "images", args.n, args.size)
        print(f"wrote {args.n} PNGs of {args.size}x{args.size} in {time.perf_counter() - start:.1f} s")
        vae = build_tiny_pipeline(0).vae.eval()
        bucket = (args.size, args.size)
        jobs = [LatentJob(LatentKey(str(p), bucket, (0, 0), False), bucket, None) for p in paths]

        def encode(pixels, batch):
            keys = [job.key for job in batch]
            return encode_images(vae, pixels, latent_names(keys), [latent_seed(k) for k in keys], "cpu",
                                 len(batch))

        def timed(label: str, **settings) -> None:
            values = dict(to_disk=False, skip_check=False, batch_size=args.vae_batch_size,
                          vae_identity=module_identity(vae), channels=4)
            values.update(settings)
            begin = time.perf_counter()
            build_latent_cache(jobs, encode, LatentCacheSettings(**values))
            seconds = time.perf_counter() - begin
            print(f"{label:<44} {seconds:8.1f} s  {args.n / seconds:9.1f} images/s")

        timed("memory")
        timed("disk, cold (encode + write)", to_disk=True)
        timed("disk, all cached (read back and check)", to_disk=True)
        timed("disk, all cached, --skip_cache_check", to_disk=True, skip_check=True)
        shards = Counter(f.parent for f in (root / "images" / ".sdxl-lora-cache").rglob("*.safetensors"))
        print(f"{sum(shards.values())} entries in {len(shards)} shard folders (at most "
              f"{max(shards.values())} per folder)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
