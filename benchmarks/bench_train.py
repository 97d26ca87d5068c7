"""Throughput of the real training path: median seconds per step, FLOPs, fraction of peak, memory, overheads.

    python benchmarks/bench_train.py --steps N                   # the tiny SDXL on the CPU, 128 px, batch 1
    python benchmarks/bench_train.py --model full --steps 10 --resolution 1024 --batch 1 --precision bf16 \\
        --gradient_checkpointing --cache_latents --cache_text_encoder_outputs --optimizer_type AdamW
    python benchmarks/bench_train.py --steps 10 --compare "" "--cache_latents --cache_text_encoder_outputs"

Options: --model tiny|full, --steps N (measured steps), --warmup W (steps dropped first, at least 1),
--resolution (default 128 tiny, 1024 full), --batch, --precision no|fp16|bf16 (--mixed_precision; default bf16 on
CUDA, no on the CPU), --device cpu|cuda (the whole process's; default cuda when present), --threads T (torch's CPU
threads), --micro_rounds R, --no_overheads, --peak_tflops T, --model_dir DIR (keep the random full-size model
there and reuse it), --model_file FILE (a full-size SDXL single file to train on instead, e.g. the one
benchmarks/load_memory.py --keep writes; implies --model full), --profile (the last warm-up step under
torch.profiler, summed by kind of op: benchmarks/step_profile.py; needs --warmup 2 or more), --channels_last (the
U-Net's 4-D weights in channels_last memory format once placed, to measure it: the trainer itself does not),
--compare A B [C ...] (must come last). Every other argument is a trainer flag, passed on unchanged (e.g.
--cache_latents --cache_text_encoder_outputs --gradient_checkpointing --fp8_base --optimizer_type AdamW8bit).

What runs: the trainer's own CLI (sdxl_lora.cli.main) on a dataset of `batch` random images at the resolution
(one bucket, enough repeats for one epoch), with LoRA rank 8 alpha 8 on the U-Net only, for warmup + steps
optimizer steps. The model is the tiny SDXL of sdxl_lora.models.tiny or a full-size SDXL base (random weights
from the shipped configs, written once as a diffusers folder in float16), so the real loading code runs.

How it measures (the production code is not changed; this process wraps two of its public methods):
- Step time: sdxl_lora.train.events.Events.step_done, called after each optimizer step, is wrapped to read the
  clock (after torch.cuda.synchronize on CUDA). A step's time is the gap between two boundaries; the first
  `warmup` steps are dropped; s_per_step is the median of the rest.
- Memory: peak_host_mem is the process's resident high-water mark (VmHWM, reset before each run) over the run,
  peak_gpu_mem is torch.cuda.max_memory_allocated over the run; the *_steps variants cover the measured steps.
- After the run, at the step's shapes and dtype, timed alternately for `micro_rounds` rounds (medians): the
  trained LoRA U-Net's forward+backward (gradients to the LoRA weights), the run's own optimizer step on them,
  and the same U-Net frozen (its LoRA layers bypassed: the same weights and storage, fp8 with --fp8_base,
  checkpointed when the run was) doing forward+backward to its input latents. lora_overhead = LoRA / frozen;
  step_overhead = s_per_step / (LoRA + optimizer step).
- flops_per_step: torch.utils.flop_counter.FlopCounterMode over one forward+backward of the trained LoRA U-Net
  at the step's shapes, without gradient checkpointing's recomputation (the model's FLOPs: a run with
  checkpointing executes about one more forward). fraction_of_peak = flops_per_step / s_per_step / the device's
  dense peak for the compute dtype (PEAK_TFLOPS; --peak_tflops overrides; null on the CPU unless given).

Prints one JSON line. With --compare, each option set (a string of these options and trainer flags, applied
on top of the command line's) trains `--rounds` times, the sets alternating, in this one process: one JSON line
per set (its steps pooled) and one per later set with its ratios to the first (B/A). Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import step_profile

SRC = Path(__file__).resolve().parents[1] / "src"
RANK = 8
PEAK_TFLOPS = (  # dense tensor-core peaks from the vendors' data sheets (SXM/PCIe as named), per compute dtype
    (r"H200", dict(bf16=989.0, fp16=989.0, tf32=494.5, fp32=66.9)),
    (r"H100 NVL", dict(bf16=835.0, fp16=835.0, tf32=417.5, fp32=60.0)),
    (r"H100 PCIe", dict(bf16=756.0, fp16=756.0, tf32=378.0, fp32=51.2)),
    (r"H100", dict(bf16=989.0, fp16=989.0, tf32=494.5, fp32=66.9)),
    (r"A100", dict(bf16=312.0, fp16=312.0, tf32=156.0, fp32=19.5)),
    (r"L40S", dict(bf16=362.0, fp16=362.0, tf32=183.0, fp32=91.6)),
    (r"\bL4\b", dict(bf16=121.0, fp16=121.0, tf32=60.0, fp32=30.3)),
    (r"RTX 4090", dict(bf16=165.2, fp16=165.2, tf32=82.6, fp32=82.6)),  # fp16/bf16 with fp32 accumulation
    (r"RTX 3090", dict(bf16=71.0, fp16=71.0, tf32=35.6, fp32=35.6)),
)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The harness's options and the trainer flags (everything else, in order)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--steps", type=int, default=10, help="measured optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps run first and dropped (>= 1)")
    parser.add_argument("--resolution", type=int, help="image side (default 128 tiny, 1024 full)")
    parser.add_argument("--batch", type=int, default=1, help="images per step (the dataset's batch_size)")
    parser.add_argument("--precision", choices=("no", "fp16", "bf16"),
                        help="--mixed_precision (default bf16 on CUDA, no on the CPU)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default cuda when present")
    parser.add_argument("--micro_rounds", type=int, default=5, help="rounds of the U-Net micro-timings")
    parser.add_argument("--no_overheads", action="store_true", help="skip the micro-timings (and their memory)")
    parser.add_argument("--peak_tflops", type=float, help="the device's peak for the compute dtype")
    parser.add_argument("--model_dir", type=Path, help="where the random full-size model is kept and reused")
    parser.add_argument("--model_file", type=Path, help="a full-size SDXL single file to use (implies --model full)")
    parser.add_argument("--rounds", type=int, default=3, help="--compare: runs of each option set")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default torch's: one per core)")
    parser.add_argument("--channels_last", action="store_true",
                        help="the U-Net's 4-D weights in channels_last after placement (to measure it; the trainer "
                             "itself does not)")
    parser.add_argument("--profile", action="store_true",
                        help="profile the last warm-up step by kind of op (benchmarks/step_profile.py)")
    opts, flags = parser.parse_known_args(argv)
    if opts.model_file is not None:
        opts.model = "full"
    if opts.warmup < 1 or opts.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if opts.profile and opts.warmup < 2:
        parser.error("--profile profiles the last warm-up step after the first: it needs --warmup 2 or more")
    if opts.resolution is None:
        opts.resolution = 128 if opts.model == "tiny" else 1024
    if opts.resolution % 64:
        parser.error("--resolution must be a multiple of 64")
    return opts, flags


# ---------------------------------------------------------------------------------------------- models, data


def write_full_model(folder: Path) -> Path:
    """A full-size SDXL base (shipped configs) with random float16 weights, as a diffusers folder."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from sdxl_lora.common.files import atomic_folder
    from sdxl_lora.models.configs import build_empty, shipped_config
    from sdxl_lora.models.tokenizers import clip_tokenizers

    device = "cuda" if use_cuda() else "cpu"  # random numbers are much faster there; saved tensor by tensor
    generator = torch.Generator(device).manual_seed(0)
    parts = {c: random_model(build_empty(c, shipped_config(c)), torch.float16, device, generator)
             for c in ("unet", "vae", "te1", "te2")}
    tok1, tok2 = clip_tokenizers()
    pipe = StableDiffusionXLPipeline(
        vae=parts["vae"], text_encoder=parts["te1"], text_encoder_2=parts["te2"], tokenizer=tok1, tokenizer_2=tok2,
        unet=parts["unet"], scheduler=EulerDiscreteScheduler.from_config(shipped_config("scheduler")),
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    with atomic_folder(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return folder


def random_model(model, dtype, device, generator):
    """Materialize a meta-device model in `dtype` on `device`: weights N(0, 1/fan_in), biases 0, norm scales 1
    (activations keep their scale through the depth). Buffers keep their values."""
    import torch

    buffers = {name: b.clone() for name, b in model.named_buffers() if b.device.type != "meta"}
    model = model.to(dtype).to_empty(device=device)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5, generator=generator)
            else:
                param.fill_(0.0 if name.endswith("bias") else 1.0)
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)
    return model


def model_path(opts: argparse.Namespace, workdir: Path, made: dict) -> Path:
    """The model folder for --model, written once per process (or once in --model_dir), or --model_file."""
    if opts.model_file is not None:
        return opts.model_file
    if opts.model in made:
        return made[opts.model]
    if opts.model == "tiny":
        from sdxl_lora.models.tiny import save_tiny_model

        made["tiny"] = save_tiny_model(workdir / "tiny-sdxl")
        return made["tiny"]
    folder = (opts.model_dir or workdir) / "sdxl-base-random"
    if not (folder / "model_index.json").exists():
        start = time.perf_counter()
        write_full_model(folder)
        note(f"wrote {folder} in {time.perf_counter() - start:.0f} s")
    made["full"] = folder
    return folder


def dataset_toml(workdir: Path, resolution: int, batch: int, repeats: int) -> Path:
    """`batch` random captioned images of resolution x resolution and a one-subset dataset TOML for them."""
    import numpy as np
    from PIL import Image

    folder = workdir / f"images-{resolution}-{batch}"
    if not folder.exists():
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(batch):
            pixels = rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
            (folder / f"img{i:02d}.txt").write_text(f"a photo of thing {i}, benchmark image\n", encoding="utf-8")
    toml = workdir / f"dataset-{resolution}-{batch}-{repeats}.toml"
    toml.write_text(f"[general]\nenable_bucket = false\n[[datasets]]\nresolution = {resolution}\n"
                    f"batch_size = {batch}\n  [[datasets.subsets]]\n  image_dir = '{folder.as_posix()}'\n"
                    f"  caption_extension = '.txt'\n  num_repeats = {repeats}\n", encoding="utf-8")
    return toml


# ---------------------------------------------------------------------------------------------- one run


class Probe:
    """While entered: step boundaries from Events.step_done, the RunResult of train.loop.run and the optimizers
    that stepped (a global torch optimizer hook); the production code itself is untouched."""

    def __init__(self, warmup: int, cuda: bool, profile: bool = False, channels_last: bool = False):
        self.warmup, self.cuda, self.profile, self.channels_last = warmup, cuda, profile, channels_last
        self.profiler = self.profiled = None
        self.boundaries: list[float] = []
        self.cfg = self.result = None
        self.optimizers: dict[int, object] = {}
        self.peaks_before_steps = (0, 0)

    def __enter__(self):
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook

        from sdxl_lora.models import precision
        from sdxl_lora.train import events, loop

        self._step_done, self._run = events.Events.step_done, loop.run
        probe = self

        def step_done(events_self, *args, **kwargs):
            if probe.cuda:
                torch.cuda.synchronize()  # the step's queued kernels belong to it
            now = time.perf_counter()
            if probe.profiler is not None:  # the profiled (last warm-up) step ends here
                probe.profiler.stop()
                probe.profiled = (probe.profiler, now - probe.boundaries[-1])
                probe.profiler, now = None, time.perf_counter()  # measured steps start with the profiler off
            probe.boundaries.append(now)
            if probe.profile and len(probe.boundaries) == probe.warmup - 1:
                probe.profiler = step_profile.start(probe.cuda)
            probe.cfg = events_self.cfg
            if len(probe.boundaries) == probe.warmup:  # the measured steps start here
                probe.peaks_before_steps = (host_peak(), gpu_peak(probe.cuda))
                reset_peaks(probe.cuda)
            return probe._step_done(events_self, *args, **kwargs)

        def run(cfg):
            probe.result = probe._run(cfg)
            return probe.result

        events.Events.step_done, loop.run = step_done, run
        self._place_unet = precision.place_unet
        if self.channels_last:
            def place_unet(unet, placement):
                probe._place_unet(unet, placement)
                unet.to(memory_format=torch.channels_last)

            precision.place_unet = place_unet
        self._hook = register_optimizer_step_post_hook(
            lambda optimizer, args, kwargs: probe.optimizers.setdefault(id(optimizer), optimizer))
        return self

    def __exit__(self, *exc):
        from sdxl_lora.models import precision
        from sdxl_lora.train import events, loop

        events.Events.step_done, loop.run = self._step_done, self._run
        precision.place_unet = self._place_unet
        self._hook.remove()

    def step_times(self) -> list[float]:
        """The measured steps' durations (the gaps after the warm-up boundary)."""
        kept = self.boundaries[self.warmup - 1:]
        return [b - a for a, b in zip(kept, kept[1:], strict=False)]


def train_once(opts: argparse.Namespace, flags: list[str], workdir: Path, made: dict) -> dict:
    """One training run through the CLI, then the micro-timings and the FLOP count; the figures."""
    import torch

    from sdxl_lora.cli import main as cli

    cuda = use_cuda()
    total = opts.warmup + opts.steps
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    argv = [f"--pretrained_model_name_or_path={model_path(opts, workdir, made)}",
            f"--dataset_config={dataset_toml(workdir, opts.resolution, opts.batch, total * 4)}",
            f"--output_dir={run_dir}", "--output_name=bench", "--network_module=networks.lora",
            f"--network_dim={RANK}", f"--network_alpha={RANK}", "--network_train_unet_only",
            "--learning_rate=1e-4", "--seed=0", f"--max_train_steps={total}",
            f"--mixed_precision={opts.precision}", *flags]  # later flags win: the caller's override ours
    reset_accelerate()
    reset_peaks(cuda)
    note(f"training: {shlex.join(flags) or '(no extra flags)'}")
    with Probe(opts.warmup, cuda, opts.profile, opts.channels_last) as probe, contextlib.redirect_stdout(sys.stderr):
        code = cli(argv)
    if code != 0:
        raise SystemExit(f"bench_train: the training run failed (exit status {code}); its messages are above")
    if probe.result is None or probe.cfg is None:
        raise SystemExit("bench_train: the CLI finished without calling sdxl_lora.train.loop.run or "
                         "Events.step_done: the harness needs updating")
    peaks = dict(peak_host_mem=max(probe.peaks_before_steps[0], host_peak()), peak_host_mem_steps=host_peak(),
                 peak_gpu_mem=max(probe.peaks_before_steps[1], gpu_peak(cuda)) if cuda else None,
                 peak_gpu_mem_steps=gpu_peak(cuda) if cuda else None)
    times = probe.step_times()
    if len(times) != opts.steps:
        raise SystemExit(f"bench_train: {len(times) + opts.warmup} step boundaries seen, {total} expected")
    profile = None
    if probe.profiled is not None:
        profile = step_profile.summarize(probe.profiled[0].key_averages(), probe.profiled[1], cuda)
        note(f"profile of the last warm-up step: {json.dumps(profile)}")
    cfg, unet, optimizers = probe.cfg, probe.result.models.unet, list(probe.optimizers.values())
    conv_in = unet.conv_in.weight  # 3x3: its two memory formats differ
    unet_channels_last = conv_in.is_contiguous(memory_format=torch.channels_last) and not conv_in.is_contiguous()
    del probe  # the text encoders, VAE and data go with the run's result
    gc.collect()
    s_per_step = statistics.median(times)
    images = opts.batch * cfg.train.gradient_accumulation_steps
    micro = (dict(lora_overhead=None, step_overhead=None) if opts.no_overheads
             else unet_timings(unet, optimizers, cfg, opts, s_per_step))
    if profile is not None:
        profile["executed_flops"] = executed_flops_by_kind(unet, cfg, opts)
    flops = count_flops(unet, cfg, opts)
    peak = peak_tflops(cfg, opts.peak_tflops)
    del unet, optimizers
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return dict(
        s_per_step=s_per_step, images_per_s=images / s_per_step, flops_per_step=flops,
        flops_counted_over="LoRA U-Net forward+backward at the step's shapes (without checkpoint recomputation)",
        fraction_of_peak=flops / s_per_step / (peak["peak_tflops"] * 1e12) if peak["peak_tflops"] else None,
        **peak, **peaks, **micro, step_times=[round(t, 6) for t in times], profile=profile,
        unet_channels_last=unet_channels_last,
        model=opts.model, device="cuda" if cuda else "cpu", resolution=opts.resolution, batch=opts.batch,
        precision=cfg.model.mixed_precision, flags=flags, steps=opts.steps, warmup=opts.warmup,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps, threads=torch.get_num_threads(),
        load_average=[round(x, 2) for x in os.getloadavg()], torch=torch.__version__)


def step_inputs(config, cfg, opts: argparse.Namespace, device) -> dict:
    """Random U-Net inputs of the step's shapes: latents, timesteps, context, pooled embedding, size ids, target."""
    import torch

    generator = torch.Generator().manual_seed(1)
    b, side = opts.batch, opts.resolution // 8
    chunks = {None: 1, 75: 1, 150: 2, 225: 3}[cfg.model.max_token_length]
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    size = float(opts.resolution)
    return dict(
        latents=torch.randn(b, config.in_channels, side, side, generator=generator).to(device),
        timesteps=torch.randint(0, 1000, (b,), generator=generator).to(device),
        context=torch.randn(b, 2 + 75 * chunks, config.cross_attention_dim, generator=generator).to(device),
        pooled=torch.randn(b, pooled, generator=generator).to(device),
        time_ids=torch.tensor([[size, size, 0.0, 0.0, size, size]] * b, device=device),
        target=torch.randn(b, config.out_channels, side, side, generator=generator).to(device))


def weight_dtype(cfg):
    import torch

    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.model.mixed_precision]


def forward_backward(unet, x: dict, wd, input_grad: bool) -> None:
    """One U-Net forward+backward as the training step does it (MSE to a target), in the weight dtype W."""
    import torch

    latents = x["latents"].to(wd).requires_grad_(input_grad)
    device = latents.device.type
    with torch.autocast(device, dtype=wd, enabled=wd != torch.float32):
        pred = unet(latents, x["timesteps"], x["context"].to(wd),
                    added_cond_kwargs={"text_embeds": x["pooled"].to(wd), "time_ids": x["time_ids"]}).sample
    torch.nn.functional.mse_loss(pred.float(), x["target"]).backward()


@contextlib.contextmanager
def lora_bypassed(unet):
    """The trained U-Net as the frozen one: each LoRA layer runs only its base layer (same weights, same storage,
    fp8 included, same checkpointing), so no second U-Net is held (a float32 SDXL U-Net is 9.6 GiB)."""
    from sdxl_lora.network.layer import LoraLayer

    layers = [m for m in unet.modules() if isinstance(m, LoraLayer)]
    if not layers:
        raise SystemExit("the micro-timings need networks.lora layers in the U-Net (use --no_overheads)")
    for layer in layers:
        layer.forward = layer.base_layer.forward
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def frozen_forward_backward(unet, x: dict, wd) -> None:
    with lora_bypassed(unet):
        forward_backward(unet, x, wd, input_grad=True)


def unet_timings(unet, optimizers: list, cfg, opts: argparse.Namespace, s_per_step: float) -> dict:
    """Median seconds of the LoRA U-Net's and a frozen U-Net's forward+backward and of the optimizer step, timed
    alternately; and the two overhead ratios."""
    import torch

    device = next(unet.parameters()).device
    cuda, wd = device.type == "cuda", weight_dtype(cfg)
    x = step_inputs(unet.config, cfg, opts, device)
    unet.train()

    def timed(fn) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def optimizer_step() -> None:
        for optimizer in optimizers:
            optimizer.step()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)

    passes = {"lora": functools.partial(forward_backward, unet, x, wd, input_grad=False),
              "frozen": functools.partial(frozen_forward_backward, unet, x, wd)}
    seconds = {"lora": [], "frozen": [], "optimizer": []}
    for round_ in range(opts.micro_rounds + 1):  # round 0 warms up
        for name in ("frozen", "lora") if round_ % 2 else ("lora", "frozen"):
            seconds[name].append(timed(passes[name]))
            if name == "lora":
                seconds["optimizer"].append(timed(optimizer_step))
    median = {name: statistics.median(values[1:]) for name, values in seconds.items()}
    return dict(lora_overhead=median["lora"] / median["frozen"],
                step_overhead=s_per_step / (median["lora"] + median["optimizer"]),
                unet_lora_fwd_bwd_s=median["lora"], unet_frozen_fwd_bwd_s=median["frozen"],
                optimizer_step_s=median["optimizer"], micro_rounds=opts.micro_rounds)


def _flop_counter(unet, cfg, opts: argparse.Namespace):
    """A FlopCounterMode that counted one forward+backward of the trained LoRA U-Net at the step's shapes, as the
    U-Net is set now (checkpointed or not)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = step_inputs(unet.config, cfg, opts, next(unet.parameters()).device)
    with FlopCounterMode(display=False) as counter:
        forward_backward(unet, x, weight_dtype(cfg), input_grad=False)
    for p in unet.parameters():
        p.grad = None
    del x
    if use_cuda():
        torch.cuda.synchronize()
    return counter


def executed_flops_by_kind(unet, cfg, opts: argparse.Namespace) -> dict:
    """FLOPs one forward+backward executes as the run had it (with checkpointing's recomputation when it was on),
    by kind of op (benchmarks/step_profile.py)."""
    by_kind: dict[str, int] = {}
    for op, flops in _flop_counter(unet, cfg, opts).get_flop_counts().get("Global", {}).items():
        kind = step_profile.kind_of("aten::" + str(op).split(".", 1)[-1])
        by_kind[kind] = by_kind.get(kind, 0) + int(flops)
    return by_kind


def count_flops(unet, cfg, opts: argparse.Namespace) -> int:
    """FLOPs of one forward+backward of the trained LoRA U-Net at the step's shapes (checkpointing off: the
    count is the model's, not the recomputation's). Leaves the U-Net without checkpointing."""
    if getattr(unet, "is_gradient_checkpointing", False):
        unet.disable_gradient_checkpointing()
    return int(_flop_counter(unet, cfg, opts).get_total_flops())


def peak_tflops(cfg, override: float | None) -> dict:
    """The device's dense peak (TFLOP/s) for the run's compute dtype: --peak_tflops, else PEAK_TFLOPS."""
    import torch

    if not use_cuda():
        return dict(peak_tflops=override, gpu_name=None)
    name = torch.cuda.get_device_name()
    dtype = cfg.model.mixed_precision
    if dtype == "no":
        dtype = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    if override is None:
        override = next((peaks[dtype] for pattern, peaks in PEAK_TFLOPS if re.search(pattern, name)), None)
    return dict(peak_tflops=override, gpu_name=name, peak_dtype=dtype)


# ---------------------------------------------------------------------------------------------- memory


def host_peak() -> int:
    """This process's resident high-water mark in bytes (VmHWM; ru_maxrss where /proc is missing)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def gpu_peak(cuda: bool) -> int | None:
    import torch

    return torch.cuda.max_memory_allocated() if cuda else None


def reset_peaks(cuda: bool) -> None:
    """Both high-water marks back to the current use (VmHWM through /proc/self/clear_refs, Linux >= 4.0)."""
    import torch

    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    if cuda:
        torch.cuda.reset_peak_memory_stats()


def reset_accelerate() -> None:
    """accelerate keeps one mixed-precision state per process and refuses another: each run starts clean."""
    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(reset_partial_state=False)


# ---------------------------------------------------------------------------------------------- main


def use_cuda() -> bool:
    """Whether the runs train on CUDA: one is present and --device cpu did not switch accelerate to the CPU."""
    import torch

    return torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU") != "true"


def note(text: str) -> None:
    print(f"bench_train: {text}", file=sys.stderr, flush=True)


def compare(base: list[str], sets: list[str], workdir: Path, made: dict) -> list[dict]:
    """Each option set on top of `base`, `--rounds` times, alternating (the order reversed every other round);
    one line per set (steps pooled) and its ratios to the first."""
    parsed = [parse(base + shlex.split(s)) for s in sets]
    rounds = parsed[0][0].rounds
    runs: list[list[dict]] = [[] for _ in sets]
    for round_ in range(rounds):
        order = range(len(sets)) if round_ % 2 == 0 else reversed(range(len(sets)))
        for i in order:
            opts, flags = parsed[i]
            if opts.profile and round_ < rounds - 1:  # a set's line keeps its last round's profile
                opts = argparse.Namespace(**{**vars(opts), "profile": False})
            runs[i].append(train_once(opts, flags, workdir, made))
    lines = [pooled(f"{chr(65 + i)}", sets[i], results) for i, results in enumerate(runs)]
    ratios = [dict(compare=f"{line['label']}/A", **{key: ratio(line[key], lines[0][key]) for key in (
        "s_per_step", "images_per_s", "peak_host_mem", "peak_gpu_mem", "lora_overhead", "step_overhead")},
        s_per_step_per_round=[ratio(b["s_per_step"], a["s_per_step"]) for a, b in zip(runs[0], runs[i + 1],
                                                                                     strict=True)])
        for i, line in enumerate(lines[1:])]
    return lines + ratios


def pooled(label: str, options: str, results: list[dict]) -> dict:
    """One option set's figures over its rounds: the median of all its measured steps, peaks as the maximum,
    ratios as the median of the rounds'."""
    line = dict(results[-1], label=label, options=options, rounds=len(results))
    times = [t for r in results for t in r["step_times"]]
    line.update(s_per_step=statistics.median(times), step_times=times,
                s_per_step_per_round=[r["s_per_step"] for r in results])
    line["images_per_s"] = results[0]["images_per_s"] * results[0]["s_per_step"] / line["s_per_step"]
    for key in ("peak_host_mem", "peak_host_mem_steps", "peak_gpu_mem", "peak_gpu_mem_steps"):
        line[key] = None if results[0][key] is None else max(r[key] for r in results)
    for key in ("lora_overhead", "step_overhead", "unet_lora_fwd_bwd_s", "unet_frozen_fwd_bwd_s",
                "optimizer_step_s"):
        if results[0].get(key) is not None:
            line[key] = statistics.median(r[key] for r in results)
    if line["peak_tflops"]:
        line["fraction_of_peak"] = line["flops_per_step"] / line["s_per_step"] / (line["peak_tflops"] * 1e12)
    return line


def ratio(b, a):
    return b / a if a and b is not None else None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    sets = None
    if "--compare" in argv:
        at = argv.index("--compare")
        argv, sets = argv[:at], argv[at + 1:]
        if len(sets) < 2:
            raise SystemExit("bench_train: --compare needs at least two option sets (quote each; it comes last)")
    opts, _ = parse(argv)
    sys.path.insert(0, str(SRC))
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
        os.environ.setdefault(key, value)
    import torch

    if opts.device == "cpu" or not torch.cuda.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "true"  # accelerate's own switch; read when its state is created
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_train: --device cuda: torch sees no CUDA device")
    default_precision = "bf16" if use_cuda() else "no"
    if not any(a == "--precision" or a.startswith("--precision=") for a in argv):
        argv = [*argv, f"--precision={default_precision}"]  # the default of every --compare set too
    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmp:
        made: dict = {}
        if sets is None:
            lines = [train_once(*parse(argv), Path(tmp), made)]
        else:
            lines = compare(argv, sets, Path(tmp), made)
    for line in lines:
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
