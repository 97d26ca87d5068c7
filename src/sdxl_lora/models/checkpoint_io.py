"""Single-file checkpoints on disk: open lazily, say what a file holds, write atomically.

Reading never runs code: `.ckpt`/`.pt`/`.pth`/`.bin` go through `torch.load(weights_only=True)` (memory-mapped
unless --disable_mmap_load_safetensors, when the file is in torch's zip format), and a pickle that asks for
anything beyond tensors is refused. `.safetensors` tensors are read with plain positional reads at the offsets the
header gives (never memory-mapped, whatever the flag), by several threads at once (`Checkpoint.load`): straight
into the final tensor when the file's dtype is kept, else through one reused staging buffer per thread, so memory
holds the model plus a few tensors and every byte of the model is touched once.
Writing streams a `.safetensors` file tensor by tensor (header first, then the bytes), so peak memory stays at
the model itself; every write goes to a temporary file beside the target, renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import pickle
import re
import struct
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

import torch

from sdxl_lora.common.files import atomic_path
from sdxl_lora.models.errors import ModelLoadError

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
SAFETENSORS_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
ALIGN = 8  # safetensors pads its header so tensor data starts 8-byte aligned
Loader: TypeAlias = Callable[[str, "torch.dtype | None", "torch.device | str"], torch.Tensor]


def _cast(get: Callable[[str], torch.Tensor], key: str, dtype: torch.dtype | None,
          device: torch.device | str) -> torch.Tensor:
    tensor = get(key)
    return tensor.to(device=device, dtype=dtype or tensor.dtype) if tensor.is_floating_point() else tensor


class Checkpoint:
    """An opened single file: tensor names, header metadata, and tensors fetched one at a time."""

    def __init__(self, path: Path, keys: Sequence[str], metadata: Mapping[str, str],
                 get: Callable[[str], torch.Tensor], meta: Callable[[str], torch.Tensor],
                 close: Callable[[], None] = lambda: None, load: Loader | None = None):
        self.path = path
        """The file, for messages."""
        self.keys = list(keys)
        """Tensor names in file order."""
        self.metadata = dict(metadata)
        """String metadata (the safetensors header's __metadata__, or the string entries of a .ckpt)."""
        self.tensor = get
        """name -> the tensor, read now (a new CPU tensor in the file's dtype)."""
        self.meta = meta
        """name -> an empty tensor on the meta device with the stored shape and dtype (nothing is read)."""
        self.load = load or functools.partial(_cast, get)
        """(name, dtype, device) -> the tensor in its final form: floating-point tensors in `dtype` (None keeps the
        file's) on `device`, others as stored, on the CPU. Safe to call from several threads at once."""
        self.close = close


@contextlib.contextmanager
def open_checkpoint(path: Path, mmap: bool = True) -> Iterator[Checkpoint]:
    """Open `path` for reading; raises ModelLoadError naming the path when it cannot be read safely."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    checkpoint = _open_safetensors(path) if path.suffix.lower() == ".safetensors" else _open_pickle(path, mmap)
    try:
        yield checkpoint
    finally:
        checkpoint.close()


def _open_safetensors(path: Path) -> Checkpoint:
    """Tensors are read with plain file reads into fresh buffers, never memory-mapped: a mapped file's pages
    count as resident while the map is open, so a cast-while-loading would hold the file and the model at once.
    Reads are positional (os.preadv on one descriptor), so threads read at once without sharing a file position."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))  # closed by Checkpoint.close
    try:
        with open(fd, "rb", closefd=False) as f:
            entries, metadata, data_start = _safetensors_header(f, size)
    except (ValueError, KeyError, TypeError, AttributeError, struct.error) as err:  # JSON errors are ValueErrors
        os.close(fd)
        raise ModelLoadError(f"{path}: cannot read it as .safetensors (truncated or corrupt?): {err}") from None
    staging, pread = threading.local(), _positional_reader(fd)  # one reused buffer per thread, for casts

    def read_into(key: str, out: torch.Tensor) -> torch.Tensor:
        _, _, (begin, end) = entries[key]
        view, done = memoryview(out.numpy()).cast("B"), 0
        while done < end - begin:
            got = pread(view[done:], data_start + begin + done)
            if got <= 0:
                raise ModelLoadError(f"{path}: cannot read it as .safetensors (truncated or corrupt?): {key} is "
                                     "cut off")
            done += got
        return out

    def tensor(key: str) -> torch.Tensor:
        dtype, shape, (begin, end) = entries[key]
        return read_into(key, torch.empty(end - begin, dtype=torch.uint8)).view(dtype).reshape(shape)

    def load(key: str, dtype: torch.dtype | None, device: torch.device | str) -> torch.Tensor:
        stored, shape, (begin, end) = entries[key]
        final = dtype if dtype is not None and stored.is_floating_point else stored
        if final == stored and torch.device(device).type == "cpu" or not stored.is_floating_point:
            return tensor(key)  # read once, straight into the tensor the model keeps
        buffer = getattr(staging, "buffer", None)
        if buffer is None or buffer.numel() < end - begin:
            buffer = staging.buffer = torch.empty(end - begin, dtype=torch.uint8)
        raw = read_into(key, buffer[:end - begin]).view(stored).reshape(shape)
        return torch.empty(shape, dtype=final, device=device).copy_(raw)

    def meta(key: str) -> torch.Tensor:
        dtype, shape, _ = entries[key]
        return torch.empty(shape, dtype=dtype, device="meta")

    return Checkpoint(path, list(entries), metadata, tensor, meta, close=lambda: os.close(fd), load=load)


def _positional_reader(fd: int) -> Callable[[memoryview, int], int]:
    """(buffer, offset) -> bytes read into it from `offset`; os.preadv where the platform has it (no shared file
    position, so threads read at once), else seek + read under a lock (Windows)."""
    if hasattr(os, "preadv"):
        return lambda view, offset: os.preadv(fd, [view], offset)
    f, lock = open(fd, "rb", buffering=0, closefd=False), threading.Lock()

    def read(view: memoryview, offset: int) -> int:
        with lock:
            f.seek(offset)
            return f.readinto(view) or 0

    return read


def _safetensors_header(f, size: int) -> tuple[dict, dict[str, str], int]:
    """(name -> (dtype, shape, (begin, end))), metadata, data start; checks every tensor lies inside the file."""
    raw = f.read(8)
    if len(raw) < 8:
        raise ValueError("shorter than a safetensors header")
    (length,) = struct.unpack("<Q", raw)
    if length > size - 8:
        raise ValueError(f"header of {length} bytes does not fit in a {size}-byte file")
    header = json.loads(f.read(length))
    metadata = header.pop("__metadata__", None) or {}
    entries, data_start, data_size = {}, 8 + length, size - 8 - length
    for name, info in header.items():
        dtype, shape, (begin, end) = SAFETENSORS_DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
        expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if end - begin != expected or not 0 <= begin <= end <= data_size:
            raise ValueError(f"{name}: bytes {begin}..{end} do not hold {shape} {info['dtype']} within the "
                             f"{data_size} data bytes of the file")
        entries[name] = (dtype, shape, (begin, end))
    return entries, metadata, data_start


def _open_pickle(path: Path, mmap: bool) -> Checkpoint:
    try:
        loaded = _torch_load(path, mmap)
    except pickle.UnpicklingError as err:
        if found := re.search(r"GLOBAL (\S+)", str(err)):
            raise ModelLoadError(f"{path}: refused: its pickle needs more than tensors (it references "
                                 f"{found.group(1)}), and loading it could run code; convert it to .safetensors "
                                 "with a tool you trust") from None
        detail = [line.strip() for line in str(err).split("WeightsUnpickler error:")[-1].splitlines() if line.strip()]
        raise ModelLoadError(f"{path}: cannot unpickle it (truncated or corrupt?): "
                             f"{detail[0] if detail else _first_line(err)}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise ModelLoadError(f"{path}: cannot read it as a PyTorch checkpoint (truncated or corrupt?): "
                             f"{_first_line(err)}") from None
    if not isinstance(loaded, dict):
        raise ModelLoadError(f"{path}: holds a {type(loaded).__name__}, not a dict of tensors")
    state = loaded.get("state_dict", loaded)
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: its 'state_dict' is a {type(state).__name__}, not a dict of tensors")
    metadata = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, str)}
    return _from_dict(path, {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, metadata)


def _torch_load(path: Path, mmap: bool):
    """weights_only=True always; memory-mapped when asked and the file is in torch's zip format."""
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap can only be used" not in str(err):
                raise
    return torch.load(path, map_location="cpu", weights_only=True)


def _from_dict(path: Path, tensors: dict[str, torch.Tensor], metadata: Mapping[str, str]) -> Checkpoint:
    return Checkpoint(path, list(tensors), metadata, tensors.__getitem__,
                      lambda k: torch.empty(tensors[k].shape, dtype=tensors[k].dtype, device="meta"),
                      close=tensors.clear)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


LORA_MARKERS = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
LORA_PARTS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".hada_w1_a", ".lokr_w1")


def content_problem(keys: Sequence[str]) -> str | None:
    """None when the names are those of an SDXL base checkpoint, else one line saying what the file is."""
    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if any(k.startswith(LORA_MARKERS) or any(p in k for p in LORA_PARTS) for k in keys):
        return "a LoRA file (lora_unet_/lora_te keys), not a base model; give it to --network_weights instead"
    if has("cond_stage_model.transformer."):
        return "an SD 1.x checkpoint (cond_stage_model.transformer.*, no label_emb), not SDXL"
    if has("cond_stage_model.model."):
        return "an SD 2.x checkpoint (cond_stage_model.model.*), not SDXL"
    if has("conditioner.embedders.0.model.") and not has("conditioner.embedders.1."):
        return "an SDXL refiner checkpoint (one OpenCLIP text encoder), not SDXL base"
    if not has("model.diffusion_model."):
        if keys and all(k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")) for k in keys):
            return "a VAE-only file; give it to --vae, and the SDXL base model here"
        return "no SDXL U-Net in it (no model.diffusion_model.* tensors)"
    if "model.diffusion_model.label_emb.0.0.weight" not in keys or not has("conditioner.embedders.1.model."):
        return "not an SDXL base checkpoint (needs model.diffusion_model.label_emb and conditioner.embedders.1)"
    return None


def write_safetensors(out: Path, specs: Sequence[tuple[str, torch.Tensor]], tensor_for: Callable[[str], torch.Tensor],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Stream a .safetensors file: `specs` gives (name, tensor or meta tensor) for the header, in write order;
    `tensor_for(name)` is called once per name, just before its bytes are written."""
    header, offset = {}, 0
    for name, spec in specs:
        size = spec.numel() * spec.element_size()
        header[name] = {"dtype": SAFETENSORS_NAMES[spec.dtype], "shape": list(spec.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % ALIGN)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, spec in specs:
            tensor = tensor_for(name).detach().to("cpu").contiguous()
            if tensor.shape != spec.shape or tensor.dtype != spec.dtype:
                raise ValueError(f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, header says "
                                 f"{tuple(spec.shape)} {spec.dtype}")
            f.write(tensor.reshape(-1).view(torch.uint8).numpy().data)


def write_torch_checkpoint(out: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """A .ckpt as the original SDXL release has them: {"state_dict": tensors}, plus string metadata entries."""
    with atomic_path(out) as tmp:
        torch.save({"state_dict": {k: v.contiguous() for k, v in tensors.items()}, **metadata}, tmp)
