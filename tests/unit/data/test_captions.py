"""Caption processing (sd-scripts process_caption, spec 2.3/2.9) with expected captions worked out by hand.

A scripted generator stands in for random.Random where the draw matters: `random()` returns the listed
values in turn, `shuffle` reverses, `choice` takes the listed indices in turn.
"""

from __future__ import annotations

import random

from sdxl_lora.config.dataset_toml import SubsetConfig
from sdxl_lora.data.captions import (
    expand_wildcards,
    is_dropped,
    process_caption,
    warmup_count,
    warmup_steps,
)


class Scripted:
    def __init__(self, values=(), choices=()):
        self.values, self.choices = list(values), list(choices)

    def random(self) -> float:
        return self.values.pop(0)

    def shuffle(self, items: list) -> None:
        items.reverse()

    def choice(self, items):
        return items[self.choices.pop(0)]


def run(caption: str, rng=None, *, epoch=0, step=0, max_train_steps=0, **settings) -> str:
    return process_caption(caption, SubsetConfig("x", **settings), rng or Scripted(), epoch=epoch, step=step,
                           max_train_steps=max_train_steps)


def test_plain_caption_is_unchanged():
    assert run("a photo, of  a dog,,") == "a photo, of  a dog,,"
    assert run("first line\nsecond") == "first line"  # without wildcards: the first line


def test_prefix_and_suffix_wrap_the_whole_caption_before_a_line_is_chosen():
    # "best, a {red|blue} dog\ncat end": line 0 carries the prefix, line 1 the suffix.
    settings = {"caption_prefix": "best,", "caption_suffix": "end", "enable_wildcard": True}
    assert run("a {red|blue} dog\ncat", Scripted(choices=[0, 1]), **settings) == "best, a blue dog"
    assert run("a {red|blue} dog\ncat", Scripted(choices=[1]), **settings) == "cat end"
    seen = {run("a {red|blue} dog\ncat", random.Random(seed), **settings) for seed in range(60)}
    assert seen == {"best, a red dog", "best, a blue dog", "cat end"}
    assert run("x", caption_prefix="p", caption_suffix="s") == "p x s"


def test_wildcard_braces_escape_and_choices():
    assert expand_wildcards("{{x}} {a|b}", True, Scripted(choices=[1])) == "{x} b"
    assert expand_wildcards("{{a|b}}", True, Scripted()) == "{a|b}"
    assert expand_wildcards("{a|b}", False, Scripted()) == "{a|b}"  # literal without enable_wildcard
    assert expand_wildcards("{only}", True, Scripted(choices=[0])) == "only"


def test_keep_tokens_and_shuffle():
    # Head a, b fixed; c, d, e reversed by the scripted shuffle.
    assert run("a, b, c, d, e", shuffle_caption=True, keep_tokens=2) == "a, b, e, d, c"
    assert run("a,, b, ,c", shuffle_caption=True) == "c, b, a"  # empty tags dropped
    assert run("a|b|c", shuffle_caption=True, caption_separator="|") == "c, b, a"  # joined with ", "


def test_keep_tokens_separator_fixes_head_and_tail_and_never_reaches_the_encoder():
    settings = {"keep_tokens_separator": "|||", "keep_tokens": 1}
    # Head a, b; flexible c, d (reversed); tail e. keep_tokens is not used with the separator.
    assert run("a, b ||| c, d ||| e", shuffle_caption=True, **settings) == "a, b, d, c, e"
    assert run("a, b ||| c, d", **settings) == "a, b, c, d"  # no tag option on: separator still removed
    assert run("a, b, c", shuffle_caption=True, **settings) == "a, c, b"  # separator absent: keep_tokens


def test_secondary_separator_groups_tags_then_becomes_the_separator():
    # Tags "a;;;b" and "c"; reversed -> "c, a;;;b" -> ";;;" replaced by ",".
    assert run("a;;;b, c", shuffle_caption=True, secondary_separator=";;;") == "c, a,b"
    assert run("a;;;b", secondary_separator=";;;") == "a,b"


def test_tag_dropout_drops_flexible_tags_only():
    # Flexible c, d, e draw 0.7, 0.2, 0.5 against rate 0.5: kept when draw >= rate -> c, e.
    rng = Scripted(values=[0.7, 0.2, 0.5])
    assert run("a, c, d, e", rng, keep_tokens=1, caption_tag_dropout_rate=0.5) == "a, c, e"


def test_caption_dropout_rate_and_every_n_epochs():
    assert run("a, b", Scripted(values=[0.05]), caption_dropout_rate=0.1) == ""
    assert run("a, b", Scripted(values=[0.1]), caption_dropout_rate=0.1) == "a, b"
    # Every 3rd epoch, counted from 1: 0-based epochs 2 and 5 are the user's epochs 3 and 6.
    dropped = [e for e in range(6) if is_dropped(0.0, 3, e, Scripted())]
    assert dropped == [2, 5]
    assert run("a", epoch=2, caption_dropout_every_n_epochs=3, caption_prefix="p") == ""


def test_token_warmup_by_hand():
    tags = "a, b, c, d, e, f, g"
    # 7 flexible tags, min 1, warmup 6 steps: floor(step * (7 - 1) / 6) + 1 -> step 0: 1, 3: 4, 5: 6, 6: all.
    counts = [len(run(tags, step=s, token_warmup_min=1, token_warmup_step=6).split(", ")) for s in (0, 3, 5, 6)]
    assert counts == [1, 4, 6, 7]
    assert run(tags, step=3, token_warmup_min=1, token_warmup_step=6) == "a, b, c, d"  # the first tags stay
    # 0.5 of 12 steps = 6 steps.
    assert warmup_steps(0.5, 12) == 6 and warmup_steps(4, 12) == 4
    # keep_tokens 1: 6 flexible tags, step 3: floor(3 * 5 / 6) + 1 = 3 -> a + b, c, d.
    assert run(tags, step=3, keep_tokens=1, token_warmup_min=1, token_warmup_step=6) == "a, b, c, d"
    assert warmup_count(7, 1, 0, 3) is None and warmup_count(7, 2, 6, 0) == 2
