"""The command line of every script: its flags, their defaults, their checks, and the stage entry.

This is the one module of ``utils/`` that reads the argparse Namespace. A stage script's ``main`` runs

    resume = load_resume(args.resume, args.cv_dir)    # utils/run.py: the --resume checkpoint, or None
    args = resolve_defaults(args, STAGE, resume)      # a copy: every flag left at None filled in
    spec, device = start(args, STAGE)                 # flags checked, device chosen, seeds set

and hands plain values on to the rest of ``utils/`` (``open_run`` and ``stage_loaders`` spell out which
flag goes where). ``run_cli`` turns every expected failure into one line on stderr.
"""
import argparse
import sys
import threading
import time
from argparse import Namespace
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from . import distributed
from .accel import configure_backends, select_device, seed_everything
from .checkpoint import BEST, LAST, load_checkpoint
from .data import Loaders, build_datasets, build_loaders, default_num_workers
from .errors import PatchDropError, error_line
from .run import Run
from .spec import STAGES, ModelSpec, check_same_spec, get_spec, spec_of_checkpoint, spec_record


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The flags of all four scripts. A default of None means: from the --resume checkpoint when
    resuming, else FIXED_DEFAULTS or the spec of --model (``resolve_defaults``). The on/off speed
    options have a --no-... form, so a resumed run can switch one off."""
    on_off = argparse.BooleanOptionalAction
    add = parser.add_argument
    add("--model", default=None, help="dataset and networks: R32_C10 (default), R32_C100, R50_ImgNet, "
                                      "R34_fMoW, or the path of a spec file of your own data (specs/README.md)")
    add("--data_dir", default=None, help="dataset root (default: data/; see data/README.md)")
    add("--cv_dir", default="cv/tmp/", help="run directory: checkpoints, metrics, TensorBoard logs (default: cv/tmp/)")
    add("--lr", type=float, default=None, help="learning rate (default: the paper's, per stage)")
    add("--batch_size", type=int, default=None, help="batch size (default: the paper's, per stage)")
    add("--max_epochs", type=int, default=None, help="epochs to train (default: per stage, README)")
    add("--test_interval", type=int, default=None,
        help="test every N epochs (from epoch 0) and after the last (default: 5)")
    add("--num_workers", type=int, default=None,
        help="DataLoader worker processes per process (default: 4 for CIFAR, or the CPUs if fewer; for "
             "224-px data the process's share of the CPUs less one)")
    add("--seed", type=int, default=None, help="seed of weights, sampling and data order (default: 0)")
    add("--device", default="auto", help="auto (CUDA if available; default), cpu, cuda, cuda:N")
    add("--resume", nargs="?", const="", default=None, metavar="CKPT",
        help="continue this stage from a checkpoint file or run directory (its ckpt_last.pt); with no "
             "value, from --cv_dir. Flags not given are taken from the checkpoint; of those given, only "
             f"{', '.join('--' + n for n in RESUME_MAY_CHANGE)} may differ from it (they take effect). "
             "(default: a new run)")
    add("--overwrite", action="store_true",
        help="start over in a --cv_dir that already holds a run; the old run is deleted once the new one "
             "has checkpointed its first epoch, and put back if it stops earlier (default: off)")
    add("--train_samples", type=int, default=None, help="train on a fixed random subset of N images (default: all)")
    add("--test_samples", type=int, default=None, help="test on a fixed random subset of N images (default: all)")
    add("--fake_data", action="store_true", default=None, help="random images of the right shape, for smoke runs (default: off)")
    add("--no_download", action="store_true", default=None,
        help="never download torchvision's CIFAR files (default: download when no data is found)")
    add("--print_freq", type=int, default=None, metavar="N",
        help="when the output is not a terminal (a log file), a line every N steps of an epoch; 0: none "
             "(default: 100; on a terminal a progress bar instead)")
    speed = parser.add_argument_group("speed (off by default; README, Performance)")
    speed.add_argument("--amp", action=on_off, default=None,
                       help="bfloat16 autocast for the networks' forward passes (CUDA, bf16-capable CPUs; default: off)")
    speed.add_argument("--channels_last", action=on_off, default=None, help="NHWC memory format (default: off)")
    speed.add_argument("--compile", action=on_off, default=None, help="torch.compile the networks (default: off)")
    speed.add_argument("--gpu_data", action=on_off, default=None,
                       help="CIFAR: hold the split in device memory, augment and normalize there (default: off)")
    speed.add_argument("--parallel", action=on_off, default=None,
                       help="nn.DataParallel over the visible GPUs (the authors' flag; prefer torchrun; default: off)")
    speed.add_argument("--no_tf32", action="store_true", default=None,
                       help="strict float32 on the GPU: no TF32 in cuDNN convolutions (default: TF32, which "
                            "PyTorch allows from Ampere on)")
    speed.add_argument("--sync_bn", action=on_off, default=None,
                       help="under torchrun on GPUs: batch-norm statistics over the whole batch of all "
                            "processes (SyncBatchNorm) instead of each process's share (default: off)")


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    """The flags of the three policy stages."""
    add = parser.add_argument
    add("--penalty", type=float, default=None, help="reward of a wrong prediction, < 0 (default: "
                                                    "-0.5 pretrain; finetune -10 CIFAR, -20 ImageNet/fMoW)")
    add("--alpha", type=float, default=None, help="exploration bound of the policy, in (0.5, 1] (default: 0.8)")
    add("--lr_size", type=int, default=None,
        help="side of the LR image (default: 8 on CIFAR, 56 on ImageNet/fMoW)")


def add_eval_args(parser: argparse.ArgumentParser, *, load_help: str, lr_help: str) -> None:
    """The flags evaluate.py and visualize.py share: which checkpoint, which test data, where to run."""
    add = parser.add_argument
    add("--load", "--Load", dest="load", required=True, help=load_help)
    add("--model", default=None, help="R32_C10, R32_C100, R50_ImgNet, R34_fMoW or a spec file (default: the "
                                      "checkpoint's own spec; another one is refused)")
    add("--ckpt_lr_cl", default=None, help=lr_help)
    add("--data_dir", default="data/", help="dataset root, see data/README.md (default: data/; the embedded "
                                            "CIFAR-10 sample: data/cifar10_sample)")
    add("--out", default=None, metavar="DIR",
        help="folder for the files written (default: the checkpoint's run folder; for a checkpoint this "
             "repository ships, cv/eval/<run>/)")
    add("--batch_size", type=int, default=256, help="images per batch (default: 256)")
    add("--num_workers", type=int, default=2, help="DataLoader worker processes (default: 2)")
    add("--test_samples", type=int, default=None, help="a fixed random subset of N test images (default: all)")
    add("--fake_data", action="store_true", help="random images of the right shape, for smoke runs (default: off)")
    add("--no_download", action="store_true", help="never download torchvision's CIFAR files (default: download "
                                                   "when no data is found)")
    add("--print_freq", type=int, default=10, metavar="N",
        help="when the output is not a terminal, a line every N batches; 0: none (default: 10)")
    add("--device", default="auto", help="auto (CUDA if available; default), cpu, cuda, cuda:N")
    add("--no_tf32", action="store_true", help="strict float32 on the GPU: no TF32 in cuDNN convolutions "
                                               "(default: TF32 allowed)")


# Defaults that do not depend on --model. They are filled in after --resume has taken the flags not
# given from the checkpoint, so a resumed run keeps the settings it was started with. (--cv_dir,
# --device and --overwrite keep their parser defaults: they belong to this invocation, not the run.)
FIXED_DEFAULTS = {"model": "R32_C10", "mode": "hr", "curriculum": False, "fusion": "sum",
                  "data_dir": "data/", "test_interval": 5, "seed": 0, "fake_data": False,
                  "no_download": False, "print_freq": 100, "amp": False, "channels_last": False,
                  "compile": False, "gpu_data": False, "parallel": False, "no_tf32": False, "sync_bn": False}

# The flags a resumed run may change; each takes effect (the learning rate is set from --lr and
# --lr_milestones at the start of every epoch, utils/schedule.py) and args.json records it. Every other
# flag defines what the run optimizes or trains on (objective, data, seed, batch size, starting
# checkpoints): given with another value than the checkpoint's, it is refused.
RESUME_MAY_CHANGE = ("lr", "lr_milestones", "max_epochs", "test_interval", "num_workers", "print_freq",
                     "data_dir", "no_download", "amp", "channels_last", "compile", "gpu_data", "parallel",
                     "no_tf32", "sync_bn")
COMMAND_FLAGS = ("cv_dir", "device", "overwrite", "resume")  # of this invocation, not of the run


def inherit_values(values: dict, resume: dict) -> dict:
    """On --resume: refuse a flag given with another value than the checkpoint's, unless it is one of
    RESUME_MAY_CHANGE (naming each refused flag with both values); take every flag left at None from the
    checkpoint's args."""
    saved = resume["args"]
    changed = [f"--{name} {saved[name]} in the checkpoint, {value} given" for name, value in values.items()
               if name not in RESUME_MAY_CHANGE + COMMAND_FLAGS and value is not None and name in saved
               and value != saved[name]]
    if changed:
        raise PatchDropError(f"{resume['path']}: --resume cannot change what the run optimizes or trains on: "
                             f"{'; '.join(changed)}; drop these flags to continue the run, or start a new one "
                             f"in another --cv_dir (a resume may change only "
                             f"{', '.join('--' + n for n in RESUME_MAY_CHANGE)})")
    return {name: saved.get(name) if value is None and name not in COMMAND_FLAGS else value
            for name, value in values.items()}


def finished_run(args: Namespace, resume: dict | None) -> str | None:
    """On --resume of a run that has already trained the epochs asked for: the line that says so (the
    caller then changes nothing); else None."""
    if resume is None or resume["epoch"] + 1 < args.max_epochs:
        return None
    return (f"{resume['path']}: the run has finished {resume['epoch'] + 1} epochs and --max_epochs is "
            f"{args.max_epochs}: nothing to do (a larger --max_epochs continues it)")


def spec_defaults(spec: ModelSpec, stage: str, values: dict) -> dict:
    """The defaults of ``stage`` from ``spec`` (its sizes and its preset), keyed by flag."""
    defaults = spec.stages[stage]
    filled = {"lr": defaults.lr, "batch_size": defaults.batch_size, "max_epochs": defaults.max_epochs,
              "num_workers": default_num_workers(spec)}
    if stage.startswith("classifier"):
        filled.update(optimizer=defaults.optimizer, wd=defaults.weight_decay,
                      lr_milestones=list(defaults.lr_milestones),
                      img_size=spec.hr_size if values["mode"] == "hr" else spec.lr_size)
    else:
        filled.update(penalty=defaults.penalty, alpha=defaults.alpha, lr_size=spec.lr_size)
    return filled


def resolve_defaults(args: Namespace, stage: str | Callable[[Namespace], str],
                     resume: dict | None = None) -> Namespace:
    """A copy of ``args`` with every flag left at None filled in: first from the --resume checkpoint's
    arguments (a flag a resume cannot change is refused), then FIXED_DEFAULTS, then the defaults of
    ``stage`` from the spec of --model. ``stage`` may depend on the flags (classifier: --mode). The
    --resume checkpoint must be of the same stage and spec. The result is what args.json and every
    checkpoint record."""
    values = inherit_values(vars(args), resume) if resume else dict(vars(args))
    values.update({name: value for name, value in FIXED_DEFAULTS.items()
                   if name in values and values[name] is None})
    stage = stage(Namespace(**values)) if callable(stage) else stage
    if resume and resume["stage"] != stage:
        raise PatchDropError(f"{resume['path']}: --resume needs a {stage} checkpoint, found a "
                             f"{resume['stage']} checkpoint")
    spec = model_spec(Namespace(**values))
    if resume:
        check_same_spec(resume, spec)
    filled = spec_defaults(spec, stage, values)
    values.update({name: value for name, value in filled.items() if name in values and values[name] is None})
    return Namespace(**values)


def model_spec(args: Namespace) -> ModelSpec:
    """The spec of --model; ``classes = "from the folders"`` counts those under --data_dir."""
    return get_spec(args.model, None if args.fake_data else args.data_dir)


def check_counts(values: dict, *, positive: tuple[str, ...] = (), at_least_zero: tuple[str, ...] = ()) -> None:
    """Refuse a flag of ``positive`` that is 0 or less and one of ``at_least_zero`` below 0, naming it
    (None: not given). The one check of counts for every script, evaluation and benchmarks included."""
    for names, low, what in ((positive, 1, "positive"), (at_least_zero, 0, "0 or more")):
        for name in names:
            value = values.get(name)
            if value is not None and value < low:
                raise PatchDropError(f"--{name} must be {what}, got {value}")


def check_args(args: Namespace, spec: ModelSpec, stage: str, world: int = 1) -> None:
    """Refuse values that would crash later or train something silently wrong, before anything is
    loaded or deleted; ``world`` is the number of processes (torchrun)."""
    check_counts(vars(args), positive=("batch_size", "max_epochs", "test_interval", "train_samples",
                                       "test_samples"), at_least_zero=("num_workers", "print_freq"))
    if args.lr <= 0:
        raise PatchDropError(f"--lr must be positive, got {args.lr}")
    if args.batch_size % world:
        raise PatchDropError(f"--batch_size {args.batch_size} is the total over {world} processes and "
                             f"must be divisible by it")
    if args.test_samples is not None and args.test_samples < world:
        raise PatchDropError(f"--test_samples {args.test_samples} is fewer than the {world} processes; "
                             f"every process needs at least one test image")
    if args.gpu_data and spec.augmentation != "cifar":
        raise PatchDropError(f"--gpu_data holds a whole split in device memory and augments it as CIFAR "
                             f"(pad-crop, flip); {spec.name} resizes its images ({spec.augmentation} "
                             f"augmentation) as it streams them from disk, drop the flag")
    if args.compile and args.parallel:
        raise PatchDropError("--compile with --parallel is not supported (DataParallel's replicas of a "
                             "compiled network stay bound to GPU 0); use torchrun for several GPUs")
    if stage.startswith("classifier"):
        return
    if args.penalty >= 0:
        raise PatchDropError(f"--penalty is the reward of a wrong prediction and must be negative, "
                             f"got {args.penalty}")
    if not 0.5 < args.alpha <= 1:
        raise PatchDropError(f"--alpha must lie in (0.5, 1], got {args.alpha}")
    if args.lr_size <= 0 or args.lr_size > spec.hr_size or spec.hr_size % args.lr_size:
        raise PatchDropError(f"--lr_size must divide the HR size {spec.hr_size} of {spec.name}, "
                             f"got {args.lr_size}")


def start(args: Namespace, stage: str) -> tuple[ModelSpec, torch.device]:
    """The flags checked (``args`` resolved), the process group joined under torchrun, the device
    chosen and set up, and the seeds set. Returns (spec of --model, device)."""
    spec = model_spec(args)
    check_args(args, spec, stage, distributed.requested_world_size())
    device = distributed.init_distributed(args.device) or select_device(args.device)
    configure_backends(device, tf32=not args.no_tf32)
    # Under torchrun each process draws its own samples; DDP gives all of them rank 0's weights.
    seed_everything(args.seed + distributed.rank())
    return spec, device


def start_eval(args: Namespace) -> tuple[dict, ModelSpec, torch.device]:
    """Start of evaluate.py and visualize.py: their counts checked as the stages' are, the checkpoint of
    --load (of --model if given, any model else), the spec of its model, seeds set, the device chosen
    and set up. Returns (checkpoint, spec, device)."""
    check_counts(vars(args), positive=("batch_size", "test_samples", "speed_batches", "num_images"),
                 at_least_zero=("num_workers", "print_freq"))
    given = get_spec(args.model) if args.model is not None else None  # before the checkpoint is read
    ckpt = load_checkpoint(args.load, stages=STAGES, model=given.name if given else None)
    spec = spec_of_checkpoint(ckpt)  # rebuilt from the checkpoint: no spec file needed
    if given:
        check_same_spec(ckpt, given)
    seed_everything(args.seed)
    device = select_device(args.device)
    configure_backends(device, tf32=not args.no_tf32)
    return ckpt, spec, device


def eval_test_set(args: Namespace, spec: ModelSpec):
    """The test split evaluate.py and visualize.py read (--test_samples: the subset the stages used)."""
    return build_datasets(spec, args.data_dir, download=not args.no_download, fake_data=args.fake_data,
                          train_samples=1, test_samples=args.test_samples)[1]


def open_run(args: Namespace, spec: ModelSpec, stage: str, score_key: str, device: torch.device,
             resume: dict | None) -> Run:
    """The stage's Run in --cv_dir, to be entered (``with``) before any data loads, so a wrong or busy
    --cv_dir fails fast. Its checkpoints record ``spec``."""
    return Run(args.cv_dir, stage, spec.name, config=vars(args), spec=spec_record(spec),
               max_epochs=args.max_epochs, test_interval=args.test_interval, seed=args.seed,
               score_key=score_key, device=device, resume=resume, overwrite=args.overwrite)


def stage_loaders(args: Namespace, spec: ModelSpec, device: torch.device,
                  memory_format: torch.memory_format) -> Loaders:
    """The training and test batches the data flags ask for."""
    return build_loaders(spec, device, data_dir=args.data_dir, batch_size=args.batch_size,
                         num_workers=args.num_workers, seed=args.seed, download=not args.no_download,
                         fake_data=args.fake_data, train_samples=args.train_samples,
                         test_samples=args.test_samples, gpu_data=args.gpu_data,
                         memory_format=memory_format)


def note_lines(notes: list[str]) -> list[str]:
    """Notes for the user (plain sentences, as utils returns them) as console lines."""
    return [f"note: {note}" for note in notes]


def run_summary(stage: str, args: Namespace, data: Loaders, device: torch.device, start_epoch: int,
                notes: list[str] = ()) -> list[str]:
    """Lines a stage prints before training: what runs where, subset requests that the split could not
    satisfy (the whole split is used then), and ``notes``."""
    subsets = [f"{flag} {requested} is more than the split's {found} images; using all"
               for flag, requested, found in (("--train_samples", args.train_samples, data.train_size),
                                              ("--test_samples", args.test_samples, data.test_size))
               if requested is not None and requested > found]
    return [f"{stage} {args.model}: {data.train_size} train / {data.test_size} test images, "
            f"epochs {start_epoch}..{args.max_epochs - 1}, device {device}",
            *note_lines([*subsets, *notes])]


def progress(batches: Iterable, desc: str, print_freq: int) -> Iterable:
    """The batches of one pass, shown by rank 0 only: a tqdm bar when stderr is a terminal; otherwise (a
    log file) a line every ``print_freq`` steps (0: none), so a long epoch is not silent."""
    if not distributed.is_main():
        return batches
    if sys.stderr.isatty():
        return tqdm(batches, desc=desc, leave=False)
    return step_lines(batches, desc, print_freq) if print_freq else batches


def step_lines(batches: Iterable, desc: str, every: int):
    total = f"/{len(batches)}" if hasattr(batches, "__len__") else ""
    started = time.perf_counter()
    for step, batch in enumerate(batches, start=1):
        yield batch
        if step % every == 0:
            print(f"  {desc} step {step}{total}, {time.perf_counter() - started:.0f} s", flush=True)


def closing_line(run: Run) -> str:
    """The last line of a stage: which checkpoints hold the run."""
    if run.saved_epoch is None:
        return f"no epoch finished in {run.cv_dir}"
    best = f"; best {run.score_key} {run.best_score:.4f} in {run.cv_dir / BEST}" if run.best_score is not None else ""
    return f"checkpoint: {run.cv_dir / LAST} (epoch {run.saved_epoch}){best}"


def _quiet_tensorboard_thread(hook_args) -> None:
    """TensorBoard's writer thread dies with a traceback on a full disk, then the main thread gets the
    same error at its next write (a one-line error then): the thread's traceback is left out."""
    if type(hook_args.thread).__name__ == "_AsyncWriterThread" and issubclass(hook_args.exc_type, OSError):
        return
    threading.__excepthook__(hook_args)


def run_cli(main: Callable[[Namespace], object], parser: argparse.ArgumentParser) -> None:
    """Entry point of a script: parse the command line and run ``main``. Bad input, an unwritable disk
    or Ctrl-C end in one line on stderr and a non-zero exit, never a traceback."""
    args = parser.parse_args()
    threading.excepthook = _quiet_tensorboard_thread
    try:
        main(args)
    except PatchDropError as err:
        sys.exit(f"error: {error_line(err)}")
    except OSError as err:  # e.g. --cv_dir on a read-only or full disk
        sys.exit(f"error: {err}")
    except KeyboardInterrupt as err:  # a stage's Run says what it left (utils/run.py)
        sys.exit(f"interrupted: {err}" if str(err) else "interrupted")
    finally:  # under torchrun: leave the process group on every exit, errors included
        distributed.cleanup()
