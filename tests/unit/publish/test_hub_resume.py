"""--resume owner/repo/path[:revision[:repo_type]] with --resume_from_huggingface (spec 1.10): the files under the
path come down from the (fake) Hub into a local folder; anything wrong is one ConfigError line naming --resume."""

from __future__ import annotations

import re

import pytest

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.schema import HubConfig
from sdxl_lora.publish.hub import Uploader, describe_error, download_resume

TOKEN = "hf_FAKEtoken0123456789abcdefSECRET"
STATE = {"model.safetensors": b"weights \x00\x01", "optimizer.bin": b"opt", "train_state.json": b'{"current_step": 4}',
         "nested/extra.bin": b"nested"}


@pytest.fixture
def hub_with_states(fake_hub):
    files = {f"runs/one/at-step00000004-state/{name}": data for name, data in STATE.items()}
    files.update({"runs/one/my_lora.safetensors": b"lora", "runs/one/at-step00000004-state-old/x": b"not me",
                  "README.md": b"---\n---\n"})
    fake_hub.add_files("me/my-lora", files)
    return fake_hub


def _files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_files_under_the_path_are_downloaded_and_nothing_else(hub_with_states, tmp_path):
    folder = download_resume("me/my-lora/runs/one/at-step00000004-state", TOKEN, cache_dir=tmp_path / "cache",
                             endpoint=hub_with_states.endpoint)
    assert folder.name == "at-step00000004-state"
    assert _files(folder) == STATE
    fetched = {re.sub(r"^/me/my-lora/resolve/[^/]+/", "", r.path) for r in hub_with_states.seen("GET", "/resolve/")}
    assert fetched == {f"runs/one/at-step00000004-state/{name}" for name in STATE}


@pytest.mark.parametrize("suffix", [":main", ":main:model", "/"])
def test_revision_and_repo_type_may_follow_the_path(hub_with_states, tmp_path, suffix):
    folder = download_resume(f"me/my-lora/runs/one/at-step00000004-state{suffix}", None,
                             cache_dir=tmp_path / "cache", endpoint=hub_with_states.endpoint)
    assert _files(folder) == STATE


def test_a_dataset_repo_is_named_by_the_third_part(fake_hub, tmp_path):
    fake_hub.add_files("me/states", {"s/train_state.json": b"{}"}, repo_type="dataset")
    folder = download_resume("me/states/s:main:dataset", None, cache_dir=tmp_path, endpoint=fake_hub.endpoint)
    assert _files(folder) == {"train_state.json": b"{}"}


def test_what_an_uploader_sent_comes_back(fake_hub, tmp_path):
    state = tmp_path / "out" / "my_lora-state"
    state.mkdir(parents=True)
    for name, data in STATE.items():
        (state / name).parent.mkdir(parents=True, exist_ok=True)
        (state / name).write_bytes(data)
    hub = HubConfig(repo_id="me/round", path_in_repo="trip", token=TOKEN, save_state_to_huggingface=True)
    with Uploader(hub, endpoint=fake_hub.endpoint) as uploader:
        uploader.upload_folder(state)
    folder = download_resume("me/round/trip/my_lora-state", TOKEN, cache_dir=tmp_path / "cache",
                             endpoint=fake_hub.endpoint)
    assert _files(folder) == STATE


@pytest.mark.parametrize(("spec", "message"), [
    ("me/my-lora/runs/none", "--resume me/my-lora/runs/none: no files under 'runs/none' in me/my-lora"),
    ("me/missing/state", "--resume me/missing/state: cannot download it from the Hugging Face Hub: "),
    ("me", "--resume me: not owner/repo/path[:revision[:repo_type]] (it does not start with owner/repo)"),
    ("me/my-lora/s:main:model:x", "--resume me/my-lora/s:main:model:x: not owner/repo/path[:revision[:repo_type]] "
                                  "(more than two ':')"),
])
def test_a_bad_location_is_one_line_naming_resume(hub_with_states, tmp_path, spec, message):
    with pytest.raises(ConfigError) as error:
        download_resume(spec, TOKEN, cache_dir=tmp_path / "cache", endpoint=hub_with_states.endpoint)
    (problem,) = error.value.problems
    assert problem.startswith(message) and "\n" not in problem and TOKEN not in problem


def test_error_descriptions_are_one_line_without_the_token():
    err = RuntimeError(f"401 Unauthorized\nAuthorization: Bearer {TOKEN} was refused")
    assert describe_error(err, TOKEN) == "RuntimeError: 401 Unauthorized"
    assert describe_error(RuntimeError(f"bad token {TOKEN}"), TOKEN) == "RuntimeError: bad token ***"
    assert describe_error(RuntimeError(""), None) == "RuntimeError"
