"""Single files: the tiny SDXL loads the same from a diffusers folder, a .safetensors and a .ckpt, offline;
bad files fail in one line; a pickle that carries code is refused and never runs."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sdxl_lora.config.errors import UserInputError
from sdxl_lora.config.schema import ModelConfig
from sdxl_lora.models.configs import RECORDED_KEY, build_empty, shipped_config
from sdxl_lora.models.errors import ModelLoadError
from sdxl_lora.models.folder import load_component
from sdxl_lora.models.load import load_sdxl
from sdxl_lora.models.sgm_layout import COMPONENTS, layout_for, to_file_tensors
from sdxl_lora.models.single_file import convert_to_diffusers, read_single_file, write_single_file

FLAG = "--pretrained_model_name_or_path"


@pytest.fixture(scope="module")
def files(tiny_sdxl_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return {suffix: write_single_file(tiny_sdxl_dir, out / f"tiny{suffix}") for suffix in (".safetensors", ".ckpt")}


def _states(models) -> dict[str, dict[str, torch.Tensor]]:
    parts = {"unet": models.unet, "vae": models.vae, "te1": models.text_encoder_1, "te2": models.text_encoder_2}
    return {c: m.state_dict() for c, m in parts.items()}


def _assert_same(got: dict, want: dict) -> None:
    for component in want:
        assert got[component].keys() == want[component].keys(), component
        for key, tensor in want[component].items():
            other = got[component][key]
            assert other.dtype == tensor.dtype and torch.equal(other, tensor), f"{component} {key}"


def _plain_config(model) -> dict:
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    return {k: v for k, v in config.items() if k not in ("_name_or_path", "transformers_version", "dtype")}


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_folder_safetensors_and_ckpt_load_identical_models_offline(tiny_sdxl, files, suffix, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = load_sdxl(ModelConfig(pretrained_model_name_or_path=str(files[suffix])))
    _assert_same(_states(models), _states(tiny_sdxl))
    for name in ("unet", "vae", "text_encoder_1", "text_encoder_2"):
        assert _plain_config(getattr(models, name)) == _plain_config(getattr(tiny_sdxl, name)), name
    assert models.tokenizer_2.pad_token_id == 0 and models.tokenizer_1.pad_token_id == 49407


def test_file_has_sgm_names_and_records_its_configs(files):
    with safe_open(files[".safetensors"], "pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight" in keys
    assert "first_stage_model.decoder.mid.attn_1.q.weight" in keys
    assert RECORDED_KEY in metadata


def test_round_trip_folder_file_folder_is_bit_exact(tiny_sdxl_dir, files, tmp_path):
    back = convert_to_diffusers(files[".safetensors"], tmp_path / "back")
    for component in COMPONENTS:
        _assert_same({component: load_component(back, component, None).state_dict()},
                     {component: load_component(tiny_sdxl_dir, component, None).state_dict()})
    for sub, name in [("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                      ("text_encoder", "model"), ("text_encoder_2", "model")]:
        ours = load_file(back / sub / f"{name}.safetensors")
        theirs = load_file(tiny_sdxl_dir / sub / f"{name}.safetensors")
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), sub


def test_diffusers_from_single_file_reads_our_file_to_equal_weights(tiny_sdxl, tiny_sdxl_dir, files):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_single_file(str(files[".safetensors"]), config=str(tiny_sdxl_dir),
                                                      local_files_only=True)
    theirs = {"unet": pipe.unet, "vae": pipe.vae, "te1": pipe.text_encoder, "te2": pipe.text_encoder_2}
    _assert_same({c: m.state_dict() for c, m in theirs.items()}, _states(tiny_sdxl))


def test_write_in_fp16_and_load_straight_to_bf16(tiny_sdxl, tiny_sdxl_dir, tmp_path):
    path = write_single_file(tiny_sdxl_dir, tmp_path / "half.safetensors", dtype=torch.float16)
    with safe_open(path, "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    parts = read_single_file(path, dtypes={c: torch.bfloat16 for c in COMPONENTS})
    unet = tiny_sdxl.unet.state_dict()
    for key, tensor in parts["unet"].state_dict().items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, unet[key].half().to(torch.bfloat16))


def test_disable_mmap_reads_the_same(tiny_sdxl, files):
    models = load_sdxl(ModelConfig(pretrained_model_name_or_path=str(files[".safetensors"]),
                                   disable_mmap_load_safetensors=True))
    _assert_same(_states(models), _states(tiny_sdxl))


def test_configs_come_from_a_folder_when_the_file_records_none(tiny_sdxl, tiny_sdxl_dir, files, tmp_path):
    plain = tmp_path / "plain.safetensors"
    with safe_open(files[".safetensors"], "pt") as f:
        save_file({k: f.get_tensor(k) for k in f.keys()}, plain)
    with pytest.raises(ModelLoadError, match="not a multiple of SDXL's 64-wide attention heads"):
        read_single_file(plain)  # the tiny model's heads are 16 wide: no shape reveals that
    parts = read_single_file(plain, config_dir=tiny_sdxl_dir)
    _assert_same({c: m.state_dict() for c, m in parts.items()}, _states(tiny_sdxl))


def _mini_configs() -> dict[str, dict]:
    """A small SDXL-shaped model with SDXL's head width (64) and norm groups (32): inferable from shapes alone."""
    unet = shipped_config("unet") | dict(block_out_channels=[64, 128, 128], attention_head_dim=[1, 2, 2],
                                         transformer_layers_per_block=[1, 1, 2], cross_attention_dim=128,
                                         addition_time_embed_dim=8, projection_class_embeddings_input_dim=112)
    vae = shipped_config("vae") | dict(block_out_channels=[32, 32, 64, 64], layers_per_block=1)
    te = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1)
    return {"unet": unet, "vae": vae, "te1": shipped_config("te1") | te,
            "te2": shipped_config("te2") | te | dict(projection_dim=64)}


def test_config_is_inferred_from_shapes_for_a_file_without_configs(tmp_path):
    torch.manual_seed(0)
    configs, tensors, states = _mini_configs(), {}, {}
    for component, config in configs.items():
        state = build_empty(component, config).to_empty(device="cpu").state_dict()
        states[component] = {k: torch.randn_like(v) for k, v in state.items()}
        tensors.update(to_file_tensors(layout_for(component, states[component]), states[component]))
    save_file(tensors, tmp_path / "mini.safetensors")
    parts = read_single_file(tmp_path / "mini.safetensors")
    _assert_same({c: m.state_dict() for c, m in parts.items()}, states)
    for component, model in parts.items():
        config = _plain_config(model)
        assert {k: config[k] for k in configs[component] if not k.startswith("_")} == {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in configs[component].items()
            if not k.startswith("_") and k != "architectures"} | (
            {"architectures": config.get("architectures")} if "architectures" in configs[component] else {}), component


def _sd_file(path, keys):
    save_file({k: torch.zeros(2) for k in keys}, path)
    return path


BAD_FILES = {
    "sd15": (lambda p: _sd_file(p / "sd15.safetensors", [
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        "model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.conv_in.weight"]),
        "an SD 1.x checkpoint"),
    "sd2": (lambda p: _sd_file(p / "sd2.safetensors", [
        "cond_stage_model.model.token_embedding.weight", "model.diffusion_model.input_blocks.0.0.weight"]),
        "an SD 2.x checkpoint"),
    "lora": (lambda p: _sd_file(p / "lora.safetensors", [
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight", "lora_unet_input_blocks_4_1_proj_in.lora_up.weight",
        "lora_unet_input_blocks_4_1_proj_in.alpha"]), "a LoRA file"),
    "refiner": (lambda p: _sd_file(p / "refiner.safetensors", [
        "conditioner.embedders.0.model.token_embedding.weight", "model.diffusion_model.label_emb.0.0.weight"]),
        "an SDXL refiner"),
    "vae_only": (lambda p: _sd_file(p / "vae.safetensors", ["encoder.conv_in.weight", "decoder.conv_out.weight"]),
                 "a VAE-only file"),
    "garbage_ckpt": (lambda p: (p / "x.ckpt").write_bytes(b"not a checkpoint at all") and p / "x.ckpt",
                     "cannot unpickle it"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_file_that_is_not_sdxl_base_says_what_it_is_in_one_line(tmp_path, name):
    make, words = BAD_FILES[name]
    path = make(tmp_path)
    with pytest.raises(UserInputError) as err:
        load_sdxl(ModelConfig(pretrained_model_name_or_path=str(path)))
    message = str(err.value)
    assert "\n" not in message and words in message and message.startswith(f"{FLAG} {path}:"), message


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_file_is_one_line(files, tmp_path, suffix):
    data = files[suffix].read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as err:
        load_sdxl(ModelConfig(pretrained_model_name_or_path=str(path)))
    assert "\n" not in str(err.value) and "truncated or corrupt" in str(err.value)


def test_missing_path_is_one_line(tmp_path):
    with pytest.raises(UserInputError) as err:
        load_sdxl(ModelConfig(pretrained_model_name_or_path=str(tmp_path / "gone.safetensors")))
    assert "\n" not in str(err.value) and "no such file" in str(err.value)


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how, words", [
    ("torch_zip", "refused: its pickle needs more than tensors (it references posix.system)"),
    ("pickle_protocol_2", "refused: its pickle needs more than tensors (it references posix.system)"),
    ("pickle_protocol_5", "cannot unpickle it"),  # torch's weights-only unpickler stops at the first frame
])
def test_a_ckpt_whose_pickle_carries_code_is_refused_and_the_code_never_runs(tmp_path, how, words):
    marker, path = tmp_path / "marker", tmp_path / "evil.ckpt"
    if how == "torch_zip":
        torch.save({"state_dict": {"model.diffusion_model.x": torch.ones(1)}, "hook": _RunsCode(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"state_dict": _RunsCode(marker)}, protocol=int(how[-1])))
    with pytest.raises(ModelLoadError) as err:
        load_sdxl(ModelConfig(pretrained_model_name_or_path=str(path)))
    message = str(err.value)
    assert words in message and "\n" not in message, message
    assert not marker.exists()


def test_file_without_a_vae_needs_vae_flag(tiny_sdxl, tiny_sdxl_dir, files, tmp_path):
    path = tmp_path / "no_vae.safetensors"
    with safe_open(files[".safetensors"], "pt") as f:
        save_file({k: f.get_tensor(k) for k in f.keys() if not k.startswith("first_stage_model.")}, path,
                  metadata=f.metadata())
    with pytest.raises(ModelLoadError, match=r"has no VAE \(first_stage_model"):
        load_sdxl(ModelConfig(pretrained_model_name_or_path=str(path)))
    models = load_sdxl(ModelConfig(pretrained_model_name_or_path=str(path), vae=str(tiny_sdxl_dir)))
    _assert_same(_states(models), _states(tiny_sdxl))


def _with_extra(files, tmp_path, extra):
    path = tmp_path / "extra.safetensors"
    with safe_open(files[".safetensors"], "pt") as f:
        save_file({**{k: f.get_tensor(k) for k in f.keys()}, **extra}, path, metadata=f.metadata())
    return path


def test_position_ids_and_logit_scale_in_a_file_are_skipped(tiny_sdxl, files, tmp_path):
    path = _with_extra(files, tmp_path, {
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
        "conditioner.embedders.1.model.text_model.embeddings.position_ids": torch.arange(77)[None],
        "conditioner.embedders.1.model.logit_scale": torch.tensor(4.6052)})
    _assert_same({c: m.state_dict() for c, m in read_single_file(path).items()}, _states(tiny_sdxl))


def test_a_tensor_sdxl_does_not_have_is_one_line(files, tmp_path):
    path = _with_extra(files, tmp_path, {"model.diffusion_model.extra_block.weight": torch.zeros(1)})
    with pytest.raises(ModelLoadError) as err:
        read_single_file(path)
    assert str(err.value) == (f"{path}: its U-Net (model.diffusion_model.*) holds 'extra_block.weight', which "
                              "SDXL's layout does not have")


def _mixed_file(path):
    """float16 tensors, largest first (so later ones reuse a slice of a thread's staging buffer), and integers."""
    generator = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randn(n, 3, generator=generator).half() for i, n in enumerate([500, 7, 333, 1, 64] * 8)}
    tensors["ids"] = torch.arange(77, dtype=torch.int64)
    tensors["scalar"] = torch.tensor(2.5, dtype=torch.float16)
    save_file(tensors, path)
    return tensors


@pytest.mark.parametrize("positional", [True, False], ids=["preadv", "seek-and-read"])
def test_threads_load_every_tensor_cast_or_as_stored(tmp_path, monkeypatch, positional):
    from concurrent.futures import ThreadPoolExecutor

    from sdxl_lora.models.checkpoint_io import open_checkpoint

    if not positional:  # the platform without os.preadv (Windows) reads under a lock
        monkeypatch.delattr(os, "preadv", raising=False)
    want = _mixed_file(tmp_path / "mixed.safetensors")
    with open_checkpoint(tmp_path / "mixed.safetensors") as ckpt, ThreadPoolExecutor(4) as pool:
        for dtype in (torch.float32, torch.bfloat16, None):
            got = dict(zip(want, pool.map(lambda k, d=dtype: ckpt.load(k, d, "cpu"), want), strict=True))
            for key, tensor in want.items():
                expected = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
                assert got[key].dtype == expected.dtype and torch.equal(got[key], expected), (dtype, key)
