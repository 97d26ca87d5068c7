"""argv -> config -> train.loop.run(cfg). Exit codes: 0 done, 1 training diverged (NaN loss, with a diagnosis),
2 bad input (one line per problem), 130 interrupted.

Subcommands: `train` (the default, so sd-scripts command lines run unchanged), `check` (validate and print the
plan without loading any model), `tiny-model OUT_DIR` (write a tiny random SDXL to smoke-test an install),
`convert SRC DST` (diffusers folder <-> single SGM-layout file).
"""

from __future__ import annotations

import logging
import sys

from sdxl_lora.config.errors import ConfigError, UserInputError
from sdxl_lora.runtime import needs_bitsandbytes, optional_imports_off, quiet_libraries
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
        from sdxl_lora.train.check import check_sample_prompts, render_plan

        check_sample_prompts(cfg)
        print(render_plan(cfg, as_json=as_json))
        return 0
    with optional_imports_off(needed=needs_bitsandbytes(cfg.optim.optimizer_type)):
        quiet_libraries(verbose=log.isEnabledFor(logging.DEBUG))
        from sdxl_lora.train.loop import loss_summary, run

        result = run(cfg)
    if result.output_path is not None:
        print(run_summary(result, loss_summary(result.losses)))
    return 0


def run_summary(result, losses: tuple[float, float]) -> str:
    """The closing lines of a run: steps, time, loss, and every file written."""
    minutes, seconds = divmod(round(result.seconds), 60)
    first, last = losses
    lines = [f"trained {result.steps} steps in {result.epochs} epochs in {minutes}m{seconds:02d}s; "
             f"average loss first {first:.4f} -> last {last:.4f}",
             "written:"]
    if len(result.validation_losses) > 1:
        (s0, v0), (s1, v1) = result.validation_losses[0], result.validation_losses[-1]
        lines.insert(1, f"validation loss {v0:.6f} at step {s0} -> {v1:.6f} at step {s1}")
    lines += [f"  {path}" for path in result.written]
    lines.append(f"saved {result.output_path}")
    return "\n".join(lines)


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


if __name__ == "__main__":
    sys.exit(main())
