"""Speed options of every stage, off by default so results stay those of the paper's setting:

--amp            bfloat16 autocast around the networks' forward passes (CUDA, or a CPU with bf16
                 support); sampling, log-probabilities, rewards and losses stay float32, because the
                 scripts cast logits with ``.float()`` before using them.
--channels_last  networks and input batches in NHWC memory format.
--compile        torch.compile on each network (checkpoints are always saved from the plain module).
--parallel       nn.DataParallel over the visible GPUs (the authors' option; prefer torchrun).
Under torchrun the trainable networks are wrapped in DistributedDataParallel instead.
"""
import contextlib
import warnings

import torch
from torch import nn

from . import distributed


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


class Accel:
    """The speed options of one run on ``device``; ``notes`` says what was changed or refused."""

    def __init__(self, args, device: torch.device):
        self.device = device
        self.notes: list[str] = []
        self.amp = bool(getattr(args, "amp", False))
        if self.amp and not bf16_supported(device):
            self.amp = False
            what = (f"{torch.cuda.get_device_name(device)} (compute capability "
                    f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}) has no native bfloat16 "
                    f"and would emulate it, slower than float32" if device.type == "cuda"
                    else f"{device} has no bfloat16 support")
            self.notes.append(f"note: --amp ignored: {what}; running float32")
        self.channels_last = bool(getattr(args, "channels_last", False))
        self.compile = bool(getattr(args, "compile", False))
        self.parallel = bool(getattr(args, "parallel", False))
        # Frozen classifiers score the greedy and the sampled masks. One pass over the 2B images is
        # faster on a GPU; two passes over B were faster on the CPU (bench/step_speed.py --frozen_pass).
        self.batch_frozen_passes = device.type == "cuda"

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
        if self.compile:
            net = torch.compile(net)
        if distributed.is_distributed():
            if trainable:
                ids = [self.device.index] if self.device.type == "cuda" else None
                net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        elif self.parallel:
            with warnings.catch_warnings():  # DataParallel warns that DDP is recommended: torchrun is
                warnings.simplefilter("ignore")
                net = nn.DataParallel(net)
        return net

    def score_pair(self, net: nn.Module, first: torch.Tensor, second: torch.Tensor):
        """Logits (float32) of a frozen ``net`` on two batches, as one 2B pass or two B passes."""
        with torch.no_grad(), self.autocast():
            if self.batch_frozen_passes:
                return net(torch.cat([first, second])).float().chunk(2)
            return net(first).float(), net(second).float()
