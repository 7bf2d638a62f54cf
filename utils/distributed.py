"""Several processes through ``torchrun``: process group, ranks, and metric reduction.

Under ``torchrun --nproc_per_node N script.py ...`` every process runs the whole script on its share of
each batch (``--batch_size`` is the total over all processes), the trainable networks are wrapped in
DistributedDataParallel, per-epoch statistics are gathered from all ranks, and only rank 0 prints, logs
and writes checkpoints. Run without torchrun, every function here is a no-op for a single process.

Every tensor handed to a collective lives on the run's device (NCCL takes CUDA tensors only); the
callers (utils/metrics.py) build them there, also on a rank that saw no batch.
"""
import os
import sys
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import PatchDropError

# A collective that waits longer than this fails instead of hanging, e.g. when another rank died
# without torchrun noticing (torchrun itself stops all ranks when one exits with an error). Long
# enough for the slowest start-up step before the first collective (scanning an ImageNet folder).
TIMEOUT = timedelta(minutes=30)


def requested_world_size() -> int:
    """The number of processes of this run, known before the process group exists (checks of the
    command line run first): torchrun's WORLD_SIZE, or the size of a group made by the caller."""
    if is_distributed():
        return world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_device(device_name: str) -> torch.device:
    """The device of this torchrun process: the CPU for ``--device cpu`` (or ``auto`` without CUDA);
    otherwise the GPU of its local rank, or the one GPU it sees when CUDA_VISIBLE_DEVICES gives each
    process its own. Anything else is refused in one line."""
    if device_name == "cpu" or (device_name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise PatchDropError(f"--device {device_name}: CUDA is not available here; use --device cpu (gloo)")
    if device_name not in ("auto", "cuda"):
        raise PatchDropError(f"--device {device_name} under torchrun: each process takes the GPU of its local "
                             f"rank; pass --device cuda and choose the GPUs with CUDA_VISIBLE_DEVICES")
    count, local = torch.cuda.device_count(), local_rank()
    if local < count:
        return torch.device("cuda", local)
    if count == 1:
        return torch.device("cuda", 0)  # one GPU per process, through CUDA_VISIBLE_DEVICES
    raise PatchDropError(f"torchrun started {local_world_size()} processes on this machine but {count} GPUs "
                         f"are visible; use --nproc_per_node {count} or fewer")


def init_distributed(device_name: str) -> torch.device | None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on the
    CPU, with a finite timeout. Returns this rank's device (``rank_device``, made the current device),
    or None when not distributed. Ranks other than 0 print nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    device = rank_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
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
    """The concatenation over ranks, in rank order, of 1-D tensors whose lengths may differ (also 0)."""
    if not is_distributed():
        return value
    sizes = [torch.zeros((), dtype=torch.long, device=value.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor(value.numel(), device=value.device))
    longest = max(int(max(sizes)), 1)
    padded = torch.zeros(longest, dtype=value.dtype, device=value.device)
    padded[:value.numel()] = value
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(n)] for part, n in zip(parts, sizes)])


@contextmanager
def local_main_first(enabled: bool = True):
    """Run the body on local rank 0 first, then on the other processes of the machine (e.g. a download
    into a shared folder, done once); every process must enter it. A no-op in a single process."""
    if not (enabled and is_distributed()):
        yield
        return
    if local_rank() != 0:
        dist.barrier()
    yield
    if local_rank() == 0:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (every exit of a stage script, errors included)."""
    if is_distributed():
        dist.destroy_process_group()
