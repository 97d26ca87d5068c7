"""What several processes (accelerate launch --multi_gpu, torchrun) need beyond one: the same reads at the same
steps on every process, RNG states gathered for the state folder, the validation shard, parameters DDP must not
wait for, and the combinations that cannot work yet. With one process every helper here is a no-op.

How the work is split (docs/multi-gpu.md): the dataset forms global batches (batch_size x processes) exactly as one
process with that batch size would and serves each process its shard (data.batch.Shard); timesteps and noise are
drawn for the whole global batch from a generator seeded alike on every process, each process keeps its rows; its
loss is scaled so that DDP's gradient mean is the gradient of the global batch's mean loss. Only the main process
writes files.
"""

from __future__ import annotations

import logging

import torch

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.schema import RunConfig

log = logging.getLogger(__name__)


def refuse_unsupported(cfg: RunConfig, accelerator) -> None:
    """Combinations that several processes cannot train correctly yet, refused before any weight is read."""
    from accelerate.utils import DistributedType

    processes = accelerator.num_processes
    if (processes > 1 and cfg.network.network_module.startswith("lycoris")
            and accelerator.distributed_type != DistributedType.DEEPSPEED):
        raise ConfigError(f"--network_module {cfg.network.network_module} with {processes} processes: LyCORIS "
                          "networks train in one process, or with --deepspeed, for now (DDP wraps the U-Net, and "
                          "LyCORIS weights live outside it)")


def ignore_unused_parameters(te1) -> None:
    """SDXL reads text encoder 1's penultimate hidden state, so LoRA on its last layer never gets a gradient; DDP
    would wait for it forever (or fail on the next step). DDP is told to leave those parameters alone: they keep
    their initial values, the same on every process (the seed is), as in one process where they never change."""
    import re

    from torch.nn.parallel import DistributedDataParallel

    layer = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.")
    found = [(name, p.requires_grad, layer.search(name)) for name, p in te1.named_parameters()]
    last = max((int(m.group(1)) for _, _, m in found if m), default=None)
    unused = [name for name, trains, m in found if trains and m and int(m.group(1)) == last]
    if unused:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(te1, unused)
        log.debug("DDP ignores %d LoRA parameters of text encoder 1's last layer (SDXL never uses it)", len(unused))


def sum_over_processes(accelerator):
    """tensor -> its sum over the processes (a collective: every process must call it at the same point);
    None with one process."""
    if accelerator.num_processes == 1:
        return None
    return lambda tensor: accelerator.reduce(tensor, reduction="sum")


def gather_rngs(accelerator, capture) -> list[dict]:
    """Every process's RNG states (capture() on each), in process order, for random_states_<i>.pkl; a collective
    with several processes."""
    own = capture()
    if accelerator.num_processes == 1:
        return [own]
    from accelerate.utils import gather_object

    return gather_object([own])


def validation_shard(dataset, accelerator):
    """This process's items of the validation dataset (its shard of every global batch, in order)."""
    if accelerator.num_processes == 1:
        return dataset
    return torch.utils.data.Subset(dataset, range(accelerator.process_index, len(dataset),
                                                  accelerator.num_processes))


def mean_over_processes(accelerator, value: float) -> float:
    """The mean of a float over the processes (validation loss: the mean of the scaled shard losses is the global
    batch's loss)."""
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(tensor, reduction="mean").item()


def report_agreement(accelerator, parameters) -> None:
    """Several processes: say whether every process holds the same LoRA weights (it must, after DDP's averaged
    steps; a checksum of each process's weights, gathered once at the end)."""
    if accelerator.num_processes == 1:
        return
    weights = [p.detach().double() for p in parameters]
    checksum = sum((w.abs().sum() + (w * w).sum() for w in weights), torch.zeros((), dtype=torch.float64))
    sums = accelerator.gather(checksum.to(accelerator.device).reshape(1)).tolist()
    if not accelerator.is_main_process:
        return
    if len(set(sums)) == 1:
        log.info("the %d processes hold the same LoRA weights (checksum %.12g)", len(sums), sums[0])
    else:
        log.warning("the processes' LoRA weights differ (checksums %s): their gradients were not averaged",
                    ", ".join(f"{s:.12g}" for s in sums))


def quiet_other_processes(accelerator) -> None:
    """Only the main process logs information (the others would repeat each line); warnings come from all."""
    if not accelerator.is_main_process:
        package = logging.getLogger("sdxl_lora")
        package.setLevel(max(package.getEffectiveLevel(), logging.WARNING))
