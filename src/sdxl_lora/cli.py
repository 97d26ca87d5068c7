"""argv -> config -> train.loop.run(cfg). Exit codes: 0 done, 1 training diverged (NaN loss, with a diagnosis),
2 bad input (one line per problem), 130 interrupted.

Subcommands: `train` (the default, so sd-scripts command lines run unchanged), `check` (validate and print the
plan without loading any model), `tiny-model OUT_DIR` (write a tiny random SDXL to smoke-test an install),
`convert SRC DST` (diffusers folder <-> single SGM-layout file).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from sdxl_lora.config.errors import ConfigError, UserInputError
from sdxl_lora.train.errors import TrainingDiverged

COMMANDS = ("train", "check", "tiny-model", "convert")
log = logging.getLogger("sdxl_lora")


def main(argv: list[str] | None = None) -> int:
    """Console entry point of `sdxl-lora` and `sdxl_train_network.py`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "train"
    try:
        if command == "tiny-model":
            return _tiny_model(argv)
        if command == "convert":
            return _convert(argv)
        return _train_or_check(command, argv)
    except UserInputError as err:
        for problem in err.problems:
            print(f"sdxl-lora: error: {problem}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"sdxl-lora: training stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sdxl-lora: interrupted", file=sys.stderr)
        return 130


def _train_or_check(command: str, argv: list[str]) -> int:
    from sdxl_lora.config.build import build_run_config
    from sdxl_lora.config.parser import parse_command_line, write_output_config

    if command == "train":
        refuse_several_processes()
    as_json = command == "check" and "--json" in argv
    if as_json:
        argv = [a for a in argv if a != "--json"]
    parsed = parse_command_line(argv)
    setup_logging(parsed.values, json_on_stdout=as_json)
    for warning in parsed.warnings:
        log.warning("%s", warning)
    if parsed.output_config_path is not None:
        write_output_config(parsed, parsed.output_config_path)
        print(f"wrote {parsed.output_config_path}")
        return 0
    cfg = build_run_config(parsed.values, parsed.given)
    from sdxl_lora.train.check import check_classes

    check_classes(cfg)
    if command == "check":
        from sdxl_lora.train.check import render_plan

        print(render_plan(cfg, as_json=as_json))
        return 0
    with optional_imports_off(needed=needs_bitsandbytes(cfg.optim.optimizer_type)):
        quiet_libraries(verbose=log.isEnabledFor(logging.DEBUG))
        from sdxl_lora.train.loop import loss_summary, run

        result = run(cfg)
    if result.output_path is not None:
        first, last = loss_summary(result.losses)
        print(f"trained {result.steps} steps in {result.epochs} epochs; "
              f"average loss first {first:.4f} -> last {last:.4f}")
        print(f"saved {result.output_path}")
    return 0


# The process-count variables accelerate reads (torchrun / accelerate launch --multi_gpu, then MPI launchers).
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def refuse_several_processes() -> None:
    """Distributed training does not exist yet: a launch of more than one process stops before anything is read
    (steps, text_projection and NaN handling all assume one process). Every process exits 2; only rank 0 prints."""
    import os

    name, size = next(((v, os.environ[v]) for v in WORLD_SIZE_VARS if os.environ.get(v, "").strip()), ("", "1"))
    if not size.strip().isdigit() or int(size) <= 1:
        return
    rank = next((os.environ[v] for v in RANK_VARS if os.environ.get(v, "").strip()), "0")
    raise ConfigError([] if rank.strip() != "0" else [
        f"{size} processes were launched ({name}={size}); distributed training is not supported yet: "
        "launch one process (accelerate launch --num_processes 1, or python sdxl_train_network.py)"])


def _tiny_model(argv: list[str]) -> int:
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="sdxl-lora tiny-model",
                                     description="Write a tiny random-weight SDXL (diffusers folder).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        print(f"sdxl-lora: error: {args.out_dir} exists and is not empty", file=sys.stderr)
        return 2
    with optional_imports_off():
        quiet_libraries()
        from sdxl_lora.models.tiny import save_tiny_model

        print(f"wrote {save_tiny_model(args.out_dir, seed=args.seed)}")
    return 0


def _convert(argv: list[str]) -> int:
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="sdxl-lora convert",
        description="Convert an SDXL diffusers folder to one SGM-layout file (.safetensors/.ckpt) or back.")
    parser.add_argument("source", type=Path, help="diffusers folder, or a single-file checkpoint")
    parser.add_argument("target", type=Path, help="output file (from a folder) or output folder (from a file)")
    parser.add_argument("--dtype", choices=("float", "fp16", "bf16"), default=None,
                        help="tensor dtype of a written single file (default: as stored)")
    args = parser.parse_args(argv)
    with optional_imports_off():
        quiet_libraries()
        from sdxl_lora.common.dtypes import dtype_named
        from sdxl_lora.models.single_file import convert_to_diffusers, write_single_file

        if args.source.is_dir():
            print(f"wrote {write_single_file(args.source, args.target, dtype_named(args.dtype))}")
        else:
            print(f"wrote {convert_to_diffusers(args.source, args.target)}")
    return 0


def setup_logging(values: dict, json_on_stdout: bool = False) -> None:
    """--console_log_level / --console_log_file / --console_log_simple (never on stdout when it carries JSON)."""
    level = getattr(logging, (values.get("console_log_level") or "INFO").upper())
    handler: logging.Handler
    if values.get("console_log_file"):
        try:
            handler = logging.FileHandler(values["console_log_file"], mode="w", encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"--console_log_file {values['console_log_file']}: {err.strerror}") from None
    else:
        simple_to_stdout = values.get("console_log_simple") and not json_on_stdout
        handler = logging.StreamHandler(sys.stdout if simple_to_stdout else sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if values.get("console_log_simple")
                                           else "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def quiet_libraries(verbose: bool = False) -> None:
    """Silence library chatter that tells a user nothing: transformers and diffusers log errors only (warnings too
    with --console_log_level DEBUG) and draw no progress bars, and bitsandbytes' kernel probe is not logged; our
    step bar and one line per model-loading phase (models/phases.py) say what happens. Called when a command
    starts, never when a module is imported."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    level = logging.WARNING if verbose else logging.ERROR
    for library in (transformers_logging, diffusers_logging):
        library.set_verbosity(level)
        library.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(level)


def needs_bitsandbytes(optimizer_type: str) -> bool:
    """sd-scripts' bitsandbytes optimizers: AdamW8bit, Lion8bit, SGDNesterov8bit, AdEMAMix8bit, the Paged* ones,
    or a `bitsandbytes.optim.<Class>` path."""
    name = optimizer_type.lower()
    return "8bit" in name or name.startswith(("paged", "bitsandbytes."))


@contextlib.contextmanager
def optional_imports_off(needed: bool = False) -> Iterator[None]:
    """Keep bitsandbytes unimported during the block unless `needed`.

    diffusers, transformers and peft import it whenever it is installed (it costs seconds, and on CPUs with
    AVX512-BF16 it logs a failed kernel download). A None entry in sys.modules makes `importlib.util.find_spec`
    answer "not installed", which is what those libraries check, once, when they are first imported; so it is
    set only in a process that has not imported them yet (a fresh command; not a notebook or test session that
    already has them). The entry is removed afterwards, so a later run in the same process may still import it.
    """
    probing = ("diffusers", "transformers", "peft", "accelerate", "bitsandbytes")
    block = not needed and not any(name in sys.modules for name in probing)
    if block:
        sys.modules["bitsandbytes"] = None
    try:
        yield
    finally:
        if block and "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
            del sys.modules["bitsandbytes"]


if __name__ == "__main__":
    sys.exit(main())
