"""`--network_module lycoris.kohya`: a LyCORIS network built by the lycoris-lora package itself, behind the same
handles the loop uses for networks.lora (parameters per component, parameter groups, a state to save).

Targets: sd-scripts hands LyCORIS its own SDXL U-Net (SGM layout), whose classes Transformer2DModel,
ResnetBlock2D, Downsample2D and Upsample2D are the only ones a LyCORIS preset can match there; its module
names (conv_in, time_embedding...) never match sd-scripts' SGM names. Our diffusers U-Net has more classes
(TimestepEmbedding...), so the preset is narrowed to those four classes and no names: the same modules as
sd-scripts. Text encoders: CLIPAttention / CLIPMLP, as given by the preset.

Files: LyCORIS' own state dict (per module its algorithm's tensors, e.g. `hada_w1_a`, `lokr_w1`, `lora_down`,
`dora_scale`, and `.alpha`), with the module names turned into kohya names (`lora_unet_` + SGM path,
`lora_te1_text_model_...`), which A1111 and ComfyUI read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.lycoris_args import LycorisArgs
from sdxl_lora.config.schema import NetworkConfig, OptimConfig
from sdxl_lora.network.keys import Component, kohya_name

SDXL_UNET_CLASSES = ("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D")
LYCORIS_PREFIX = {"unet": "lora_unet", "te1": "lora_te1", "te2": "lora_te2"}


def _package():
    try:
        import lycoris.kohya as kohya
        from lycoris.config import PRESET
    except ImportError as err:
        raise ConfigError("--network_module lycoris.kohya needs the lycoris-lora package: "
                          "pip install 'lycoris-lora==4.1.3' (or pip install -e '.[lycoris]')") from err
    return kohya, PRESET


@dataclass
class LycorisHandles:
    """The LyCORIS network applied to the models, and the name map to kohya names."""

    network: nn.Module
    """lycoris.kohya.LycorisNetworkKohya, built with the SDXL preset."""
    models: Mapping[Component, nn.Module]
    """Component -> model that carries LyCORIS modules."""
    names: Mapping[str, str]
    """LyCORIS module name (diffusers path) -> kohya name (SGM path)."""
    components: Mapping[str, Component]
    """LyCORIS module name -> its component."""

    def _modules(self, component: Component) -> list[nn.Module]:
        return [m for m in self.network.loras if self.components[m.lora_name] == component]

    def parameters(self, component: Component) -> list[nn.Parameter]:
        """The trainable LyCORIS parameters of one component."""
        return [p for m in self._modules(component) for p in m.parameters() if p.requires_grad]

    def parameter_counts(self) -> dict[Component, int]:
        return {c: sum(p.numel() for p in self.parameters(c)) for c in self.models}

    def train(self, mode: bool = True) -> None:
        """LyCORIS' dropouts act in training mode only."""
        self.network.train(mode)

    def param_groups(self, network: NetworkConfig, optim: OptimConfig) -> list[dict]:
        """Groups as LyCORIS' prepare_optimizer_params makes them ("textencoder", "unet", LoRA+ "... plus" for
        lora_up weights), with each text encoder's own rate when the two differ."""
        args = network.lycoris or LycorisArgs()
        te_ratio = args.loraplus_text_encoder_lr_ratio or args.loraplus_lr_ratio
        unet_ratio = args.loraplus_unet_lr_ratio or args.loraplus_lr_ratio
        lr1, lr2 = (lr if lr is not None else optim.learning_rate for lr in optim.text_encoder_lr)
        unet_lr = optim.unet_lr if optim.unet_lr is not None else optim.learning_rate
        parts = [(["te1", "te2"], lr1, te_ratio, "textencoder")] if lr1 == lr2 else [
            (["te1"], lr1, te_ratio, "textencoder1"), (["te2"], lr2, te_ratio, "textencoder2")]
        parts.append((["unet"], unet_lr, unet_ratio, "unet"))
        groups = []
        for components, lr, ratio, name in parts:
            named = [(n, p) for c in components for m in self._modules(c) for n, p in m.named_parameters()
                     if p.requires_grad]
            plus = [p for n, p in named if ratio is not None and "lora_up" in n]
            rest = [p for n, p in named if ratio is None or "lora_up" not in n]
            for params, rate, label in ((rest, lr, name), (plus, lr * ratio if ratio and lr else None,
                                                           f"{name} plus")):
                if params and rate:
                    groups.append({"params": params, "lr": rate, "name": label})
        return groups

    def kohya_state_dict(self, save_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """LyCORIS' state dict (what its save_weights writes), module names as kohya names, on CPU."""
        out = {}
        for key, value in self.network.state_dict().items():
            module, rest = key.split(".", 1)
            tensor = value.detach().to("cpu", copy=True)
            out[f"{self.names[module]}.{rest}"] = (tensor if save_dtype is None else tensor.to(save_dtype)).contiguous()
        return out

    def load_kohya(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Load a LyCORIS file written with the same algorithm and ranks; every mismatch is named."""
        back = {kohya: ours for ours, kohya in self.names.items()}
        renamed, unknown = {}, []
        for key, value in state.items():
            module, _, rest = key.partition(".")
            if module in back:
                renamed[f"{back[module]}.{rest}"] = value
            else:
                unknown.append(key)
        own = self.network.state_dict()
        problems = [f"unknown key {k}" for k in unknown]
        problems += [f"missing key {self.names[k.split('.', 1)[0]]}.{k.split('.', 1)[1]}" for k in own
                     if k not in renamed]
        problems += [f"{k}: shape {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the network"
                     for k, v in renamed.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if problems:
            more = [f"... and {len(problems) - 5} more"] if len(problems) > 5 else []
            raise ConfigError([f"--network_weights {source}: the LyCORIS file does not fit this network (give the "
                               f"--network_dim and --network_args it was trained with); {len(problems)} problems:",
                               *problems[:5], *more])
        self.network.load_state_dict({k: v for k, v in renamed.items() if k in own}, strict=True)

    def max_norm_regularize(self, max_norm: float) -> tuple[int, float, float]:
        """--scale_weight_norms through LyCORIS' own max-norm (per module)."""
        device = next(iter(self.network.parameters())).device
        return self.network.apply_max_norm_regularization(max_norm, device)


def _preset(name: str, presets: Mapping[str, dict]) -> dict:
    preset = dict(presets[name])
    preset["unet_target_module"] = [c for c in preset.get("unet_target_module", []) if c in SDXL_UNET_CLASSES]
    preset["unet_target_name"] = []
    return preset


def _name_maps(models: Mapping[Component, nn.Module], wanted: set[str]) -> tuple[dict[str, str], dict]:
    """LyCORIS module name -> kohya name and -> component, for the wanted LyCORIS modules."""
    names, components = {}, {}
    for component, model in models.items():
        for path, _ in model.named_modules():
            ours = f"{LYCORIS_PREFIX[component]}_{path.replace('.', '_')}"
            if path and ours in wanted:
                names[ours], components[ours] = kohya_name(component, path), component
    missing = wanted - set(names)
    if missing:
        raise ValueError(f"LyCORIS modules without an SDXL kohya name: {sorted(missing)[:5]}")
    return names, components


def build_lycoris(unet: nn.Module, te1: nn.Module, te2: nn.Module, cfg: NetworkConfig) -> LycorisHandles:
    """Freeze the models, create LyCORIS modules as lycoris.kohya's create_network would for sd-scripts' SDXL,
    apply them to the trained models; only LyCORIS weights train."""
    kohya, presets = _package()
    args = cfg.lycoris or LycorisArgs()
    if not (cfg.train_unet or cfg.train_text_encoder):
        raise ValueError("nothing to train: both the U-Net and the text encoders are excluded")
    for model in (unet, te1, te2):
        model.requires_grad_(False)
    # LyCORIS reads its targets from class attributes of LycorisNetworkKohya (as its create_network sets them).
    network_class = kohya.LycorisNetworkKohya
    network_class.apply_preset(_preset(args.preset, presets))
    alpha = cfg.network_alpha if cfg.network_alpha else cfg.rank  # 0/None: alpha = rank, as networks.lora
    network = network_class(
        [te1, te2], unet, multiplier=1.0, lora_dim=cfg.rank, conv_lora_dim=args.conv_dim or cfg.rank,
        alpha=alpha, conv_alpha=args.conv_alpha if args.conv_alpha else alpha, dropout=args.dropout,
        rank_dropout=args.rank_dropout, module_dropout=args.module_dropout, use_tucker=args.use_tucker,
        use_scalar=args.use_scalar, network_module=args.algo, train_norm=args.train_norm,
        decompose_both=args.decompose_both, factor=args.factor, block_size=args.block_size,
        constraint=args.constraint, rescaled=args.rescaled, weight_decompose=args.dora_wd,
        wd_on_out=args.wd_on_output, full_matrix=args.full_matrix, bypass_mode=args.bypass_mode,
        rs_lora=False, unbalanced_factorization=args.unbalanced_factorization, warn_on_unmatched=False)
    network.apply_to([te1, te2], unet, apply_text_encoder=cfg.train_text_encoder, apply_unet=cfg.train_unet)
    models: dict[Component, nn.Module] = {}
    if cfg.train_unet:
        models["unet"] = unet
    if cfg.train_text_encoder:
        models["te1"], models["te2"] = te1, te2
    names, components = _name_maps(models, {m.lora_name for m in network.loras})
    # Each LyCORIS module also becomes a child of the layer it patches (as peft's layers are), so that the
    # model's .to() moves it and a prepared (DDP) model synchronises its gradients.
    for module in network.loras:
        module.org_module[0].add_module("lycoris", module)
    network.to(next(unet.parameters()).device)
    network.requires_grad_(True)
    handles = LycorisHandles(network=network, models=models, names=names, components=components)
    for component in models:
        if not handles.parameters(component):
            raise ValueError(f"{component}: LyCORIS preset {args.preset!r} targets no module there")
    handles.train(True)
    return handles
