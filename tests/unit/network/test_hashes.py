"""Base-model hashes of spec 4.1/4.2 on a pinned test vector (expected values from coreutils' sha256sum)."""

import os
import sys
import threading

import pytest

from sdxl_lora.network import hashes
from sdxl_lora.network.hashes import ModelHashes, legacy_hash, sha256_file

# bytes 0..255 repeated to 0x120000 bytes; `sha256sum vec.bin` and
# `dd if=vec.bin bs=65536 skip=16 count=1 | sha256sum` give:
WHOLE = "13eeb9728bb2f1059ae3b1430bb45aae9c521dc82ac9826f0e74ac4e95953bf5"
AT_1MIB = "7daca2095d0438260fa849183dfc67faa459fdf4936e1bc91eec6b281b27e4c2"


def _vector(path):
    path.write_bytes(bytes(range(256)) * (0x120000 // 256))
    return path


def test_pinned_vector(tmp_path):
    path = _vector(tmp_path / "model.safetensors")
    assert legacy_hash(path) == AT_1MIB[:8] == "7daca209"
    assert sha256_file(path) == WHOLE


def test_background_hashes_for_model_and_vae_files_only(tmp_path):
    model = _vector(tmp_path / "model.safetensors")
    vae = _vector(tmp_path / "vae.safetensors")
    assert ModelHashes(str(model), str(vae)).metadata() == {
        "ss_sd_model_hash": "7daca209", "ss_new_sd_model_hash": WHOLE,
        "ss_vae_hash": "7daca209", "ss_new_vae_hash": WHOLE}
    # a hub id and a diffusers folder are not hashed
    assert ModelHashes("stabilityai/stable-diffusion-xl-base-1.0", str(tmp_path)).metadata() == {}


def test_the_hash_thread_runs_at_the_lowest_priority_and_the_caller_keeps_its_own(tmp_path, monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread priorities are Linux's")
    seen = {}
    real = hashes.legacy_hash

    def spy(path):
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return real(path)

    monkeypatch.setattr(hashes, "legacy_hash", spy)
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert ModelHashes(str(_vector(tmp_path / "model.safetensors"))).metadata()["ss_sd_model_hash"] == "7daca209"
    assert seen["nice"] == 19 and os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
