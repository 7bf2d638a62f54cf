"""Run set-up shared by the stage scripts: spec and flags, seeds, device, run directory, the state of
every random number generator, and the command-line entry point."""
import argparse
import json
import platform
import random
import sys
from argparse import Namespace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import distributed
from .checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from .cli import apply_defaults, apply_fixed_defaults, check_args
from .errors import PatchDropError, error_line
from .files import write_atomically
from .metrics import MetricsLogger, check_finite
from .spec import STAGES, ModelSpec, get_spec

# The flags that define what a stage optimizes. --resume refuses to change them: a run that continued
# with another penalty or image size would report one objective and have trained another.
OBJECTIVE_FLAGS = ("model", "mode", "img_size", "penalty", "alpha", "lr_size", "curriculum", "fusion",
                   "optimizer")


def setup(args: Namespace, stage: str | Callable[[Namespace], str]
          ) -> tuple[ModelSpec, torch.device, dict | None]:
    """Common start of every stage: the --resume checkpoint (None without the flag), whose arguments
    fill the flags not given; the spec of --model and the defaults filled in from it; flags checked,
    seeds set and the device chosen. ``stage`` may depend on the arguments (classifier: --mode)."""
    resume = load_resume(args)
    if resume:
        inherit_args(args, resume)
    apply_fixed_defaults(args)
    stage = stage(args) if callable(stage) else stage
    if resume and resume["stage"] != stage:
        raise PatchDropError(f"{resume['path']}: --resume needs a {stage} checkpoint, found a "
                             f"{resume['stage']} checkpoint")
    spec = get_spec(args.model)
    apply_defaults(args, spec, stage)
    check_args(args, spec, distributed.requested_world_size())
    device = distributed.init_distributed(args.device) or select_device(args.device)
    configure_backends(device, tf32=not args.no_tf32)
    # Under torchrun each process draws its own samples; DDP gives all of them rank 0's weights.
    seed_everything(args.seed + distributed.rank())
    return spec, device, resume


def inherit_args(args: Namespace, ckpt: dict) -> None:
    """On --resume: refuse a flag of OBJECTIVE_FLAGS given with another value than the checkpoint's
    (naming each with both values), and take every flag left at None from the checkpoint's args."""
    saved = {**ckpt["args"], "model": ckpt["model"]}
    changed = [f"--{name} {saved[name]} in the checkpoint, {getattr(args, name)} given"
               for name in OBJECTIVE_FLAGS
               if getattr(args, name, None) is not None and saved.get(name) is not None
               and getattr(args, name) != saved[name]]
    if changed:
        raise PatchDropError(f"{ckpt['path']}: --resume cannot change what the run optimizes: "
                             f"{'; '.join(changed)}; drop these flags to continue the run, or start a "
                             f"new one in another --cv_dir")
    for name, value in vars(args).items():
        if value is None and name != "resume" and saved.get(name) is not None:
            setattr(args, name, saved[name])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def capture_rng(data_generator: torch.Generator | None, device: torch.device) -> dict:
    """The state of every generator a run draws from: Python, NumPy, torch's CPU generator and that of
    the run's CUDA device (only that one, so a checkpoint of an 8-GPU machine resumes on 1), and the
    training loader's own generator (data order and worker seeds). Plain types and tensors only, so a
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


def device_name(device: torch.device) -> str:
    """The device in words, for reports: the GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_args(args: Namespace) -> dict:
    """The arguments as a dict of plain values (str, numbers, bools, None, lists), for JSON and for
    checkpoints that ``torch.load(weights_only=True)`` can read."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def prepare_run_dir(cv_dir: str | Path, args: Namespace, *, resuming: bool, overwrite: bool,
                    write: bool = True) -> Path:
    """Create ``cv_dir`` and write ``args.json``. A directory that already holds a run is only reused
    with --resume (continue it) or --overwrite (start over), so finished epochs are never lost. With
    ``write`` False (ranks other than 0 under torchrun) only the check is made."""
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
    write_atomically(cv_dir / "args.json", (json.dumps(plain_args(args), indent=2) + "\n").encode())
    return cv_dir


class Run:
    """One stage's run in ``--cv_dir``: checks and creates the directory, restores the epoch counter
    and best score on --resume, and at the end of each epoch logs the metrics and writes
    ``ckpt_last.pt`` and, on a new best test score, ``ckpt_best.pt``. Under torchrun every rank checks
    and only rank 0 writes."""

    def __init__(self, args: Namespace, stage: str, score_key: str, device: torch.device,
                 resume: dict | None = None):
        self.args, self.stage, self.score_key, self.device = args, stage, score_key, device
        self.writes = distributed.is_main()
        self.cv_dir = prepare_run_dir(args.cv_dir, args, resuming=resume is not None,
                                      overwrite=args.overwrite, write=self.writes)
        self.resume = resume
        self.start_epoch = resume["epoch"] + 1 if resume else 0
        self.best_score = resume["best_score"] if resume else None
        self.last_metrics = resume["metrics"] if resume else {}
        self.logger = (MetricsLogger(self.cv_dir, resume_epoch=resume["epoch"] if resume else None)
                       if self.writes else None)
        self.train_loader, self.data_generator = None, None

    def attach(self, train_loader) -> list[str]:
        """Follow ``train_loader``'s generator (data order), whose state each checkpoint stores with
        the other generators'; on --resume, put them all back where the checkpoint's epoch left them, so
        the run continues as if it had never stopped. Returns notes for the user.

        Under torchrun only rank 0's generators are saved, and restoring them on every rank would make
        all ranks sample the same actions. So each rank reseeds its own generators from (--seed, rank,
        epoch) instead; only the --gpu_data loader's generator, which is the same on every rank by
        design, is restored from the checkpoint."""
        self.train_loader, self.data_generator = train_loader, train_loader.generator
        if not self.resume:
            return []
        if self.resume.get("rng") is None:
            return [f"note: {self.resume['path']} holds no random-generator state; the resumed run "
                    f"continues correctly but not bit-for-bit like an uninterrupted one"]
        if distributed.world_size() == 1:
            restore_rng(self.resume["rng"], self.data_generator, self.device)
            return []
        world, rank = distributed.world_size(), distributed.rank()
        seed = self.args.seed + rank + world * self.start_epoch  # distinct per rank and resumed epoch
        seed_everything(seed)
        if isinstance(train_loader, DataLoader):  # worker seeds: per rank
            self.data_generator.manual_seed(seed)
        elif self.resume["rng"]["data"] is not None:  # --gpu_data: shared by all ranks
            self.data_generator.set_state(self.resume["rng"]["data"])
        return [f"note: resumed under torchrun: each rank's random generators are reseeded from --seed, "
                f"its rank and the epoch ({self.start_epoch}); the run continues correctly, not "
                f"bit-for-bit like an uninterrupted one"]

    def epochs(self):
        """The epochs still to run; tells a DistributedSampler which epoch it is, so each epoch has
        its own data order (other loaders draw it from their generator)."""
        for epoch in range(self.start_epoch, self.args.max_epochs):
            sampler = getattr(self.train_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            yield epoch

    def is_test_epoch(self, epoch: int) -> bool:
        """Test every --test_interval epochs from epoch 0 on, and always after the last epoch."""
        return epoch % self.args.test_interval == 0 or epoch == self.args.max_epochs - 1

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
        ckpt = dict(stage=self.stage, model=self.args.model, epoch=epoch, nets=nets,
                    optimizer=optimizer, scheduler=scheduler, best_score=self.best_score,
                    metrics=metrics, args=plain_args(self.args),
                    rng=capture_rng(self.data_generator, self.device))
        # Serialized once, written to ckpt_last.pt and, on a new best, to ckpt_best.pt.
        save_checkpoint([self.cv_dir / LAST] + ([self.cv_dir / BEST] if is_best else []), **ckpt)

    def close(self) -> None:
        if self.logger:
            self.logger.close()


def load_resume(args: Namespace) -> dict | None:
    """The checkpoint --resume points to (a file, a run directory's ckpt_last.pt, or with no value
    --cv_dir's); None without --resume. Its stage and model are checked by ``setup``."""
    if args.resume is None:
        return None
    ckpt = load_checkpoint(args.resume or args.cv_dir, stages=STAGES, model=None, default_name=LAST)
    if ckpt.get("optimizer") is None:
        raise PatchDropError(f"{ckpt['path']}: has no optimizer state to resume from")
    return ckpt


def run_summary(stage: str, args: Namespace, train_loader, test_loader, device: torch.device,
                start_epoch: int) -> list[str]:
    """Lines a stage prints before training: what runs where, and subset requests that the split
    could not satisfy (the whole split is used then)."""
    train_size, test_size = len(train_loader.dataset), len(test_loader.dataset)
    lines = [f"{stage} {args.model}: {train_size} train / {test_size} test images, "
             f"epochs {start_epoch}..{args.max_epochs - 1}, device {device}"]
    for flag, requested, found in (("--train_samples", args.train_samples, train_size),
                                   ("--test_samples", args.test_samples, test_size)):
        if requested is not None and requested > found:
            lines.append(f"note: {flag} {requested} is more than the split's {found} images; using all")
    return lines


def run_cli(main: Callable[[Namespace], dict], parser: argparse.ArgumentParser) -> None:
    """Entry point of a stage script: parse the command line and run ``main``. Bad input, an unwritable
    disk or Ctrl-C end in one line on stderr and a non-zero exit, never a traceback."""
    args = parser.parse_args()
    try:
        main(args)
    except PatchDropError as err:
        sys.exit(f"error: {error_line(err)}")
    except OSError as err:  # e.g. --cv_dir on a read-only or full disk
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        if getattr(args, "cv_dir", None):
            sys.exit(f"interrupted: {Path(args.cv_dir) / LAST} holds the last finished epoch; continue "
                     f"with --resume")
        sys.exit("interrupted")
    finally:  # under torchrun: leave the process group on every exit, errors included
        distributed.cleanup()
