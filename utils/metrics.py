"""Per-epoch statistics and where they go: console line, metrics.jsonl and TensorBoard.

One flat dict of metrics per epoch (``{"epoch": 3, "train_accuracy": ..., "test_reward": ...}``) feeds
all three, so no tag is typed twice. Tag names are the authors' (method.md, "What every policy stage
reports").
"""
import json
import math
from pathlib import Path

import torch

from . import distributed
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


class ClassifierStats:
    """Accumulates accuracy and cross-entropy of a classifier over an epoch, on ``device``."""

    def __init__(self, device: torch.device):
        # [correct, loss sum] in float64 on the device: no host synchronization until compute().
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)
        self.count = 0
        self.watch = LossWatch(device)

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        batch = targets.shape[0]
        self.sums += torch.stack([(logits.argmax(1) == targets).sum().double(), loss.detach().double() * batch])
        self.count += batch
        self.watch.update(loss)

    def compute(self) -> dict[str, float]:
        """Accuracy and mean loss over the epoch (over all ranks under torchrun)."""
        totals = torch.cat([self.sums, self.sums.new_tensor([self.count])])
        correct, loss_sum, count = distributed.all_sum(totals).tolist()
        n = max(count, 1.0)
        return {"accuracy": correct / n, "loss": loss_sum / n, **self.watch.compute()}


class PolicyStats:
    """Accumulates what a policy stage reports over an epoch: accuracy, reward, S (mean patches kept),
    V (their standard deviation), the number of distinct policies and, in training, the greedy
    baseline's reward (``with_baseline``: decided by the caller, the same on every rank, since every
    rank must join the same collectives). Kept on ``device``; one host synchronization in compute()."""

    def __init__(self, device: torch.device, *, with_baseline: bool = False):
        self.device, self.with_baseline = device, with_baseline
        self.correct, self.reward, self.kept, self.codes, self.baseline = [], [], [], [], []
        self.watch = LossWatch(device)

    def update(self, correct: torch.Tensor, reward: torch.Tensor, action: torch.Tensor,
               baseline_reward: torch.Tensor | None = None, loss: torch.Tensor | None = None) -> None:
        """correct [B] of the reported accuracy, reward [B] and action [B, P] of the reported policy;
        in training also the greedy baseline's reward and the step's loss (watched for NaN/inf)."""
        if loss is not None:
            self.watch.update(loss)
        self.correct.append(correct.detach().float())
        self.reward.append(reward.detach().float())
        self.kept.append(action.detach().float().sum(dim=1))
        self.codes.append(action_codes(action.detach()))
        if baseline_reward is not None:
            self.baseline.append(baseline_reward.detach().float())

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
        lines.append(" | ".join(parts))
    return lines


def check_finite(metrics: dict) -> list[str]:
    """Names of the metrics that are NaN or infinite."""
    return [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]


class MetricsLogger:
    """Adds each epoch's metrics to ``<cv_dir>/metrics.jsonl`` and to TensorBoard under ``<cv_dir>/log``.

    metrics.jsonl is rewritten whole through a temporary file and a rename at every epoch (it is small),
    so a crash or a full disk never leaves a half-written line in it."""

    def __init__(self, cv_dir: Path, resume_epoch: int | None = None):
        self.path = Path(cv_dir) / "metrics.jsonl"
        self.lines: list[str] = []
        if resume_epoch is not None:
            self._truncate_after(resume_epoch)
        elif self.path.exists():
            self.path.unlink()
        # Imported here: tensorboard is heavy, and only runs that log need it.
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(cv_dir) / "log"))

    def _truncate_after(self, epoch: int) -> None:
        """Keep the lines of epochs up to ``epoch``: a crash after logging but before the checkpoint
        would otherwise leave a line for an epoch that is about to run again."""
        if not self.path.exists():
            return
        self.lines = [line for line in self.path.read_text().splitlines()
                      if line.strip() and json.loads(line)["epoch"] <= epoch]
        write_atomically(self.path, "".join(line + "\n" for line in self.lines).encode())

    def log(self, metrics: dict) -> None:
        self.lines.append(json.dumps(metrics))
        write_atomically(self.path, "".join(line + "\n" for line in self.lines).encode())
        for key, value in metrics.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, metrics["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
