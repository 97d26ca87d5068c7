"""The latent cache: batching, disk layout, keys that invalidate exactly what changed, damaged entries,
--skip_cache_check (spec 6.1; issue 8 item 3)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.data.cache_files import CACHE_DIR, module_identity, read_entry
from sdxl_lora.data.latent_cache import DiskLatents, LatentCacheSettings, LatentJob, LatentKey, build_latent_cache


def _images(folder: Path, n: int, size=(64, 32)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(folder / f"im{i}.png")
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _jobs(paths, flips=(False,), bucket=(64, 32)):
    return [LatentJob(LatentKey(str(p), bucket, (0, 0), flip), bucket, None) for p in paths for flip in flips]


class CountingEncoder:
    """Raw 'latents' = the 8x8 block means of the first 4 channels (3 + 1 repeated): easy to recompute."""

    def __init__(self):
        self.batches: list[list[tuple]] = []

    def __call__(self, pixels, jobs):
        self.batches.append([job.key for job in jobs])
        pooled = torch.nn.functional.avg_pool2d(pixels, 8)
        return torch.cat([pooled, pooled[:, :1]], dim=1)

    @property
    def keys(self):
        return [k for batch in self.batches for k in batch]


def _settings(**kw):
    values = dict(to_disk=True, skip_check=False, batch_size=3, vae_identity="vae-a", channels=4)
    values.update(kw)
    return LatentCacheSettings(**values)


def _entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.safetensors"))


def test_memory_cache_in_same_bucket_batches_of_vae_batch_size(tmp_path):
    paths = _images(tmp_path / "a", 4) + _images(tmp_path / "b", 1, size=(32, 64))
    jobs = _jobs(paths[:4]) + _jobs(paths[4:], bucket=(32, 64)) + _jobs(paths[:1])  # one duplicate key
    encode = CountingEncoder()
    cache = build_latent_cache(jobs, encode, _settings(to_disk=False))
    assert [len(b) for b in encode.batches] == [1, 3, 1]  # bucket (32, 64) first (sorted), then 3 + 1
    assert isinstance(cache, dict) and len(cache) == 5 and not (tmp_path / "a" / CACHE_DIR).exists()
    expected = torch.nn.functional.avg_pool2d(jobs[0].pixels()[None], 8)[0]
    torch.testing.assert_close(cache[jobs[0].key][:3], expected)


def test_disk_cache_is_sharded_inside_the_image_folder_and_reused(tmp_path):
    paths = _images(tmp_path / "img", 5)
    jobs = _jobs(paths, flips=(False, True))
    first = CountingEncoder()
    cache = build_latent_cache(jobs, first, _settings())
    files = _entries(tmp_path / "img" / CACHE_DIR)
    assert len(first.keys) == 10 and len(files) == 10
    for f in files:  # <image folder>/.sdxl-lora-cache/latents/<first 2 hex of name>/<64 hex>.safetensors
        assert f.parent.parent.name == "latents" and f.parent.name == f.stem[:2] and len(f.stem) == 64
    assert isinstance(cache, DiskLatents)
    clone = pickle.loads(pickle.dumps(cache))  # goes to DataLoader workers
    torch.testing.assert_close(clone[jobs[3].key][:3], torch.nn.functional.avg_pool2d(jobs[3].pixels()[None], 8)[0])
    again = CountingEncoder()
    build_latent_cache(jobs, again, _settings())
    assert again.keys == [] and _entries(tmp_path / "img" / CACHE_DIR) == files


def test_changing_one_image_re_encodes_exactly_its_entries(tmp_path):
    paths = _images(tmp_path / "img", 4)
    jobs = _jobs(paths, flips=(False, True))
    build_latent_cache(jobs, CountingEncoder(), _settings())
    Image.new("RGB", (64, 32), (9, 9, 9)).save(paths[2])
    os.utime(paths[2], ns=(1, 1))  # a new mtime even on coarse file-system clocks
    encode = CountingEncoder()
    cache = build_latent_cache(jobs, encode, _settings())
    assert sorted(encode.keys) == [(str(paths[2]), (64, 32), (0, 0), False), (str(paths[2]), (64, 32), (0, 0), True)]
    assert torch.allclose(cache[(str(paths[2]), (64, 32), (0, 0), False)], torch.full((4, 4, 8), 9 / 255 * 2 - 1))


def test_another_vae_re_encodes_everything(tmp_path):
    jobs = _jobs(_images(tmp_path / "img", 3))
    build_latent_cache(jobs, CountingEncoder(), _settings())
    encode = CountingEncoder()
    build_latent_cache(jobs, encode, _settings(vae_identity="vae-b"))
    assert len(encode.keys) == 3 and len(_entries(tmp_path / "img" / CACHE_DIR)) == 6


def test_entries_of_the_wrong_shape_are_encoded_again(tmp_path, caplog):
    jobs = _jobs(_images(tmp_path / "img", 3))
    build_latent_cache(jobs, CountingEncoder(), _settings())
    encode = CountingEncoder()
    with caplog.at_level("WARNING"):
        build_latent_cache(jobs, lambda pixels, batch: torch.cat([encode(pixels, batch)] * 2, dim=1),
                           _settings(channels=8))
    assert len(encode.keys) == 3 and "shape (4, 4, 8), expected (8, 4, 8)" in caplog.text


def test_damaged_entry_is_encoded_again_with_a_warning(tmp_path, caplog):
    jobs = _jobs(_images(tmp_path / "img", 3))
    build_latent_cache(jobs, CountingEncoder(), _settings())
    victim = _entries(tmp_path / "img" / CACHE_DIR)[1]
    victim.write_bytes(victim.read_bytes()[:40])
    encode = CountingEncoder()
    with caplog.at_level("WARNING"):
        build_latent_cache(jobs, encode, _settings())
    assert len(encode.keys) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(victim) in warnings[0] and encode.keys[0][0] in warnings[0]
    read_entry(victim)  # whole again


def test_non_finite_entry_counts_as_damaged(tmp_path):
    jobs = _jobs(_images(tmp_path / "img", 2))
    build_latent_cache(jobs, lambda pixels, batch: torch.full((len(batch), 4, 4, 8), float("nan")), _settings())
    encode = CountingEncoder()
    build_latent_cache(jobs, encode, _settings())
    assert len(encode.keys) == 2


def test_skip_cache_check_trusts_existing_files_but_encodes_missing_and_changed(tmp_path):
    paths = _images(tmp_path / "img", 3)
    jobs = _jobs(paths)
    first = build_latent_cache(jobs, CountingEncoder(), _settings())
    damaged = first.files[jobs[1].key][0]
    damaged.write_bytes(b"garbage")
    Image.new("RGB", (64, 32), (1, 2, 3)).save(paths[0])
    os.utime(paths[0], ns=(2, 2))
    encode = CountingEncoder()
    cache = build_latent_cache(jobs, encode, _settings(skip_check=True))
    assert encode.keys == [jobs[0].key]  # changed image: a new entry; the damaged file is trusted
    with pytest.raises(ConfigError, match="--skip_cache_check") as err:
        cache[jobs[1].key]
    assert str(damaged) in str(err.value) and str(paths[1]) in str(err.value)


def test_unwritable_cache_folder_is_one_clear_error(tmp_path, monkeypatch):
    from sdxl_lora.data import latent_cache

    def refuse(path, tensors, key):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(latent_cache, "write_entry", refuse)
    with pytest.raises(ConfigError, match="Permission denied.*--cache_latents without --cache_latents_to_disk"):
        build_latent_cache(_jobs(_images(tmp_path / "img", 1)), CountingEncoder(), _settings())


def test_module_identity_tells_weights_and_dtypes_apart():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(300, 300), torch.nn.Linear(300, 300)
    same = torch.nn.Linear(300, 300)
    same.load_state_dict(a.state_dict())
    assert module_identity(a) == module_identity(same) != module_identity(b)
    assert module_identity(same.half()) != module_identity(a)
