"""One stage's run in its ``--cv_dir``: the directory and its lock, the per-epoch log and checkpoints,
the state of every random number generator, and resuming where an earlier process stopped.

    with Run(cv_dir, stage, model, config=..., max_epochs=..., ...) as run:  # locks and prepares cv_dir
        notes = run.notes + run.track_rng(data_generator, shared_by_ranks=...)  # --resume: restored
        for epoch in run.epochs():
            ...
            run.end_epoch(metrics, nets, optimizer)         # log, ckpt_last.pt, then ckpt_best.pt

What a run directory guarantees:
- one process at a time: ``.lock`` is held (an advisory ``flock``) from before anything is written
  until the process ends; the kernel drops the lock of a killed process, so a stale lock file is taken
  over as it is;
- ``--overwrite`` deletes nothing before the new run has checkpointed its first epoch: the old run's
  files wait in ``.replaced/`` and are put back if the new run stops earlier, however it stops;
- ``ckpt_best.pt`` holds the best score that ``ckpt_last.pt`` records, also after a kill between the
  two writes of an epoch (``--resume`` rewrites it then).
"""
import json
import os
import random
import shutil
import socket
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .accel import seed_everything
from .checkpoint import BEST, LAST, load_checkpoint, safe_load, save_checkpoint
from .errors import PatchDropError
from .files import write_atomically
from .metrics import MetricsLogger, check_finite
from .spec import STAGES

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected against a second process
    fcntl = None

LOCK = ".lock"
REPLACED = ".replaced"  # the run an --overwrite replaces, kept until the new run's first checkpoint
RUN_FILES = (LAST, BEST, "metrics.jsonl", "args.json", "log")  # what belongs to a run (and nothing else)


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
    means ``cv_dir``'s, None means no resume (returns None). The stage is checked by the caller. When
    an --overwrite in ``cv_dir`` was killed before its first checkpoint, the run of ``cv_dir`` is the one
    it was to replace (put back in place when the Run is entered, under the directory's lock)."""
    if resume is None:
        return None
    pending = Path(cv_dir) / REPLACED / LAST
    if not resume and not (Path(cv_dir) / LAST).exists() and pending.is_file():
        ckpt = load_checkpoint(pending, stages=STAGES, model=None)
        ckpt["path"] = str(Path(cv_dir) / LAST)
    else:
        ckpt = load_checkpoint(resume or cv_dir, stages=STAGES, model=None, default_name=LAST)
    if ckpt.get("optimizer") is None:
        raise PatchDropError(f"{ckpt['path']}: has no optimizer state to resume from")
    return ckpt


class DirectoryLock:
    """One process per run directory: an exclusive ``flock`` on ``<folder>/.lock``, whose text names the
    holder. The kernel releases the lock when its process ends, killed or not, so a lock file left
    behind by a dead process is simply locked again."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK
        self.handle = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise PatchDropError(f"{self.path.parent} is in use by {holder} (lock {self.path}); wait for "
                                 f"that run to end, or choose another --cv_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def set_aside(cv_dir: Path) -> Path | None:
    """Move the files of the run in ``cv_dir`` into ``cv_dir/.replaced`` (renames: nothing is copied or
    deleted); returns that folder, or None when there was no run."""
    present = [name for name in RUN_FILES if (cv_dir / name).exists()]
    if not present:
        return None
    aside = cv_dir / REPLACED
    aside.mkdir()
    for name in present:
        os.replace(cv_dir / name, aside / name)
    return aside


def put_back(cv_dir: Path) -> None:
    """Undo ``set_aside``: the files of the run being replaced return, those of the new run go."""
    aside = cv_dir / REPLACED
    for name in RUN_FILES:
        _remove(cv_dir / name)
        if (aside / name).exists():
            os.replace(aside / name, cv_dir / name)
    shutil.rmtree(aside)


def recover_overwrite(cv_dir: Path) -> list[str]:
    """An --overwrite run killed before its first checkpoint left its predecessor in ``.replaced/``:
    put it back. (Killed after that checkpoint, before ``.replaced/`` was removed: remove it.)"""
    if not (cv_dir / REPLACED).is_dir():
        return []
    if (cv_dir / LAST).exists():
        shutil.rmtree(cv_dir / REPLACED)
        return []
    put_back(cv_dir)
    return [f"an --overwrite run in {cv_dir} stopped before its first checkpoint; the run it was to "
            f"replace has been put back"]


def repair_best(cv_dir: Path, resume: dict, score_key: str) -> list[str]:
    """A kill between an epoch's two writes (``ckpt_last.pt``, then ``ckpt_best.pt``) leaves
    ``ckpt_best.pt`` one best behind while ``ckpt_last.pt`` records the new best score: that epoch's
    own checkpoint is the best one, so it is copied."""
    last, best = cv_dir / LAST, cv_dir / BEST
    if Path(resume["path"]).resolve() != last.resolve() or resume["best_score"] is None:
        return []
    if resume["metrics"].get(score_key) != resume["best_score"]:
        return []  # the best epoch came earlier; its ckpt_best.pt was written before later epochs
    if best.is_file():
        saved = safe_load(best)
        if isinstance(saved, dict) and saved.get("metrics", {}).get(score_key) == resume["best_score"]:
            return []
    write_atomically(best, last.read_bytes())
    return [f"{best} did not hold the best epoch {resume['epoch']} recorded in {last} (a kill between the "
            f"two checkpoint writes); rewritten from {last}"]


class Run:
    """One stage's run in ``cv_dir``, used as a context manager. Entering checks and locks the directory
    (refusing one that holds a run unless ``resume`` or ``overwrite``), restores the epoch counter and best
    score from ``resume`` (the checkpoint of --resume, or None) and writes ``args.json``; each
    ``end_epoch`` logs the metrics and writes ``ckpt_last.pt`` and, on a new best ``score_key``,
    ``ckpt_best.pt``; leaving releases the lock and, if the run stopped before its first checkpoint,
    puts back the run an ``overwrite`` replaced. ``config`` is the run's resolved settings (args.json and
    every checkpoint's "args"), ``spec`` the record of its dataset spec (utils/spec.py). Under torchrun
    every rank checks and only rank 0 locks and writes.
    ``notes`` holds what the user should hear about the directory."""

    def __init__(self, cv_dir: str | Path, stage: str, model: str, *, config: dict, max_epochs: int,
                 test_interval: int, seed: int, score_key: str, device: torch.device,
                 resume: dict | None = None, overwrite: bool = False, spec: dict | None = None):
        self.stage, self.model, self.config, self.spec = stage, model, plain_values(config), spec
        self.max_epochs, self.test_interval, self.seed = max_epochs, test_interval, seed
        self.score_key, self.device, self.resume, self.overwrite = score_key, device, resume, overwrite
        self.cv_dir = Path(cv_dir)
        self.writes = distributed.is_main()
        self.start_epoch = resume["epoch"] + 1 if resume else 0
        self.best_score = resume["best_score"] if resume else None
        self.last_metrics = resume["metrics"] if resume else {}
        self.saved_epoch = resume["epoch"] if resume else None  # the epoch ckpt_last.pt holds
        self.notes: list[str] = []
        self.lock, self.logger, self.replaced, self.data_generator = None, None, None, None

    def __enter__(self) -> "Run":
        if self.writes:
            self.cv_dir.mkdir(parents=True, exist_ok=True)
            self.lock = DirectoryLock(self.cv_dir)
            self.lock.acquire()  # before anything is written or removed
        try:
            self._prepare()
        except BaseException:
            self._leave(failed=True)
            raise
        return self

    def _prepare(self) -> None:
        if self.writes:
            self.notes += recover_overwrite(self.cv_dir)
        if (self.cv_dir / LAST).exists() and not (self.resume or self.overwrite):
            why = f" ({self.notes[-1]})" if self.notes else ""
            raise PatchDropError(f"{self.cv_dir} already holds a run ({LAST}){why}; pass --resume to "
                                 f"continue it, --overwrite to start over, or choose another --cv_dir")
        if not self.writes:
            return
        for stale in self.cv_dir.glob(".*.tmp*"):  # a temporary file of a killed write: never read
            stale.unlink(missing_ok=True)
        if self.resume:
            self.notes += repair_best(self.cv_dir, self.resume, self.score_key)
        elif self.overwrite:
            self.replaced = set_aside(self.cv_dir)
        else:  # no checkpoint: whatever a run that never finished an epoch left is worth nothing
            for name in RUN_FILES:
                _remove(self.cv_dir / name)
        write_atomically(self.cv_dir / "args.json",
                         (json.dumps(self.config, indent=2) + "\n").encode())
        self.logger = MetricsLogger(self.cv_dir, resume_epoch=self.resume["epoch"] if self.resume else None)
        self.notes += self.logger.notes

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._leave(failed=exc_type is not None)
        if exc_type is KeyboardInterrupt:
            raise KeyboardInterrupt(self.interrupted_message()) from None

    def _leave(self, *, failed: bool) -> None:
        try:
            if self.logger is not None:
                self.logger.close()
                self.logger = None
            if failed and self.replaced is not None:
                put_back(self.cv_dir)
                self.notes.append(f"the run in {self.cv_dir} that --overwrite was to replace has been put back")
                self.replaced = None
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def interrupted_message(self) -> str:
        """What an interrupted run leaves, for the user."""
        if self.saved_epoch is not None:
            return (f"{self.cv_dir / LAST} holds the last finished epoch ({self.saved_epoch}); continue "
                    f"with --resume")
        restored = " (the run --overwrite was to replace is back in place)" if self.overwrite else ""
        return f"before the first epoch ended; nothing of this run was saved{restored}"

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

    def end_epoch(self, metrics: dict, nets: dict, optimizer) -> None:
        """Log ``metrics`` (with "epoch") and checkpoint ``nets``; a non-finite metric stops the run
        before anything is written, so the last checkpoint stays the last good one."""
        epoch = metrics["epoch"]
        kept = (f"stopped; {self.cv_dir / LAST} holds the last good epoch ({self.saved_epoch})"
                if self.saved_epoch is not None else "stopped before the first checkpoint")
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
                    best_score=self.best_score, metrics=metrics, args=self.config, spec=self.spec,
                    rng=capture_rng(self.data_generator, self.device))
        # Serialized once, written to ckpt_last.pt and, on a new best, to ckpt_best.pt, in this order:
        # a kill between the two leaves a ckpt_last.pt whose own epoch is the best (see repair_best).
        save_checkpoint([self.cv_dir / LAST] + ([self.cv_dir / BEST] if is_best else []), **ckpt)
        self.saved_epoch = epoch
        if self.replaced is not None:  # the new run has a checkpoint: the one it replaces can go
            shutil.rmtree(self.replaced)
            self.replaced = None
