"""SDXL single-file checkpoints (original SGM layout): read them into diffusers/transformers models, write them.

Reading is lean: each model is built on the meta device, and each file tensor is read on its own, cast to its
final dtype and device, renamed (sgm_layout) and assigned in place, so memory holds the model plus a few tensors.
Tensors are read by READERS threads at once (at least 4, as reads wait on the disk): on a VM most of a load is the
kernel filling fresh pages, which threads share out, and a disk serves several reads at once (full-size SDXL,
6.46 GiB float16 file, 2 cores: from the page cache 4-9 s in one thread, 3.0-3.3 s in two; from disk 6.8 s for
`cat`, 5.7 s in two threads, 4.1 s in four).
Configs come from the file when it records them, else from SDXL base's shipped configs resized to the file
(configs.py), or from a diffusers folder given as `config_dir` (as diffusers' `from_single_file(config=...)`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from sdxl_lora.common.files import atomic_folder
from sdxl_lora.common.host import cpus, return_freed_memory
from sdxl_lora.models import configs as cfgs
from sdxl_lora.models.checkpoint_io import (
    Checkpoint,
    content_problem,
    open_checkpoint,
    write_safetensors,
    write_torch_checkpoint,
)
from sdxl_lora.models.errors import ModelLoadError
from sdxl_lora.models.folder import folder_configs, load_component
from sdxl_lora.models.phases import loading
from sdxl_lora.models.sgm_layout import (
    COMPONENTS,
    FILE_PREFIX,
    Layout,
    layout_for,
    to_file_tensors,
    to_model_tensors,
)

DESCRIPTION = {"unet": "U-Net (model.diffusion_model.*)", "vae": "VAE (first_stage_model.*)",
               "te1": "text encoder 1 (conditioner.embedders.0.transformer.*)",
               "te2": "text encoder 2 (conditioner.embedders.1.model.*)"}
VAE_ONLY_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
WRITABLE = (".safetensors", ".ckpt", ".pt")
READERS = min(8, max(4, cpus()))


def group_keys(keys: Iterable[str], prefixes: Mapping[str, str] = FILE_PREFIX) -> dict[str, list[str]]:
    """component -> its file names without the prefix; names under no component prefix are left out."""
    groups: dict[str, list[str]] = {c: [] for c in prefixes}
    for key in keys:
        for component, prefix in prefixes.items():
            if key.startswith(prefix):
                groups[component].append(key[len(prefix):])
                break
    return groups


def model_shapes(ckpt: Checkpoint, component: str, names: list[str], prefix: str) -> dict[str, torch.Size]:
    """Model-named shapes of one component, from the file header alone (meta tensors, nothing read)."""
    layout = layout_for(component, names)
    return {name: t.shape for file_name in names
            for name, t in _to_model(ckpt, layout, file_name, ckpt.meta(prefix + file_name))}


def _to_model(ckpt: Checkpoint, layout: Layout, file_name: str, tensor: torch.Tensor) -> list:
    try:
        return to_model_tensors(layout, file_name, tensor)
    except KeyError:
        raise ModelLoadError(f"{ckpt.path}: its {DESCRIPTION[layout.component]} holds {file_name!r}, which SDXL's "
                             "layout does not have") from None


def load_from_checkpoint(ckpt: Checkpoint, layout: Layout, names: list[str], prefix: str, config: Mapping,
                         dtype: torch.dtype | None, device: torch.device | str) -> torch.nn.Module:
    """Build one component empty and fill it tensor by tensor; a frozen model in eval mode."""
    what = f"{ckpt.path}: its {DESCRIPTION[layout.component]}"
    model = cfgs.build_empty(layout.component, config)
    state: dict[str, torch.Tensor] = {}

    def read(file_name: str) -> list:
        return _to_model(ckpt, layout, file_name, ckpt.load(prefix + file_name, dtype, device))

    pool = ThreadPoolExecutor(READERS, thread_name_prefix="sdxl-lora-read")
    try:
        for pairs in pool.map(read, names):
            state.update(pairs)
    finally:
        pool.shutdown(cancel_futures=True)  # after an error, nothing more is read
    expected = model.state_dict().keys()
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise ModelLoadError(f"{what} does not fit its config: {len(missing)} missing (e.g. {missing[:1]}), "
                             f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise ModelLoadError(f"{what} does not fit its config: {detail}") from None
    model.requires_grad_(False)
    return model.eval()


def read_single_file(path: Path, *, dtypes: Mapping[str, torch.dtype | None] | None = None,
                     device: torch.device | str = "cpu", mmap: bool = True, components: Iterable[str] = COMPONENTS,
                     config_dir: Path | None = None) -> dict[str, torch.nn.Module]:
    """component -> frozen model, read from an SDXL single file; dtype None (or absent) keeps the file's dtype.

    `mmap` applies to .ckpt files only (torch.load); .safetensors tensors are always read, never mapped."""
    path, dtypes, components = Path(path), dict(dtypes or {}), tuple(components)
    with open_checkpoint(path, mmap) as ckpt:
        if problem := content_problem(ckpt.keys):
            raise ModelLoadError(f"{path}: {problem}")
        groups = group_keys(ckpt.keys)
        if absent := [c for c in components if not groups[c]]:
            raise ModelLoadError(f"{path}: has no {DESCRIPTION[absent[0]]}")
        configs = _configs(ckpt, groups, components, config_dir)
        models = {}
        for c in components:
            with loading(c):
                models[c] = load_from_checkpoint(ckpt, layout_for(c, groups[c]), groups[c], FILE_PREFIX[c],
                                                 configs[c], dtypes.get(c), device)
    return_freed_memory()  # the staging buffers of cast tensors
    return models


def _configs(ckpt: Checkpoint, groups: dict[str, list[str]], components: tuple[str, ...],
             config_dir: Path | None) -> dict[str, dict]:
    if config_dir is not None:
        return folder_configs(Path(config_dir))
    recorded = cfgs.recorded_configs(ckpt.metadata)
    if recorded and all(c in recorded for c in components):
        return recorded
    wanted = set(components) | ({"te2"} if "unet" in components and groups["te2"] else set())
    return _inferred(ckpt, cfgs.infer_configs, {c: model_shapes(ckpt, c, groups[c], FILE_PREFIX[c]) for c in wanted})


def _inferred(ckpt: Checkpoint, infer, shapes):
    """infer(shapes), with a problem reported as one line naming the file."""
    try:
        return infer(shapes)
    except ModelLoadError as err:
        raise ModelLoadError(f"{ckpt.path}: {err}") from None
    except KeyError as err:
        raise ModelLoadError(f"{ckpt.path}: cannot size the model from its tensors: {err} is missing") from None


def read_vae_file(path: Path, dtype: torch.dtype | None, device: torch.device | str = "cpu",
                  mmap: bool = True) -> torch.nn.Module:
    """A VAE from a full SDXL checkpoint (first_stage_model.*) or a VAE-only file in LDM or diffusers names."""
    path = Path(path)
    with open_checkpoint(path, mmap) as ckpt:
        prefix = FILE_PREFIX["vae"] if any(k.startswith(FILE_PREFIX["vae"]) for k in ckpt.keys) else ""
        names = [k[len(prefix):] for k in ckpt.keys
                 if k.startswith(prefix) and k[len(prefix):].startswith(VAE_ONLY_PREFIXES)]
        if not names:
            raise ModelLoadError(f"{path}: no VAE in it (no first_stage_model.* or encoder./decoder. tensors)")
        if any(".down_blocks." in n or ".up_blocks." in n for n in names):  # diffusers names already
            layout = Layout("vae", str, str)
            shapes = {n: ckpt.meta(prefix + n).shape for n in names}
        else:
            layout = layout_for("vae", names)
            shapes = model_shapes(ckpt, "vae", names, prefix)
        config = ((cfgs.recorded_configs(ckpt.metadata) or {}).get("vae") or _sibling_vae_config(path)
                  or _inferred(ckpt, cfgs.infer_vae, shapes))
        return load_from_checkpoint(ckpt, layout, names, prefix, config, dtype, device)


def _sibling_vae_config(path: Path) -> dict | None:
    """The config.json beside a diffusers VAE weights file (vae/diffusion_pytorch_model.safetensors)."""
    sibling = path.parent / "config.json"
    if not sibling.is_file():
        return None
    config = json.loads(sibling.read_text("utf-8"))
    return config if config.get("_class_name") == "AutoencoderKL" else None


def write_single_file(diffusers_dir: Path, out_path: Path, dtype: torch.dtype | None = None) -> Path:
    """Write a diffusers SDXL folder as one SGM-layout file (.safetensors, or .ckpt/.pt as {"state_dict": ...}).

    dtype None keeps each component's stored dtype. The folder's configs are recorded in the file, so it loads
    back into exactly the same models. The file is written beside `out_path` and renamed into place.
    """
    root, out = Path(diffusers_dir), Path(out_path)
    if out.suffix.lower() not in WRITABLE:
        raise ModelLoadError(f"{out}: unknown single-file type; expected one of {', '.join(WRITABLE)}")
    configs = folder_configs(root)
    tensors: dict[str, torch.Tensor] = {}
    for component in COMPONENTS:
        state = load_component(root, component, dtype).state_dict()
        tensors.update(to_file_tensors(layout_for(component, state), state))
    metadata = cfgs.record_configs(configs)
    if out.suffix.lower() == ".safetensors":
        write_safetensors(out, list(tensors.items()), tensors.__getitem__, metadata)
    else:
        write_torch_checkpoint(out, tensors, metadata)
    return out


def convert_to_diffusers(single_file: Path, out_dir: Path, config_dir: Path | None = None) -> Path:
    """Write an SDXL single file as a diffusers folder (weights in the file's dtype, tokenizers built offline)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from sdxl_lora.models.tokenizers import clip_tokenizers

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ModelLoadError(f"{out}: exists and is not empty")
    parts = read_single_file(single_file, config_dir=config_dir)
    tok1, tok2 = clip_tokenizers()
    scheduler = EulerDiscreteScheduler.from_config(cfgs.shipped_config("scheduler"))
    pipe = StableDiffusionXLPipeline(vae=parts["vae"], text_encoder=parts["te1"], text_encoder_2=parts["te2"],
                                     tokenizer=tok1, tokenizer_2=tok2, unet=parts["unet"], scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    with atomic_folder(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return out
