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
from argparse import Namespace
from pathlib import Path
from typing import Callable

import torch

from . import distributed
from .accel import configure_backends, select_device, seed_everything
from .checkpoint import LAST
from .data import TORCHVISION_CLASSES, Loaders, build_datasets, build_loaders, default_num_workers
from .errors import PatchDropError, error_line
from .run import Run
from .spec import ModelSpec, get_spec

def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The flags of all four scripts. A default of None means: from the --resume checkpoint when
    resuming, else FIXED_DEFAULTS or the spec table for --model (``resolve_defaults``). The on/off speed
    options have a --no-... form, so a resumed run can switch one off."""
    on_off = argparse.BooleanOptionalAction
    add = parser.add_argument
    add("--model", default=None, help="dataset and architecture: R32_C10 (default), R32_C100, R50_ImgNet, "
                                      "R34_fMoW")
    add("--data_dir", default=None, help="dataset root (default: data/; see data/README.md)")
    add("--cv_dir", default="cv/tmp/", help="run directory: checkpoints, metrics, TensorBoard logs")
    add("--lr", type=float, default=None, help="learning rate (default: the paper's, per stage)")
    add("--batch_size", type=int, default=None, help="batch size (default: the paper's, per stage)")
    add("--max_epochs", type=int, default=None, help="epochs to train (default: per stage, README)")
    add("--test_interval", type=int, default=None,
        help="test every N epochs (from epoch 0) and after the last (default: 5)")
    add("--num_workers", type=int, default=None,
        help="DataLoader worker processes per process (default: 4 for CIFAR, or the CPUs if fewer; for "
             "224-px data the process's share of the CPUs less one)")
    add("--seed", type=int, default=None, help="seed of weights, sampling and data order (default: 0)")
    add("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    add("--resume", nargs="?", const="", default=None, metavar="CKPT",
        help="continue this stage from a checkpoint file or run directory (its ckpt_last.pt); "
             "with no value, from --cv_dir. Flags not given are taken from the checkpoint (all but "
             "--cv_dir, --device and --overwrite)")
    add("--overwrite", action="store_true", help="start over in a --cv_dir that already holds a run")
    add("--train_samples", type=int, default=None, help="train on a fixed random subset of N images")
    add("--test_samples", type=int, default=None, help="test on a fixed random subset of N images")
    add("--fake_data", action="store_true", default=None, help="random images of the right shape (smoke runs)")
    add("--no_download", action="store_true", default=None, help="never download torchvision's CIFAR files")
    speed = parser.add_argument_group("speed (off by default; README, Performance)")
    speed.add_argument("--amp", action=on_off, default=None,
                       help="bfloat16 autocast for the networks' forward passes (CUDA, bf16-capable CPUs)")
    speed.add_argument("--channels_last", action=on_off, default=None, help="NHWC memory format")
    speed.add_argument("--compile", action=on_off, default=None, help="torch.compile the networks")
    speed.add_argument("--gpu_data", action=on_off, default=None,
                       help="CIFAR: hold the split in device memory, augment and normalize there")
    speed.add_argument("--parallel", action=on_off, default=None,
                       help="nn.DataParallel over the visible GPUs (the authors' flag; prefer torchrun)")
    speed.add_argument("--no_tf32", action="store_true", default=None,
                       help="strict float32 on the GPU: no TF32 in cuDNN convolutions (on by default from "
                            "Ampere on)")


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    """The flags of the three policy stages."""
    add = parser.add_argument
    add("--penalty", type=float, default=None, help="reward of a wrong prediction, < 0 (default: "
                                                    "-0.5 pretrain; finetune -10 CIFAR, -20 ImageNet/fMoW)")
    add("--alpha", type=float, default=None, help="exploration bound of the policy, in (0.5, 1] (0.8)")
    add("--lr_size", type=int, default=None,
        help="side of the LR image (default: 8 on CIFAR, 56 on ImageNet/fMoW)")


def add_eval_args(parser: argparse.ArgumentParser, *, load_help: str, lr_help: str) -> None:
    """The flags evaluate.py and visualize.py share: which checkpoint, which test data, where to run."""
    add = parser.add_argument
    add("--model", default="R32_C10", help="R32_C10, R32_C100, R50_ImgNet, R34_fMoW")
    add("--load", "--Load", dest="load", required=True, help=load_help)
    add("--ckpt_lr_cl", default=None, help=lr_help)
    add("--data_dir", default="data/", help="dataset root (see data/README.md)")
    add("--batch_size", type=int, default=256)
    add("--num_workers", type=int, default=2)
    add("--test_samples", type=int, default=None, help="use a fixed random subset of N test images")
    add("--fake_data", action="store_true", help="random images of the right shape (smoke runs)")
    add("--no_download", action="store_true", help="never download torchvision's CIFAR files")
    add("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    add("--no_tf32", action="store_true", help="strict float32 on the GPU (no TF32 in cuDNN convolutions)")


# Defaults that do not depend on --model. They are filled in after --resume has taken the flags not
# given from the checkpoint, so a resumed run keeps the settings it was started with. (--cv_dir,
# --device and --overwrite keep their parser defaults: they belong to this invocation, not the run.)
FIXED_DEFAULTS = {"model": "R32_C10", "mode": "hr", "curriculum": False, "fusion": "sum",
                  "data_dir": "data/", "test_interval": 5, "seed": 0, "fake_data": False,
                  "no_download": False, "amp": False, "channels_last": False, "compile": False,
                  "gpu_data": False, "parallel": False, "no_tf32": False}

# The flags that define what a stage optimizes. --resume refuses to change them: a run that continued
# with another penalty or image size would report one objective and have trained another.
OBJECTIVE_FLAGS = ("model", "mode", "img_size", "penalty", "alpha", "lr_size", "curriculum", "fusion",
                   "optimizer")


def inherit_values(values: dict, resume: dict) -> dict:
    """On --resume: refuse a flag of OBJECTIVE_FLAGS given with another value than the checkpoint's
    (naming each with both values), and take every flag left at None from the checkpoint's args."""
    saved = {**resume["args"], "model": resume["model"]}
    changed = [f"--{name} {saved[name]} in the checkpoint, {values[name]} given" for name in OBJECTIVE_FLAGS
               if values.get(name) is not None and saved.get(name) is not None and values[name] != saved[name]]
    if changed:
        raise PatchDropError(f"{resume['path']}: --resume cannot change what the run optimizes: "
                             f"{'; '.join(changed)}; drop these flags to continue the run, or start a "
                             f"new one in another --cv_dir")
    return {name: saved.get(name) if value is None and name != "resume" else value
            for name, value in values.items()}


def spec_defaults(spec: ModelSpec, stage: str, values: dict) -> dict:
    """The defaults of ``stage`` for ``spec.name`` from the spec table, keyed by flag."""
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
    arguments (a changed objective is refused), then FIXED_DEFAULTS, then the spec table's defaults of
    ``stage`` for --model. ``stage`` may depend on the flags (classifier: --mode). The --resume
    checkpoint must be of the same stage. The result is what args.json and every checkpoint record."""
    values = inherit_values(vars(args), resume) if resume else dict(vars(args))
    values.update({name: value for name, value in FIXED_DEFAULTS.items()
                   if name in values and values[name] is None})
    stage = stage(Namespace(**values)) if callable(stage) else stage
    if resume and resume["stage"] != stage:
        raise PatchDropError(f"{resume['path']}: --resume needs a {stage} checkpoint, found a "
                             f"{resume['stage']} checkpoint")
    filled = spec_defaults(get_spec(values["model"]), stage, values)
    values.update({name: value for name, value in filled.items() if name in values and values[name] is None})
    return Namespace(**values)


def check_args(args: Namespace, spec: ModelSpec, stage: str, world: int = 1) -> None:
    """Refuse values that would crash later or train something silently wrong, before anything is
    loaded or deleted; ``world`` is the number of processes (torchrun)."""
    for name in ("batch_size", "max_epochs", "test_interval", "train_samples", "test_samples"):
        value = vars(args)[name]
        if value is not None and value <= 0:
            raise PatchDropError(f"--{name} must be positive, got {value}")
    if args.num_workers < 0:
        raise PatchDropError(f"--num_workers must be 0 or more, got {args.num_workers}")
    if args.lr <= 0:
        raise PatchDropError(f"--lr must be positive, got {args.lr}")
    if args.batch_size % world:
        raise PatchDropError(f"--batch_size {args.batch_size} is the total over {world} processes and "
                             f"must be divisible by it")
    if args.test_samples is not None and args.test_samples < world:
        raise PatchDropError(f"--test_samples {args.test_samples} is fewer than the {world} processes; "
                             f"every process needs at least one test image")
    if args.gpu_data and spec.dataset not in TORCHVISION_CLASSES:
        raise PatchDropError(f"--gpu_data holds a whole CIFAR split in device memory; {spec.name} "
                             f"streams its {spec.hr_size}-px images from disk, drop the flag")
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
    spec = get_spec(args.model)
    check_args(args, spec, stage, distributed.requested_world_size())
    device = distributed.init_distributed(args.device) or select_device(args.device)
    configure_backends(device, tf32=not args.no_tf32)
    # Under torchrun each process draws its own samples; DDP gives all of them rank 0's weights.
    seed_everything(args.seed + distributed.rank())
    return spec, device


def start_eval(args: Namespace) -> tuple[ModelSpec, torch.device]:
    """Start of evaluate.py and visualize.py: the spec of --model, seeds set, the device chosen and set
    up."""
    spec = get_spec(args.model)
    seed_everything(args.seed)
    device = select_device(args.device)
    configure_backends(device, tf32=not args.no_tf32)
    return spec, device


def eval_test_set(args: Namespace, spec: ModelSpec):
    """The test split evaluate.py and visualize.py read (--test_samples: the subset the stages used)."""
    return build_datasets(spec, args.data_dir, download=not args.no_download, fake_data=args.fake_data,
                          train_samples=1, test_samples=args.test_samples)[1]


def open_run(args: Namespace, stage: str, score_key: str, device: torch.device,
             resume: dict | None) -> Run:
    """The stage's Run in --cv_dir (checked before any data loads, so a wrong --cv_dir fails fast)."""
    return Run(args.cv_dir, stage, args.model, config=vars(args), max_epochs=args.max_epochs,
               test_interval=args.test_interval, seed=args.seed, score_key=score_key, device=device,
               resume=resume, overwrite=args.overwrite)


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


def run_cli(main: Callable[[Namespace], object], parser: argparse.ArgumentParser) -> None:
    """Entry point of a script: parse the command line and run ``main``. Bad input, an unwritable disk
    or Ctrl-C end in one line on stderr and a non-zero exit, never a traceback."""
    args = parser.parse_args()
    try:
        main(args)
    except PatchDropError as err:
        sys.exit(f"error: {error_line(err)}")
    except OSError as err:  # e.g. --cv_dir on a read-only or full disk
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        cv_dir = vars(args).get("cv_dir")
        if cv_dir:
            sys.exit(f"interrupted: {Path(cv_dir) / LAST} holds the last finished epoch; continue with "
                     f"--resume")
        sys.exit("interrupted")
    finally:  # under torchrun: leave the process group on every exit, errors included
        distributed.cleanup()
