"""The training DataLoader: workers live for the whole run; batches that are only in-memory lookups need none."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from helpers import make_images
from sdxl_lora.config.dataset_toml import DatasetConfig, SubsetConfig
from sdxl_lora.data.dataset import build_train_dataset
from sdxl_lora.data.latent_cache import DiskLatents
from sdxl_lora.train import setup


def _cfg(workers: int):
    return SimpleNamespace(data=SimpleNamespace(max_data_loader_n_workers=workers), train=SimpleNamespace(seed=0))


@pytest.fixture
def dataset(tmp_path):
    images = make_images(tmp_path / "images", [(64, 64)] * 2)

    def build(**subset):
        config = DatasetConfig(resolution=(64, 64), batch_size=1,
                               subsets=(SubsetConfig(image_dir=str(images), caption_extension=".txt", **subset),))
        return build_train_dataset((config,), seed=0)

    return build


def test_workers_that_read_images_are_kept_for_the_whole_run(dataset, monkeypatch):
    monkeypatch.setattr(setup, "cpus", lambda: 2)
    loader = setup.data_loader(dataset(), _cfg(8))
    assert loader.num_workers == 2 and loader.persistent_workers
    assert setup.data_loader(dataset(), _cfg(0)).num_workers == 0


def test_in_memory_latents_load_without_workers_unless_a_batch_still_reads_a_file(dataset, monkeypatch):
    monkeypatch.setattr(setup, "cpus", lambda: 2)
    cached = dataset()
    cached.set_latents({})
    assert setup.data_loader(cached, _cfg(8)).num_workers == 0
    masked = dataset(alpha_mask=True)  # the alpha mask is read from the image each step
    masked.set_latents({})
    assert setup.data_loader(masked, _cfg(8)).num_workers == 2
    on_disk = dataset()
    on_disk.set_latents(DiskLatents({}))
    assert setup.data_loader(on_disk, _cfg(8)).num_workers == 2
