"""SDXL text conditioning as sd-scripts computes it (spec 5.6): two CLIP tokenizers, two encoders, size ids.

Shapes: token ids are (B, n, 77) with n = 1, 2 or 3 chunks (`--max_token_length` None/75, 150, 225).
`encode` returns the U-Net's cross-attention context (B, 2 + 75n, d1 + d2) -- (B, 77, d1 + d2) when n = 1 --
and the pooled text embedding (B, d2_projection).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

CHUNK_LENGTH = 77  # CLIP's context: BOS + 75 caption tokens + EOS
CHUNK_BODY = CHUNK_LENGTH - 2
CLIP_EOS_ID = 49407  # <|endoftext|>; both SDXL tokenizers share CLIP's vocabulary
_CHUNKS = {None: 1, 75: 1, 150: 2, 225: 3}


def num_chunks(max_token_length: int | None) -> int:
    """How many 77-token chunks a caption is cut into for `--max_token_length`."""
    if max_token_length not in _CHUNKS:
        raise ValueError(f"max_token_length must be None, 75, 150 or 225, not {max_token_length!r}")
    return _CHUNKS[max_token_length]


def tokenize(tok1, tok2, captions: Sequence[str], max_token_length: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids1, ids2), each (B, n, 77) int64, for the two SDXL tokenizers."""
    return (_tokenize_chunks(tok1, captions, max_token_length),
            _tokenize_chunks(tok2, captions, max_token_length))


def _tokenize_chunks(tokenizer, captions: Sequence[str], max_token_length: int | None) -> torch.Tensor:
    """One tokenizer's chunks.

    For n > 1, chunk k = [BOS] + ids[1+75k : 76+75k] + [last id] of the BOS/caption/EOS/padding sequence
    of length 75n + 2. A tokenizer whose pad differs from EOS (tokenizer 2) then gets sd-scripts' fix-ups:
    a chunk ending in a caption token gets EOS as its last id, and an empty chunk reads BOS EOS PAD...
    """
    n = num_chunks(max_token_length)
    ids = tokenizer(list(captions), padding="max_length", truncation=True, max_length=CHUNK_BODY * n + 2,
                    return_tensors="pt").input_ids
    if n == 1:
        return ids[:, None, :]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = []
    for k in range(n):
        body = ids[:, 1 + CHUNK_BODY * k: 1 + CHUNK_BODY * (k + 1)]
        chunk = torch.cat([ids[:, :1], body, ids[:, -1:]], dim=1)
        if pad != eos:
            before_last = chunk[:, -2]
            chunk[(before_last != eos) & (before_last != pad), -1] = eos
            chunk[chunk[:, 1] == pad, 1] = eos
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def encode(te1, te2, ids1: torch.Tensor, ids2: torch.Tensor, eos_token_id: int = CLIP_EOS_ID, *,
           projection=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, pooled) from (B, n, 77) ids.

    TE1 and TE2 both give their penultimate hidden state before the final layer norm (for SDXL's 12-layer TE1
    that is sd-scripts' `hidden_states[11]`). Pooled is TE2's final-normed state at the first EOS of the first
    chunk, through `text_projection` (`projection`, or te2.text_projection; give it when te2 is wrapped, e.g. by
    DDP, which forwards calls but not attributes).
    """
    batch, n, _ = ids1.shape
    flat1 = ids1.reshape(-1, CHUNK_LENGTH).to(next(te1.parameters()).device)
    flat2 = ids2.reshape(-1, CHUNK_LENGTH).to(next(te2.parameters()).device)
    states1 = te1(flat1, output_hidden_states=True).hidden_states[-2]
    out2 = te2(flat2, output_hidden_states=True)
    states2 = out2.hidden_states[-2]
    pooled = (projection or te2.text_projection)(_state_at_first_eos(out2.last_hidden_state, flat2, eos_token_id))
    context = torch.cat([_join_chunks(states1, batch, n), _join_chunks(states2, batch, n)], dim=-1)
    return context, pooled.reshape(batch, n, -1)[:, 0]


def _state_at_first_eos(states: torch.Tensor, ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """states[i, first position where ids[i] == EOS] (position 0 when a row has no EOS)."""
    is_eos = (ids == eos_token_id).int()
    position = torch.where(is_eos.any(dim=1), is_eos.argmax(dim=1), 0)
    return states[torch.arange(states.shape[0], device=states.device), position.to(states.device)]


def _join_chunks(states: torch.Tensor, batch: int, n: int) -> torch.Tensor:
    """(B*n, 77, d) -> (B, 2 + 75n, d): first state of chunk 0, positions 1..75 of every chunk, last state
    of the last chunk. n = 1 keeps all 77 states."""
    states = states.reshape(batch, n, CHUNK_LENGTH, -1)
    if n == 1:
        return states[:, 0]
    body = states[:, :, 1:1 + CHUNK_BODY].reshape(batch, n * CHUNK_BODY, -1)
    return torch.cat([states[:, 0, :1], body, states[:, -1, -1:]], dim=1)


def size_time_ids(original_size_hw, crop_top_left, target_size_hw, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """(B, 6) [orig_h, orig_w, crop_top, crop_left, target_h, target_w]: diffusers' `add_time_ids` order, the
    six numbers SDXL embeds as its size conditioning. Each argument is one (a, b) pair or B of them."""
    parts = [torch.as_tensor(pair, dtype=dtype, device=device).reshape(-1, 2)
             for pair in (original_size_hw, crop_top_left, target_size_hw)]
    sizes = {part.shape[0] for part in parts}
    if len(sizes) != 1:
        raise ValueError(f"size_time_ids: batch sizes differ: {[part.shape[0] for part in parts]}")
    return torch.cat(parts, dim=1)
