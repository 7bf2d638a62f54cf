"""Device and dtype in one place: which device a process runs on, how its backends are set up, its
seeds, and the speed options of a run (off by default, so results stay those of the paper's setting):

--amp            bfloat16 autocast around the networks' forward passes (CUDA, or a CPU with bf16
                 support); sampling, log-probabilities, rewards and losses stay float32, because the
                 scripts cast logits with ``.float()`` before using them.
--channels_last  networks and input batches in NHWC memory format.
--compile        torch.compile on each network (checkpoints are always saved from the plain module).
--parallel       nn.DataParallel over the visible GPUs (the authors' option; prefer torchrun).
Under torchrun the trainable networks are wrapped in DistributedDataParallel instead, their batch-norm
layers synchronized over the processes with --sync_bn.
"""
import contextlib
import platform
import random
import warnings

import numpy as np
import torch
from torch import nn

from . import distributed
from .errors import PatchDropError


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; an unavailable CUDA device is an error. A GPU
    is returned with its index and made the current device, so nothing (pinned-memory threads, kernels
    launched without a device) opens a context on GPU 0 when --device cuda:N names another."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PatchDropError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PatchDropError(f"--device {name}: CUDA is not available here; use --device cpu")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise PatchDropError(f"--device {name}: there are {torch.cuda.device_count()} GPUs "
                                 f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    return device


def configure_backends(device: torch.device, *, tf32: bool = True) -> None:
    """cuDNN picks the fastest convolution algorithm for the (fixed) input shapes of a run. With ``tf32``
    False (--no_tf32) convolutions and matrix products on the GPU run in full float32 instead of the
    TF32 that cuDNN uses by default for float32 convolutions on Ampere and newer GPUs."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's default; TF32 matmuls are not used


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_name(device: torch.device) -> str:
    """The device in words, for reports: the GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_supported(device: torch.device) -> bool:
    """Native bfloat16 on ``device``: a GPU of compute capability 8.0 or newer (Ampere on), where
    torch.cuda.is_bf16_supported() would also say yes for older GPUs that only emulate it, slower than
    float32; a CPU whose oneDNN has bf16 instructions."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class DynamicBatch(nn.Module):
    """A compiled network asked to treat its batch dimension as dynamic from its first compilation, so
    that the last, smaller batch of an epoch does not compile it a second time. The compiler may still
    fix the dimension where its code generator needs a constant (inductor's CPU code does for the CIFAR
    ResNets); such a network compiles once more for the last batch, as it would without this."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._dynamo.maybe_mark_dynamic(x, 0)
        return self.net(x)


class Accel:
    """The speed options of one run on ``device``. ``notes`` holds what the user should hear about
    them (an option that cannot work here and was turned off), for the caller to show."""

    def __init__(self, device: torch.device, *, amp: bool = False, channels_last: bool = False,
                 compile: bool = False, parallel: bool = False, sync_bn: bool = False):
        self.device = device
        self.notes: list[str] = []
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        if parallel and amp and gpus > 1:
            # DataParallel's replica threads enter autocast without its dtype, and a new thread's
            # default is float16: the run would train in float16 without a gradient scaler.
            raise PatchDropError("--amp with --parallel over several GPUs is not supported (DataParallel's "
                                 "threads would run float16, not bfloat16); use torchrun for several GPUs")
        if sync_bn and distributed.is_distributed() and device.type != "cuda":
            raise PatchDropError("--sync_bn needs GPUs (SyncBatchNorm runs on CUDA only); drop it on the CPU")
        if sync_bn and not distributed.is_distributed():
            self.notes.append("--sync_bn has no effect in a single process (it synchronizes batch norm "
                              "over torchrun's processes)")
        self.sync_bn = sync_bn and distributed.is_distributed()
        self.amp = amp
        if amp and not bf16_supported(device):
            self.amp = False
            what = (f"{torch.cuda.get_device_name(device)} (compute capability "
                    f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}) has no native bfloat16 "
                    f"and would emulate it, slower than float32" if device.type == "cuda"
                    else f"{device} has no bfloat16 support")
            self.notes.append(f"--amp ignored: {what}; running float32")
        self.channels_last, self.compile, self.parallel = channels_last, compile, parallel
        # Frozen classifiers score the greedy and the sampled masks. One pass over the 2B images is
        # faster on a GPU; two passes over B were faster on the CPU (bench/step_speed.py --frozen_pass).
        self.batch_frozen_passes = device.type == "cuda"

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout of input batches and networks: NHWC with --channels_last."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        """Context for the networks' forward passes: bf16 autocast with --amp, else nothing."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def inputs(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the device (asynchronously from pinned memory), NHWC with --channels_last."""
        inputs = inputs.to(self.device, non_blocking=True)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, targets.to(self.device, non_blocking=True)

    def prepare(self, net: nn.Module, *, trainable: bool) -> nn.Module:
        """``net`` on the device with the options applied; DDP-wrapped under torchrun if it trains.
        Load weights into ``net`` and build optimizers from it before or after: the parameters are
        the same tensors."""
        net = net.to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if self.sync_bn and trainable:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # same state-dict keys as BatchNorm2d
        if self.compile:
            net = DynamicBatch(torch.compile(net))
        if distributed.is_distributed():
            if trainable:
                ids = [self.device.index] if self.device.type == "cuda" else None
                net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        elif self.parallel:
            with warnings.catch_warnings():  # DataParallel warns that DDP is recommended: torchrun is
                warnings.simplefilter("ignore")
                net = nn.DataParallel(net, device_ids=self.parallel_devices())
        return net

    def parallel_devices(self) -> list[int] | None:
        """--parallel's GPUs, the run's own first (DataParallel gathers on the first): cuda:N, then the
        others; None on the CPU."""
        if self.device.type != "cuda":
            return None
        first = self.device.index
        return [first] + [i for i in range(torch.cuda.device_count()) if i != first]

    def score_pair(self, net: nn.Module, first: torch.Tensor, second: torch.Tensor):
        """Logits (float32) of a frozen ``net`` on two batches, as one 2B pass or two B passes."""
        with torch.no_grad(), self.autocast():
            if self.batch_frozen_passes:
                return net(torch.cat([first, second])).float().chunk(2)
            return net(first).float(), net(second).float()
