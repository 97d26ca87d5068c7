"""Peak memory of LoRA training steps with and without --fused_backward_pass.

    python benchmarks/bench_fused_backward.py [--model tiny|full] [--steps 3] [--rank 8] [--dtype bf16|float32]
        [--optimizer AdamW] [--optimizer_args k=v ...] [--max_grad_norm 1.0] [--threads 1] [--resolution 256]

Each variant ("plain", "fused") runs in a fresh subprocess, so its process peak is its own. A child builds the
SDXL U-Net (`tiny`: sdxl_lora.models.tiny's config; `full`: SDXL base's shipped config, 2.6 B parameters) on the
meta device, materializes it with random weights in the chosen dtype, adds LoRA with the project's own
network/build.py (U-Net only) and builds the optimizer with train/optim.py's build_optimizer, so the fused path
measured is the one training uses. Text conditioning is random tensors of SDXL's shapes; gradient checkpointing
is on; batch 1; the steps are the loop's (backward, global clipping unless fused, step, zero_grad) without
accelerate's wrappers. With `--dtype bf16` the U-Net weights are bf16 under bf16 autocast and LoRA stays float32,
as with --mixed_precision bf16.

Memory is read after the model is built, after LoRA and the optimizer are built, and as the peak of each step:
the kernel's resident high-water mark (VmHWM, reset through /proc/self/clear_refs before each step; the children
run with a fixed glibc mmap threshold, see CHILD_ENV), and on CUDA torch.cuda.max_memory_allocated. Prints one
JSON line per variant, then one with the fused/plain ratios. Figures and commands: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
VARIANTS = ("plain", "fused")
CHILD_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
"""glibc then serves every block of 64 KiB or more with its own mmap and unmaps it when freed (a fixed threshold:
the default one grows as blocks are freed, and freed blocks stay resident), so RSS follows the live tensors."""


def _status_bytes(field: str) -> int:
    """A memory line of /proc/self/status (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    """Sets VmHWM back to the current RSS (Linux >= 4.0), so the peak measured is the steps' own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def build_unet(model: str, dtype, device):
    """The U-Net with random weights, allocated once in `dtype` on `device` (no float32 copy on the way)."""
    import torch

    from sdxl_lora.models.configs import build_empty, shipped_config
    from sdxl_lora.models.tiny import tiny_unet_config

    config = tiny_unet_config() if model == "tiny" else shipped_config("unet")
    unet = build_empty("unet", config)
    if dtype != torch.float32:
        unet = unet.to(dtype)  # on the meta device: no memory yet
    unet = unet.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.dim() == 1:  # normalization scales
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    return unet


def measure(opts: dict) -> dict:
    """Runs in a fresh process: build, then `steps` training steps; the figures of one variant."""
    sys.path.insert(0, str(SRC))
    import torch
    from torch import nn

    from sdxl_lora.config.schema import NetworkConfig, OptimConfig
    from sdxl_lora.network.build import build_network
    from sdxl_lora.network.groups import param_groups
    from sdxl_lora.train.optim import build_optimizer, trained_parameters

    torch.set_num_threads(opts["threads"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = {"bf16": torch.bfloat16, "float32": torch.float32}[opts["dtype"]]
    fused = opts["variant"] == "fused"
    rss_after_imports = _status_bytes("VmRSS")

    unet = build_unet(opts["model"], dtype, device)
    rss_after_model = _status_bytes("VmRSS")
    cuda_after_model = torch.cuda.memory_allocated() if cuda else None

    net_cfg = NetworkConfig(network_dim=opts["rank"], network_alpha=opts["rank"], train_text_encoder=False)
    torch.manual_seed(0)  # LoRA's initial down weights: the same in both variants
    handles = build_network(unet, nn.Module(), nn.Module(), net_cfg)
    lora = handles.parameters("unet")
    for p in lora:
        p.data = p.data.to(torch.float32)  # as the loop: LoRA in float32 unless --full_bf16
    unet.enable_gradient_checkpointing()
    unet.train()
    optim_cfg = OptimConfig(optimizer_type=opts["optimizer"], learning_rate=1e-4,
                            optimizer_args=tuple(opts["optimizer_args"].items()),
                            max_grad_norm=opts["max_grad_norm"],
                            fused_backward_pass=fused)
    optimizer = build_optimizer(optim_cfg, param_groups(handles, net_cfg, optim_cfg))
    rss_after_setup = _status_bytes("VmRSS")
    cuda_after_setup = torch.cuda.memory_allocated() if cuda else None

    inputs = _random_inputs(unet.config, opts["resolution"], device, opts["steps"])
    seconds, step_peaks, cuda_step_peaks = [], [], []
    for step in range(opts["steps"]):
        hwm_reset = _reset_peak()  # each step's own peak: the first also allocates the optimizer state
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        noisy, timesteps, context, pooled, time_ids, noise = (t[step] for t in inputs)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            pred = unet(noisy.to(dtype), timesteps, context.to(dtype),
                        added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": time_ids}).sample
        loss = nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        if optim_cfg.max_grad_norm and not fused:  # the fused pass clipped each tensor in backward
            torch.nn.utils.clip_grad_norm_(trained_parameters(optimizer), optim_cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        step_peaks.append(_status_bytes("VmHWM"))
        cuda_step_peaks.append(torch.cuda.max_memory_allocated() if cuda else None)

    unet_params = sum(p.numel() for p in unet.parameters()) - sum(p.numel() for p in lora)
    return dict(
        variant=opts["variant"], model=opts["model"], dtype=opts["dtype"], rank=opts["rank"],
        optimizer=opts["optimizer"], max_grad_norm=opts["max_grad_norm"], steps=opts["steps"],
        resolution=opts["resolution"], device=device.type,
        threads=opts["threads"], malloc_mmap_threshold=os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        unet_params=unet_params, lora_params=sum(p.numel() for p in lora),
        lora_tensors=len(lora), lora_grad_bytes=sum(p.numel() * p.element_size() for p in lora),
        rss_after_imports=rss_after_imports, rss_after_model=rss_after_model, rss_after_setup=rss_after_setup,
        peak_rss=max(step_peaks), step_extra_rss=max(step_peaks) - rss_after_setup, peak_rss_per_step=step_peaks,
        hwm_reset=hwm_reset, cuda_after_model=cuda_after_model, cuda_after_setup=cuda_after_setup,
        cuda_peak=max(cuda_step_peaks) if cuda else None, cuda_peak_per_step=cuda_step_peaks if cuda else None,
        seconds_per_step=[round(s, 2) for s in seconds], final_loss=float(loss.detach()),
        lora_sum_of_squares=float(sum(p.detach().double().square().sum() for p in lora)),
    )


def _random_inputs(config, resolution: int, device, steps: int) -> list[list]:
    """Per step: noisy latents, timesteps, context, pooled embedding, size ids and the noise target (batch 1)."""
    import torch

    generator = torch.Generator().manual_seed(1)
    side = resolution // 8
    pooled_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    shapes = [(1, config.in_channels, side, side), None, (1, 77, config.cross_attention_dim), (1, pooled_dim),
              None, (1, config.out_channels, side, side)]
    per_part: list[list] = [[] for _ in shapes]
    for _ in range(steps):
        for part, shape in enumerate(shapes):
            if part == 1:
                value = torch.randint(0, 1000, (1,), generator=generator)
            elif part == 4:
                value = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)
            else:
                value = torch.randn(shape, generator=generator)
            per_part[part].append(value.to(device))
    return per_part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--steps", type=int, default=3, help="training steps per variant")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (--network_dim); alpha = rank")
    parser.add_argument("--dtype", choices=("bf16", "float32"), default="float32",
                        help="U-Net weight dtype (bf16: under bf16 autocast); LoRA is float32")
    parser.add_argument("--optimizer", default="AdamW", help="--optimizer_type (fused: AdamW family, Adafactor)")
    parser.add_argument("--optimizer_args", nargs="*", default=[], help="key=value ... as the trainer's flag")
    parser.add_argument("--resolution", type=int, default=256, help="image side; latents are 1/8 of it")
    parser.add_argument("--max_grad_norm", type=float, default=1.0,
                        help="plain: global clipping; fused: per tensor (0: none, and both train the same weights)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each child")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    sys.path.insert(0, str(SRC))
    from sdxl_lora.config.optimizer_args import parse_key_values  # imports no torch

    args.optimizer_args, problems = parse_key_values("optimizer_args", args.optimizer_args)
    if problems:
        parser.error("; ".join(problems))
    # This process imports no torch, so each child's VmHWM is its own.
    results = {}
    for variant in VARIANTS:
        opts = {k: v for k, v in vars(args).items() if k != "child"} | {"variant": variant}
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(opts)], check=True, env=CHILD_ENV,
                             stdout=subprocess.PIPE, text=True).stdout  # stderr passes through
        results[variant] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(results[variant]), flush=True)
    plain, fused = results["plain"], results["fused"]
    later = slice(1, None) if args.steps > 1 else slice(None)  # steps after the first (state allocated)
    summary = dict(variant="fused/plain", peak_rss_ratio=fused["peak_rss"] / plain["peak_rss"],
                   step_extra_rss_ratio=_ratio(fused["step_extra_rss"], plain["step_extra_rss"]),
                   peak_rss_saving=plain["peak_rss"] - fused["peak_rss"],
                   later_steps_peak_rss_saving=(max(plain["peak_rss_per_step"][later])
                                                - max(fused["peak_rss_per_step"][later])),
                   lora_grad_bytes=plain["lora_grad_bytes"])
    if plain["cuda_peak"] is not None:
        summary |= dict(cuda_peak_ratio=fused["cuda_peak"] / plain["cuda_peak"],
                        cuda_peak_saving=plain["cuda_peak"] - fused["cuda_peak"],
                        later_steps_cuda_peak_saving=(max(plain["cuda_peak_per_step"][later])
                                                      - max(fused["cuda_peak_per_step"][later])))
    print(json.dumps(summary))


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


if __name__ == "__main__":
    main()
