"""Our trainer and kohya-ss/sd-scripts' sdxl_train_network.py side by side, each timed from outside its process.

    python benchmarks/vs_sd_scripts.py --sd_scripts /tmp/sds --sd_python /tmp/sds-venv/bin/python \\
        --model /tmp/full/sdxl_random_fp16.safetensors --data /tmp/e2e/data --steps 4 --pairs 2 \\
        --sd_extra "--tokenizer_cache_dir /tmp/sds-tok" [--lock /tmp/fullsize.lock] [extra trainer flags ...]

The two trainers log differently, so both are measured the same way from here. sd-scripts is only run, never
imported (in its own virtual environment: --sd_python).

What runs: `pairs` pairs of fresh processes, alternating the order to spread drift (ours, theirs, then theirs,
ours, ...). Both get the same flags: model, data, --caption_extension, --resolution, --max_train_steps STEPS,
--output_dir OUT/NN-name, FIXED below (LoRA rank 8 on the U-Net only, AdamW 1e-4, batch 1, fp32, cached latents
and text-encoder outputs, gradient checkpointing), then every unrecognised argument of this script, then
--our_extra / --sd_extra (one side each, shell-quoted strings). sd-scripts also gets --sdpa: ours always uses
PyTorch SDPA attention; sd-scripts without --sdpa uses its plain attention (slower, more memory), not like for
like. Other options keep each trainer's default (sd-scripts' --max_data_loader_n_workers 8, capped at the CPU
count, starts loader worker processes every epoch; ours reads its in-memory caches without workers). Children
get HF_HUB_OFFLINE=1 and PYTHONUNBUFFERED=1; sd-scripts downloads its CLIP tokenizers unless given a local
--tokenizer_cache_dir (folders openai_clip-vit-large-patch14 and laion_CLIP-ViT-bigG-14-laion2B-39B-b160k).

How it measures (all clocks are this process's monotonic clock, 0 = the child is started):
- Steps: the child's stdout+stderr bytes are read as they arrive, split on both '\\r' and '\\n' (tqdm redraws
  with '\\r' and writes no line end, so the not-yet-ended tail is scanned too, on every read) and each
  "steps: ..% |...| k/N" progress update is time-stamped when it first shows k. t(0) is the bar's first
  appearance (the training loop is entered), t(k) the end of optimizer step k; step k takes t(k) - t(k-1), so
  step 1 includes whatever each trainer does between drawing the bar and its first step (loader start-up,
  warm-up). s_per_step is the median over steps 2..N (needs N >= 2). to_first_step_s = t(0).
- Memory: /proc/PID/status of the child (the trainer's main process, not loader workers) every 0.2 s:
  peak_rss_gib is the highest VmRSS sample, hwm_gib the last VmHWM read (the kernel's high-water mark),
  maxrss_gib ru_maxrss from wait4 (the largest of the child and its reaped children); train_rss_* are the
  median and max of the VmRSS samples between t(1) and t(N) (steady training).
- CPU: the main process's utime+stime (all its threads, not loader workers) read at each t(k): cpu_step_s,
  cpu_s_per_step (median, steps 2..N) and cpu_to_first_step_s, less hurt by a busy machine than wall time.
  cpu_child and cpu_machine: cores used from t(1) to t(N) by the child and by all CPUs (/proc/stat); the
  machine well above the child means something else ran. Threads fighting for 2 cores can slow a step tenfold.

Prints one JSON line per run (also kept in OUT/runs.jsonl; each child's output in OUT/NN-name.log) and, at the
end, one summary line: per trainer the medians over its runs, and theirs/ours ratios. With --lock FILE each run
holds flock(FILE) (waiting for it is not timed); do not also run this script under `flock FILE`: a deadlock.
--settle S waits (up to S s, before each run) for 3 s in which all CPUs together are under 0.3 cores busy
(settle_s and busy_before record it).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GIB_KIB = 2**20
INTERVAL = 0.2  # seconds between memory samples
TICK = os.sysconf("SC_CLK_TCK")
STEP_RE = re.compile(rb"steps:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")
SUMMARY_KEYS = ("s_per_step cpu_s_per_step to_first_step_s cpu_to_first_step_s peak_rss_gib train_rss_median_gib "
                "train_rss_max_gib wall_s").split()  # fmt: skip
FIXED = (
    "--network_module networks.lora --network_dim 8 --network_alpha 8 --train_batch_size 1 --cache_latents "
    "--cache_text_encoder_outputs --gradient_checkpointing --network_train_unet_only --learning_rate 1e-4 "
    "--optimizer_type AdamW --mixed_precision no --save_model_as safetensors"
).split()


def read_sample(pid: int) -> tuple[float, float, float, float] | None:
    """(VmRSS KiB, VmHWM KiB, the process's CPU seconds, the machine's busy CPU seconds), or None once gone."""
    try:
        status, stat = (Path(f"/proc/{pid}/{name}").read_text() for name in ("status", "stat"))
    except OSError:
        return None
    vm = {k: float(v.split()[0]) for k, v in (ln.split(":", 1) for ln in status.splitlines()) if k.startswith("Vm")}
    if "VmRSS" not in vm:  # a zombie has no memory any more
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields from the state on: utime and stime are the 12th and 13th
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    return vm["VmRSS"], vm.get("VmHWM", 0.0), cpu, machine_busy()


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all CPUs; all but idle and iowait, from /proc/stat)."""
    jiffies = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(jiffies) - jiffies[3] - jiffies[4]) / TICK


def settle(max_wait: float, threshold: float = 0.3, window: float = 3.0) -> tuple[float, float]:
    """Wait up to max_wait s for a `window` in which the machine uses under `threshold` cores: (waited, cores)."""
    start = time.monotonic()
    while True:
        before = machine_busy()
        time.sleep(window)
        cores = (machine_busy() - before) / window
        if cores < threshold or time.monotonic() - start >= max_wait:
            return round(time.monotonic() - start, 1), round(cores, 2)


def median(values: list[float], digits: int) -> float | None:
    return round(statistics.median(values), digits) if values else None


def run_one(cmd: list[str], cwd: str, env: dict, steps: int, log_path: Path) -> dict:
    """Run one trainer to its end; return the timings and memory figures described in the module docstring."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    samples: list[tuple[float, float, float, float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            s = read_sample(proc.pid)
            if s is not None:
                samples.append((time.monotonic() - t0, *s))
            done.wait(INTERVAL)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    step_t: dict[int, float] = {}
    step_cpu: dict[int, float] = {}

    def scan(segment: bytes, t: float) -> None:
        for k, n in STEP_RE.findall(segment):
            if int(n) == steps and int(k) not in step_t:
                step_t[int(k)] = t
                s = read_sample(proc.pid)
                step_cpu[int(k)] = s[2] if s else float("nan")

    tail = b""
    with open(log_path, "wb") as log:
        while chunk := os.read(proc.stdout.fileno(), 1 << 16):
            t = time.monotonic() - t0
            log.write(chunk)
            *ended, tail = re.split(rb"[\r\n]", tail + chunk)
            for segment in [*ended, tail]:
                scan(segment, t)
    proc.stdout.close()
    _, wait_status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(wait_status)  # reaped here; keeps Popen from waiting again
    wall = time.monotonic() - t0
    done.set()
    sampler.join()

    times = [step_t.get(k) for k in range(steps + 1)]
    complete = None not in times
    step_s = [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)] if complete else []
    cpus = [step_cpu.get(k, float("nan")) for k in range(steps + 1)]
    cpu_step_s = [round(b - a, 2) for a, b in zip(cpus, cpus[1:], strict=False)] if complete else []
    window = [s for s in samples if complete and times[1] <= s[0] <= times[-1]]
    span = window[-1][0] - window[0][0] if len(window) > 1 else 0.0
    rss = [s[1] / GIB_KIB for s in samples]
    train_rss = [s[1] / GIB_KIB for s in window]
    return {
        "rc": proc.returncode,
        "wall_s": round(wall, 2),
        "to_first_step_s": round(times[0], 2) if times[0] is not None else None,
        "first_step_done_s": round(times[1], 2) if times[1] is not None else None,
        "step_s": step_s,
        "s_per_step": median(step_s[1:], 3),
        "cpu_s_per_step": median(cpu_step_s[1:], 2),
        "cpu_step_s": cpu_step_s,
        "cpu_to_first_step_s": round(cpus[0], 2) if complete else None,
        "peak_rss_gib": round(max(rss), 3) if rss else None,
        "hwm_gib": round(samples[-1][2] / GIB_KIB, 3) if samples else None,
        "maxrss_gib": round(usage.ru_maxrss / GIB_KIB, 3),
        "train_rss_median_gib": median(train_rss, 3),
        "train_rss_max_gib": round(max(train_rss), 3) if train_rss else None,
        "cpu_child": round((window[-1][3] - window[0][3]) / span, 2) if span else None,
        "cpu_machine": round((window[-1][4] - window[0][4]) / span, 2) if span else None,
    }


def summarize(runs: list[dict]) -> dict:
    out: dict = {"summary": True}
    for name in ("ours", "theirs"):
        mine = [r for r in runs if r["trainer"] == name and r["rc"] == 0]
        out[name] = {"runs": len(mine)}
        for key in SUMMARY_KEYS:
            out[name][key] = median([r[key] for r in mine if r[key] is not None], 3)
    out["theirs/ours"] = {
        key: round(out["theirs"][key] / out["ours"][key], 3) if out["theirs"][key] and out["ours"][key] else None
        for key in SUMMARY_KEYS
    }
    return out


def emit(record: dict, out: Path) -> None:
    print(json.dumps(record), flush=True)
    with open(out / "runs.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--sd_scripts", required=True, help="sd-scripts checkout (has sdxl_train_network.py)")
    ap.add_argument("--sd_python", required=True, help="the Python of sd-scripts' own virtual environment")
    ap.add_argument("--our_python", default=sys.executable)
    ap.add_argument("--our_script", default=str(Path(__file__).resolve().parents[1] / "sdxl_train_network.py"))
    ap.add_argument("--model", required=True, help="SDXL base single file (both trainers load it)")
    ap.add_argument("--data", required=True, help="--train_data_dir (kohya folder layout)")
    ap.add_argument("--caption_extension", default=".txt")
    ap.add_argument("--resolution", default="256")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--out", default=None, help="outputs and logs (default: a new temporary folder)")
    ap.add_argument("--our_extra", default="", help="flags for our trainer only (one shell-quoted string)")
    ap.add_argument("--sd_extra", default="", help="flags for sd-scripts only, e.g. '--tokenizer_cache_dir D'")
    ap.add_argument("--lock", default=None, help="hold flock(FILE) during each run")
    ap.add_argument("--settle", type=float, default=0, help="wait up to S s for an idle machine before each run")
    args, extra = ap.parse_known_args(argv)
    if args.steps < 2:
        ap.error("--steps must be at least 2 (step 1 is not counted in s_per_step)")
    out = Path(args.out or tempfile.mkdtemp(prefix="vs_sd_scripts-"))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    sd_dir = str(Path(args.sd_scripts).resolve())
    trainers = {
        "ours": ([args.our_python, args.our_script], str(Path(args.our_script).resolve().parent), args.our_extra),
        "theirs": ([args.sd_python, f"{sd_dir}/sdxl_train_network.py", "--sdpa"], sd_dir, args.sd_extra),
    }
    order = [n for i in range(args.pairs) for n in (("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"))]
    runs = []
    for i, name in enumerate(order, 1):
        head, cwd, own = trainers[name]
        cmd = [
            *head, "--pretrained_model_name_or_path", args.model, "--train_data_dir", args.data,
            "--caption_extension", args.caption_extension, "--resolution", args.resolution, *FIXED,
            "--max_train_steps", str(args.steps), "--output_dir", str(out / f"{i:02d}-{name}"),
            *extra, *shlex.split(own),
        ]  # fmt: skip
        print(f"[{i}/{len(order)}] {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        with open(args.lock or os.devnull, "a") as lock_file:
            if args.lock:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
            waited, busy = settle(args.settle) if args.settle > 0 else (0.0, None)
            result = run_one(cmd, cwd, env, args.steps, out / f"{i:02d}-{name}.log")
        runs.append({"run": i, "trainer": name, "settle_s": waited, "busy_before": busy, **result})
        emit(runs[-1], out)
    emit(summarize(runs), out)
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
