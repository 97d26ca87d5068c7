"""Sample-image speed: seconds per sampling call and per image from the tiny SDXL with a rank-4 LoRA, through
sample.generate (pipeline assembly, denoising, VAE decode, PNG write, RNG and mode restore). On CUDA it also
reports the peak memory sampling adds. The tiny model measures the machinery around the pipeline; a real SDXL
U-Net dominates on a GPU (about steps x 2 U-Net calls per image with CFG).
Usage: python benchmarks/sample_speed.py [--prompts 2] [--size 64] [--steps 2] [--scale 5] [--repeat 3]
       [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--scale", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    from sdxl_lora.config.schema import ModelConfig, NetworkConfig
    from sdxl_lora.models.load import load_sdxl
    from sdxl_lora.models.precision import place_models
    from sdxl_lora.models.tiny import save_tiny_model
    from sdxl_lora.network.build import build_network
    from sdxl_lora.sample.generate import SampleSettings, generate_samples
    from sdxl_lora.sample.prompts import SamplePrompt

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_cfg = ModelConfig(str(save_tiny_model(Path(tmp) / "tiny")))
        models = load_sdxl(model_cfg, args.device)
        placement = place_models(models, model_cfg, args.device)
        build_network(models.unet, models.text_encoder_1, models.text_encoder_2, NetworkConfig(network_dim=4))
        prompts = [SamplePrompt(f"prompt {i}", width=args.size, height=args.size, seed=i, steps=args.steps,
                                scale=args.scale, index=i) for i in range(args.prompts)]
        settings = SampleSettings(Path(tmp) / "out", device=placement.device, weight_dtype=placement.weight_dtype)
        generate_samples(models, prompts, settings, step=0)  # warm-up (first-call imports and allocations)
        cuda = placement.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        times = []
        for step in range(1, args.repeat + 1):
            started = time.perf_counter()
            generate_samples(models, prompts, settings, step=step)
            times.append(time.perf_counter() - started)
        call = statistics.median(times)
        print(f"{args.prompts} prompts, {args.size}x{args.size}, {args.steps} steps, CFG {args.scale:g}, "
              f"{args.device}: {call:.2f} s per sampling call (median of {args.repeat}), "
              f"{call / args.prompts:.2f} s per image")
        if cuda:
            print(f"peak memory added by sampling: {(torch.cuda.max_memory_allocated() - before) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
