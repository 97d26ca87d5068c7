"""`make demo`: build the tiny SDXL and a small drawn, captioned image set, train a LoRA on the CPU, report.

Everything is made locally, nothing is downloaded. Run: python -m sdxl_lora.demo --workdir demo_run
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")
SIZES = ((64, 64), (96, 64), (64, 96))


def draw_dataset(folder: Path, count: int = 12, seed: int = 0) -> None:
    """Coloured shapes on plain backgrounds in three aspect ratios, each with a caption file."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        fg, bg = rng.sample(sorted(COLOURS), 2)
        shape = SHAPES[i % len(SHAPES)]
        img = Image.new("RGB", (w, h), COLOURS[bg])
        r = min(w, h) // 3
        cx, cy = w // 2 + rng.randint(-4, 4), h // 2 + rng.randint(-4, 4)
        box = (cx - r, cy - r, cx + r, cy + r)
        (ImageDraw.Draw(img).ellipse if shape == "circle" else ImageDraw.Draw(img).rectangle)(box, fill=COLOURS[fg])
        img.save(folder / f"img_{i:03d}.png")
        (folder / f"img_{i:03d}.txt").write_text(f"a {fg} {shape} on a {bg} background\n", encoding="utf-8")


PROMPTS = ("a red circle on a blue background --w 64 --h 64 --d 7 --s 12",
           "a yellow square on a green background --w 64 --h 64 --d 8 --s 12")
"""Sampled with the same seeds before and after training (captions of the kind the LoRA learns)."""


def write_dataset_toml(path: Path, image_dir: Path) -> None:
    """Bucketed, batch 2; a quarter of the images held out for the validation loss."""
    path.write_text(
        "[general]\nenable_bucket = true\nmin_bucket_reso = 32\nmax_bucket_reso = 128\nbucket_reso_steps = 32\n\n"
        "[[datasets]]\nresolution = 64\nbatch_size = 2\nvalidation_split = 0.25\n\n"
        f"  [[datasets.subsets]]\n  image_dir = '{image_dir.as_posix()}'\n  caption_extension = '.txt'\n"
        "  num_repeats = 2\n",
        encoding="utf-8",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("demo_run"))
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    work = args.workdir.resolve()
    model_dir, images, toml = work / "tiny-sdxl", work / "images", work / "dataset.toml"

    from sdxl_lora.cli import main as cli_main
    from sdxl_lora.runtime import optional_imports_off, quiet_libraries

    # The model is built and trained in this one process, so the quiet start is set up once, for both.
    with optional_imports_off():
        quiet_libraries()
        from sdxl_lora.models.tiny import save_tiny_model

        if not (model_dir / "model_index.json").exists():
            print(f"building the tiny SDXL model in {model_dir}")
            save_tiny_model(model_dir)
        draw_dataset(images)
        write_dataset_toml(toml, images)
        prompts = work / "prompts.txt"
        prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
        print(f"training on {len(list(images.glob('*.png')))} drawn images ({toml})")
        code = cli_main([
            f"--pretrained_model_name_or_path={model_dir}", f"--dataset_config={toml}",
            f"--output_dir={work / 'output'}", "--output_name=demo_lora", "--network_module=networks.lora",
            "--network_dim=8", "--network_alpha=8", "--learning_rate=5e-3", "--optimizer_type=AdamW",
            "--lr_scheduler=cosine", f"--max_train_steps={args.steps}", "--seed=42", "--mixed_precision=no",
            "--save_model_as=safetensors", "--max_data_loader_n_workers=0", "--cache_latents",
            f"--sample_prompts={prompts}", "--sample_at_first", f"--sample_every_n_steps={args.steps}",
            "--sample_sampler=euler_a", "--validate_every_n_steps=20",
        ])
    if code == 0:
        sheet = before_after(work / "output" / "sample", work / "before_after.png", final_step=args.steps)
        print(f"samples before and after training, side by side: {sheet}")
    return code


def before_after(sample_dir: Path, out: Path, *, final_step: int) -> Path:
    """One PNG: a row per prompt, the sample before training on the left and after it on the right."""
    from PIL import Image

    rows = []
    for index in range(len(PROMPTS)):
        before = sorted(sample_dir.glob(f"*_e000000_{index:02d}_*.png"))[-1]
        after = sorted(sample_dir.glob(f"*_{final_step:06d}_{index:02d}_*.png"))[-1]
        rows.append([Image.open(before).convert("RGB"), Image.open(after).convert("RGB")])
    w, h = rows[0][0].size
    sheet = Image.new("RGB", (2 * w + 4, len(rows) * (h + 4) - 4), "white")
    for r, pair in enumerate(rows):
        for c, image in enumerate(pair):
            sheet.paste(image, (c * (w + 4), r * (h + 4)))
    sheet.save(out)
    return out

if __name__ == "__main__":
    raise SystemExit(main())
