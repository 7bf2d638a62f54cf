"""Several processes through ``torchrun``: process group, ranks, and metric reduction.

Under ``torchrun --nproc_per_node N script.py ...`` every process runs the whole script on its share of
each batch (``--batch_size`` is the total over all processes), the trainable networks are wrapped in
DistributedDataParallel, per-epoch statistics are gathered from all ranks, and only rank 0 prints, logs
and writes checkpoints. Run without torchrun, every function here is a no-op for a single process.
"""
import os
import sys

import torch
import torch.distributed as dist


def init_distributed(device_name: str) -> torch.device | None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on the
    CPU. Returns this rank's device, or None when not distributed. Ranks other than 0 print nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")
    return device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over all ranks (itself in a single process)."""
    if is_distributed():
        value = value.clone()
        dist.all_reduce(value)
    return value


def all_cat(value: torch.Tensor) -> torch.Tensor:
    """The concatenation over ranks, in rank order, of 1-D tensors whose lengths may differ."""
    if not is_distributed():
        return value
    sizes = [torch.zeros((), dtype=torch.long, device=value.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor(value.numel(), device=value.device))
    longest = int(max(sizes))
    padded = torch.zeros(longest, dtype=value.dtype, device=value.device)
    padded[:value.numel()] = value
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(n)] for part, n in zip(parts, sizes)])


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
