"""The lean LoRA layer: sd-scripts' `base(x) + up(down(x)) * scale` around one frozen Linear / Conv2d (spec 3.5).

Why not peft's layer: on the tiny SDXL on CPU its generic forward (adapter loop, dropout module, input cast,
scaling as a separate multiply, a module call per part) made the U-Net's forward+backward with rank-4 LoRA cost
1.5-2x the frozen U-Net's, for under 1% more FLOPs (issue 12 item 6). Here the common case is three kernels:
the base layer, down, up, and the scale folded into the add (`torch.add(base, lora, alpha=scale)`); sd-scripts'
dropouts are a separate path taken only when one is set and the layer is training.

The attributes keep peft's names (`base_layer`, `lora_A` / `lora_B` dicts of one "default" adapter, `r`,
`lora_alpha`, `scaling`), so the model's state dict keys and every caller stay as they were with peft.
Init as sd-scripts and peft: down Kaiming-uniform a=sqrt(5), up zeros, created in float32 on the CPU (in the
same order, so a seed gives the same weights as before) and then moved to the base layer's device in the
network dtype (the base layer's `compute_dtype`, set by models/precision.py, else its weight dtype).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

ADAPTER_NAME = "default"


@dataclass(frozen=True)
class Dropouts:
    """sd-scripts' three LoRA dropouts (spec 3.5), each a probability; None or 0 means off."""

    neuron: float | None = None
    """--network_dropout: dropout on down(x)."""
    rank: float | None = None
    """rank_dropout: a (batch, rank) keep-mask on down(x), the scale multiplied by 1 / (1 - p)."""
    module: float | None = None
    """module_dropout: with probability p per call the module adds nothing."""

    @property
    def any(self) -> bool:
        return bool(self.neuron or self.rank or self.module)


def _parts(base: nn.Module, rank: int) -> tuple[nn.Module, nn.Module]:
    """down and up as sd-scripts builds them: a conv down keeps the base kernel, stride and padding; up is 1x1."""
    if isinstance(base, nn.Linear):
        return nn.Linear(base.in_features, rank, bias=False), nn.Linear(rank, base.out_features, bias=False)
    if isinstance(base, nn.Conv2d) and base.groups == 1:
        down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation,
                         bias=False)
        return down, nn.Conv2d(rank, base.out_channels, 1, bias=False)
    raise TypeError(f"LoRA needs a Linear or an ungrouped Conv2d, got {type(base).__name__}")


def network_dtype(base: nn.Module) -> torch.dtype:
    """The dtype LoRA weights get beside this layer: its `compute_dtype` if set, else its (float) weight dtype."""
    dtype = getattr(base, "compute_dtype", None) or base.weight.dtype
    return dtype if dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) else torch.float32


def _plain_linear(base: nn.Module) -> bool:
    """An nn.Linear that nothing hooks into (e.g. DeepSpeed ZeRO-3 gathers weights in a pre-forward hook): its
    forward can be done here on the flattened input, sparing a module call and a reshape."""
    return (type(base) is nn.Linear and not base._forward_pre_hooks and not base._forward_hooks
            and "forward" not in base.__dict__)


class LoraLayer(nn.Module):
    """A frozen Linear / Conv2d plus `scale * up(down(x))`, scale = alpha / rank."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropouts: Dropouts | None = None):
        super().__init__()
        down, up = _parts(base, rank)
        nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
        nn.init.zeros_(up.weight)
        to = dict(device=base.weight.device, dtype=network_dtype(base))
        self.base_layer = base
        self.lora_A = nn.ModuleDict({ADAPTER_NAME: down.to(**to)})
        self.lora_B = nn.ModuleDict({ADAPTER_NAME: up.to(**to)})
        self.r = {ADAPTER_NAME: rank}
        self.lora_alpha = {ADAPTER_NAME: float(alpha)}
        self.scaling = {ADAPTER_NAME: float(alpha) / rank}
        self.linear = isinstance(base, nn.Linear)
        self.in_features = base.in_features if self.linear else base.in_channels
        self.out_features = base.out_features if self.linear else base.out_channels
        self.dropouts = dropouts if dropouts is not None and dropouts.any else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down, up = self.lora_A[ADAPTER_NAME], self.lora_B[ADAPTER_NAME]
        if (self.dropouts is not None and self.training) or not self.linear or (
                x.dtype != down.weight.dtype and not torch.is_autocast_enabled(x.device.type)):
            return self._forward_general(x, down, up)
        # Linear: two matrix products on the flattened input; the scale rides on addmm's alpha and the sum
        # with the base output is the same kernel (autocast, when on, casts every operand as for F.linear).
        base, x2 = self.base_layer, x.reshape(-1, x.shape[-1])
        if _plain_linear(base):
            weight, bias = base.weight, base.bias
            result = torch.mm(x2, weight.t()) if bias is None else torch.addmm(bias, x2, weight.t())
        else:
            result = base(x).reshape(-1, self.out_features)
        out = torch.addmm(result, torch.mm(x2, down.weight.t()), up.weight.t(), alpha=self.scaling[ADAPTER_NAME])
        return out.view(*x.shape[:-1], self.out_features)

    def _forward_general(self, x: torch.Tensor, down: nn.Module, up: nn.Module) -> torch.Tensor:
        """Conv2d, inputs in another dtype than the LoRA weights without autocast, and sd-scripts' dropouts
        in training (as its LoRAModule: neuron dropout and rank dropout on down(x); a module-dropped call adds
        `0 * up(...)`, so every LoRA weight still gets a (zero) gradient)."""
        result = self.base_layer(x)
        if x.dtype != down.weight.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(down.weight.dtype)
        hidden = down(x)
        scale = self.scaling[ADAPTER_NAME]
        drop = self.dropouts if self.training else None
        if drop is not None and drop.neuron:
            hidden = nn.functional.dropout(hidden, p=drop.neuron)
        if drop is not None and drop.rank:
            keep = torch.rand(hidden.shape[0], hidden.shape[1] if hidden.dim() == 4 else hidden.shape[-1],
                              device=hidden.device) > drop.rank
            keep = keep[:, :, None, None] if hidden.dim() == 4 else keep.unsqueeze(1) if hidden.dim() == 3 else keep
            hidden = hidden * keep.to(hidden.dtype)
            scale = scale / (1.0 - drop.rank)
        if drop is not None and drop.module and torch.rand(1).item() < drop.module:
            scale = 0.0
        lora = up(hidden)
        if lora.dtype != result.dtype:
            return result + (lora * scale).to(result.dtype)
        return torch.add(result, lora, alpha=scale)
