"""Per-epoch statistics and where they go: console line, metrics.jsonl and TensorBoard.

One flat dict of metrics per epoch (``{"epoch": 3, "train_accuracy": ..., "test_reward": ...}``) feeds
all three, so no tag is typed twice. Tag names are the authors' (method.md, "What every policy stage
reports").
"""
import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from . import distributed
from .errors import PatchDropError
from .files import write_atomically
from .policy import action_codes


class LossWatch:
    """Remembers, on the device, the first training step whose loss was NaN or infinite, so a faulty
    step is found without a host synchronization per step; read once per epoch."""

    def __init__(self, device: torch.device):
        self.step = 0
        self.first_bad = torch.full((1,), -1, dtype=torch.long, device=device)

    def update(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad & (self.first_bad < 0), self.step, self.first_bad)
        self.step += 1

    def compute(self) -> dict[str, int]:
        """{"nonfinite_step": k} when step k (0-based, within the epoch) was the first bad one, on
        any rank under torchrun (also when no loss was watched: test loops, a rank without batches)."""
        steps = [int(step) for step in distributed.all_cat(self.first_bad) if step >= 0]
        return {"nonfinite_step": min(steps)} if steps else {}


class Counted:
    """Which images of an epoch count in its statistics: all of them, or (``limit``) only the first
    ``limit`` this rank sees. DistributedSampler, and --gpu_data under torchrun, pad the last shares of
    an epoch with repeats of its first images so every rank gets as many; the repeats come last in a
    rank's share and are trained on, but not counted twice."""

    def __init__(self, limit: int | None = None):
        self.limit, self.seen = limit, 0

    def take(self, batch: int) -> int:
        """How many of the next ``batch`` images count (from the front of the batch)."""
        counted = batch if self.limit is None else max(0, min(batch, self.limit - self.seen))
        self.seen += batch
        return counted


class ClassifierStats:
    """Accumulates accuracy and cross-entropy of a classifier over an epoch, on ``device``; ``limit``:
    see Counted."""

    def __init__(self, device: torch.device, limit: int | None = None):
        # [correct, loss sum] in float64 on the device: no host synchronization until compute().
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)
        self.count = 0
        self.counted = Counted(limit)
        self.watch = LossWatch(device)

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """``loss`` is the batch mean; the counted images of a batch are charged that mean."""
        self.watch.update(loss)
        n = self.counted.take(targets.shape[0])
        if n == 0:
            return
        correct = (logits[:n].argmax(1) == targets[:n]).sum().double()
        self.sums += torch.stack([correct, loss.detach().double() * n])
        self.count += n

    def compute(self) -> dict[str, float]:
        """Accuracy and mean loss over the epoch, and the number of images (over all ranks under
        torchrun)."""
        totals = torch.cat([self.sums, self.sums.new_tensor([self.count])])
        correct, loss_sum, count = distributed.all_sum(totals).tolist()
        n = max(count, 1.0)
        return {"accuracy": correct / n, "loss": loss_sum / n, "images": int(count), **self.watch.compute()}


class PolicyStats:
    """Accumulates what a policy stage reports over an epoch: accuracy, reward, S (mean patches kept),
    V (their standard deviation), the number of distinct policies, the number of images and, in
    training, the greedy baseline's reward (``with_baseline``: decided by the caller, the same on every
    rank, since every rank must join the same collectives); ``limit``: see Counted. Kept on ``device``;
    one host synchronization in compute()."""

    def __init__(self, device: torch.device, *, with_baseline: bool = False, limit: int | None = None):
        self.device, self.with_baseline = device, with_baseline
        self.correct, self.reward, self.kept, self.codes, self.baseline = [], [], [], [], []
        self.counted = Counted(limit)
        self.watch = LossWatch(device)

    def update(self, correct: torch.Tensor, reward: torch.Tensor, action: torch.Tensor,
               baseline_reward: torch.Tensor | None = None, loss: torch.Tensor | None = None) -> None:
        """correct [B] of the reported accuracy, reward [B] and action [B, P] of the reported policy;
        in training also the greedy baseline's reward and the step's loss (watched for NaN/inf)."""
        if loss is not None:
            self.watch.update(loss)
        n = self.counted.take(correct.shape[0])
        self.correct.append(correct[:n].detach().float())
        self.reward.append(reward[:n].detach().float())
        self.kept.append(action[:n].detach().float().sum(dim=1))
        self.codes.append(action_codes(action[:n].detach()))
        if baseline_reward is not None:
            self.baseline.append(baseline_reward[:n].detach().float())

    def _gather(self, parts: list[torch.Tensor], dtype=torch.float32) -> torch.Tensor:
        """This epoch's values of all ranks; a rank without batches contributes an empty tensor."""
        mine = torch.cat(parts) if parts else torch.empty(0, dtype=dtype, device=self.device)
        return distributed.all_cat(mine)

    def compute(self) -> dict[str, float]:
        """The epoch's statistics over all its images (of all ranks under torchrun)."""
        kept = self._gather(self.kept)
        stats = {
            "accuracy": self._gather(self.correct).mean(),
            "reward": self._gather(self.reward).mean(),
            "sparsity": kept.mean(),
            # Sample standard deviation, as torch.std in the authors' statistics; 0 for one image.
            "variance": kept.std() if kept.numel() > 1 else kept.new_zeros(()),
            "unique_policies": torch.unique(self._gather(self.codes, torch.long)).numel(),
            "images": kept.numel(),
        }
        if self.with_baseline:
            stats["baseline_reward"] = self._gather(self.baseline).mean()
        stats = {k: float(v) if torch.is_tensor(v) else v for k, v in stats.items()}
        return {**stats, **self.watch.compute()}


def prefixed(split: str, stats: dict[str, float]) -> dict[str, float]:
    """{"accuracy": .9} -> {"train_accuracy": .9}."""
    return {f"{split}_{key}": value for key, value in stats.items()}


def console_lines(metrics: dict) -> list[str]:
    """The authors' console shape, one line per split present:
    ``Train: 3 | Acc: 0.812 | Rw: 3.21E-01 | S: 8.125 | V: 2.013 | #: 1234``."""
    lines = []
    for split in ("train", "test"):
        m = {key.removeprefix(f"{split}_"): v for key, v in metrics.items() if key.startswith(f"{split}_")}
        if "accuracy" not in m:
            continue
        parts = [f"{split.capitalize()}: {metrics['epoch']}", f"Acc: {m['accuracy']:.3f}"]
        if "reward" in m:
            parts += [f"Rw: {m['reward']:.2E}", f"S: {m['sparsity']:.3f}", f"V: {m['variance']:.3f}",
                      f"#: {m['unique_policies']}"]
        if "loss" in m:
            parts.append(f"Loss: {m['loss']:.4f}")
        if split == "train" and "lr" in metrics:
            parts.append(f"lr: {metrics['lr']:.1E}")
        if "seconds" in m:
            parts.append(f"{m['seconds']:.0f} s, {m['images_per_second']:.0f} img/s")
        lines.append(" | ".join(parts))
    return lines


def timed(split: str, stats: dict, started: float) -> dict:
    """``stats`` of a pass begun at ``started`` (time.perf_counter()), prefixed with ``split``, with its
    wall time and images per second."""
    seconds = time.perf_counter() - started
    return {**prefixed(split, stats), f"{split}_seconds": seconds,
            f"{split}_images_per_second": stats["images"] / max(seconds, 1e-9)}


def check_finite(metrics: dict) -> list[str]:
    """Names of the metrics that are NaN or infinite."""
    return [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]


class MetricsLogger:
    """Adds each epoch's metrics to ``<cv_dir>/metrics.jsonl`` and to TensorBoard under ``<cv_dir>/log``.

    metrics.jsonl is rewritten whole through a temporary file and a rename at every epoch (it is small),
    so a crash or a full disk never leaves a half-written line in it. A write that fails (a full disk)
    is a PatchDropError naming the file or folder. ``notes`` holds what the user should hear."""

    def __init__(self, cv_dir: Path, resume_epoch: int | None = None):
        self.path = Path(cv_dir) / "metrics.jsonl"
        self.log_dir = Path(cv_dir) / "log"
        self.notes: list[str] = []
        self.lines: list[str] = []
        if resume_epoch is not None:
            self._truncate_after(resume_epoch)
        elif self.path.exists():
            self.path.unlink()
        # Imported here: tensorboard is heavy, and only runs that log need it.
        from torch.utils.tensorboard import SummaryWriter

        with self._events():
            self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def _events(self):
        """A failed TensorBoard write (its writer thread raises it into the next call) as one line."""
        return naming_failures(self.log_dir, "TensorBoard events")

    def _truncate_after(self, epoch: int) -> None:
        """Keep the lines of epochs up to ``epoch``: a crash after logging but before the checkpoint
        would otherwise leave a line for an epoch that is about to run again. An unreadable last line (a
        record cut short by something other than this code) is dropped with a note; an unreadable line
        before it stops the run, since the log of earlier epochs would be lost."""
        if not self.path.exists():
            return
        lines = [line for line in self.path.read_text(errors="replace").splitlines() if line.strip()]
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                line_epoch = record["epoch"]
            except (ValueError, TypeError, KeyError):
                if number == len(lines):
                    self.notes.append(f"{self.path}: dropped its last line, which is not a complete record")
                    break
                raise PatchDropError(f"{self.path}, line {number}: not a JSON record with an 'epoch'; repair "
                                     f"or delete the line, then resume again") from None
            if line_epoch <= epoch:
                self.lines.append(line)
        write_atomically(self.path, "".join(line + "\n" for line in self.lines).encode())

    def log(self, metrics: dict) -> None:
        self.lines.append(json.dumps(metrics))
        write_atomically(self.path, "".join(line + "\n" for line in self.lines).encode())
        with self._events():
            for key, value in metrics.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, metrics["epoch"])
            self.writer.flush()

    def close(self) -> None:
        with self._events():
            self.writer.close()


@contextmanager
def naming_failures(path: Path, what: str):
    """An OSError inside (a full or read-only disk) becomes a PatchDropError naming ``what`` and ``path``."""
    try:
        yield
    except OSError as err:
        raise PatchDropError(f"could not write {what} in {path} ({err.strerror or err})") from None
