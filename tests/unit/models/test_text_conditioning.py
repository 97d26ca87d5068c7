from __future__ import annotations

import pytest
import torch

from sdxl_lora.models.text import encode, num_chunks, size_time_ids, tokenize
from sdxl_lora.models.tokenizers import clip_tokenizers

BOS, EOS, PAD2 = 49406, 49407, 0
PHOTO_OF_A_CAT = [320, 1125, 539, 320, 2368]  # "a photo of a cat" in CLIP's BPE


@pytest.fixture(scope="module")
def tokenizers():
    return clip_tokenizers()


def caption_tokens(repeats: int) -> tuple[str, list[int]]:
    return " ".join(["a photo of a cat"] * repeats), PHOTO_OF_A_CAT * repeats


def test_short_caption_has_real_clip_ids(tokenizers):
    ids1, ids2 = tokenize(*tokenizers, ["a photo of a cat"])
    assert ids1.shape == ids2.shape == (1, 1, 77) and ids1.dtype == torch.int64
    assert ids1[0, 0].tolist() == [BOS, *PHOTO_OF_A_CAT] + [EOS] * 71
    assert ids2[0, 0].tolist() == [BOS, *PHOTO_OF_A_CAT, EOS] + [PAD2] * 70


def test_default_length_truncates_to_75_tokens_then_eos(tokenizers):
    caption, tokens = caption_tokens(20)
    ids1, ids2 = tokenize(*tokenizers, [caption], max_token_length=75)
    for ids in (ids1, ids2):
        assert ids.shape == (1, 1, 77)
        assert ids[0, 0].tolist() == [BOS, *tokens[:75], EOS]


@pytest.mark.parametrize("max_token_length, n", [(None, 1), (75, 1), (150, 2), (225, 3)])
def test_num_chunks(max_token_length, n):
    assert num_chunks(max_token_length) == n


def test_num_chunks_rejects_other_lengths():
    with pytest.raises(ValueError, match="150 or 225"):
        num_chunks(100)


def test_225_chunks_of_a_100_token_caption(tokenizers):
    caption, tokens = caption_tokens(20)  # 100 tokens: chunk 0 full, chunk 1 has 25, chunk 2 empty
    ids1, ids2 = tokenize(*tokenizers, [caption], max_token_length=225)
    assert ids1.shape == ids2.shape == (1, 3, 77)
    # tokenizer 1 pads with EOS, so the last id of the 227-long sequence is EOS and no fix-up applies
    assert ids1[0, 0].tolist() == [BOS, *tokens[:75], EOS]
    assert ids1[0, 1].tolist() == [BOS, *tokens[75:], EOS] + [EOS] * 50
    assert ids1[0, 2].tolist() == [BOS] + [EOS] * 76
    # tokenizer 2: the sequence ends in PAD; chunk 0 ends in a word, so its last id becomes EOS
    assert ids2[0, 0].tolist() == [BOS, *tokens[:75], EOS]
    assert ids2[0, 1].tolist() == [BOS, *tokens[75:], EOS] + [PAD2] * 50
    # ... and the empty chunk 2 starts BOS PAD, which becomes BOS EOS PAD...
    assert ids2[0, 2].tolist() == [BOS, EOS] + [PAD2] * 75


def test_225_chunks_of_a_truncated_caption(tokenizers):
    caption, tokens = caption_tokens(60)  # 300 tokens: truncated to 225, EOS last
    ids1, ids2 = tokenize(*tokenizers, [caption], max_token_length=225)
    for ids in (ids1, ids2):
        for k in range(3):
            assert ids[0, k].tolist() == [BOS, *tokens[75 * k: 75 * (k + 1)], EOS]


def test_150_chunks_when_eos_falls_on_the_chunk_boundary(tokenizers):
    caption, tokens = caption_tokens(15)  # exactly 75 tokens: EOS is the first id of chunk 1's body
    ids1, ids2 = tokenize(*tokenizers, [caption], max_token_length=150)
    assert ids1.shape == (1, 2, 77)
    assert ids1[0, 0].tolist() == ids2[0, 0].tolist() == [BOS, *tokens, EOS]
    assert ids1[0, 1].tolist() == [BOS] + [EOS] * 76
    assert ids2[0, 1].tolist() == [BOS, EOS] + [PAD2] * 75


def test_150_chunks_with_one_token_past_the_boundary(tokenizers):
    caption, tokens = caption_tokens(15)
    caption += " dog"
    ids1, ids2 = tokenize(*tokenizers, [caption], max_token_length=150)
    dog = tokenizers[0]("dog", add_special_tokens=False).input_ids
    assert len(dog) == 1
    assert ids2[0, 0].tolist() == [BOS, *tokens, EOS]  # fixed up from the trailing PAD
    assert ids2[0, 1].tolist() == [BOS, *dog, EOS] + [PAD2] * 74
    assert ids1[0, 1].tolist() == [BOS, *dog] + [EOS] * 75


def test_batch_of_captions(tokenizers):
    ids1, ids2 = tokenize(*tokenizers, ["a photo of a cat", ""], max_token_length=150)
    assert ids1.shape == ids2.shape == (2, 2, 77)
    assert ids2[1, 0].tolist() == [BOS, EOS] + [PAD2] * 75


def test_encode_shapes(tiny_sdxl):
    m = tiny_sdxl
    captions = ["a photo of a cat", "a dog"]
    for max_token_length, length in [(None, 77), (150, 152), (225, 227)]:
        ids1, ids2 = tokenize(m.tokenizer_1, m.tokenizer_2, captions, max_token_length)
        with torch.no_grad():
            context, pooled = encode(m.text_encoder_1, m.text_encoder_2, ids1, ids2)
        assert context.shape == (2, length, 32 + 64)
        assert pooled.shape == (2, 64)


def test_encode_matches_diffusers_encode_prompt(tiny_sdxl, tiny_sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir, local_files_only=True)
    captions = ["a photo of a cat", "an astronaut riding a horse, high detail"]
    with torch.no_grad():
        expected_context, _, expected_pooled, _ = pipe.encode_prompt(
            captions, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
        m = tiny_sdxl
        context, pooled = encode(m.text_encoder_1, m.text_encoder_2,
                                 *tokenize(m.tokenizer_1, m.tokenizer_2, captions))
    torch.testing.assert_close(context, expected_context)
    torch.testing.assert_close(pooled, expected_pooled)


def test_long_context_is_reassembled_from_chunks(tiny_sdxl):
    m = tiny_sdxl
    caption, _ = caption_tokens(20)
    ids1, ids2 = tokenize(m.tokenizer_1, m.tokenizer_2, [caption, "a dog"], max_token_length=225)
    with torch.no_grad():
        context, pooled = encode(m.text_encoder_1, m.text_encoder_2, ids1, ids2)
        per_chunk = [encode(m.text_encoder_1, m.text_encoder_2, ids1[:, k:k + 1], ids2[:, k:k + 1])
                     for k in range(3)]
    torch.testing.assert_close(context[:, 0], per_chunk[0][0][:, 0])
    for k in range(3):
        torch.testing.assert_close(context[:, 1 + 75 * k: 76 + 75 * k], per_chunk[k][0][:, 1:76])
    torch.testing.assert_close(context[:, -1], per_chunk[2][0][:, -1])
    torch.testing.assert_close(pooled, per_chunk[0][1])  # pooled comes from the first chunk only


def test_pooled_is_taken_at_the_first_eos(tiny_sdxl):
    m = tiny_sdxl
    ids1, ids2 = tokenize(m.tokenizer_1, m.tokenizer_2, ["a photo of a cat"])
    with torch.no_grad():
        _, pooled = encode(m.text_encoder_1, m.text_encoder_2, ids1, ids2)
        final = m.text_encoder_2(ids2[:, 0]).last_hidden_state
    torch.testing.assert_close(pooled, m.text_encoder_2.text_projection(final[:, 6]))  # EOS after 5 tokens


def test_size_time_ids_order():
    ids = size_time_ids((1024, 768), (0, 16), (1024, 1024))
    assert ids.tolist() == [[1024, 768, 0, 16, 1024, 1024]] and ids.dtype == torch.float32
    batch = size_time_ids(torch.tensor([[512, 512], [640, 480]]), [(0, 0), (8, 4)], [[512, 512], [576, 448]])
    assert batch.tolist() == [[512, 512, 0, 0, 512, 512], [640, 480, 8, 4, 576, 448]]


def test_size_time_ids_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="batch sizes differ"):
        size_time_ids([(512, 512), (512, 512)], (0, 0), (512, 512))


def test_conditioning_drives_the_tiny_unet(tiny_sdxl):
    m = tiny_sdxl
    ids1, ids2 = tokenize(m.tokenizer_1, m.tokenizer_2, ["a photo of a cat", "a dog"], max_token_length=225)
    with torch.no_grad():
        context, pooled = encode(m.text_encoder_1, m.text_encoder_2, ids1, ids2)
        time_ids = size_time_ids([(64, 64), (72, 56)], [(0, 0), (4, 0)], [(64, 64), (64, 64)])
        out = m.unet(torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), encoder_hidden_states=context,
                     added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
