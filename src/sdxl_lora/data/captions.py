"""Caption processing as sd-scripts' `process_caption` does it, as pure functions of the caption, the subset's
settings, a random generator, the epoch and the step (spec 2.3, 2.9).

Order: prefix/suffix on the whole caption -> whole-caption dropout -> wildcard line and `{a|b}` choices (or the
first line) -> tags: keep_tokens_separator / keep_tokens split, token warmup, shuffle, tag dropout, joined with
", " -> secondary_separator replaced by caption_separator.

Where sd-scripts misbehaves we differ (README "Differences from sd-scripts"): keep_tokens_separator is removed
even when no tag option is on (sd-scripts then feeds it to the text encoder), and empty tags are dropped
(sd-scripts keeps `a, , b`).
"""

from __future__ import annotations

import math
import random
import re

from sdxl_lora.config.dataset_toml import SubsetConfig

_WILDCARD = re.compile(r"\{\{|\}\}|\{([^}]+)\}")
"""`{{` and `}}` are literal braces; `{a|b|c}` is one random choice."""


def with_prefix_suffix(caption: str, prefix: str | None, suffix: str | None) -> str:
    """caption_prefix and caption_suffix joined with one space, around the whole (possibly multi-line) caption,
    so with wildcards the prefix joins the first line and the suffix the last (as sd-scripts)."""
    if prefix:
        caption = f"{prefix} {caption}"
    if suffix:
        caption = f"{caption} {suffix}"
    return caption


def is_dropped(rate: float, every_n_epochs: int, epoch: int, rng: random.Random) -> bool:
    """Whole-caption dropout: with probability `rate`, or in every epoch whose 1-based number is a multiple
    of `every_n_epochs` (`epoch` is 0-based: the first epoch is epoch 1 to the user). Draws from `rng` only
    when rate > 0."""
    if rate > 0 and rng.random() < rate:
        return True
    return every_n_epochs > 0 and (epoch + 1) % every_n_epochs == 0


def expand_wildcards(caption: str, enable_wildcard: bool, rng: random.Random) -> str:
    """With enable_wildcard: one random line, then each `{a|b}` replaced by one random option, `{{`/`}}` by
    literal braces. Without: the first line, braces untouched."""
    if not enable_wildcard:
        return caption.split("\n")[0]
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))

    def replace(match: re.Match) -> str:
        if match.group(0) == "{{":
            return "{"
        if match.group(0) == "}}":
            return "}"
        return rng.choice(match.group(1).split("|"))

    return _WILDCARD.sub(replace, caption)


def split_tags(caption: str, separator: str) -> list[str]:
    """Tags split on `separator`, stripped, empty ones dropped."""
    return [tag.strip() for tag in caption.split(separator) if tag.strip()]


def fixed_and_flexible(caption: str, subset: SubsetConfig) -> tuple[list[str], list[str], list[str]]:
    """(fixed head, flexible tags, fixed tail). With keep_tokens_separator in the caption: the part before
    its first occurrence is fixed, the part after a second occurrence is a fixed tail (keep_tokens is then
    not used); else the first keep_tokens tags are fixed."""
    separator = subset.caption_separator
    marker = subset.keep_tokens_separator
    if marker and marker in caption:
        head, flexible = caption.split(marker, 1)
        tail = ""
        if marker in flexible:
            flexible, tail = flexible.split(marker, 1)
        return split_tags(head, separator), split_tags(flexible, separator), split_tags(tail, separator)
    tags = split_tags(caption, separator)
    keep = max(0, subset.keep_tokens)
    return tags[:keep], tags[keep:], []


def warmup_steps(token_warmup_step: float, max_train_steps: int) -> int:
    """token_warmup_step as steps: below 1 it is a fraction of max_train_steps (floored)."""
    if token_warmup_step < 1:
        return math.floor(token_warmup_step * max_train_steps)
    return int(token_warmup_step)


def warmup_count(num_tags: int, token_warmup_min: int, warmup: int, step: int) -> int | None:
    """How many flexible tags step `step` keeps during token warmup: floor(step * (num_tags - min) / warmup)
    + min, growing from token_warmup_min at step 0 to all tags at step `warmup`; None once warmup is over."""
    if warmup <= 0 or step >= warmup:
        return None
    return math.floor(step * ((num_tags - token_warmup_min) / warmup)) + token_warmup_min


def _uses_tags(subset: SubsetConfig) -> bool:
    return (subset.shuffle_caption or subset.token_warmup_step > 0 or subset.caption_tag_dropout_rate > 0
            or bool(subset.keep_tokens_separator))


def process_tags(caption: str, subset: SubsetConfig, rng: random.Random, *, step: int,
                 max_train_steps: int) -> str:
    """Token warmup (on the flexible tags, before shuffling), shuffle_caption, caption_tag_dropout_rate (each
    flexible tag dropped with that probability); joined with ", " as sd-scripts joins them."""
    head, flexible, tail = fixed_and_flexible(caption, subset)
    count = warmup_count(len(flexible), subset.token_warmup_min,
                         warmup_steps(subset.token_warmup_step, max_train_steps), step)
    if count is not None:
        flexible = flexible[:max(0, count)]
    if subset.shuffle_caption:
        rng.shuffle(flexible)
    if subset.caption_tag_dropout_rate > 0:
        flexible = [tag for tag in flexible if rng.random() >= subset.caption_tag_dropout_rate]
    return ", ".join(head + flexible + tail)


def is_fixed(subset: SubsetConfig) -> bool:
    """Whether process_caption gives each image the same caption at every step, so that its text-encoder
    output can be computed once: no random choice (shuffle, dropouts, wildcards) and no token warmup.
    caption_dropout_every_n_epochs only alternates with the empty caption, which is fixed too."""
    return not (subset.shuffle_caption or subset.caption_dropout_rate > 0 or subset.caption_tag_dropout_rate > 0
                or subset.enable_wildcard or subset.token_warmup_step > 0)


def process_caption(caption: str, subset: SubsetConfig, rng: random.Random, *, epoch: int = 0, step: int = 0,
                    max_train_steps: int = 0) -> str:
    """The caption the text encoders see for this sample in 0-based `epoch` at optimizer step `step`."""
    caption = with_prefix_suffix(caption, subset.caption_prefix, subset.caption_suffix)
    if is_dropped(subset.caption_dropout_rate, subset.caption_dropout_every_n_epochs, epoch, rng):
        return ""
    caption = expand_wildcards(caption, subset.enable_wildcard, rng)
    if _uses_tags(subset):
        caption = process_tags(caption, subset, rng, step=step, max_train_steps=max_train_steps)
    if subset.secondary_separator:
        caption = caption.replace(subset.secondary_separator, subset.caption_separator)
    return caption
