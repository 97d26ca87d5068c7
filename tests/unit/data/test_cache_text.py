"""The text-encoder output cache: keyed by the exact processed caption, caption variants for random caption
processing, disk entries, damaged entries, --skip_cache_check (issue 8 item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from sdxl_lora.config.dataset_toml import DatasetConfig, SubsetConfig
from sdxl_lora.config.errors import ConfigError
from sdxl_lora.data.cache_files import CACHE_DIR
from sdxl_lora.data.dataset import TrainDataset
from sdxl_lora.data.plan import build_plan
from sdxl_lora.data.text_cache import CAPTION_VARIANTS, TextCacheSettings, TextJob, build_text_cache


class CountingEncoder:
    """context[i] = len(caption) everywhere, pooled[i] = its first character code (easy to check)."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, captions):
        self.calls.append(list(captions))
        context = torch.stack([torch.full((77, 6), float(len(c))) for c in captions])
        pooled = torch.stack([torch.full((4,), float(ord(c[0]) if c else -1)) for c in captions])
        return context, pooled

    @property
    def captions(self):
        return [c for call in self.calls for c in call]


def _settings(**kw):
    values = dict(to_disk=True, skip_check=False, batch_size=2, identity="te-a|tokens=77", context_shape=(77, 6),
                  pooled_shape=(4,))
    values.update(kw)
    return TextCacheSettings(**values)


def _dataset(tmp_path: Path, captions: dict[str, str], **subset) -> TrainDataset:
    folder = tmp_path / "img"
    folder.mkdir(exist_ok=True)
    for name, caption in captions.items():
        Image.new("RGB", (64, 64), (10, 20, 30)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(caption, encoding="utf-8")
    config = DatasetConfig(subsets=(SubsetConfig(str(folder), caption_extension=".txt", **subset),),
                           resolution=(64, 64), batch_size=2)
    (plan,) = build_plan((config,)).datasets
    return TrainDataset(plan, seed=5)


def test_memory_cache_encodes_each_caption_once_in_batches():
    jobs = [TextJob("a dog", "/x/1.png"), TextJob("a cat", "/x/2.png"), TextJob("a dog", "/y/3.png"),
            TextJob("", "/x/4.png")]
    encode = CountingEncoder()
    store = build_text_cache(jobs, encode, _settings(to_disk=False))
    assert encode.calls == [["a dog", "a cat"], [""]]
    context, pooled = store.get("a cat", "/anywhere.png")
    assert context.shape == (77, 6) and context[0, 0].item() == 5 and pooled[0].item() == ord("a")


def test_disk_cache_reused_and_an_edited_caption_invalidates_exactly_its_entry(tmp_path):
    dataset = _dataset(tmp_path, {"a": "red ball", "b": "blue box", "c": "green cup"})
    first = CountingEncoder()
    build_text_cache(dataset.text_jobs(), first, _settings())
    files = sorted((tmp_path / "img" / CACHE_DIR / "text").rglob("*.safetensors"))
    assert sorted(first.captions) == ["blue box", "green cup", "red ball"] and len(files) == 3
    again = CountingEncoder()
    build_text_cache(dataset.text_jobs(), again, _settings())
    assert again.captions == []
    (tmp_path / "img" / "b.txt").write_text("blue box, open", encoding="utf-8")
    edited = _dataset(tmp_path, {})  # scanned again: b's caption changed, a and c did not
    encode = CountingEncoder()
    store = build_text_cache(edited.text_jobs(), encode, _settings())
    assert encode.captions == ["blue box, open"]
    assert store.get("blue box, open", str(tmp_path / "img" / "b.png"))[0][0, 0].item() == len("blue box, open")


def test_other_text_encoders_or_token_length_re_encode(tmp_path):
    jobs = _dataset(tmp_path, {"a": "red ball"}).text_jobs()
    build_text_cache(jobs, CountingEncoder(), _settings())
    for identity in ("te-b|tokens=77", "te-a|tokens=227"):
        encode = CountingEncoder()
        build_text_cache(jobs, encode, _settings(identity=identity))
        assert encode.captions == ["red ball"]


def test_damaged_entry_re_encoded_with_warning_or_trusted_with_skip_cache_check(tmp_path, caplog):
    jobs = _dataset(tmp_path, {"a": "red ball", "b": "blue box"}).text_jobs()
    store = build_text_cache(jobs, CountingEncoder(), _settings())
    damaged = store.path("blue box", jobs[0].path)
    damaged.write_bytes(b"not a safetensors file")
    trusting = build_text_cache(jobs, CountingEncoder(), _settings(skip_check=True))
    with pytest.raises(ConfigError, match="--skip_cache_check") as err:
        trusting.get("blue box", jobs[0].path)
    assert str(damaged) in str(err.value)
    encode = CountingEncoder()
    with caplog.at_level("WARNING"):
        build_text_cache(jobs, encode, _settings())
    assert encode.captions == ["blue box"] and str(damaged) in caplog.text


def test_non_finite_text_outputs_stop_naming_image_and_caption():
    def nan_encoder(captions):
        return torch.full((len(captions), 77, 6), float("nan")), torch.zeros(len(captions), 4)

    with pytest.raises(ConfigError, match=r"^/x/1.png: .*'a dog'"):
        build_text_cache([TextJob("a dog", "/x/1.png")], nan_encoder, _settings(to_disk=False))


def test_random_captions_train_with_one_of_their_cached_variants_each_epoch(tmp_path):
    tags = "sks, red, round, shiny, ball, toy"
    dataset = _dataset(tmp_path, {"a": tags, "b": tags, "c": tags, "d": tags}, shuffle_caption=True,
                       keep_tokens=1, caption_dropout_rate=0.2, caption_tag_dropout_rate=0.1,
                       caption_dropout_every_n_epochs=3)
    dataset.set_caption_variants(CAPTION_VARIANTS)
    jobs = dataset.text_jobs()
    per_image: dict[str, set[str]] = {}
    for job in jobs:
        per_image.setdefault(job.path, set()).add(job.caption)
    # up to 4 variants per image, plus the empty caption of the every-3rd-epoch dropout
    assert all(2 <= len(c) <= CAPTION_VARIANTS + 1 and "" in c for c in per_image.values())
    cached = {(job.path, job.caption) for job in jobs}
    seen: dict[str, set[str]] = {}
    for epoch in range(12):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            batch = dataset[index]
            for path, caption in zip(batch.paths, batch.captions, strict=True):
                assert (path, caption) in cached
                seen.setdefault(path, set()).add(caption)
                if (epoch + 1) % 3 == 0:
                    assert caption == ""
                elif caption:
                    assert caption.startswith("sks, ")  # keep_tokens=1 still holds in every variant
    assert sum(len(c) for c in seen.values()) > len(seen) * 2  # images really change caption across epochs


def test_without_random_processing_one_caption_per_image(tmp_path):
    dataset = _dataset(tmp_path, {"a": "red ball", "b": "blue box"}, caption_prefix="photo of")
    dataset.set_caption_variants(CAPTION_VARIANTS)
    assert sorted(job.caption for job in dataset.text_jobs()) == ["photo of blue box", "photo of red ball"]
