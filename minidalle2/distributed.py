"""Training on several processes: ``torchrun`` + DistributedDataParallel, in plain ``torch.distributed``.

    torchrun --nproc-per-node N -m minidalle2 train STAGE ...      (or: minidalle2 train STAGE ... --nproc N)

starts N copies of the same training. Each copy (a *rank*) builds the same model from the same seed, draws its own
share B / N of every step's batch of B with its own seed, and computes the loss of its share. DDP then averages the
gradients over the ranks, so every rank takes the same optimizer step:

    g = (1/N) sum_r grad L_r        L_r: the mean loss of rank r's B/N examples

and because the global loss is the mean over B = the mean of the N equal shares' means, g is exactly the gradient
one process would compute on the whole batch. The parameters stay identical on every rank, step after step. (The
one loss that is not a mean over examples is CLIP's: each image is scored against every caption of the batch, so
clip.py gathers the features of every rank first; its docstring says how the gradient stays exact.)

Rank 0 alone keeps the EMA, draws sample grids, evaluates and writes checkpoints (through checkpoint.atomic_dir,
so a rank that dies mid-write leaves the last good checkpoint as it was); the others wait for it at a barrier.
The backend is gloo on a CPU (any laptop, tested here) and NCCL for CUDA tensors. Nothing here changes a run
started without torchrun: world size 1, rank 0, and ``wrap`` returns the step's loss as it is.

On a CPU, N processes share the cores: each gets cores // N threads. One caveat, as in open_clip: BatchNorm (CLIP's
ResNet tower) normalises over each rank's own B / N images on a CPU; on CUDA it is converted to SyncBatchNorm.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import warnings

import torch
import torch.distributed as dist
import torch.nn as nn

from minidalle2.errors import UserError

SEED_STRIDE = 7919  # rank r draws its batches with seed + r * SEED_STRIDE (rank 0: the run's own seed)


def launched() -> bool:
    """True in a process started by torchrun (it sets RANK, WORLD_SIZE, MASTER_ADDR ... for each rank)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the process that logs, evaluates and writes."""
    return rank() == 0


def default_threads(nproc: int) -> int:
    """Threads per process so that ``nproc`` processes do not oversubscribe the cores."""
    return max(1, (os.cpu_count() or 1) // nproc)


def init(threads: int | None = None) -> bool:
    """Join the process group torchrun describes (once; nothing to do without torchrun). Returns whether this
    process is one of several."""
    if dist.is_initialized() or not launched() or int(os.environ["WORLD_SIZE"]) == 1:
        return dist.is_initialized()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)  # "cuda" means this rank's GPU from now on
        backend = "cpu:gloo,cuda:nccl"  # CLIP trains on the CPU, the decoder on the GPU
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    # open_clip gathers CLIP's features with torch.distributed.nn.all_gather, which torch now calls deprecated
    warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_gather is deprecated")
    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        threads = default_threads(int(os.environ.get("LOCAL_WORLD_SIZE", world_size())))
    if threads is not None:
        torch.set_num_threads(threads)
    return True


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over the ranks (for the loss the log shows: the whole batch's)."""
    if not dist.is_initialized():
        return x.detach()
    x = x.detach().clone()
    dist.all_reduce(x)  # sum (gloo has no AVG)
    return x / world_size()


def local_preset(preset):
    """The preset one rank sets its data up with: its share B / N of each batch, drawn with its own seed."""
    n = world_size()
    if n == 1:
        return preset
    cfg = preset.train
    if cfg.batch_size % n:
        raise UserError(f"a batch of {cfg.batch_size} does not split over {n} processes; choose a number of "
                        f"processes that divides it")
    train = dataclasses.replace(cfg, batch_size=cfg.batch_size // n, seed=cfg.seed + rank() * SEED_STRIDE)
    return dataclasses.replace(preset, train=train)


class StepLoss(nn.Module):
    """One step's loss as a module's forward: DDP averages the gradients of what runs through its forward, and a
    stage's ``step_loss(step)`` uses ``model`` (this module's only child) inside."""

    def __init__(self, model: nn.Module, step_loss):
        super().__init__()
        self.model, self.step_loss = model, step_loss

    def forward(self, step: int) -> torch.Tensor:
        return self.step_loss(step)


def wrap(model: nn.Module, step_loss):
    """``step_loss`` whose backward averages the gradients over the ranks (DDP); alone, ``step_loss`` itself.
    DDP also copies rank 0's weights to every rank here, so all ranks start from the same ones."""
    if world_size() == 1:
        return step_loss
    device = next(model.parameters()).device
    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # BatchNorm over the whole batch (NCCL only)
        return nn.parallel.DistributedDataParallel(StepLoss(model, step_loss), device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(StepLoss(model, step_loss))
