"""Flags every stage script shares, and the checks and defaults applied to them.

Scripts build their own parser (``get_args_parser``) and call ``add_common_args``; the values left at
``None`` are filled from the spec table by ``apply_defaults``. Nothing here parses the command line.
"""
import argparse

from .data import TORCHVISION_CLASSES, default_num_workers
from .errors import PatchDropError
from .spec import ModelSpec


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The flags of all four scripts. A default of None means: from the spec table for --model."""
    add = parser.add_argument
    add("--model", default=None, help="dataset and architecture: R32_C10 (default), R32_C100, R50_ImgNet, "
                                      "R34_fMoW")
    add("--data_dir", default="data/", help="dataset root (see data/README.md)")
    add("--cv_dir", default="cv/tmp/", help="run directory: checkpoints, metrics, TensorBoard logs")
    add("--lr", type=float, default=None, help="learning rate (default: the paper's, per stage)")
    add("--batch_size", type=int, default=None, help="batch size (default: the paper's, per stage)")
    add("--max_epochs", type=int, default=None, help="epochs to train (default: per stage, README)")
    add("--test_interval", type=int, default=5, help="test every N epochs (from epoch 0) and after the last")
    add("--num_workers", type=int, default=None,
        help="DataLoader worker processes per process (default: 4 for CIFAR, or the CPUs if fewer; for "
             "224-px data the process's share of the CPUs less one)")
    add("--seed", type=int, default=0, help="seed of weights, sampling and data order")
    add("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    add("--resume", nargs="?", const="", default=None, metavar="CKPT",
        help="continue this stage from a checkpoint file or run directory (its ckpt_last.pt); "
             "with no value, from --cv_dir. Flags not given are taken from the checkpoint")
    add("--overwrite", action="store_true", help="start over in a --cv_dir that already holds a run")
    add("--train_samples", type=int, default=None, help="train on a fixed random subset of N images")
    add("--test_samples", type=int, default=None, help="test on a fixed random subset of N images")
    add("--fake_data", action="store_true", help="random images of the right shape (smoke runs)")
    add("--no_download", action="store_true", help="never download torchvision's CIFAR files")
    speed = parser.add_argument_group("speed (off by default; README, Performance)")
    speed.add_argument("--amp", action="store_true",
                       help="bfloat16 autocast for the networks' forward passes (CUDA, bf16-capable CPUs)")
    speed.add_argument("--channels_last", action="store_true", help="NHWC memory format")
    speed.add_argument("--compile", action="store_true", help="torch.compile the networks")
    speed.add_argument("--gpu_data", action="store_true",
                       help="CIFAR: hold the split in device memory, augment and normalize there")
    speed.add_argument("--parallel", action="store_true",
                       help="nn.DataParallel over the visible GPUs (the authors' flag; prefer torchrun)")
    speed.add_argument("--no_tf32", action="store_true",
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
# given from the checkpoint, so a resumed run keeps the settings it was started with.
FIXED_DEFAULTS = {"model": "R32_C10", "mode": "hr", "curriculum": False, "fusion": "sum"}


def apply_fixed_defaults(args: argparse.Namespace) -> None:
    """Fill the flags of FIXED_DEFAULTS left at None (--model among them, so the spec can be chosen)."""
    for name, value in FIXED_DEFAULTS.items():
        if getattr(args, name, False) is None:
            setattr(args, name, value)


def apply_defaults(args: argparse.Namespace, spec: ModelSpec, stage: str) -> None:
    """Fill the flags left at None from the spec table's defaults of ``stage``."""
    defaults = spec.stages[stage]
    for name in ("lr", "batch_size", "max_epochs", "penalty", "alpha", "optimizer"):
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, getattr(defaults, name))
    if hasattr(args, "wd") and args.wd is None:
        args.wd = defaults.weight_decay
    if hasattr(args, "lr_milestones") and args.lr_milestones is None:
        args.lr_milestones = list(defaults.lr_milestones)
    if hasattr(args, "lr_size") and args.lr_size is None:
        args.lr_size = spec.lr_size
    if hasattr(args, "img_size") and args.img_size is None:  # classifier stage: by --mode
        args.img_size = spec.hr_size if args.mode == "hr" else spec.lr_size
    if args.num_workers is None:
        args.num_workers = default_num_workers(spec)


def check_args(args: argparse.Namespace, spec: ModelSpec, world: int = 1) -> None:
    """Refuse values that would crash later or train something silently wrong, before anything is
    loaded or deleted; ``world`` is the number of processes (torchrun)."""
    for name in ("batch_size", "max_epochs", "test_interval", "train_samples", "test_samples"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise PatchDropError(f"--{name} must be positive, got {value}")
    if args.num_workers < 0:
        raise PatchDropError(f"--num_workers must be 0 or more, got {args.num_workers}")
    if args.lr <= 0:
        raise PatchDropError(f"--lr must be positive, got {args.lr}")
    if getattr(args, "penalty", None) is not None and args.penalty >= 0:
        raise PatchDropError(f"--penalty is the reward of a wrong prediction and must be negative, "
                             f"got {args.penalty}")
    if getattr(args, "alpha", None) is not None and not 0.5 < args.alpha <= 1:
        raise PatchDropError(f"--alpha must lie in (0.5, 1], got {args.alpha}")
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
    lr_size = getattr(args, "lr_size", None)
    if lr_size is not None and (lr_size <= 0 or lr_size > spec.hr_size or spec.hr_size % lr_size):
        raise PatchDropError(f"--lr_size must divide the HR size {spec.hr_size} of {spec.name}, "
                             f"got {lr_size}")
