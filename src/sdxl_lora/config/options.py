"""Every command-line option of sd-scripts' sdxl_train_network.py, as data (spec section 1).

Declarations only, no logic: `config.parser` builds argparse from this table, `docs/options.md` is generated
from it, and `config.build` rejects a non-default value of any option whose status is not WORKS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

WORKS = "works"
NOT_YET = "not yet"


@dataclass(frozen=True)
class Option:
    """One sd-scripts option."""

    name: str
    """Flag name without the leading '--'."""
    group: str
    """--help section (the guide's section titles)."""
    kind: str
    """'flag', 'str', 'int', 'float', 'int_or_float' (warmup style: int, fraction < 1 or 'N%')."""
    default: object = None
    """sd-scripts' default value."""
    choices: tuple | None = None
    """Allowed values, when sd-scripts restricts them."""
    nargs: str | None = None
    """'*' for options that take zero or more values."""
    help: str = ""
    """One line for --help and docs/options.md."""
    status: str = NOT_YET
    """WORKS, NOT_YET, or 'refused: <reason>'."""
    roadmap: str = ""
    """Roadmap capability that will implement it (shown in the 'not supported yet' message)."""
    secret: bool = False
    """Never written to --output_config files or logs."""


# --help groups, in the order of the user guide's sections.
MODEL = "Model loading"
DATASET = "Dataset"
OUTPUT = "Output and saving"
NETWORK = "Network (LoRA)"
TRAINING = "Training"
CACHING = "Caching"
SAMPLES = "Sample images"
LOGGING = "Logging"
LOSS = "Noise and loss"
VALIDATION = "Validation"
OTHERS = "Distributed and others"
METADATA = "Metadata"
CONFIG = "Config file"
DEEPSPEED = "DeepSpeed"
CONSOLE = "Console logging"
GROUPS = (MODEL, DATASET, OUTPUT, NETWORK, TRAINING, CACHING, SAMPLES, LOGGING, LOSS, VALIDATION, OTHERS,
          METADATA, CONFIG, DEEPSPEED, CONSOLE)

# Roadmap capabilities (ROADMAP.md) that will make a NOT_YET option work.
LOADING = "model loading"
DATA = "dataset pipeline"
LORA = "LoRA network"
LOOP = "training loop"
SAMPLING = "sampling and logging"
MULTI = "multi-process"
SPEED = "benchmarks"

SDXL_ONLY = "refused: SD2 flag; this trainer is SDXL only"
SDPA_ALWAYS = "accepted: attention always runs through PyTorch scaled dot product attention"
TE_NAMES = "encoder 1 = CLIP ViT-L/14, encoder 2 = OpenCLIP ViT-bigG/14; the guide swaps them"
SAMPLERS = ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
            "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a")
DYNAMO_BACKENDS = ("eager", "aot_eager", "inductor", "aot_ts_nvfuser", "nvprims_nvfuser", "cudagraphs", "ofi",
                   "fx2trt", "onnxrt", "tensort", "ipex", "tvm")
INTERPOLATIONS = ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area")

OPTIONS: tuple[Option, ...] = (
    # Model loading (spec 1.2)
    Option("pretrained_model_name_or_path", MODEL, "str", None, status=WORKS,
           help="base SDXL model: single .safetensors/.ckpt file, Diffusers folder or Hugging Face hub id"),
    Option("v2", MODEL, "flag", False, status=SDXL_ONLY, help="Stable Diffusion 2 model (rejected for SDXL)"),
    Option("v_parameterization", MODEL, "flag", False, roadmap=LOADING, status=WORKS,
           help="train with the v-prediction target (for v-prediction SDXL models)"),
    Option("tokenizer_cache_dir", MODEL, "str", None, roadmap=LOADING,
           help="folder where tokenizers are saved and loaded from (offline use)"),
    Option("vae", MODEL, "str", None, roadmap=LOADING, status=WORKS,
           help="replacement VAE: Diffusers folder or id, .bin state dict, or LDM-format checkpoint"),
    Option("disable_mmap_load_safetensors", MODEL, "flag", False, roadmap=LOADING, status=WORKS,
           help="read checkpoints whole instead of memory-mapping (.safetensors are always read tensor by tensor)"),
    Option("no_half_vae", MODEL, "flag", False, roadmap=LOADING, status=WORKS,
           help="keep the VAE in float32 under mixed precision (recommended with fp16)"),
    Option("fp8_base", MODEL, "flag", False, roadmap=LOADING, status=WORKS,
           help="store frozen U-Net and text-encoder weights in float8_e4m3fn (needs mixed precision)"),
    Option("fp8_base_unet", MODEL, "flag", False, roadmap=LOADING, status=WORKS,
           help="store frozen U-Net weights in float8_e4m3fn; text encoders stay in the weight dtype"),
    # Dataset (spec 1.4)
    Option("dataset_config", DATASET, "str", None, status=WORKS, help="dataset TOML or JSON file (spec 2)"),
    Option("train_data_dir", DATASET, "str", None, roadmap=DATA, status=WORKS,
           help="DreamBooth-style parent folder with 'N_tokens' subfolders (ignored with --dataset_config)"),
    Option("reg_data_dir", DATASET, "str", None, roadmap=DATA,
           help="regularization image parent folder, same naming (ignored with --dataset_config)", status=WORKS),
    Option("in_json", DATASET, "str", None, roadmap=DATA, status=WORKS,
           help="fine-tuning metadata JSON/JSONL; relative names are under --train_data_dir (ignored with "
                "--dataset_config)"),
    Option("dataset_repeats", DATASET, "int", 1, status=WORKS, help="default num_repeats of each subset"),
    Option("cache_info", DATASET, "flag", False, roadmap=DATA, status=WORKS,
           help="DreamBooth: cache captions and image sizes in metadata_cache.json per image folder (entries "
                "are rescanned when the image or caption file changes; sd-scripts never rescans)"),
    Option("shuffle_caption", DATASET, "flag", False, roadmap=DATA,
           help="shuffle separator-delimited caption tags", status=WORKS),
    Option("caption_separator", DATASET, "str", ",", roadmap=DATA, help="caption tag separator", status=WORKS),
    Option("caption_extension", DATASET, "str", ".caption", status=WORKS,
           help="caption file extension (a leading '.' is added if missing)"),
    Option("caption_extention", DATASET, "str", None, roadmap=DATA,
           help="legacy misspelling of --caption_extension", status=WORKS),
    Option("keep_tokens", DATASET, "int", 0, roadmap=DATA,
           help="keep the first N tags fixed when shuffling or dropping tags", status=WORKS),
    Option("keep_tokens_separator", DATASET, "str", "", roadmap=DATA,
           help="separator splitting a caption into fixed / flexible / fixed-suffix parts (always removed from "
                "the caption)", status=WORKS),
    Option("secondary_separator", DATASET, "str", None, roadmap=DATA,
           help="tag-group separator, replaced by --caption_separator after shuffling", status=WORKS),
    Option("enable_wildcard", DATASET, "flag", False, roadmap=DATA,
           help="{a|b|c} wildcards and multi-line captions (one random line)", status=WORKS),
    Option("caption_prefix", DATASET, "str", None, roadmap=DATA, help="text prepended to every caption", status=WORKS),
    Option("caption_suffix", DATASET, "str", None, roadmap=DATA, help="text appended to every caption", status=WORKS),
    Option("color_aug", DATASET, "flag", False, roadmap=DATA,
           help="weak colour augmentation: hue shift or gamma (a true gamma, not sd-scripts' strong brightness "
                "change; incompatible with latent caching)", status=WORKS),
    Option("flip_aug", DATASET, "flag", False, roadmap=DATA, help="random horizontal flip", status=WORKS),
    Option("face_crop_aug_range", DATASET, "str", None, roadmap=DATA,
           help="'a,b': scale each face-crop image (name_cx_cy_w_h) so the face is a to b of the bucket's short "
                "side, crop around it (with or without bucketing; sd-scripts: without only)", status=WORKS),
    Option("random_crop", DATASET, "flag", False, roadmap=DATA,
           help="random instead of centre crop (incompatible with latent caching)", status=WORKS),
    Option("debug_dataset", DATASET, "flag", False, roadmap=DATA,
           help="show batches, then exit without training"),
    Option("resolution", DATASET, "str", None, status=WORKS, help="training resolution 'S' or 'W,H'"),
    Option("enable_bucket", DATASET, "flag", False, status=WORKS, help="aspect-ratio bucketing"),
    Option("min_bucket_reso", DATASET, "int", 256, status=WORKS, help="smallest bucket side"),
    Option("max_bucket_reso", DATASET, "int", 1024, status=WORKS, help="largest bucket side"),
    Option("bucket_reso_steps", DATASET, "int", 64, status=WORKS,
           help="bucket side granularity (a multiple of 32 for SDXL)"),
    Option("bucket_no_upscale", DATASET, "flag", False, roadmap=DATA,
           help="per-image buckets without upscaling: the largest bucket on the grid within the resolution's "
                "area, cropping at most 10% per side (sd-scripts' rounding can lose a step); min/max bucket "
                "sides are only checked", status=WORKS),
    Option("resize_interpolation", DATASET, "str", None, INTERPOLATIONS, roadmap=DATA,
           help="resize filter; default area when shrinking, lanczos when enlarging", status=WORKS),
    Option("token_warmup_min", DATASET, "int", 1, roadmap=DATA, help="tag-count warmup start", status=WORKS),
    Option("token_warmup_step", DATASET, "float", 0, roadmap=DATA,
           help="step where all tags are used (below 1: fraction of max_train_steps)", status=WORKS),
    Option("alpha_mask", DATASET, "flag", False, roadmap=DATA,
           help="use the image alpha channel as loss mask", status=WORKS),
    Option("dataset_class", DATASET, "str", None, roadmap=DATA,
           help="'package.module.Class' of a custom dataset"),
    Option("caption_dropout_rate", DATASET, "float", 0.0, roadmap=DATA,
           help="probability of replacing the whole caption by an empty one", status=WORKS),
    Option("caption_dropout_every_n_epochs", DATASET, "int", 0, roadmap=DATA,
           help="drop all captions of every N-th epoch (counted from 1), from its first batch", status=WORKS),
    Option("caption_tag_dropout_rate", DATASET, "float", 0.0, roadmap=DATA,
           help="per-tag drop probability for flexible tags", status=WORKS),
    Option("prior_loss_weight", DATASET, "float", 1.0, roadmap=DATA,
           help="loss weight of regularization images", status=WORKS),
    Option("conditioning_data_dir", DATASET, "str", None, roadmap=DATA, status=WORKS,
           help="ignored with a warning, as by sd-scripts' LoRA trainer: masks come from conditioning_data_dir "
                "in the dataset TOML"),
    Option("weighted_captions", DATASET, "flag", False, roadmap=LOADING,
           help="'(word:1.2)' and '[word]' attention weights in captions"),
    # Output and saving (spec 1.8, 1.10)
    Option("output_dir", OUTPUT, "str", None, status=WORKS, help="folder for LoRA files and states"),
    Option("output_name", OUTPUT, "str", None, status=WORKS, help="base name of the saved LoRA files"),
    Option("save_model_as", OUTPUT, "str", "safetensors",
           ("ckpt", "pt", "safetensors", "diffusers", "diffusers_safetensors"), status=WORKS,
           help="LoRA file format; ckpt and pt are pickled state dicts without metadata; diffusers_safetensors is a "
                "folder for StableDiffusionXLPipeline.load_lora_weights (alphas in its header); diffusers (pickle) "
                "is refused: it cannot carry the alphas"),
    Option("save_precision", OUTPUT, "str", None, ("float", "fp16", "bf16"), roadmap=LORA, status=WORKS,
           help="dtype of saved tensors; default the training dtype"),
    Option("save_every_n_epochs", OUTPUT, "int", None, roadmap=LOOP, status=WORKS,
           help="save {name}-{epoch:06d} at the end of every N-th epoch (not the last: the final file covers it)"),
    Option("save_every_n_steps", OUTPUT, "int", None, roadmap=LOOP, status=WORKS,
           help="save {name}-step{step:08d} every N optimizer steps"),
    Option("save_n_epoch_ratio", OUTPUT, "int", None, roadmap=LOOP, status=WORKS,
           help="save about N times during training (sets save_every_n_epochs)"),
    Option("save_last_n_epochs", OUTPUT, "int", None, roadmap=LOOP, status=WORKS,
           help="keep only the last N epoch saves"),
    Option("save_last_n_steps", OUTPUT, "int", None, roadmap=LOOP, status=WORKS,
           help="keep only the step saves of the last N steps"),
    Option("save_last_n_epochs_state", OUTPUT, "int", None, roadmap=LOOP, status=WORKS,
           help="like --save_last_n_epochs, for state folders"),
    Option("save_last_n_steps_state", OUTPUT, "int", None, roadmap=LOOP, status=WORKS,
           help="like --save_last_n_steps, for state folders"),
    Option("save_state", OUTPUT, "flag", False, roadmap=LOOP, status=WORKS,
           help="save a resumable state folder with each save and at the end"),
    Option("save_state_on_train_end", OUTPUT, "flag", False, roadmap=LOOP, status=WORKS,
           help="save a resumable state folder at the end only"),
    Option("huggingface_repo_id", OUTPUT, "str", None, status=WORKS,
           help="upload every saved LoRA file (and, with --save_state_to_huggingface, each state folder) to this "
                "Hugging Face repo (owner/name), created if missing; a failed upload is a warning, training goes on"),
    Option("huggingface_repo_type", OUTPUT, "str", None, status=WORKS,
           help="repo type of --huggingface_repo_id: model (default), dataset or space"),
    Option("huggingface_path_in_repo", OUTPUT, "str", None, status=WORKS,
           help="folder in the repo for the uploads (each file keeps its name); unset: the repo root"),
    Option("huggingface_token", OUTPUT, "str", None, status=WORKS, secret=True,
           help="Hugging Face access token (unset or empty: the saved login or HF_TOKEN); never logged, printed "
                "or written to metadata or --output_config files"),
    Option("huggingface_repo_visibility", OUTPUT, "str", None, status=WORKS,
           help="'public' creates a public repo; anything else, or unset, a private one (an existing repo is "
                "left as it is)"),
    Option("save_state_to_huggingface", OUTPUT, "flag", False, status=WORKS,
           help="also upload each saved state folder, to <path_in_repo>/<state folder name>"),
    Option("resume_from_huggingface", OUTPUT, "flag", False, status=WORKS,
           help="--resume is owner/repo/path[:revision[:repo_type]] on the Hugging Face Hub: the files under "
                "path are downloaded (into the Hugging Face cache) and resumed from"),
    Option("async_upload", OUTPUT, "flag", False, status=WORKS,
           help="upload in a background thread, one file after the other; the final LoRA upload still waits, "
                "and the run waits for queued uploads before it ends"),
    # Network (spec 1.6)
    Option("network_module", NETWORK, "str", None, status=WORKS,
           help="network module: networks.lora, or lycoris.kohya (LyCORIS, needs pip install lycoris-lora==4.1.3; "
                "--network_args algo=lora/locon/loha/lokr/dylora/glora/full/diag-oft/boft/ia3, conv_dim, "
                "conv_alpha, dropout, rank_dropout, module_dropout, preset (built-in only), factor, use_tucker, "
                "use_scalar, dora_wd, ...; saved as .safetensors/.ckpt/.pt in LyCORIS' kohya keys; refused: "
                "algo=tlora, rs_lora=true, preset files, diffusers formats, --dim_from_weights)"),
    Option("network_dim", NETWORK, "int", None, status=WORKS, help="LoRA rank (4 when unset)"),
    Option("network_alpha", NETWORK, "float", 1, status=WORKS,
           help="LoRA alpha; scale = alpha / rank; 0 means alpha = rank"),
    Option("network_dropout", NETWORK, "float", None, roadmap=LORA, status=WORKS,
           help="dropout on the LoRA down-projection output (training only)"),
    Option("network_args", NETWORK, "str", None, nargs="*", roadmap=LORA, status=WORKS,
           help="key=value settings of networks.lora: conv_dim, conv_alpha, block_dims, block_alphas, "
                "conv_block_dims, conv_block_alphas, down/mid/up_lr_weight, block_lr_zero_threshold, "
                "rank_dropout, module_dropout, loraplus_lr_ratio, loraplus_unet_lr_ratio, "
                "loraplus_text_encoder_lr_ratio (with lycoris.kohya: LyCORIS' keys, see --network_module); "
                "an unknown key is an error"),
    Option("network_weights", NETWORK, "str", None, roadmap=LORA, status=WORKS,
           help="initial LoRA weights: a kohya file (SGM or diffusers names) or a diffusers/peft file or folder; "
                "modules take the file's alphas"),
    Option("dim_from_weights", NETWORK, "flag", False, roadmap=LORA, status=WORKS,
           help="take modules, ranks and alphas from --network_weights"),
    Option("network_train_unet_only", NETWORK, "flag", False, status=WORKS,
           help="train only the U-Net LoRA (no text-encoder modules)"),
    Option("network_train_text_encoder_only", NETWORK, "flag", False, roadmap=LORA, status=WORKS,
           help="train only the text-encoder LoRA (no U-Net modules)"),
    Option("base_weights", NETWORK, "str", None, nargs="*", roadmap=LORA, status=WORKS,
           help="LoRA files merged into the base model before training"),
    Option("base_weights_multiplier", NETWORK, "float", None, nargs="*", roadmap=LORA, status=WORKS,
           help="merge multiplier of each --base_weights file (default 1.0)"),
    Option("scale_weight_norms", NETWORK, "float", None, roadmap=LORA, status=WORKS,
           help="max-norm regularisation of each LoRA delta after every optimizer step"),
    # Training (spec 1.7, 1.8, 1.2)
    Option("learning_rate", TRAINING, "float", 2.0e-6, status=WORKS,
           help="base learning rate (default of the U-Net and text-encoder rates)"),
    Option("unet_lr", TRAINING, "float", None, status=WORKS, help="learning rate of the U-Net LoRA"),
    Option("text_encoder_lr", TRAINING, "float", None, nargs="*", status=WORKS,
           help=f"text-encoder LoRA learning rate: one value for both encoders or one each ({TE_NAMES})"),
    Option("text_encoder_lr1", TRAINING, "float", None, status=WORKS,
           help=f"learning rate of text encoder 1's LoRA; not in sd-scripts ({TE_NAMES})"),
    Option("text_encoder_lr2", TRAINING, "float", None, status=WORKS,
           help=f"learning rate of text encoder 2's LoRA; not in sd-scripts ({TE_NAMES})"),
    Option("optimizer_type", TRAINING, "str", "", status=WORKS,
           help="optimizer name, any case (AdamW when empty; AdamW8bit, Adafactor, Lion, Prodigy, ...) or a class"
                " path such as pytorch_optimizer.CAME"),
    Option("use_8bit_adam", TRAINING, "flag", False, roadmap=LOOP, status=WORKS,
           help="legacy alias of --optimizer_type AdamW8bit"),
    Option("use_lion_optimizer", TRAINING, "flag", False, roadmap=LOOP, status=WORKS,
           help="legacy alias of --optimizer_type Lion"),
    Option("optimizer_args", TRAINING, "str", None, nargs="*", roadmap=LOOP, status=WORKS,
           help="key=value optimizer arguments, values as Python literals (betas=0.9,0.99 weight_decay=0.01)"),
    Option("lr_scheduler", TRAINING, "str", "constant", status=WORKS,
           help="learning-rate scheduler: constant, constant_with_warmup, linear, cosine, cosine_with_restarts,"
                " polynomial, inverse_sqrt, cosine_with_min_lr, warmup_stable_decay, piecewise_constant, adafactor"),
    Option("lr_scheduler_type", TRAINING, "str", "", roadmap=LOOP, status=WORKS,
           help="custom scheduler class 'module.Class' or a torch.optim.lr_scheduler name"),
    Option("lr_scheduler_args", TRAINING, "str", None, nargs="*", roadmap=LOOP, status=WORKS,
           help="key=value scheduler arguments, values as Python literals (step_rules='1:10,0.1')"),
    Option("lr_warmup_steps", TRAINING, "int_or_float", 0, status=WORKS,
           help="warmup steps: an integer, a fraction below 1 of all steps, or 'N%' of all steps"),
    Option("lr_decay_steps", TRAINING, "int_or_float", 0, roadmap=LOOP, status=WORKS,
           help="decay steps of warmup_stable_decay, parsed like --lr_warmup_steps"),
    Option("lr_scheduler_num_cycles", TRAINING, "int", 1, roadmap=LOOP, status=WORKS,
           help="cosine_with_restarts cycles (half of it for cosine_with_min_lr and warmup_stable_decay)"),
    Option("lr_scheduler_power", TRAINING, "float", 1, roadmap=LOOP, status=WORKS,
           help="polynomial scheduler power"),
    Option("lr_scheduler_timescale", TRAINING, "int", None, roadmap=LOOP, status=WORKS,
           help="inverse_sqrt scheduler timescale"),
    Option("lr_scheduler_min_lr_ratio", TRAINING, "float", None, roadmap=LOOP, status=WORKS,
           help="minimum learning-rate ratio (cosine_with_min_lr, warmup_stable_decay)"),
    Option("fused_backward_pass", TRAINING, "flag", False, roadmap=LOOP, status=WORKS,
           help="step each LoRA tensor inside the backward pass and free its gradient at once (Adafactor, AdamW"
                " family and others; not D-Adaptation/Prodigy/schedule-free; no gradient accumulation; no fp16);"
                " --max_grad_norm then clips each tensor separately"),
    Option("max_train_steps", TRAINING, "int", 1600, status=WORKS, help="total optimizer steps"),
    Option("max_train_epochs", TRAINING, "int", None, status=WORKS,
           help="total epochs (overrides --max_train_steps)"),
    Option("train_batch_size", TRAINING, "int", 1, status=WORKS, help="default dataset batch size"),
    Option("gradient_accumulation_steps", TRAINING, "int", 1, status=WORKS,
           help="batches accumulated per optimizer step"),
    Option("max_grad_norm", TRAINING, "float", 1.0, status=WORKS, help="gradient clipping norm; 0 disables"),
    Option("mixed_precision", TRAINING, "str", "no", ("no", "fp16", "bf16"), status=WORKS,
           help="mixed precision; also the dtype of the frozen weights"),
    Option("full_fp16", TRAINING, "flag", False, roadmap=LOOP, status=WORKS,
           help="network weights and gradients in fp16 (needs --mixed_precision fp16); the optimizer steps a "
                "float32 master copy, so AdamW does not break down as it does in sd-scripts"),
    Option("full_bf16", TRAINING, "flag", False, roadmap=LOOP, status=WORKS,
           help="network weights and gradients in bf16 (needs --mixed_precision bf16)"),
    Option("gradient_checkpointing", TRAINING, "flag", False, status=WORKS,
           help="recompute activations in the backward pass to save memory"),
    Option("cpu_offload_checkpointing", TRAINING, "flag", False, roadmap=LOOP,
           help="offload checkpointed activations to the CPU (crashes for SDXL in sd-scripts)"),
    Option("resume", TRAINING, "str", None, roadmap=LOOP, status=WORKS,
           help="state folder to resume from: weights, optimizer, scheduler, step, epoch, batch position and "
                "every RNG, so the resumed run is identical to an uninterrupted one"),
    Option("initial_epoch", TRAINING, "int", None, roadmap=LOOP, status=WORKS,
           help="start at this 1-based epoch (step numbering and LR schedule continue from there)"),
    Option("initial_step", TRAINING, "int", None, roadmap=LOOP, status=WORKS,
           help="start at this optimizer step (step numbering and LR schedule continue from there)"),
    Option("skip_until_initial_step", TRAINING, "flag", False, roadmap=LOOP, status=WORKS,
           help="skip the batches before the initial step"),
    Option("mem_eff_attn", TRAINING, "flag", False, status=WORKS,
           help=f"memory-efficient attention; {SDPA_ALWAYS}"),
    Option("xformers", TRAINING, "flag", False, status=WORKS,
           help=f"xformers attention; {SDPA_ALWAYS} (xformers is not needed)"),
    Option("sdpa", TRAINING, "flag", False, status=WORKS,
           help=f"PyTorch scaled-dot-product attention; {SDPA_ALWAYS}"),
    Option("torch_compile", TRAINING, "flag", False, roadmap=SPEED,
           help="compile the models with torch.compile"),
    Option("dynamo_backend", TRAINING, "str", "inductor", DYNAMO_BACKENDS, roadmap=SPEED,
           help="torch.compile backend (with --torch_compile)"),
    # Caching (spec 1.4, 1.5)
    Option("cache_latents", CACHING, "flag", False, status=WORKS,
           help="encode every image once, keep latents in memory"),
    Option("cache_latents_to_disk", CACHING, "flag", False, status=WORKS,
           help="cache latents in files under .sdxl-lora-cache in each image folder, read when needed "
                "(implies --cache_latents); interrupted caching resumes where it stopped"),
    Option("vae_batch_size", CACHING, "int", 1, status=WORKS, help="batch size of latent caching"),
    Option("cache_text_encoder_outputs", CACHING, "flag", False, status=WORKS,
           help="encode every processed caption once (needs --network_train_unet_only); with caption shuffling "
                "or dropout, 4 variants per image are cached and each epoch uses one"),
    Option("cache_text_encoder_outputs_to_disk", CACHING, "flag", False, status=WORKS,
           help="cache text-encoder outputs in files under .sdxl-lora-cache in each image folder "
                "(implies the above)"),
    Option("skip_cache_check", CACHING, "flag", False, status=WORKS,
           help="trust existing cache files without reading them (entries for changed images, captions or "
                "models are still encoded)"),
    # Sample images (spec 1.11)
    Option("sample_prompts", SAMPLES, "str", None, status=WORKS,
           help="prompt file: .txt (one prompt a line, options --w --h --d --s --l --n --ss), .toml or .json; a "
                "prompt without --w/--h is 1024x1024 (sd-scripts: 512x512); sampled when one of the three options "
                "below is set"),
    Option("sample_every_n_steps", SAMPLES, "int", None, status=WORKS,
           help="sample after every N optimizer steps (0 or less: off, with a warning)"),
    Option("sample_every_n_epochs", SAMPLES, "int", None, status=WORKS,
           help="sample at the end of every N epochs; when set, --sample_every_n_steps is ignored (0 or less: off)"),
    Option("sample_at_first", SAMPLES, "flag", False, status=WORKS,
           help="sample before the first step (files named e000000)"),
    Option("sample_sampler", SAMPLES, "str", "euler_a", SAMPLERS, status=WORKS,
           help="sampler of prompts without --ss; default euler_a (sd-scripts: ddim, poor for SDXL); accepted and "
                "unused without --sample_prompts"),
    # Logging (spec 1.12)
    Option("logging_dir", LOGGING, "str", None, status=WORKS,
           help="log to <logging_dir>/<log_prefix><YYYYmmddHHMMSS>; alone, it means --log_with tensorboard"),
    Option("log_with", LOGGING, "str", None, ("tensorboard", "wandb", "all"), status=WORKS,
           help="trackers for loss, learning rates and sample images (all = TensorBoard and wandb); tensorboard "
                "needs --logging_dir, wandb needs pip install wandb"),
    Option("log_prefix", LOGGING, "str", None, status=WORKS, help="prefix of the timestamped run folder"),
    Option("log_tracker_name", LOGGING, "str", None, status=WORKS,
           help="tracker project name (default network_train; TensorBoard: the run folder's sub-folder)"),
    Option("wandb_run_name", LOGGING, "str", None, status=WORKS, help="wandb run name"),
    Option("log_tracker_config", LOGGING, "str", None, status=WORKS,
           help="TOML file of tracker init arguments, one table per tracker ([wandb], [tensorboard])"),
    Option("wandb_api_key", LOGGING, "str", None, status=WORKS, secret=True,
           help="log in to wandb with this key before training (never logged or saved; \"\" means none)"),
    Option("log_config", LOGGING, "flag", False, status=WORKS,
           help="send the options to the trackers, without secrets and without the path options"),
    # Noise and loss (spec 1.9, 1.4)
    Option("noise_offset", LOSS, "float", None, roadmap=LOOP, status=WORKS,
           help="offset noise strength (e.g. 0.0357)"),
    Option("noise_offset_random_strength", LOSS, "flag", False, roadmap=LOOP, status=WORKS,
           help="random offset strength between 0 and --noise_offset"),
    Option("adaptive_noise_scale", LOSS, "float", None, roadmap=LOOP, status=WORKS,
           help="add scale x mean absolute latent to the offset (needs --noise_offset)"),
    Option("multires_noise_iterations", LOSS, "int", None, roadmap=LOOP, status=WORKS,
           help="pyramid noise iterations (6-10)"),
    Option("multires_noise_discount", LOSS, "float", 0.3, roadmap=LOOP, status=WORKS,
           help="pyramid noise discount"),
    Option("ip_noise_gamma", LOSS, "float", None, roadmap=LOOP, status=WORKS,
           help="input-perturbation noise (about 0.1)"),
    Option("ip_noise_gamma_random_strength", LOSS, "flag", False, roadmap=LOOP, status=WORKS,
           help="random gamma between 0 and --ip_noise_gamma"),
    Option("zero_terminal_snr", LOSS, "flag", False, roadmap=LOOP, status=WORKS,
           help="rescale betas for zero terminal SNR (use with --v_parameterization)"),
    Option("min_timestep", LOSS, "int", None, roadmap=LOOP, status=WORKS,
           help="lowest training timestep (default 0)"),
    Option("max_timestep", LOSS, "int", None, roadmap=LOOP, status=WORKS,
           help="timestep upper bound, exclusive (default 1000)"),
    Option("loss_type", LOSS, "str", "l2", ("l1", "l2", "huber", "smooth_l1"), roadmap=LOOP, status=WORKS,
           help="per-element loss"),
    Option("huber_schedule", LOSS, "str", "snr", ("constant", "exponential", "snr"), roadmap=LOOP, status=WORKS,
           help="Huber threshold schedule"),
    Option("huber_c", LOSS, "float", 0.1, roadmap=LOOP, status=WORKS, help="Huber parameter"),
    Option("huber_scale", LOSS, "float", 1.0, roadmap=LOOP, status=WORKS,
           help="Huber scale (not used by the snr schedule)"),
    Option("min_snr_gamma", LOSS, "float", None, roadmap=LOOP, status=WORKS,
           help="Min-SNR weighting gamma (e.g. 5)"),
    Option("scale_v_pred_loss_like_noise_pred", LOSS, "flag", False, roadmap=LOOP, status=WORKS,
           help="scale the v-prediction loss like noise prediction (needs --v_parameterization)"),
    Option("v_pred_like_loss", LOSS, "float", None, roadmap=LOOP, status=WORKS,
           help="weight of an added v-prediction-like loss"),
    Option("debiased_estimation_loss", LOSS, "flag", False, roadmap=LOOP, status=WORKS,
           help="debiased estimation loss weighting"),
    Option("masked_loss", LOSS, "flag", False, roadmap=DATA, status=WORKS,
           help="multiply the loss by the mask images of conditioning_data_dir subsets (red channel, cropped "
                "like their image); alpha_mask subsets are masked with or without it"),
    # Validation (spec 1.13)
    Option("validation_split", VALIDATION, "float", 0.0, roadmap=SAMPLING, status=WORKS,
           help="fraction in [0, 1) of each dataset's training images held out for the validation loss (a "
                "dataset's validation_split in --dataset_config wins); regularisation images are never held out"),
    Option("validation_seed", VALIDATION, "int", None, roadmap=SAMPLING, status=WORKS,
           help="seed of the held-out split (a dataset's validation_seed wins) and of the validation noise "
                "(default --seed)"),
    Option("validate_every_n_steps", VALIDATION, "int", None, roadmap=SAMPLING, status=WORKS,
           help="also validate after every N optimizer steps"),
    Option("validate_every_n_epochs", VALIDATION, "int", None, roadmap=SAMPLING, status=WORKS,
           help="validate after every N epochs (default every epoch)"),
    Option("max_validation_steps", VALIDATION, "int", None, roadmap=SAMPLING, status=WORKS,
           help="most validation batches per validation run (default all)"),
    # Distributed and others (spec 1.2, 1.8)
    Option("seed", OTHERS, "int", None, status=WORKS, help="global random seed (random when unset)"),
    Option("max_token_length", OTHERS, "int", None, (75, 150, 225), roadmap=LOADING, status=WORKS,
           help="caption tokens without BOS/EOS (75 when unset; sd-scripts rejects the value 75)"),
    Option("clip_skip", OTHERS, "int", None, roadmap=LOADING, status=WORKS,
           help="recorded in metadata only; SDXL text encoding ignores it"),
    Option("lowram", OTHERS, "flag", False, roadmap=LOADING, status=WORKS,
           help="load models straight onto the accelerator"),
    Option("highvram", OTHERS, "flag", False, roadmap=LOADING, status=WORKS,
           help="do not clear the device cache while caching latents"),
    Option("max_data_loader_n_workers", OTHERS, "int", 8, status=WORKS,
           help="DataLoader workers (at most the CPU count)"),
    Option("persistent_data_loader_workers", OTHERS, "flag", False, status=WORKS,
           help="keep DataLoader workers alive between epochs"),
    Option("skip_bad_files", OTHERS, "flag", False, status=WORKS,
           help="not in sd-scripts: leave unreadable or truncated images, empty captions, too-small images and "
                "mismatched masks out of training (listed in a warning) instead of stopping"),
    Option("ddp_timeout", OTHERS, "int", None, roadmap=MULTI, status=WORKS,
           help="process-group timeout in minutes (accelerate InitProcessGroupKwargs); sd-scripts applies it only "
                "with more than one CUDA device, here whenever a process group is created"),
    Option("ddp_gradient_as_bucket_view", OTHERS, "flag", False, roadmap=MULTI, status=WORKS,
           help="DDP gradient_as_bucket_view: gradients share the all-reduce buckets' memory"),
    Option("ddp_static_graph", OTHERS, "flag", False, roadmap=MULTI, status=WORKS,
           help="DDP static_graph: the same parameters get gradients every step"),
    # Metadata (spec 1.3, 4)
    Option("no_metadata", METADATA, "flag", False, roadmap=LORA, status=WORKS,
           help="write only the minimum ss_* metadata"),
    Option("training_comment", METADATA, "str", None, roadmap=LORA, status=WORKS,
           help="stored as ss_training_comment"),
    Option("metadata_title", METADATA, "str", None, roadmap=LORA, status=WORKS,
           help="modelspec.title (default --output_name)"),
    Option("metadata_author", METADATA, "str", None, roadmap=LORA, status=WORKS,
           help="modelspec.author"),
    Option("metadata_description", METADATA, "str", None, roadmap=LORA, status=WORKS,
           help="modelspec.description"),
    Option("metadata_license", METADATA, "str", None, roadmap=LORA, status=WORKS,
           help="modelspec.license"),
    Option("metadata_tags", METADATA, "str", None, roadmap=LORA, status=WORKS,
           help="modelspec.tags, comma separated"),
    Option("metadata_usage_hint", METADATA, "str", None, roadmap=LORA, status=WORKS,
           help="modelspec.usage_hint"),
    Option("metadata_thumbnail", METADATA, "str", None, roadmap=LORA, status=WORKS,
           help="modelspec.thumbnail: a data URL or an image file"),
    Option("metadata_merged_from", METADATA, "str", None, roadmap=LORA, status=WORKS,
           help="modelspec.merged_from"),
    Option("metadata_trigger_phrase", METADATA, "str", None, roadmap=LORA, status=WORKS,
           help="modelspec.trigger_phrase"),
    Option("metadata_preprocessor", METADATA, "str", None, roadmap=LORA, status=WORKS,
           help="modelspec.preprocessor"),
    Option("metadata_is_negative_embedding", METADATA, "str", None, roadmap=LORA, status=WORKS,
           help="modelspec.is_negative_embedding"),
    # Config file (spec 1.14)
    Option("config_file", CONFIG, "str", None, status=WORKS,
           help="TOML of option values ('.toml' appended if missing); tables flattened; command line wins;"
                " unknown keys warn; \"\", [] and false mean unset; numbers may be strings"),
    Option("output_config", CONFIG, "flag", False, status=WORKS,
           help="write the non-default options to the --config_file path (must not exist) and exit;"
                " an error without --config_file (sd-scripts ignores it)"),
    # DeepSpeed (spec 1.15)
    Option("deepspeed", DEEPSPEED, "flag", False, roadmap=MULTI, status=WORKS,
           help="train through DeepSpeed (pip install -e '.[deepspeed]'; start with accelerate launch; "
                "docs/deepspeed.md); no --save_state/--resume yet"),
    Option("zero_stage", DEEPSPEED, "int", 2, (0, 1, 2, 3), roadmap=MULTI, status=WORKS,
           help="ZeRO stage: 1 partitions optimizer states, 2 also gradients, 3 also parameters"),
    Option("offload_optimizer_device", DEEPSPEED, "str", None, ("cpu", "nvme"), roadmap=MULTI, status=WORKS,
           help="keep optimizer states on the CPU (ZeRO 1-3) or NVMe (ZeRO 3); steps with DeepSpeed's CPU Adam, "
                "so --optimizer_type AdamW or Adam only"),
    Option("offload_optimizer_nvme_path", DEEPSPEED, "str", None, roadmap=MULTI, status=WORKS,
           help="folder on the NVMe drive for --offload_optimizer_device nvme"),
    Option("offload_param_device", DEEPSPEED, "str", None, ("cpu", "nvme"), roadmap=MULTI, status=WORKS,
           help="keep parameters on the CPU or NVMe (ZeRO 3)"),
    Option("offload_param_nvme_path", DEEPSPEED, "str", None, roadmap=MULTI, status=WORKS,
           help="folder on the NVMe drive for --offload_param_device nvme"),
    Option("zero3_init_flag", DEEPSPEED, "flag", False, roadmap=MULTI, status=WORKS,
           help="accepted with a warning (ZeRO 3): the base weights are loaded whole, then partitioned when "
                "prepared, so deepspeed.zero.Init is not used"),
    Option("zero3_save_16bit_model", DEEPSPEED, "flag", False, roadmap=MULTI, status=WORKS,
           help="ZeRO 3: stage3_gather_16bit_weights_on_model_save (LoRA files are gathered whole either way)"),
    Option("fp16_master_weights_and_gradients", DEEPSPEED, "flag", False, roadmap=MULTI, status=WORKS,
           help="fp16 master weights and gradients (needs --mixed_precision fp16, --zero_stage 2, "
                "--offload_optimizer_device cpu)"),
    # Console logging (spec 1.1)
    Option("console_log_level", CONSOLE, "str", None, ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
           status=WORKS, help="console log level (INFO when unset)"),
    Option("console_log_file", CONSOLE, "str", None, status=WORKS, help="log to this file instead of stderr"),
    Option("console_log_simple", CONSOLE, "flag", False, status=WORKS, help="plain log lines without rich"),
)
"""Every option, in --help order within each group."""

OPTIONS_BY_NAME = MappingProxyType({option.name: option for option in OPTIONS})
"""Option by name (read-only)."""


def _statuses(working: tuple[str, ...], not_yet: tuple[str, ...]) -> Mapping[str, str]:
    return MappingProxyType({**dict.fromkeys(not_yet, NOT_YET), **dict.fromkeys(working, WORKS)})


OPTIMIZERS = _statuses(
    ("AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Lion", "Lion8bit", "PagedLion8bit",
     "SGDNesterov", "SGDNesterov8bit", "DAdaptation", "DAdaptAdamPreprint", "DAdaptAdaGrad", "DAdaptAdam",
     "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion", "DAdaptSGD", "Prodigy", "Adafactor", "RAdamScheduleFree",
     "AdamWScheduleFree", "SGDScheduleFree"),
    (),
)
"""--optimizer_type names of sd-scripts (spec 9.1; matched case-insensitively) -> WORKS or NOT_YET. Any other
name is a class path ('package.module.Class', or a torch.optim class). train.optim builds exactly these names."""

SCHEDULERS = _statuses(
    ("constant", "constant_with_warmup", "cosine", "linear", "cosine_with_restarts", "polynomial", "inverse_sqrt",
     "cosine_with_min_lr", "warmup_stable_decay", "piecewise_constant", "adafactor"),
    (),
)
"""--lr_scheduler names of sd-scripts (spec 9.2) -> WORKS or NOT_YET; any other name is refused (other classes
go through --lr_scheduler_type). train.schedulers builds exactly these names."""

OPTIMIZERS_ROADMAP = LOOP
"""Roadmap capability that will bring the optimizers and schedulers marked NOT_YET."""


def choice_status(table: Mapping[str, str], name: str, *, ignore_case: bool = False) -> str:
    """Status of an --optimizer_type / --lr_scheduler name in its table; NOT_YET for a name not listed."""
    if ignore_case:
        table = {key.lower(): status for key, status in table.items()}
        name = name.lower()
    return table.get(name, NOT_YET)


def without_secrets(values: Mapping[str, object]) -> dict:
    """`values` minus the secret options (tokens, API keys), for anything that records or shows option values."""
    secret = {option.name for option in OPTIONS if option.secret}
    return {name: value for name, value in values.items() if name not in secret}
