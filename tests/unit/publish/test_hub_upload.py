"""Uploads through a real huggingface_hub client to the fake Hub of conftest.py (spec 1.10, 7.1): what arrives
where, states only on request, the background queue, failures as one warning, and the token kept out of logs."""

from __future__ import annotations

import logging
import threading

import pytest

from sdxl_lora.config.schema import HubConfig
from sdxl_lora.publish.hub import Uploader, remote_path

TOKEN = "hf_FAKEtoken0123456789abcdefSECRET"
STEP_FILE = "my_lora-step00000002.safetensors"
FINAL_FILE = "my_lora.safetensors"
STATE_DIR = "my_lora-step00000002-state"
STATE_FILES = {"model.safetensors": b"state weights", "optimizer.bin": b"\x00\x01optimizer",
               "train_state.json": b'{"current_epoch": 1, "current_step": 2}'}


@pytest.fixture
def saved(tmp_path):
    """What a run with --save_every_n_steps 2 --save_state leaves in --output_dir after step 2 and at the end."""
    (tmp_path / STEP_FILE).write_bytes(b"step 2 lora \x00\xff")
    (tmp_path / FINAL_FILE).write_bytes(b"final lora \x00\xfe")
    state = tmp_path / STATE_DIR
    state.mkdir()
    for name, data in STATE_FILES.items():
        (state / name).write_bytes(data)
    return tmp_path


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)  # every logger, huggingface_hub's included
    return caplog


def _uploader(fake_hub, **options) -> Uploader:
    return Uploader(HubConfig(repo_id="me/my-lora", token=TOKEN, **options), endpoint=fake_hub.endpoint)


def _commit_paths(fake_hub) -> list[str]:
    """The file paths of each commit request, in the order the Hub received them."""
    import json

    return [json.loads(r.body.splitlines()[1])["value"]["path"] for r in fake_hub.seen("POST", "/commit/")]


def _warnings(logs) -> list[str]:
    return [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING and r.name.startswith("sdxl_lora")]


def test_remote_path_appends_the_file_name_to_the_folder():
    assert remote_path("runs/one", "a.safetensors") == "runs/one/a.safetensors"
    assert remote_path("/runs/one/", "a.safetensors") == "runs/one/a.safetensors"
    assert remote_path("", "a.safetensors") == "a.safetensors"


def test_each_saved_model_file_arrives_under_path_in_repo_with_its_bytes(fake_hub, saved, logs):
    uploader = _uploader(fake_hub, path_in_repo="runs/one")
    uploader.upload_file(saved / STEP_FILE)
    uploader.upload_folder(saved / STATE_DIR)  # no --save_state_to_huggingface: not uploaded
    uploader.upload_file(saved / FINAL_FILE, wait=True)
    uploader.finish()

    repo = fake_hub.repo("me/my-lora")
    assert repo.files == {f"runs/one/{STEP_FILE}": (saved / STEP_FILE).read_bytes(),
                          f"runs/one/{FINAL_FILE}": (saved / FINAL_FILE).read_bytes()}
    assert repo.private  # no --huggingface_repo_visibility: private, as sd-scripts
    assert len(fake_hub.seen("POST", "^/api/repos/create$")) == 1  # created once, not per file
    assert {r.authorization for r in fake_hub.requests} == {f"Bearer {TOKEN}"}
    assert uploader.uploaded == [f"runs/one/{STEP_FILE}", f"runs/one/{FINAL_FILE}"] and uploader.failed == []
    assert _warnings(logs) == []


def test_without_path_in_repo_files_go_to_the_repo_root(fake_hub, saved):
    # sd-scripts passes path_in_repo=None here, which the client refuses (spec 1.10 [quirk]); we use the file name.
    with _uploader(fake_hub) as uploader:
        uploader.upload_file(saved / FINAL_FILE)
    assert set(fake_hub.repo("me/my-lora").files) == {FINAL_FILE}


def test_state_folders_are_uploaded_only_with_save_state_to_huggingface(fake_hub, saved):
    with _uploader(fake_hub, path_in_repo="runs/one", save_state_to_huggingface=True) as uploader:
        uploader.upload_folder(saved / STATE_DIR)
    files = fake_hub.repo("me/my-lora").files
    assert files == {f"runs/one/{STATE_DIR}/{name}": data for name, data in STATE_FILES.items()}


def test_public_visibility_creates_a_public_repo_and_an_existing_repo_is_kept(fake_hub, saved):
    with _uploader(fake_hub, visibility="public") as uploader:
        uploader.upload_file(saved / STEP_FILE)
    assert not fake_hub.repo("me/my-lora").private
    with _uploader(fake_hub, visibility="private") as again:  # 409 from create: the repo exists, upload goes on
        again.upload_file(saved / FINAL_FILE)
    assert set(fake_hub.repo("me/my-lora").files) == {STEP_FILE, FINAL_FILE}
    assert not fake_hub.repo("me/my-lora").private


def test_dataset_repo_type_is_passed_through(fake_hub, saved):
    with _uploader(fake_hub, repo_type="dataset") as uploader:
        uploader.upload_file(saved / FINAL_FILE)
    assert set(fake_hub.repo("me/my-lora", "dataset").files) == {FINAL_FILE}
    assert fake_hub.seen("POST", "^/api/datasets/me/my-lora/commit/main$")


def test_async_uploads_run_in_the_background_and_the_final_one_waits(fake_hub, saved):
    gate = threading.Event()
    fake_hub.commit_gate = gate  # the fake Hub holds every commit until the gate opens
    uploader = _uploader(fake_hub, async_upload=True, save_state_to_huggingface=True)
    uploader.upload_file(saved / STEP_FILE)  # returns at once although the Hub has not answered
    uploader.upload_folder(saved / STATE_DIR)
    assert "my_lora-step00000002.safetensors" not in fake_hub.repo_files("me/my-lora")
    gate.set()
    uploader.upload_file(saved / FINAL_FILE, wait=True)  # waits for the queued ones, then uploads the final file
    assert _commit_paths(fake_hub)[0] == STEP_FILE and _commit_paths(fake_hub)[-1] == FINAL_FILE
    assert set(fake_hub.repo("me/my-lora").files) == {STEP_FILE, FINAL_FILE, *(f"{STATE_DIR}/{n}" for n in
                                                                              STATE_FILES)}
    uploader.finish()


def test_queued_uploads_are_delivered_by_finish(fake_hub, saved):
    gate = threading.Event()
    fake_hub.commit_gate = gate
    uploader = _uploader(fake_hub, async_upload=True)
    uploader.upload_file(saved / STEP_FILE)
    uploader.upload_file(saved / FINAL_FILE)
    assert fake_hub.repo_files("me/my-lora") == set()
    gate.set()
    uploader.finish()
    assert fake_hub.repo_files("me/my-lora") == {STEP_FILE, FINAL_FILE}
    assert _commit_paths(fake_hub) == [STEP_FILE, FINAL_FILE]


@pytest.mark.parametrize("async_upload", [False, True])
def test_a_failed_upload_is_one_warning_naming_the_file_and_the_rest_goes_on(fake_hub, saved, logs, async_upload):
    fake_hub.fail_commits_of = {STEP_FILE}  # the Hub answers 500 to this commit
    uploader = _uploader(fake_hub, async_upload=async_upload)
    uploader.upload_file(saved / STEP_FILE)  # does not raise, in either mode
    uploader.upload_file(saved / FINAL_FILE, wait=True)
    uploader.finish()

    assert set(fake_hub.repo("me/my-lora").files) == {FINAL_FILE}
    assert uploader.failed == [STEP_FILE]
    (warning,) = _warnings(logs)
    assert warning.startswith(f"upload of {STEP_FILE} to me/my-lora/{STEP_FILE} failed: ")
    assert "500" in warning and "\n" not in warning


def test_a_file_removed_before_its_turn_is_skipped_with_a_warning(fake_hub, saved, logs):
    gate = threading.Event()
    fake_hub.commit_gate = gate
    uploader = _uploader(fake_hub, async_upload=True)
    uploader.upload_file(saved / FINAL_FILE)
    uploader.upload_file(saved / STEP_FILE)
    (saved / STEP_FILE).unlink()  # e.g. --save_last_n_steps removed it while the queue was busy
    gate.set()
    uploader.finish()
    assert fake_hub.repo_files("me/my-lora") == {FINAL_FILE}
    assert _warnings(logs) == [f"upload of {STEP_FILE} to me/my-lora/{STEP_FILE} skipped: the file was removed "
                               "before it could be uploaded"]


def test_the_token_appears_in_no_log_record(fake_hub, saved, logs):
    fake_hub.fail_commits_of = {STEP_FILE}
    with _uploader(fake_hub, path_in_repo="runs", save_state_to_huggingface=True) as uploader:
        uploader.upload_file(saved / STEP_FILE)
        uploader.upload_folder(saved / STATE_DIR)
        uploader.upload_file(saved / FINAL_FILE)
    assert len(logs.records) > 3  # the client's debug records are captured too
    assert all(TOKEN not in record.getMessage() for record in logs.records)
    assert TOKEN not in logs.text
    assert TOKEN not in repr(uploader.hub)


def test_an_interrupt_does_not_wait_for_the_queue(fake_hub, saved, logs):
    gate = threading.Event()
    fake_hub.commit_gate = gate
    with pytest.raises(KeyboardInterrupt), _uploader(fake_hub, async_upload=True) as uploader:
        uploader.upload_file(saved / STEP_FILE)
        uploader.upload_file(saved / FINAL_FILE)
        raise KeyboardInterrupt
    assert any("queued Hugging Face upload(s) not sent" in w for w in _warnings(logs))
    gate.set()
    uploader.finish()  # only so that the thread does not outlive the fake Hub
