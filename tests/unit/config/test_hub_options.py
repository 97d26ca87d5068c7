"""The Hugging Face Hub options (spec 1.10): the HubConfig they build, the checks before any model is loaded, the
--resume_from_huggingface location format, and the token kept out of everything the run prints or writes."""

from __future__ import annotations

import json
import logging

import pytest

from sdxl_lora.cli import main
from sdxl_lora.config.build import build_run_config, hub_config
from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.hub_options import HubLocation, hub_warnings, parse_resume_location
from sdxl_lora.config.parser import parse_command_line
from sdxl_lora.config.schema import HubConfig

TOKEN = "hf_FAKEtoken0123456789abcdefSECRET"


def _config(base_argv, *extra):
    parsed = parse_command_line([*base_argv, *extra])
    return build_run_config(parsed.values, parsed.given)


@pytest.mark.parametrize(("spec", "location"), [
    ("me/repo/runs/a-state", HubLocation("me/repo", "runs/a-state")),
    ("me/repo/a-state/", HubLocation("me/repo", "a-state")),
    ("me/repo/a-state:v1", HubLocation("me/repo", "a-state", "v1")),
    ("me/repo/a-state:v1:dataset", HubLocation("me/repo", "a-state", "v1", "dataset")),
    ("me/repo/a-state::space", HubLocation("me/repo", "a-state", None, "space")),
    ("me/repo", HubLocation("me/repo", "")),
])
def test_resume_locations_parse(spec, location):
    assert parse_resume_location(spec) == location


@pytest.mark.parametrize(("spec", "why"), [
    ("me", "it does not start with owner/repo"),
    ("/repo/state", "it does not start with owner/repo"),
    ("me/repo/s:main:model:extra", "more than two ':'"),
    ("me/repo/s:main:models", "repo type 'models' is not one of model, dataset, space"),
])
def test_malformed_resume_locations_say_why(spec, why):
    with pytest.raises(ValueError, match=why):
        parse_resume_location(spec)


def test_the_builder_reads_every_hub_option():
    hub = hub_config({"huggingface_repo_id": "me/my-lora", "huggingface_repo_type": "dataset",
                      "huggingface_path_in_repo": "/runs/one/", "huggingface_token": TOKEN,
                      "huggingface_repo_visibility": "public", "save_state_to_huggingface": True,
                      "async_upload": True})
    assert hub == HubConfig(repo_id="me/my-lora", repo_type="dataset", path_in_repo="runs/one", token=TOKEN,
                            visibility="public", save_state_to_huggingface=True, async_upload=True)
    assert not hub.private and TOKEN not in repr(hub)


def test_gui_empty_strings_mean_not_given(base_argv):
    cfg = _config(base_argv, "--huggingface_repo_id=", "--huggingface_token=", "--huggingface_path_in_repo=",
                  "--huggingface_repo_visibility=", "--huggingface_repo_type=")
    assert cfg.hub == HubConfig()
    assert cfg.hub.private  # unset visibility: private, as sd-scripts
    assert hub_config({"huggingface_repo_id": "me/r", "huggingface_token": ""}).token is None


def test_upload_options_reach_run_config(base_argv):
    cfg = _config(base_argv, "--huggingface_repo_id=me/my-lora", f"--huggingface_token={TOKEN}", "--async_upload")
    assert cfg.hub == HubConfig(repo_id="me/my-lora", token=TOKEN, async_upload=True)


@pytest.mark.parametrize(("extra", "problem"), [
    (["--resume_from_huggingface"],
     "--resume_from_huggingface needs --resume owner/repo/path[:revision[:repo_type]]"),
    (["--huggingface_repo_id=not a repo"], "--huggingface_repo_id not a repo: not a Hugging Face repo id"),
    (["--huggingface_repo_id=me/r", "--huggingface_repo_type=models"],
     "--huggingface_repo_type models: expected one of model, dataset, space"),
])
def test_bad_hub_options_stop_before_loading_with_exit_2(base_argv, capsys, extra, problem):
    assert main(["check", *base_argv, *extra]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if problem in line] != []


def test_a_malformed_resume_location_is_named(base_argv):
    with pytest.raises(ConfigError) as error:
        _config(base_argv, "--resume=just-a-folder", "--resume_from_huggingface")
    assert ("--resume just-a-folder: with --resume_from_huggingface it must be "
            "owner/repo/path[:revision[:repo_type]] (it does not start with owner/repo)") in error.value.problems


@pytest.mark.parametrize(("values", "warnings"), [
    ({"save_state_to_huggingface": True, "async_upload": True},
     ["--save_state_to_huggingface has no effect without --huggingface_repo_id (nothing is uploaded)",
      "--async_upload has no effect without --huggingface_repo_id (nothing is uploaded)"]),
    ({"huggingface_token": TOKEN},
     ["--huggingface_token is unused: there is no --huggingface_repo_id and no --resume_from_huggingface"]),
    ({"huggingface_token": TOKEN, "resume_from_huggingface": True, "resume": "me/r/s"}, []),
    ({"huggingface_repo_id": "me/r", "save_state_to_huggingface": True},
     ["--save_state_to_huggingface: no state folder is saved without --save_state or --save_state_on_train_end, "
      "so none is uploaded"]),
    ({"huggingface_repo_id": "me/r", "save_state_to_huggingface": True, "save_state_on_train_end": True}, []),
    ({"huggingface_repo_id": "me/r", "huggingface_path_in_repo": "x", "async_upload": True}, []),
])
def test_options_with_nothing_to_act_on_are_warned_about(values, warnings):
    assert hub_warnings(values) == warnings


def test_the_token_is_not_printed_logged_or_written(base_argv, capsys, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    argv = [*base_argv, "--huggingface_repo_id=me/my-lora", f"--huggingface_token={TOKEN}", "--async_upload"]
    assert main(["check", *argv, "--json"]) == 0
    out = capsys.readouterr()
    json.loads(out.out)
    assert TOKEN not in out.out + out.err and TOKEN not in caplog.text
    config_file = tmp_path / "saved.toml"
    assert main([*argv, "--config_file", str(config_file), "--output_config"]) == 0
    text = config_file.read_text(encoding="utf-8")
    assert 'huggingface_repo_id = "me/my-lora"' in text and TOKEN not in text and "huggingface_token" not in text


def test_a_hub_location_passes_validation_and_reaches_the_config(base_argv):
    cfg = _config(base_argv, "--resume=me/my-lora/runs/one/at-step00000004-state:main",
                  "--resume_from_huggingface", f"--huggingface_token={TOKEN}")
    assert cfg.hub.resume_from_huggingface and cfg.hub.token == TOKEN
    assert cfg.args["resume"] == "me/my-lora/runs/one/at-step00000004-state:main"  # the string download_resume takes
