"""Activation memory of one training step of the full-size SDXL U-Net with LoRA, counted on the meta device.

How: the U-Net is built from SDXL base's shipped config on the meta device (no weight exists, no arithmetic
runs), the project's own LoRA plan is injected (peft, every kohya target), and one forward + MSE loss + backward
runs under a dispatch mode that adds up the bytes of every tensor the ops create and subtracts them when the
tensor is freed. The peak of that sum is the step's activation memory (plus the LoRA gradients, subtracted at the
end; the estimate counts them on their own). Meta tensors have sizes and lifetimes like CUDA ones, so this is
the memory a CUDA allocator would be asked for, before its rounding and fragmentation.

One substitution: attention. On the meta device PyTorch's scaled_dot_product_attention takes its reference
path, which materializes the (tokens x tokens) attention matrix; on a CUDA GPU it runs flash / memory-efficient
kernels that keep only q, k, v, the output and one float32 log-sum-exp per query row. The probe replaces it by a
function that creates and keeps exactly those, so the count is what the flash path holds.

Prints one JSON line per setting: resolution, batch, checkpointing, dtype, the activation peak in bytes, and
that peak per latent pixel per sample (train/memory.py's constants come from these lines).
Usage: python benchmarks/memory_calibration.py [--sizes 512 1024] [--batch 1] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors created under it that are still alive, and the peak of that sum. Views of tensors
    that existed before (weights, inputs: `existing`) share their storage and add nothing."""

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.keep = [t.untyped_storage() for t in existing]  # alive, so their ids stay theirs
        self.seen: set[int] = {id(s) for s in self.keep}

    def _free(self, key: int, size: int) -> None:
        self.seen.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if id(storage) not in self.seen:
                    self.seen.add(id(storage))
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._free, id(storage), storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


class _FlashAttention(torch.autograd.Function):
    """What the CUDA flash kernel keeps: q, k, v, the output and a float32 log-sum-exp per query row."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def flash_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    return _FlashAttention.apply(q, k, v)


def build_unet(dtype: torch.dtype, checkpointing: bool, rank: int):
    from sdxl_lora.config.schema import NetworkConfig
    from sdxl_lora.models.configs import build_empty, shipped_config
    from sdxl_lora.network.lora import apply_lora

    unet = build_empty("unet", shipped_config("unet")).to(dtype=dtype)
    te = torch.nn.Linear(1, 1)  # text encoders are not trained here
    handles = apply_lora(unet, te, te, NetworkConfig(network_dim=rank, train_text_encoder=False))
    for param in handles.parameters("unet"):
        param.data = param.data.to(device="meta", dtype=dtype)  # under autocast LoRA matmuls run in dtype
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    grad_bytes = sum(p.numel() * p.element_size() for p in handles.parameters("unet"))
    return unet, grad_bytes


def measure(unet, grad_bytes: int, size: int, batch: int, dtype: torch.dtype) -> int:
    h = w = size // 8
    latents = torch.empty(batch, 4, h, w, device="meta", dtype=dtype)
    context = torch.empty(batch, 77, 2048, device="meta", dtype=dtype)
    added = {"text_embeds": torch.empty(batch, 1280, device="meta", dtype=dtype),
             "time_ids": torch.empty(batch, 6, device="meta")}
    timesteps = torch.zeros(batch, dtype=torch.long, device="meta")
    for param in unet.parameters():
        param.grad = None
    existing = [*unet.parameters(), *unet.buffers(), latents, context, *added.values(), timesteps]
    with LiveBytes(existing) as mode:
        pred = unet(latents, timesteps, context, added_cond_kwargs=added).sample
        loss = torch.nn.functional.mse_loss(pred.float(), latents.float())
        loss.backward()
    return mode.peak - grad_bytes


def text_encoders_peak(dtype: torch.dtype, batch: int, rank: int) -> int:
    """Activation peak of both text encoders with LoRA trained (77 tokens, no checkpointing), gradients out."""
    from sdxl_lora.config.schema import NetworkConfig
    from sdxl_lora.models.configs import build_empty, shipped_config
    from sdxl_lora.network.lora import apply_lora

    te1, te2 = (build_empty(c, shipped_config(c)).to(dtype=dtype) for c in ("te1", "te2"))
    handles = apply_lora(torch.nn.Linear(1, 1), te1, te2, NetworkConfig(network_dim=rank, train_unet=False,
                                                                         train_text_encoder=True))
    params = handles.parameters("te1") + handles.parameters("te2")
    for param in params:
        param.data = param.data.to(device="meta", dtype=dtype)
    ids = torch.zeros(batch, 77, dtype=torch.long, device="meta")
    existing = [*te1.parameters(), *te1.buffers(), *te2.parameters(), *te2.buffers(), ids]
    with LiveBytes(existing) as mode:
        out1 = te1(ids, output_hidden_states=True)
        out2 = te2(ids, output_hidden_states=True)
        total = out1.hidden_states[-2].float().sum() + out2.hidden_states[-2].float().sum()
        (total + out2.text_embeds.float().sum()).backward()
    return mode.peak - sum(p.numel() * p.element_size() for p in params)


def vae_encode_peak(dtype: torch.dtype, size: int, batch: int) -> int:
    """Working set of the VAE encoder (no gradients) on `batch` images of size x size."""
    from sdxl_lora.models.configs import build_empty, shipped_config

    vae = build_empty("vae", shipped_config("vae")).to(dtype=dtype)
    pixels = torch.empty(batch, 3, size, size, device="meta", dtype=dtype)
    with torch.no_grad(), LiveBytes([*vae.parameters(), *vae.buffers(), pixels]) as mode:
        vae.encode(pixels).latent_dist.sample()
    return mode.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.nn.functional.scaled_dot_product_attention = flash_sdpa
    for size in args.sizes:
        peak = vae_encode_peak(dtype, size, args.batch)
        print(json.dumps({"vae_encode": True, "resolution": size, "batch": args.batch, "dtype": args.dtype,
                          "activation_bytes": peak, "bytes_per_image_pixel": round(peak / size**2 / args.batch)}),
              flush=True)
    te_peak = text_encoders_peak(dtype, args.batch, args.rank)
    print(json.dumps({"text_encoders": True, "batch": args.batch, "dtype": args.dtype, "rank": args.rank,
                      "activation_bytes": te_peak}), flush=True)
    for checkpointing in (False, True):
        unet, grad_bytes = build_unet(dtype, checkpointing, args.rank)
        for size in args.sizes:
            start = time.perf_counter()
            peak = measure(unet, grad_bytes, size, args.batch, dtype)
            pixels = (size // 8) ** 2 * args.batch
            print(json.dumps({"resolution": size, "batch": args.batch, "checkpointing": checkpointing,
                              "dtype": args.dtype, "rank": args.rank, "activation_bytes": peak,
                              "bytes_per_latent_pixel": round(peak / pixels),
                              "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
