"""A corpus of bad configurations, each run through the real CLI in-process.

Every case changes one thing in a valid run and must end with exit status 2, no traceback, only
'sdxl-lora: error:' lines on stderr, one of them naming the culprit (flag, TOML key path, file or folder), and
no model opened: loading and training are patched to fail loudly, so a case that got that far fails the test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import make_images, write_toml
from sdxl_lora.cli import main
from sdxl_lora.models import load as model_load
from sdxl_lora.train import loop

PREFIX = "sdxl-lora: error:"

DATASET = {"resolution": "64", "enable_bucket": "true", "bucket_reso_steps": "32", "min_bucket_reso": "32",
           "max_bucket_reso": "128"}
"""[[datasets]] keys of the valid base dataset (TOML literals)."""

SUBSET = {"caption_extension": "'.txt'"}
"""[[datasets.subsets]] keys of the valid base dataset, besides image_dir."""


def _refuse(*args, **kwargs):
    raise AssertionError("model loaded")


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    """Opening the model or starting training fails the test: validation must stop every case first."""
    monkeypatch.setattr(model_load, "load_sdxl", _refuse)
    monkeypatch.setattr(loop, "run", _refuse)


def _table(defaults: dict[str, str], changes: dict[str, str | None]) -> str:
    merged = {**defaults, **changes}
    return "".join(f"{key} = {value}\n" for key, value in merged.items() if value is not None)


class Run:
    """The pieces of a valid run under tmp: images, dataset TOML, output folder, base argv."""

    def __init__(self, tmp: Path, model: Path):
        self.tmp = tmp
        self.model = model
        self.images = make_images(tmp / "images", [(64, 64), (64, 64)])
        self.out = tmp / "out"

    def toml(self, *, general: dict | None = None, dataset: dict | None = None, subset: dict | None = None,
             image_dir: Path | None = None, name: str = "dataset.toml") -> Path:
        """The valid dataset TOML with keys changed (a None value removes the key)."""
        folder = self.images if image_dir is None else image_dir
        subset_keys = {"image_dir": f"'{folder.as_posix()}'", **SUBSET, **(subset or {})}
        text = (f"[general]\n{_table({}, general or {})}"
                f"[[datasets]]\n{_table(DATASET, dataset or {})}"
                f"[[datasets.subsets]]\n{_table({}, subset_keys)}")
        return write_toml(self.tmp / name, text)

    def argv(self, *extra: str, drop: tuple[str, ...] = (), **options: object) -> list[str]:
        """The valid base command line, `options` replacing or adding `--name=value`, `drop` removing options."""
        base: dict[str, object] = {"pretrained_model_name_or_path": self.model, "dataset_config": None,
                                   "output_dir": self.out, "network_module": "networks.lora",
                                   "network_dim": 4, "learning_rate": "1e-3", "max_train_steps": 4, "seed": 1,
                                   "max_data_loader_n_workers": 0}
        base.update(options)
        if base["dataset_config"] is None:
            base["dataset_config"] = self.toml()
        return [f"--{key}={value}" for key, value in base.items() if key not in drop] + list(extra)


def base_argv(tmp: Path, model: Path) -> list[str]:
    """A valid command line: tiny model, two 64x64 images, resolution 64, buckets 32..128 by 32."""
    return Run(tmp, model).argv()


def run_cli(capsys, argv: list[str]) -> tuple[int, list[str]]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


@pytest.fixture
def garbage_model(tmp_path) -> Path:
    """A file that looks like a checkpoint by name; opening it would fail with a different error."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00not a safetensors file\xff" * 64)
    return path


@pytest.mark.parametrize("model", ["tiny", "garbage"])
def test_base_config_is_valid(model, tmp_path, capsys, tiny_model_dir, garbage_model):
    path = tiny_model_dir if model == "tiny" else garbage_model
    code = main(["check", *base_argv(tmp_path, path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "steps: 4" in captured.out


def test_base_dreambooth_config_is_valid(tmp_path, capsys, garbage_model):
    code = main(["check", *_dreambooth(Run(tmp_path, garbage_model), ok=True)])
    assert code == 0, capsys.readouterr().err


def test_training_the_base_config_would_load_the_model(tmp_path, garbage_model):
    """The patches catch a config that gets past validation (so a bad case cannot pass by training)."""
    with pytest.raises(AssertionError, match="model loaded"):
        main(base_argv(tmp_path, garbage_model))


@dataclass(frozen=True)
class Case:
    """One bad configuration: how to build its argv from a valid Run, and what the errors must name."""

    id: str
    build: Callable[[Run], list[str]]
    culprits: tuple[str, ...]


def _dreambooth(r: Run, ok: bool = False, resolution: str | None = "64") -> list[str]:
    """A DreamBooth folder under --train_data_dir: '10_sks dog' if ok, else only 'sks_dog' (no repeats)."""
    root = r.tmp / "train"
    make_images(root / ("10_sks dog" if ok else "sks_dog"), [(64, 64)])
    drop = ("dataset_config",) if resolution else ("dataset_config", "resolution")
    return r.argv(drop=drop, train_data_dir=root, resolution=resolution)


def _file(r: Run, name: str, text: str = "a photo\n") -> Path:
    return write_toml(r.tmp / name, text)


def _config_file(r: Run, text: str) -> list[str]:
    path = write_toml(r.tmp / "run.toml", text)
    return r.argv(config_file=path)


def _empty_folder(r: Run) -> list[str]:
    (r.tmp / "empty_images").mkdir()
    return r.argv(dataset_config=r.toml(image_dir=r.tmp / "empty_images"))


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _config_folder(r: Run) -> list[str]:
    (r.tmp / "folder.toml").mkdir()
    return r.argv(config_file=r.tmp / "folder.toml")


def _syntax_error(r: Run) -> list[str]:
    return r.argv(dataset_config=write_toml(r.tmp / "broken.toml", "[[datasets]]\nresolution = = 64\n"))


CASES = (
    # Values of the wrong type or outside the choices, on the command line.
    Case("max_train_steps_not_int", lambda r: r.argv(max_train_steps="abc"), ("--max_train_steps", "abc")),
    Case("learning_rate_not_number", lambda r: r.argv(learning_rate="fast"), ("--learning_rate", "fast")),
    Case("network_dim_float", lambda r: r.argv(network_dim="4.5"), ("--network_dim", "4.5")),
    Case("mixed_precision_choice", lambda r: r.argv(mixed_precision="fp32"), ("--mixed_precision", "fp32")),
    Case("save_model_as_choice", lambda r: r.argv(save_model_as="diffusers"), ("--save_model_as", "diffusers")),
    Case("lr_warmup_fraction_above_one", lambda r: r.argv(lr_warmup_steps="1.5"), ("--lr_warmup_steps", "1.5")),
    Case("flag_given_a_value", lambda r: r.argv(enable_bucket="yes"), ("--enable_bucket",)),
    Case("option_missing_value", lambda r: [*r.argv(drop=("output_dir",)), "--output_dir"], ("--output_dir",)),
    # Unknown and ambiguous flags.
    Case("unknown_flag_did_you_mean", lambda r: r.argv("--lerning_rate=1e-4"),
         ("--lerning_rate", "did you mean --learning_rate")),
    Case("ambiguous_prefix", lambda r: r.argv("--max_train=5"),
         ("--max_train", "--max_train_steps", "--max_train_epochs")),
    # Required options.
    Case("no_output_dir", lambda r: r.argv(drop=("output_dir",)), ("--output_dir",)),
    Case("no_dataset", lambda r: r.argv(drop=("dataset_config",)), ("--dataset_config", "--train_data_dir")),
    Case("no_model", lambda r: r.argv(drop=("pretrained_model_name_or_path",)),
         ("--pretrained_model_name_or_path",)),
    Case("model_path_missing", lambda r: r.argv(pretrained_model_name_or_path=r.tmp / "no_such_model"),
         ("--pretrained_model_name_or_path", "no_such_model")),
    Case("no_network_module", lambda r: r.argv(drop=("network_module",)), ("--network_module",)),
    Case("network_module_unsupported", lambda r: r.argv(network_module="networks.dylora"),
         ("--network_module", "networks.dylora")),
    Case("max_train_steps_zero", lambda r: r.argv(max_train_steps=0), ("--max_train_steps",)),
    # Conflicting options (spec 1.17).
    Case("full_fp16_without_fp16", lambda r: r.argv("--full_fp16"), ("--full_fp16", "fp16")),
    Case("full_bf16_without_bf16", lambda r: r.argv("--full_bf16", mixed_precision="fp16"), ("--full_bf16", "bf16")),
    Case("fp8_base_without_mixed_precision", lambda r: r.argv("--fp8_base", mixed_precision="no"),
         ("--fp8_base", "--mixed_precision")),
    Case("cache_te_outputs_trains_te", lambda r: r.argv("--cache_text_encoder_outputs"),
         ("--cache_text_encoder_outputs", "--network_train_unet_only")),
    Case("use_8bit_adam_with_optimizer_type", lambda r: r.argv("--use_8bit_adam", optimizer_type="AdamW"),
         ("--use_8bit_adam", "--optimizer_type")),
    Case("use_lion_with_optimizer_type", lambda r: r.argv("--use_lion_optimizer", optimizer_type="AdamW"),
         ("--use_lion_optimizer", "--optimizer_type")),
    Case("adaptive_noise_scale_without_offset", lambda r: r.argv(adaptive_noise_scale="0.01"),
         ("--adaptive_noise_scale", "--noise_offset")),
    Case("scale_v_pred_without_v_param", lambda r: r.argv("--scale_v_pred_loss_like_noise_pred"),
         ("--scale_v_pred_loss_like_noise_pred", "--v_parameterization")),
    Case("fused_backward_pass_with_prodigy", lambda r: r.argv("--fused_backward_pass", optimizer_type="Prodigy"),
         ("--fused_backward_pass", "Prodigy")),
    Case("fused_backward_pass_with_accumulation",
         lambda r: r.argv("--fused_backward_pass", optimizer_type="Adafactor", gradient_accumulation_steps=2),
         ("--fused_backward_pass", "--gradient_accumulation_steps")),
    Case("adafactor_scheduler_with_adamw", lambda r: r.argv(lr_scheduler="adafactor", optimizer_type="AdamW"),
         ("--lr_scheduler adafactor", "Adafactor")),
    Case("constant_scheduler_with_warmup", lambda r: r.argv(lr_scheduler="constant", lr_warmup_steps=10),
         ("--lr_warmup_steps", "constant")),
    Case("tensorboard_without_logging_dir", lambda r: r.argv(log_with="tensorboard"),
         ("--log_with tensorboard", "--logging_dir")),
    Case("dadaptation_with_loraplus",
         lambda r: r.argv("--network_args", "loraplus_lr_ratio=16", optimizer_type="DAdaptation"),
         ("--optimizer_type DAdaptation", "LoRA+")),
    Case("prodigy_with_loraplus",
         lambda r: r.argv("--network_args", "loraplus_unet_lr_ratio=16", optimizer_type="Prodigy"),
         ("--optimizer_type Prodigy", "LoRA+")),
    Case("initial_step_not_below_max", lambda r: r.argv(initial_step=4, max_train_steps=4),
         ("--initial_step", "--max_train_steps")),
    Case("min_timestep_above_max", lambda r: r.argv(min_timestep=500, max_timestep=100),
         ("--min_timestep", "--max_timestep")),
    Case("v2_refused", lambda r: r.argv("--v2"), ("--v2", "SDXL")),
    # Dataset TOML problems, each naming the file and the key path.
    Case("toml_unknown_key_did_you_mean", lambda r: r.argv(dataset_config=r.toml(dataset={"bucket_reso_step": "32"})),
         ("dataset.toml", "datasets[0].bucket_reso_step", "did you mean 'bucket_reso_steps'")),
    Case("toml_unknown_key_in_subset", lambda r: r.argv(dataset_config=r.toml(subset={"num_repeat": "2"})),
         ("datasets[0].subsets[0].num_repeat", "did you mean 'num_repeats'")),
    Case("toml_unknown_top_level_table", lambda r: r.argv(dataset_config=write_toml(
        r.tmp / "top.toml", r.toml().read_text() + "[generl]\nflip_aug = true\n")), ("top.toml", "generl")),
    Case("toml_wrong_type", lambda r: r.argv(dataset_config=r.toml(subset={"num_repeats": "'ten'"})),
         ("datasets[0].subsets[0].num_repeats", "integer", "ten")),
    Case("toml_resolution_wrong_type", lambda r: r.argv(dataset_config=r.toml(dataset={"resolution": "'big'"})),
         ("datasets[0].resolution", "big")),
    Case("toml_bad_interpolation", lambda r: r.argv(dataset_config=r.toml(general={"resize_interpolation": "'fast'"})),
         ("general.resize_interpolation", "fast")),
    Case("toml_subset_key_at_dataset_level",
         lambda r: r.argv(dataset_config=r.toml(dataset={"image_dir": f"'{r.images.as_posix()}'"})),
         ("datasets[0].image_dir", "[[datasets.subsets]]")),
    Case("toml_subset_key_in_general", lambda r: r.argv(dataset_config=r.toml(general={"is_reg": "true"})),
         ("general.is_reg", "[[datasets.subsets]]")),
    Case("toml_dataset_key_in_subset", lambda r: r.argv(dataset_config=r.toml(subset={"batch_size": "2"})),
         ("datasets[0].subsets[0].batch_size", "dataset-level")),
    Case("toml_missing_image_dir", lambda r: r.argv(dataset_config=r.toml(subset={"image_dir": None})),
         ("datasets[0].subsets[0].image_dir", "missing")),
    Case("toml_no_subsets", lambda r: r.argv(dataset_config=write_toml(r.tmp / "nosub.toml", "[[datasets]]\n"
                                                                      "resolution = 64\n")),
         ("nosub.toml", "datasets[0].subsets")),
    Case("toml_image_dir_not_found", lambda r: r.argv(dataset_config=r.toml(image_dir=r.tmp / "no_such_images")),
         ("image_dir", "no_such_images")),
    Case("toml_empty_image_folder", _empty_folder, ("image_dir", "empty_images", "no images")),
    Case("toml_bucket_steps_20", lambda r: r.argv(dataset_config=r.toml(dataset={"bucket_reso_steps": "20"})),
         ("datasets[0].bucket_reso_steps", "32")),
    Case("toml_min_bucket_above_resolution",
         lambda r: r.argv(dataset_config=r.toml(dataset={"min_bucket_reso": "96"})),
         ("datasets[0].min_bucket_reso", "64")),
    Case("toml_max_bucket_below_resolution",
         lambda r: r.argv(dataset_config=r.toml(dataset={"max_bucket_reso": "32"})),
         ("datasets[0].max_bucket_reso", "64")),
    Case("toml_resolution_missing", lambda r: r.argv(dataset_config=r.toml(dataset={"resolution": None})),
         ("datasets[0].resolution", "missing", "--resolution")),
    Case("toml_num_repeats_zero", lambda r: r.argv(dataset_config=r.toml(general={"num_repeats": "0"})),
         ("general.num_repeats", "at least 1")),
    Case("cache_latents_with_random_crop",
         lambda r: r.argv("--cache_latents", dataset_config=r.toml(subset={"random_crop": "true"})),
         ("datasets[0].subsets[0].random_crop", "--cache_latents")),
    Case("cache_latents_with_color_aug",
         lambda r: r.argv("--cache_latents", dataset_config=r.toml(dataset={"color_aug": "true"})),
         ("datasets[0].color_aug", "--cache_latents")),
    Case("toml_syntax_error", _syntax_error, ("broken.toml", "line 2")),
    Case("dataset_config_not_found", lambda r: r.argv(dataset_config=r.tmp / "missing_dataset.toml"),
         ("--dataset_config", "missing_dataset.toml")),
    Case("toml_validation_split_one",
         lambda r: r.argv(dataset_config=r.toml(dataset={"validation_split": "1.0"})),
         ("datasets[0].validation_split", "below 1")),
    Case("validation_split_flag_negative", lambda r: r.argv("--validation_split=-0.1"),
         ("--validation_split=-0.1", "at least 0")),
    Case("validation_split_holds_out_nothing",
         lambda r: r.argv(dataset_config=r.toml(dataset={"validation_split": "0.1"})),
         ("datasets[0].validation_split=0.1", "holds out no image")),
    Case("max_validation_steps_zero", lambda r: r.argv("--max_validation_steps=0"),
         ("--max_validation_steps=0", "at least 1")),
    Case("in_json_missing",
         lambda r: r.argv(drop=("dataset_config",), in_json=r.tmp / "missing.json", resolution="64"),
         ("--in_json", "missing.json")),
    # DreamBooth folders.
    Case("dreambooth_no_image_left", _dreambooth, ("--train_data_dir", "no training images left", "sks_dog")),
    Case("dreambooth_without_resolution", lambda r: _dreambooth(r, ok=True, resolution=None),
         ("--resolution", "missing")),
    Case("dreambooth_root_missing", lambda r: r.argv("--resolution=64", drop=("dataset_config",),
                                                     train_data_dir=r.tmp / "no_train_root"),
         ("--train_data_dir", "no_train_root")),
    # --config_file and --output_config.
    Case("config_file_flag_as_string", lambda r: _config_file(r, "[training_arguments]\ncache_latents = 'yes'\n"),
         ("run.toml", "training_arguments.cache_latents", "true or false")),
    Case("config_file_wrong_type", lambda r: _config_file(r, "[training_arguments]\nmax_train_steps = 'many'\n"),
         ("run.toml", "training_arguments.max_train_steps", "integer")),
    Case("config_file_bad_choice", lambda r: _config_file(r, "mixed_precision = 'fp32'\n"),
         ("run.toml", "mixed_precision", "fp32")),
    Case("config_file_missing", lambda r: r.argv(config_file=r.tmp / "no_such_config"),
         ("--config_file", "no_such_config.toml")),
    Case("vae_missing", lambda r: r.argv(vae=r.tmp / "vaes" / "sdxl_vae.safetensors"),
         ("--vae", "sdxl_vae.safetensors", "no such file")),
    Case("output_config_without_config_file", lambda r: r.argv("--output_config"),
         ("--output_config", "--config_file")),
    # Options that exist in sd-scripts but do not work here yet are refused, never ignored.
    Case("not_supported_yet_flag", lambda r: r.argv("--debug_dataset"), ("--debug_dataset", "not supported yet")),
    Case("resume_from_huggingface_without_resume", lambda r: r.argv("--resume_from_huggingface"),
         ("--resume_from_huggingface needs --resume", "owner/repo/path")),
    Case("huggingface_repo_type_unknown",
         lambda r: r.argv(huggingface_repo_id="me/lora", huggingface_repo_type="models"),
         ("--huggingface_repo_type models", "model, dataset, space")),
    Case("not_supported_yet_in_config_file", lambda r: _config_file(r, "[dataset_arguments]\n"
                                                                       "debug_dataset = true\n"),
         ("--debug_dataset", "not supported yet")),
    Case("sample_schedule_without_prompts", lambda r: _config_file(r, "[sample_prompt_arguments]\n"
                                                                      "sample_every_n_epochs = 1\n"),
         ("--sample_every_n_epochs", "needs --sample_prompts")),
    Case("sample_prompts_missing", lambda r: r.argv("--sample_at_first", sample_prompts=r.tmp / "prompts.txt"),
         ("--sample_prompts", "prompts.txt", "file not found")),
    Case("sample_prompts_wrong_type", lambda r: r.argv("--sample_at_first", sample_prompts=_file(r, "prompts.csv")),
         ("--sample_prompts", "expected a .txt, .toml or .json file")),
    Case("caption_tag_dropout_above_one",
         lambda r: r.argv(dataset_config=r.toml(subset={"caption_tag_dropout_rate": "1.5"})),
         ("subsets[0].caption_tag_dropout_rate", "between 0 and 1")),
    # Found by this corpus and fixed: each used to crash or pass validation.
    Case("toml_min_bucket_reso_zero", lambda r: r.argv(dataset_config=r.toml(dataset={"min_bucket_reso": "0"})),
         ("datasets[0].min_bucket_reso",)),
    Case("console_log_file_folder_missing", lambda r: r.argv(console_log_file=r.tmp / "no_log_dir" / "log.txt"),
         ("--console_log_file", "no_log_dir")),
    Case("config_file_is_a_folder", _config_folder,
         ("--config_file", "folder.toml")),
    Case("config_file_not_utf8",
         lambda r: r.argv(config_file=_write_bytes(r.tmp / "latin1.toml", b"output_name = '\xe9t\xe9'\n")),
         ("latin1.toml",)),
    Case("output_dir_is_a_file", lambda r: r.argv(output_dir=_write_bytes(r.tmp / "out_file", b"x")),
         ("--output_dir", "out_file")),
    Case("optimizer_package_missing", lambda r: r.argv(optimizer_type="no_such_pkg.Opt"),
         ("--optimizer_type no_such_pkg.Opt", "pip install no-such-pkg")),
    Case("optimizer_args_not_a_literal", lambda r: r.argv("--optimizer_args", "decouple=yes"),
         ("--optimizer_args decouple=yes",)),
    Case("optimizer_args_unknown_key", lambda r: r.argv("--optimizer_args", "beta=0.9", optimizer_type="Lion"),
         ("--optimizer_args beta", "Lion has no argument beta")),
    Case("prodigy_with_two_learning_rates", lambda r: r.argv(optimizer_type="Prodigy", text_encoder_lr="0.5"),
         ("--optimizer_type Prodigy needs one learning rate",)),
    Case("cosine_with_min_lr_without_ratio", lambda r: r.argv(lr_scheduler="cosine_with_min_lr"),
         ("--lr_scheduler cosine_with_min_lr", "--lr_scheduler_min_lr_ratio")),
    Case("lr_scheduler_unknown", lambda r: r.argv(lr_scheduler="bogus"), ("--lr_scheduler", "bogus")),
    Case("learning_rate_nan", lambda r: r.argv(learning_rate="nan"), ("--learning_rate", "nan")),
    Case("unet_lr_negative", lambda r: r.argv(unet_lr="-1e-4"), ("--unet_lr",)),
    Case("max_grad_norm_negative", lambda r: r.argv(max_grad_norm="-1"), ("--max_grad_norm",)),
    Case("lr_warmup_steps_negative", lambda r: r.argv(lr_scheduler="constant_with_warmup", lr_warmup_steps=-5),
         ("--lr_warmup_steps",)),
    Case("seed_negative", lambda r: r.argv(seed=-1), ("--seed",)),
)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_config_is_refused_before_any_model_is_loaded(case, tmp_path, capsys, tiny_model_dir):
    code, lines = run_cli(capsys, case.build(Run(tmp_path, tiny_model_dir)))
    text = "\n".join(lines)
    assert code == 2, text
    assert "Traceback" not in text
    assert lines, "no error printed"
    assert all(line.startswith(PREFIX) for line in lines), text
    for culprit in case.culprits:
        assert culprit in text, f"{culprit!r} not named in:\n{text}"


def test_corpus_is_large_enough():
    assert len(CASES) >= 35
    assert len({c.id for c in CASES}) == len(CASES)


def test_every_problem_is_reported_together(tmp_path, capsys, garbage_model):
    """Command-line rules, not-yet options and dataset checks all run before anything is reported."""
    r = Run(tmp_path, garbage_model)
    (tmp_path / "empty_images").mkdir()
    toml = r.toml(dataset={"bucket_reso_steps": "20"}, subset={"random_crop": "true"})
    text = toml.read_text() + f"[[datasets.subsets]]\nimage_dir = '{(tmp_path / 'empty_images').as_posix()}'\n"
    write_toml(toml, text)
    code, lines = run_cli(capsys, r.argv("--full_fp16", "--cache_latents", "--debug_dataset",
                                         dataset_config=toml))
    text = "\n".join(lines)
    assert code == 2
    assert all(line.startswith(PREFIX) for line in lines), text
    for culprit in ("--full_fp16 needs", "--debug_dataset: not supported yet", "datasets[0].bucket_reso_steps=20",
                    "datasets[0].subsets[0].random_crop", "datasets[0].subsets[1].image_dir"):
        assert sum(culprit in line for line in lines) == 1, f"{culprit!r} in:\n{text}"


def test_schema_errors_do_not_hide_dataset_checks(tmp_path, capsys, garbage_model):
    r = Run(tmp_path, garbage_model)
    toml = r.toml(dataset={"bucket_reso_steps": "20", "flip_agu": "true"})
    code, lines = run_cli(capsys, r.argv("--full_fp16", dataset_config=toml))
    text = "\n".join(lines)
    assert code == 2
    assert all(line.startswith(PREFIX) for line in lines), text
    for culprit in ("datasets[0].flip_agu", "--full_fp16 needs", "datasets[0].bucket_reso_steps"):
        assert sum(culprit in line for line in lines) == 1, f"{culprit!r} in:\n{text}"


CASES_BY_ID = {case.id: case for case in CASES}


@pytest.mark.parametrize("case_id", [
    "max_train_steps_not_int", "unknown_flag_did_you_mean", "toml_bucket_steps_20", "config_file_flag_as_string",
    "dreambooth_no_image_left",
    "no_dataset", "in_json_missing",
    "toml_resolution_wrong_type",
])
def test_one_problem_is_one_line(case_id, tmp_path, capsys, tiny_model_dir):
    code, lines = run_cli(capsys, CASES_BY_ID[case_id].build(Run(tmp_path, tiny_model_dir)))
    assert code == 2
    assert len(lines) == 1, "\n".join(lines)


@pytest.mark.parametrize("flag", ["--use_8bit_adam", "--use_lion_optimizer"])
def test_legacy_optimizer_flag_alone_reports_no_conflict(flag, tmp_path, capsys, tiny_model_dir):
    code = main(["check", *Run(tmp_path, tiny_model_dir).argv(flag)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "cannot be combined" not in captured.err
