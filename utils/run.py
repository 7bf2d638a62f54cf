"""One stage's run in its ``--cv_dir``: the directory, the per-epoch log and checkpoints, the state of
every random number generator, and resuming where an earlier process stopped.

    run = Run(cv_dir, stage, model, config=..., max_epochs=..., ...)   # checks and creates cv_dir
    notes = run.track_rng(data_generator, shared_by_ranks=...)         # on --resume: restores them
    for epoch in run.epochs():
        ...
        run.end_epoch(metrics, nets, optimizer, scheduler)              # log, ckpt_last.pt, ckpt_best.pt
    run.close()
"""
import json
import random
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .accel import seed_everything
from .checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from .errors import PatchDropError
from .files import write_atomically
from .metrics import MetricsLogger, check_finite
from .spec import STAGES


def plain_values(values: dict) -> dict:
    """``values`` with paths as strings: plain types only (str, numbers, bools, None, lists), for JSON
    and for checkpoints that ``torch.load(weights_only=True)`` can read."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def capture_rng(data_generator: torch.Generator | None, device: torch.device) -> dict:
    """The state of every generator a run draws from: Python, NumPy, torch's CPU generator and that of
    the run's CUDA device (only that one, so a checkpoint of an 8-GPU machine resumes on 1), and the
    training data's own generator (data order and worker seeds). Plain types and tensors only, so a
    checkpoint holding it loads with ``weights_only=True``."""
    bit_generator, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"bit_generator": bit_generator, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "data": data_generator.get_state() if data_generator is not None else None,
    }


def restore_rng(state: dict, data_generator: torch.Generator | None, device: torch.device) -> None:
    """Put every generator back where ``capture_rng`` found it; the saved CUDA state goes to the run's
    device when it is a GPU (a CPU run ignores it, a GPU run resuming a CPU checkpoint keeps its seed)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state((numpy["bit_generator"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if isinstance(cuda, (list, tuple)):  # written by earlier code: the states of all visible GPUs
        cuda = cuda[0] if cuda else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
    if state["data"] is not None and data_generator is not None:
        data_generator.set_state(state["data"])


def load_resume(resume: str | None, cv_dir: str | Path) -> dict | None:
    """The checkpoint to resume from: ``resume`` is a file or a run directory (its ckpt_last.pt), ""
    means ``cv_dir``'s, None means no resume (returns None). The stage is checked by the caller."""
    if resume is None:
        return None
    ckpt = load_checkpoint(resume or cv_dir, stages=STAGES, model=None, default_name=LAST)
    if ckpt.get("optimizer") is None:
        raise PatchDropError(f"{ckpt['path']}: has no optimizer state to resume from")
    return ckpt


def prepare_run_dir(cv_dir: str | Path, config: dict, *, resuming: bool, overwrite: bool,
                    write: bool = True) -> Path:
    """Create ``cv_dir`` and write ``config`` to its ``args.json``. A directory that already holds a
    run is only reused when ``resuming`` (continue it) or with ``overwrite`` (start over), so finished
    epochs are never lost. With ``write`` False (ranks other than 0 under torchrun) only the check is
    made."""
    cv_dir = Path(cv_dir)
    if (cv_dir / LAST).exists() and not (resuming or overwrite):
        raise PatchDropError(f"{cv_dir} already holds a run ({LAST}); pass --resume to continue it, "
                             f"--overwrite to start over, or choose another --cv_dir")
    if not write:
        return cv_dir
    if overwrite and not resuming:
        # Starting over: no checkpoint or TensorBoard curve of the old run may mix with the new one.
        for old in [cv_dir / LAST, cv_dir / BEST, *cv_dir.glob("log/events.out.tfevents.*")]:
            old.unlink(missing_ok=True)
    cv_dir.mkdir(parents=True, exist_ok=True)
    for stale in cv_dir.glob(".*.tmp*"):  # a temporary file of a killed write: never read, drop it
        stale.unlink(missing_ok=True)
    write_atomically(cv_dir / "args.json", (json.dumps(plain_values(config), indent=2) + "\n").encode())
    return cv_dir


class Run:
    """One stage's run in ``cv_dir``: checks and creates the directory, restores the epoch counter
    and best score from ``resume`` (the checkpoint of --resume, or None), and at the end of each epoch
    logs the metrics and writes ``ckpt_last.pt`` and, on a new best ``score_key``, ``ckpt_best.pt``.
    ``config`` is the run's resolved settings (args.json and every checkpoint's "args"). Under torchrun
    every rank checks and only rank 0 writes."""

    def __init__(self, cv_dir: str | Path, stage: str, model: str, *, config: dict, max_epochs: int,
                 test_interval: int, seed: int, score_key: str, device: torch.device,
                 resume: dict | None = None, overwrite: bool = False):
        self.stage, self.model, self.config = stage, model, plain_values(config)
        self.max_epochs, self.test_interval, self.seed = max_epochs, test_interval, seed
        self.score_key, self.device, self.resume = score_key, device, resume
        self.writes = distributed.is_main()
        self.cv_dir = prepare_run_dir(cv_dir, self.config, resuming=resume is not None,
                                      overwrite=overwrite, write=self.writes)
        self.start_epoch = resume["epoch"] + 1 if resume else 0
        self.best_score = resume["best_score"] if resume else None
        self.last_metrics = resume["metrics"] if resume else {}
        self.logger = (MetricsLogger(self.cv_dir, resume_epoch=resume["epoch"] if resume else None)
                       if self.writes else None)
        self.data_generator = None

    def track_rng(self, data_generator: torch.Generator, *, shared_by_ranks: bool) -> list[str]:
        """Store ``data_generator`` (the training data's order, augmentations or worker seeds) in each
        checkpoint with the other generators; on --resume, put them all back where the checkpoint's
        epoch left them, so the run continues as if it had never stopped. ``shared_by_ranks`` says
        that the generator is the same on every rank (--gpu_data) rather than each rank's own (a
        DataLoader's). Returns notes for the user.

        Under torchrun only rank 0's generators are saved, and restoring them on every rank would make
        all ranks sample the same actions. So each rank reseeds its own generators from (seed, rank,
        epoch) instead; only a generator shared by all ranks is restored from the checkpoint."""
        self.data_generator = data_generator
        if not self.resume:
            return []
        saved = self.resume.get("rng")
        if saved is None:
            return [f"{self.resume['path']} holds no random-generator state; the resumed run continues "
                    f"correctly but not bit-for-bit like an uninterrupted one"]
        if distributed.world_size() == 1:
            restore_rng(saved, data_generator, self.device)
            return []
        world, rank = distributed.world_size(), distributed.rank()
        seed = self.seed + rank + world * self.start_epoch  # distinct per rank and resumed epoch
        seed_everything(seed)
        if not shared_by_ranks:
            data_generator.manual_seed(seed)
        elif saved["data"] is not None:
            data_generator.set_state(saved["data"])
        return [f"resumed under torchrun: each rank's random generators are reseeded from --seed, its "
                f"rank and the epoch ({self.start_epoch}); the run continues correctly, not bit-for-bit "
                f"like an uninterrupted one"]

    def epochs(self):
        """The epochs still to run."""
        return range(self.start_epoch, self.max_epochs)

    def is_test_epoch(self, epoch: int) -> bool:
        """Test every ``test_interval`` epochs from epoch 0 on, and always after the last epoch."""
        return epoch % self.test_interval == 0 or epoch == self.max_epochs - 1

    def end_epoch(self, metrics: dict, nets: dict, optimizer, scheduler=None) -> None:
        """Log ``metrics`` (with "epoch") and checkpoint ``nets``; a non-finite metric stops the run
        before anything is written, so the last checkpoint stays the last good one."""
        epoch = metrics["epoch"]
        kept = (f"stopped; {self.cv_dir / LAST} holds the last good epoch ({epoch - 1})" if epoch > 0
                else "stopped before the first checkpoint")
        for split in ("train", "test"):
            step = metrics.pop(f"{split}_nonfinite_step", None)
            if step is not None:
                raise PatchDropError(f"epoch {epoch}, {split} step {step}: the loss is NaN or infinite; "
                                     f"{kept} (lower --lr?)")
        bad = check_finite(metrics)
        if bad:
            raise PatchDropError(f"epoch {epoch}: non-finite {', '.join(bad)}; {kept} (lower --lr?)")
        score = metrics.get(self.score_key)
        is_best = score is not None and (self.best_score is None or score > self.best_score)
        if is_best:
            self.best_score = score
        self.last_metrics = metrics
        if not self.writes:
            return
        self.logger.log(metrics)
        ckpt = dict(stage=self.stage, model=self.model, epoch=epoch, nets=nets, optimizer=optimizer,
                    scheduler=scheduler, best_score=self.best_score, metrics=metrics, args=self.config,
                    rng=capture_rng(self.data_generator, self.device))
        # Serialized once, written to ckpt_last.pt and, on a new best, to ckpt_best.pt.
        save_checkpoint([self.cv_dir / LAST] + ([self.cv_dir / BEST] if is_best else []), **ckpt)

    def close(self) -> None:
        if self.logger:
            self.logger.close()
