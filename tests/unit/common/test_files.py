"""common/files.py: a target appears whole or not at all, and no temporary is left behind."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from sdxl_lora.common.files import atomic_folder, atomic_path


def test_atomic_path_renames_into_place_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.bin.") and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["out.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_a_file_its_writer_made_owner_only_gets_umask_permissions(tmp_path):
    """safetensors 0.8's save_file writes 0600; a LoRA must be readable as sd-scripts' is (0644 under umask 022)."""
    target = tmp_path / "lora.safetensors"
    with atomic_path(target) as tmp:
        save_file({"a": torch.zeros(2)}, tmp)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask == 0o644


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_replaces_an_existing_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_folder_appears_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()  # an empty folder may be there already
    with atomic_folder(target) as tmp:
        assert tmp.is_dir() and tmp.parent == tmp_path
        (tmp / "a").mkdir()
        (tmp / "a" / "w.bin").write_bytes(b"x")
    assert (target / "a" / "w.bin").read_bytes() == b"x"
    assert os.listdir(tmp_path) == ["model"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask  # not tempfile's owner-only 0o700


def test_atomic_folder_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "w.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def test_atomic_folder_refuses_a_non_empty_target(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"), atomic_folder(tmp_path / "model"):
        pass
    assert (tmp_path / "model" / "keep.txt").read_text() == "mine"
