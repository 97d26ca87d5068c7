"""The two SDXL CLIP tokenizers, built offline from the BPE vocabulary that ships with this package.

The vocabulary is OpenAI CLIP's BPE (MIT, taken from the open_clip wheel; see assets/LICENSE-open_clip.txt).
SDXL's tokenizer pads with <|endoftext|>; tokenizer_2 pads with "!" (id 0), as OpenCLIP does.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources
from pathlib import Path

from transformers import CLIPTokenizer

N_MERGES = 49152 - 256 - 2  # CLIP's SimpleTokenizer slice: 48,894 merges, 49,408 tokens in all
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """(token -> id, merges) exactly as CLIP's tokenizer defines them."""
    asset = resources.files("sdxl_lora.models") / "assets" / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(asset.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    tokens = list(_bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizers() -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """(tokenizer, tokenizer_2) as SDXL base has them, with no download."""
    vocab, merges = clip_vocab_and_merges()
    merge_pairs = [tuple(m.split()) for m in merges]
    tok1 = CLIPTokenizer(vocab=dict(vocab), merges=list(merge_pairs), model_max_length=MAX_LENGTH)
    tok2 = CLIPTokenizer(vocab=dict(vocab), merges=list(merge_pairs), model_max_length=MAX_LENGTH, pad_token="!")
    return tok1, tok2


def save_clip_tokenizers(out_dir: Path) -> None:
    """Write both tokenizers as the `tokenizer/` and `tokenizer_2/` subfolders of a diffusers folder."""
    tok1, tok2 = clip_tokenizers()
    tok1.save_pretrained(Path(out_dir) / "tokenizer")
    tok2.save_pretrained(Path(out_dir) / "tokenizer_2")
