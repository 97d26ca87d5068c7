"""Frozen, typed run configuration. Built once from the command line by config.build; read by everything below.

Each builder receives only its own section (ModelConfig to models, NetworkConfig to network, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sdxl_lora.config.dataset_toml import DatasetConfig
from sdxl_lora.config.lycoris_args import LycorisArgs
from sdxl_lora.config.network_args import LoraArgs


@dataclass(frozen=True)
class ModelConfig:
    """Which SDXL to load and in which precision (spec 1.2, 5.9)."""

    pretrained_model_name_or_path: str
    """Diffusers folder, single .safetensors/.ckpt file, or Hugging Face hub id (local cache only)."""
    vae: str | None = None
    """Replacement VAE: a file or a diffusers folder."""
    mixed_precision: str = "no"
    """'no', 'fp16' or 'bf16': the dtype frozen weights are stored and computed in."""
    no_half_vae: bool = False
    """Keep the VAE in float32 under mixed precision."""
    full_fp16: bool = False
    """Network weights in fp16 too (needs mixed_precision fp16)."""
    full_bf16: bool = False
    """Network weights in bf16 too (needs mixed_precision bf16)."""
    fp8_base: bool = False
    """Store frozen U-Net and text-encoder weights in float8_e4m3fn."""
    fp8_base_unet: bool = False
    """Store frozen U-Net weights in float8_e4m3fn."""
    lowram: bool = False
    """Load models straight onto the accelerator device."""
    highvram: bool = False
    """Skip device cache clearing during latent caching."""
    max_token_length: int | None = None
    """Caption tokens without BOS/EOS: None (75), 150 or 225."""
    clip_skip: int | None = None
    """Recorded in metadata; SDXL conditioning ignores it (as sd-scripts)."""
    disable_mmap_load_safetensors: bool = False
    """Read single files whole instead of memory-mapping them."""
    tokenizer_cache_dir: str | None = None
    """Folder to save/load tokenizers (offline use)."""


@dataclass(frozen=True)
class NetworkConfig:
    """The LoRA network (spec 3)."""

    network_module: str = "networks.lora"
    """sd-scripts network module name: networks.lora or lycoris.kohya (LyCORIS)."""
    network_dim: int | None = None
    """Rank; None means 4 (metadata still records None)."""
    network_alpha: float = 1.0
    """Alpha; the effective scale is alpha / rank. 0 or None means alpha = rank."""
    train_unet: bool = True
    """Apply and train LoRA on the U-Net."""
    train_text_encoder: bool = True
    """Apply and train LoRA on both text encoders."""
    network_dropout: float | None = None
    """Neuron dropout on the LoRA down projection's output (training only)."""
    lora: LoraArgs = field(default_factory=LoraArgs)
    """The --network_args of networks.lora, parsed (conv, block ranks and LR weights, dropouts, LoRA+)."""
    lycoris: LycorisArgs | None = None
    """The --network_args of lycoris.kohya, parsed; None unless --network_module lycoris.kohya."""
    network_weights: str | None = None
    """LoRA file (or diffusers LoRA folder) loaded into the network before training."""
    dim_from_weights: bool = False
    """Take the modules, ranks and alphas from network_weights instead of the options."""
    base_weights: tuple[str, ...] = ()
    """LoRA files merged into the frozen base weights before the network is created."""
    base_weights_multiplier: tuple[float, ...] = ()
    """Merge multiplier per base_weights file (missing ones are 1.0)."""
    scale_weight_norms: float | None = None
    """Max-norm of each module's delta, applied after every optimizer step."""

    @property
    def rank(self) -> int:
        return self.network_dim if self.network_dim is not None else 4

    @property
    def alpha(self) -> float:
        return float(self.rank) if not self.network_alpha else float(self.network_alpha)


@dataclass(frozen=True)
class DataConfig:
    """Datasets, after the subset -> dataset -> general -> command-line fallback (spec 2)."""

    datasets: tuple[DatasetConfig, ...]
    """Training datasets in TOML order."""
    cache_latents: bool = False
    """Encode every image once with the VAE before training, keep latents in memory."""
    vae_batch_size: int = 1
    """Batch size for latent caching."""
    cache_latents_to_disk: bool = False
    """Keep cached latents in files in each image folder's .sdxl-lora-cache instead of in memory."""
    cache_text_encoder_outputs: bool = False
    """Encode every caption (variant) once before training; the text encoders must be frozen."""
    cache_text_encoder_outputs_to_disk: bool = False
    """Keep cached text-encoder outputs in files in each image folder's .sdxl-lora-cache."""
    skip_cache_check: bool = False
    """Trust existing cache files without reading them (a missing or stale entry is still encoded)."""
    max_data_loader_n_workers: int = 8
    """DataLoader workers (min with CPU count)."""
    persistent_data_loader_workers: bool = False
    """Keep DataLoader workers alive between epochs."""
    prior_loss_weight: float = 1.0
    """Loss weight of regularisation images."""
    masked_loss: bool = False
    """Multiply the loss by conditioning_data_dir masks (alpha masks apply either way)."""
    skip_bad_files: bool = False
    """Leave unusable image, caption and mask files out (with a warning) instead of stopping."""


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (spec 1.7, 9)."""

    optimizer_type: str = "AdamW"
    """Optimizer name (case-insensitive for built-ins)."""
    learning_rate: float = 2e-6
    """Base learning rate."""
    unet_lr: float | None = None
    """U-Net LoRA learning rate (default learning_rate)."""
    text_encoder_lr: tuple[float | None, float | None] = (None, None)
    """Learning rates of TE1 (CLIP ViT-L) and TE2 (OpenCLIP ViT-bigG) LoRA; None = learning_rate."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables."""
    lr_scheduler: str = "constant"
    """Scheduler name."""
    lr_warmup_steps: int | float = 0
    """Warmup: an int is a step count, a float a fraction of the total steps (from 'N%' it may be 1 or more)."""
    optimizer_args: tuple[tuple[str, object], ...] = ()
    """--optimizer_args as (key, Python literal) pairs, in the order given."""
    lr_scheduler_type: str = ""
    """Custom scheduler class ('module.Class' or a torch.optim.lr_scheduler name); overrides lr_scheduler."""
    lr_scheduler_args: tuple[tuple[str, object], ...] = ()
    """--lr_scheduler_args as (key, Python literal) pairs: extra keyword arguments of the scheduler."""
    lr_decay_steps: int | float = 0
    """Decay steps of warmup_stable_decay, parsed like lr_warmup_steps."""
    lr_scheduler_num_cycles: int = 1
    """Cycles of cosine_with_restarts (halved for cosine_with_min_lr and warmup_stable_decay, as sd-scripts)."""
    lr_scheduler_power: float = 1.0
    """Power of the polynomial schedule."""
    lr_scheduler_timescale: int | None = None
    """Timescale of inverse_sqrt (None: the warmup steps, or 10,000 without warmup)."""
    lr_scheduler_min_lr_ratio: float | None = None
    """Floor of cosine_with_min_lr and warmup_stable_decay as a fraction of the LR."""
    fused_backward_pass: bool = False
    """Step each LoRA tensor inside backward as soon as its gradient is complete, then free the gradient."""


@dataclass(frozen=True)
class TrainConfig:
    """The loop (spec 1.8, 1.9, 5)."""

    max_train_steps: int = 1600
    """Total optimizer steps (overridden by max_train_epochs)."""
    max_train_epochs: int | None = None
    """Epoch count; when set, steps = epochs x steps per epoch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    seed: int = 0
    """Global seed (drawn at random when not given)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    resume: Path | None = None
    """State folder to continue from (spec 7.3, 7.4)."""
    initial_epoch: int | None = None
    """1-based epoch to start at (without a state: --network_weights continuation)."""
    initial_step: int | None = None
    """Optimizer step to start at; wins over initial_epoch and the state's step."""
    skip_until_initial_step: bool = False
    """Skip the batches of the starting epoch that come before the initial step."""


@dataclass(frozen=True)
class NoiseConfig:
    """Timesteps and noise of each training step (spec 1.9, 5.1, 5.2)."""

    min_timestep: int = 0
    """Lowest timestep drawn."""
    max_timestep: int = 1000
    """Timestep upper bound (exclusive); min >= max puts every sample at max."""
    noise_offset: float | None = None
    """Offset noise strength; None or 0 disables."""
    noise_offset_random_strength: bool = False
    """Offset strength U(0, 1) x noise_offset, one draw per batch."""
    adaptive_noise_scale: float | None = None
    """Adds this x |mean latent| per (sample, channel) to the offset."""
    multires_noise_iterations: int | None = None
    """Pyramid noise levels; None or 0 disables."""
    multires_noise_discount: float = 0.3
    """Weight discount^i of pyramid level i."""
    ip_noise_gamma: float | None = None
    """Input-perturbation noise strength; None or 0 disables."""
    ip_noise_gamma_random_strength: bool = False
    """Input-perturbation strength U(0, 1) x ip_noise_gamma, one draw per batch."""
    zero_terminal_snr: bool = False
    """Rescale the schedule so the last timestep has zero SNR (SNR weightings keep the original schedule)."""


@dataclass(frozen=True)
class LossConfig:
    """Target, element loss and weighting of each training step (spec 1.9, 5.3 to 5.5)."""

    v_parameterization: bool = False
    """Predict v = sqrt(a) eps - sqrt(1 - a) x0 instead of eps."""
    loss_type: str = "l2"
    """Element loss: l1, l2, huber or smooth_l1."""
    huber_schedule: str = "snr"
    """Huber threshold over timesteps: constant, exponential or snr."""
    huber_c: float = 0.1
    """Huber parameter."""
    huber_scale: float = 1.0
    """Huber scale (constant and exponential schedules)."""
    min_snr_gamma: float | None = None
    """Min-SNR weighting gamma; None or 0 disables."""
    scale_v_pred_loss_like_noise_pred: bool = False
    """Scale the v-prediction loss by SNR / (SNR + 1)."""
    v_pred_like_loss: float | None = None
    """Add this x loss / (SNR / (SNR + 1)) to the loss."""
    debiased_estimation_loss: bool = False
    """Weight by 1 / sqrt(SNR) (eps) or 1 / (SNR + 1) (v)."""
    masked_loss: bool = False
    """Multiply the element loss by the batch's mask (alpha masks are applied whenever present)."""


@dataclass(frozen=True)
class SaveConfig:
    """What is written and where (spec 4, 7)."""

    output_dir: Path
    """Folder for every output; created when missing."""
    output_name: str | None = None
    """Base file name; 'last' for the final file when None."""
    save_model_as: str = "safetensors"
    """File format."""
    save_precision: str | None = None
    """dtype of saved tensors: None (training dtype), float, fp16, bf16."""
    no_metadata: bool = False
    """Write only the minimal ss_* keys."""
    training_comment: str | None = None
    """Stored as ss_training_comment."""
    save_every_n_epochs: int | None = None
    """Save `{name}-{epoch:06d}` at the end of every N-th epoch but the last (after --save_n_epoch_ratio)."""
    save_n_epoch_ratio: int | None = None
    """Sets save_every_n_epochs = max(1, epochs // ratio) once the epoch count is known."""
    save_every_n_steps: int | None = None
    """Save `{name}-step{step:08d}` every N optimizer steps."""
    save_last_n_epochs: int | None = None
    """Keep the last N epoch saves (spec 7.2)."""
    save_last_n_steps: int | None = None
    """Keep the step saves of the last N steps (spec 7.2)."""
    save_last_n_epochs_state: int | None = None
    """Like save_last_n_epochs for state folders (falls back to it)."""
    save_last_n_steps_state: int | None = None
    """Like save_last_n_steps for state folders (falls back to it)."""
    save_state: bool = False
    """A state folder beside every epoch/step save and at the end."""
    save_state_on_train_end: bool = False
    """A state folder at the end only."""


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; immutable after validation."""

    model: ModelConfig
    network: NetworkConfig
    data: DataConfig
    optim: OptimConfig
    train: TrainConfig
    save: SaveConfig
    args: dict = field(default_factory=dict)
    """The effective option values (name -> value), for metadata and --output_config only."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """Timesteps and noise of each step."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Target, loss and weighting of each step."""
    validation: ValidationConfig = field(default_factory=lambda: ValidationConfig())
    """Validation loss on held-out images: when and how much."""
    log: LogConfig = field(default_factory=lambda: LogConfig())
    """Experiment trackers (TensorBoard, wandb)."""
    hub: HubConfig = field(default_factory=lambda: HubConfig())
    """Hugging Face Hub upload and resume."""
    sample: SampleConfig = field(default_factory=lambda: SampleConfig())
    """Sample images during training."""
    distributed: DistributedConfig = field(default_factory=lambda: DistributedConfig())
    """Process-group and DDP settings, and DeepSpeed."""


@dataclass(frozen=True)
class ValidationConfig:
    """Validation loss on images held out of training (spec 1.13, 2.10, 5.8). Which images are held out is
    decided per dataset (DatasetConfig.validation_split / validation_seed, TOML over the flags)."""

    split: float = 0.0
    """--validation_split: the fraction held out of each dataset that sets none in the TOML."""
    seed: int = 0
    """Seed of the validation noise and RNG: --validation_seed, else --seed."""
    every_n_steps: int | None = None
    """Validate after every N optimizer steps; None: not on steps."""
    every_n_epochs: int | None = None
    """Validate after every N epochs; None: after every epoch."""
    max_steps: int | None = None
    """Most validation batches per validation run; None: all of them."""


@dataclass(frozen=True)
class LogConfig:
    """Experiment trackers through accelerate (spec 1.12). No tracker when log_with is empty."""

    log_with: tuple[str, ...] = ()
    """Trackers: () none, ('tensorboard',), ('wandb',), or both (--log_with all); --logging_dir alone = TensorBoard."""
    logging_dir: Path | None = None
    """Base folder; each run logs to logging_dir/<log_prefix><YYYYmmddHHMMSS>."""
    log_prefix: str = ""
    """Prefix of the timestamped run folder."""
    tracker_name: str = "network_train"
    """Tracker project name (TensorBoard: the sub-folder of the run folder; wandb: the project)."""
    wandb_run_name: str | None = None
    """wandb run name (kept when the tracker config file names none)."""
    tracker_init_kwargs: dict | None = None
    """--log_tracker_config content, one table per tracker ({'wandb': {...}}); None without the file."""
    wandb_api_key: str | None = field(default=None, repr=False)
    """wandb.login key; never logged, printed or saved."""
    log_config: bool = False
    """Send the options (without secrets and paths) to the trackers."""


@dataclass(frozen=True)
class HubConfig:
    """Uploads to, and resuming from, the Hugging Face Hub (spec 1.10, 7.1)."""

    repo_id: str | None = None
    """Repo that receives every saved model file; None: nothing is uploaded."""
    repo_type: str | None = None
    """model (None), dataset or space."""
    path_in_repo: str = ""
    """Folder in the repo for the uploads; '' puts them at the repo root."""
    token: str | None = field(default=None, repr=False)
    """Access token; None uses the saved login or HF_TOKEN. Never logged, printed or saved."""
    visibility: str | None = None
    """'public' creates a public repo; anything else (None too) a private one. An existing repo is left as it is."""
    save_state_to_huggingface: bool = False
    """Also upload each saved state folder."""
    resume_from_huggingface: bool = False
    """--resume names a state folder on the Hub (owner/repo/path[:revision[:repo_type]]), downloaded first."""
    async_upload: bool = False
    """Upload in a background thread; the final model upload still waits."""

    @property
    def private(self) -> bool:
        return self.visibility != "public"


@dataclass(frozen=True)
class SampleConfig:
    """Sample images during training (spec 1.11, 8); off unless a schedule and a prompt file are given."""

    prompts: Path | None = None
    """--sample_prompts: the prompt file (.txt, .toml or .json); None: no samples."""
    every_n_steps: int | None = None
    """Sample after every N-th optimizer step; None when off or when every_n_epochs is set."""
    every_n_epochs: int | None = None
    """Sample at the end of every N-th epoch; None when off."""
    at_first: bool = False
    """Sample before the first step (files named e000000)."""
    sampler: str = "euler_a"
    """Sampler of prompts that name none (sd-scripts' default is ddim)."""


@dataclass(frozen=True)
class DistributedConfig:
    """Process-group and DDP settings (spec 1.8), and DeepSpeed through accelerate's plugin (spec 1.15)."""

    ddp_timeout_minutes: int | None = None
    """--ddp_timeout: process-group timeout in minutes; None keeps torch's default."""
    ddp_gradient_as_bucket_view: bool = False
    """DDP gradient_as_bucket_view: gradients are views into the all-reduce buckets (less memory)."""
    ddp_static_graph: bool = False
    """DDP static_graph: the set of parameters that get gradients is the same every step."""
    deepspeed: bool = False
    """Train through DeepSpeed (the trained models wrapped in one module and prepared together)."""
    zero_stage: int = 2
    """ZeRO stage: 0 off, 1 optimizer states, 2 + gradients, 3 + parameters partitioned over processes."""
    offload_optimizer_device: str | None = None
    """None, 'cpu' or 'nvme': where ZeRO keeps optimizer states (the optimizer becomes DeepSpeed's CPU Adam)."""
    offload_optimizer_nvme_path: str | None = None
    """Folder for optimizer states with offload_optimizer_device 'nvme'."""
    offload_param_device: str | None = None
    """None, 'cpu' or 'nvme': where ZeRO-3 keeps parameters."""
    offload_param_nvme_path: str | None = None
    """Folder for parameters with offload_param_device 'nvme'."""
    zero3_save_16bit_model: bool = False
    """ZeRO-3: stage3_gather_16bit_weights_on_model_save (whole 16-bit weights when accelerate saves a model)."""
    fp16_master_weights_and_gradients: bool = False
    """fp16 master weights and gradients (ZeRO-2 with CPU optimizer offload and fp16 mixed precision only)."""
