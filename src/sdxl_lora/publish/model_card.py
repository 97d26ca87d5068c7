"""README.md beside the LoRA in the Hugging Face model-card format: YAML front matter the Hub reads (base model,
tags, trigger words, sample-image widget), then trigger words, a table of the key training settings and the
sample images as relative links. Written atomically; the token is never part of it (nothing here reads it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from sdxl_lora.common.files import atomic_path
from sdxl_lora.config.schema import RunConfig
from sdxl_lora.config.sources import looks_like_hub_id

log = logging.getLogger(__name__)
TAGS = ("lora", "stable-diffusion-xl", "text-to-image", "sdxl-lora")
MAX_TRIGGER_WORDS = 10


def write_model_card(out_dir: str | Path, *, lora_file: str, base_model: str | None = None,
                     trigger_words: Sequence[str] = (), settings: Mapping[str, object] | None = None,
                     samples: Sequence[tuple[str | Path, str]] = (), title: str | None = None,
                     description: str | None = None, license: str | None = None,
                     tags: Sequence[str] = (), diffusers_snippet: bool = True) -> Path | None:
    """Write `out_dir/README.md` and return its path; None (with a warning) when a README.md that this program did
    not write is already there, which is left as it is. `samples` are (image file, prompt) pairs; images are
    linked relative to `out_dir`. A base model that is not a Hub id (a local file or folder) is named in the text
    only, since the Hub's `base_model` field must name a repo. `diffusers_snippet`: show how to load the file with
    diffusers (when the base model is a Hub id)."""
    from huggingface_hub import ModelCardData

    out_dir = Path(out_dir)
    links = [(_relative(image, out_dir), prompt) for image, prompt in samples]
    hub_base = _hub_id(base_model)
    data = ModelCardData(
        base_model=hub_base, tags=[*TAGS, *tags], library_name="diffusers", license=license or None,
        instance_prompt=", ".join(trigger_words) or None,
        widget=[{"text": prompt, "output": {"url": link}} for link, prompt in links] or None,
    )
    body = _body(lora_file=lora_file, base_model=base_model, snippet_base=hub_base if diffusers_snippet else None,
                 trigger_words=trigger_words, settings=settings or {}, links=links, title=title,
                 description=description)
    target = out_dir / "README.md"
    if target.exists() and not _ours(target):
        log.warning("%s exists and is not a model card sdxl-lora wrote: left as it is, no model card written", target)
        return None
    with atomic_path(target) as temporary:
        temporary.write_text(f"---\n{data.to_yaml()}\n---\n\n{body}", encoding="utf-8")
    return target


def _body(*, lora_file, base_model, snippet_base, trigger_words, settings, links, title, description) -> str:
    lines = [f"# {title or Path(lora_file).stem}", ""]
    if description:
        lines += [description, ""]
    base = _base_link(base_model)
    lines += [f"A LoRA for Stable Diffusion XL (base model: {base}), trained with sdxl-lora; `{lora_file}` is in "
              "the kohya format, as sd-scripts writes it.", ""]
    lines += ["## Trigger words", ""]
    if trigger_words:
        lines += ["Use " + ", ".join(f"`{w}`" for w in trigger_words) + " in the prompt.", ""]
    else:
        lines += ["None recorded for this run.", ""]
    if settings:
        lines += ["## Training settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| {_cell(key)} | {_cell(value)} |" for key, value in settings.items()] + [""]
    if links:
        lines += ["## Samples", ""]
        for link, prompt in links:
            alt = _cell(prompt).replace("[", "(").replace("]", ")")
            lines += [f"![{alt}]({link})", "", f"*{_cell(prompt)}*", ""]
    if snippet_base:
        lines += ["## Use with diffusers", "", "```py", "import torch",
                  "from diffusers import StableDiffusionXLPipeline", "",
                  f'pipe = StableDiffusionXLPipeline.from_pretrained("{snippet_base}", torch_dtype=torch.float16)',
                  f'pipe.load_lora_weights(".", weight_name="{lora_file}")  # or the repo id holding this file',
                  f'image = pipe({", ".join(trigger_words) or "a photo"!r}).images[0]', "```", ""]
    return "\n".join(lines)


def _ours(card: Path) -> bool:
    """Whether the README.md carries the tag this module writes (so it may be replaced)."""
    text = card.read_text(encoding="utf-8", errors="replace")
    return text.startswith("---\n") and f"\n- {TAGS[-1]}\n" in text.split("\n---\n", 1)[0]


def _relative(image: str | Path, out_dir: Path) -> str:
    path = Path(image)
    return Path(os.path.relpath(path, out_dir) if path.is_absolute() else path).as_posix()


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _hub_id(base_model: str | None) -> str | None:
    """The base model when it names a Hub repo (not a local file or folder)."""
    if base_model and looks_like_hub_id(base_model) and not Path(base_model).exists():
        return base_model
    return None


def _base_link(base_model: str | None) -> str:
    if _hub_id(base_model):
        return f"[{base_model}](https://huggingface.co/{base_model})"
    return f"`{Path(base_model).name}`" if base_model else "unknown"


def trigger_words(args: Mapping[str, object], datasets: Sequence[Mapping]) -> list[str]:
    """What to put in a prompt to call up the LoRA, from what the run knows: --metadata_trigger_phrase when given;
    else the class tokens of the training (not regularisation) folders; else the tags that every caption of a
    training folder carries. `datasets` is the ss_datasets list (data.metadata.metadata_datasets)."""
    if args.get("metadata_trigger_phrase"):
        return [str(args["metadata_trigger_phrase"])]
    subsets = [s for d in datasets for s in d.get("subsets", []) if not s.get("is_reg")]
    words = _unique(s["class_tokens"] for s in subsets if s.get("class_tokens"))
    if not words:
        counts = {s.get("image_dir"): s.get("img_count") or 0 for s in subsets}
        words = _unique(tag for d in datasets for folder, tags in d.get("tag_frequency", {}).items()
                        if counts.get(folder) for tag, n in tags.items() if n >= counts[folder])
    return words[:MAX_TRIGGER_WORDS]


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))


def training_settings(cfg: RunConfig, *, steps: int, epochs: int) -> dict[str, str]:
    """The key settings of a run, for the card's table."""
    optim, network = cfg.optim, cfg.network
    unet_lr = optim.unet_lr if optim.unet_lr is not None else optim.learning_rate
    te_lrs = [lr if lr is not None else optim.learning_rate for lr in optim.text_encoder_lr]
    scheduler = optim.lr_scheduler_type or optim.lr_scheduler
    if optim.lr_warmup_steps:
        scheduler += f", warmup {optim.lr_warmup_steps}"
    batch = ", ".join(_unique(str(d.batch_size) for d in cfg.data.datasets))
    if cfg.train.gradient_accumulation_steps > 1:
        batch += f" x {cfg.train.gradient_accumulation_steps} accumulation steps"
    return {
        "steps": str(steps),
        "epochs": str(epochs),
        "network": network.network_module,
        "rank / alpha": f"{network.rank} / {network.alpha:g}",
        "U-Net learning rate": f"{unet_lr:g}" if network.train_unet else "not trained",
        "text encoder learning rates": " / ".join(f"{lr:g}" for lr in te_lrs) if network.train_text_encoder
        else "not trained",
        "optimizer": optim.optimizer_type,
        "scheduler": scheduler,
        "resolution": ", ".join(_unique(f"{w}x{h}" for w, h in (d.resolution for d in cfg.data.datasets))),
        "batch size": batch,
        "precision": f"{cfg.model.mixed_precision} mixed precision, saved as "
                     f"{cfg.save.save_precision or 'the training dtype'}",
        "seed": str(cfg.train.seed),
    }


def card_for_run(cfg: RunConfig, lora_path: str | Path, *, steps: int, epochs: int, datasets: Sequence[Mapping],
                 samples: Sequence[tuple[str | Path, str]] = ()) -> Path | None:
    """README.md beside `lora_path` for a finished run: the base model, trigger words and settings from the run,
    title, description, license and extra tags from --metadata_title/description/license/tags. None when a
    README.md this program did not write is in the way."""
    args = cfg.args
    tags = [t.strip() for t in str(args.get("metadata_tags") or "").split(",") if t.strip()]
    return write_model_card(
        Path(lora_path).parent, lora_file=Path(lora_path).name, base_model=cfg.model.pretrained_model_name_or_path,
        trigger_words=trigger_words(args, datasets), settings=training_settings(cfg, steps=steps, epochs=epochs),
        samples=samples, title=args.get("metadata_title") or cfg.save.output_name,
        description=args.get("metadata_description"), license=args.get("metadata_license"), tags=tags,
        diffusers_snippet=cfg.network.lycoris is None,  # diffusers loads kohya LoRA, not every LyCORIS algorithm
    )
