"""Training-step throughput and peak host memory on the tiny SDXL (CPU here; CUDA when present).

Runs the real CLI twice (few and many steps) and reports the time per optimizer step from the difference, so
model loading and caching drop out.
Usage: python benchmarks/train_step.py [--steps 30] [--batch 2] [trainer flags, e.g. --mixed_precision=bf16]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--extra", nargs="*", default=[], help="trainer flags (unknown arguments are added too)")
    args, unknown = parser.parse_known_args()
    args.extra = [*args.extra, *unknown]

    from conftest import make_images, write_toml
    from sdxl_lora.cli import main as cli
    from sdxl_lora.models.tiny import save_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_tiny_model(tmp / "tiny")
        images = make_images(tmp / "img", [(64, 64)] * 4)
        toml = write_toml(tmp / "ds.toml", (
            f"[[datasets]]\nresolution = 64\nbatch_size = {args.batch}\n  [[datasets.subsets]]\n"
            f"  image_dir = '{images}'\n  caption_extension = '.txt'\n  num_repeats = 8\n"))

        def run(steps: int) -> float:
            start = time.perf_counter()
            code = cli([f"--pretrained_model_name_or_path={model}", f"--dataset_config={toml}",
                        f"--output_dir={tmp / 'out'}", "--network_module=networks.lora", "--network_dim=8",
                        f"--max_train_steps={steps}", "--learning_rate=1e-4", "--seed=0", "--cache_latents",
                        "--max_data_loader_n_workers=0", *args.extra])
            assert code == 0
            return time.perf_counter() - start

        run(2)  # warm-up: imports, first-touch allocations
        few, many = run(5), run(5 + args.steps)
    per_step = (many - few) / args.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"batch {args.batch}, flags {' '.join(args.extra)}: {per_step * 1000:.0f} ms/step "
          f"({args.batch / per_step:.1f} images/s), peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
