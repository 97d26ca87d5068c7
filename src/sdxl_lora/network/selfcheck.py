"""After a save, read the file back and check every key the way a UI's LoRA loader would (issue 9 item 5): each
module name must name a Linear/Conv2d of this SDXL whose shapes fit, and carry down, up and alpha. Keys a loader
would ignore, or modules it would load at another scale, are reported."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from sdxl_lora.network.keys import Component, parse_kohya_name
from sdxl_lora.network.kohya import ALPHA, DOWN, UP
from sdxl_lora.network.weights import read_lora, to_kohya


def _fits(module: nn.Module, down, up) -> bool:
    base = getattr(module, "base_layer", module)  # the live model holds the LoRA layer around it
    if isinstance(base, nn.Linear):
        return down.dim() == 2 and down.shape[1] == base.in_features and up.shape[0] == base.out_features
    if isinstance(base, nn.Conv2d):
        return (down.dim() == 4 and down.shape[1] == base.in_channels and up.shape[0] == base.out_channels
                and tuple(down.shape[2:]) in ((1, 1), tuple(base.kernel_size)))
    return False


def check_lycoris(state: Mapping, models: Mapping[Component, nn.Module]) -> list[str]:
    """A LyCORIS file: every module name (the key up to the first '.') must name a Linear, Conv2d or norm layer
    of this SDXL and carry an alpha (IA3 and norm modules have none), as A1111/ComfyUI look them up."""
    problems, modules = [], {}
    for key in state:
        name, _, tensor = key.partition(".")
        modules.setdefault(name, set()).add(tensor)
    for name, tensors in sorted(modules.items()):
        try:
            component, module_path = parse_kohya_name(name)
            module = models[component].get_submodule(module_path)
        except (KeyError, AttributeError):
            problems.append(f"{name}: no SDXL module of this name (a loader ignores it)")
            continue
        if not isinstance(module, (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)):
            problems.append(f"{name}: {type(module).__name__} at {module_path} is not a layer a loader patches")
        elif "alpha" not in tensors and not tensors & {"weight", "w_norm", "on_input"}:
            problems.append(f"{name}: no alpha")
    return problems


def check_saved(path: str | Path, models: Mapping[Component, nn.Module]) -> list[str]:
    """Problems a LoRA loader would have with the saved file; [] when every key maps onto an SDXL module."""
    raw, metadata = read_lora(path)
    lycoris_keys = any(k.startswith("lora_") and not k.endswith((DOWN, UP, ALPHA)) for k in raw)
    if metadata.get("ss_network_module") == "lycoris.kohya" or lycoris_keys:
        return check_lycoris(raw, models)
    state, unknown = to_kohya(raw, metadata)
    problems = [f"{key}: not a LoRA key of SDXL (a loader ignores it)" for key in unknown]
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in state}
    for name in sorted(names):
        missing = [s for s in (DOWN, UP, ALPHA) if name + s not in state]
        if missing:
            problems.append(f"{name}: no {', '.join(s.lstrip('.') for s in missing)}")
            continue
        component, module_path = parse_kohya_name(name)
        model = models.get(component)
        try:
            module = model.get_submodule(module_path) if model is not None else None
        except AttributeError:
            module = None
        if module is None or not _fits(module, state[name + DOWN], state[name + UP]):
            problems.append(f"{name}: no {component} module of this shape at {module_path} (a loader ignores it)")
    return problems
