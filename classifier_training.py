"""Stage 1: train the HR or the LR classifier with cross-entropy.

``--mode hr`` trains on full-resolution images, ``--mode lr`` on images downsampled to ``--img_size``
by nearest sampling (the LR image the policy sees). SGD on CIFAR, Adam on ImageNet and fMoW (the spec
table; --optimizer). Writes to --cv_dir: ckpt_last.pt, which the next stages load, and ckpt_best.pt
(stage "classifier_hr" or "classifier_lr", weights "state_dict"; best = test accuracy), metrics.jsonl,
TensorBoard logs under log/, args.json.

    python classifier_training.py --model R32_C10 --lr 1e-1 --cv_dir cv/c10_hr --batch_size 128 --img_size 32 --mode hr
"""
import argparse
import time

import torch
import torch.nn.functional as F

from models import build_model
from utils.accel import Accel
from utils.checkpoint import load_weights
from utils.cli import (add_common_args, closing_line, finished_run, open_run, progress, resolve_defaults,
                       run_cli, run_summary, stage_loaders, start)
from utils.errors import PatchDropError
from utils.metrics import ClassifierStats, console_lines, timed
from utils.policy import downsample
from utils.run import load_resume
from utils.schedule import lr_at, set_lr
from utils.weights import load_pretrained


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PatchDrop stage 1: HR / LR classifier training")
    parser.add_argument("--mode", choices=("hr", "lr"), default=None,
                        help="hr (default): full-resolution images; lr: images downsampled to --img_size")
    parser.add_argument("--img_size", type=int, default=None,
                        help="input side (default: the spec's HR size for hr, LR size for lr)")
    parser.add_argument("--pretrained", default=None, metavar="PATH",
                        help="initialize from a torchvision-format state dict, e.g. ImageNet weights "
                             "(the final layer is replaced when the class count differs; default: random "
                             "initialization)")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                        help="sgd (momentum 0.9; default on CIFAR) or adam (default on ImageNet and fMoW)")
    parser.add_argument("--lr_milestones", type=int, nargs="*", default=None, metavar="EPOCH",
                        help="epochs at which the LR is multiplied by 0.1 (default: 150 250 on CIFAR, "
                             "none on ImageNet and fMoW)")
    parser.add_argument("--wd", type=float, default=None,
                        help="weight decay (default: 5e-4 on CIFAR, a DEVIATION, see README; 0 on "
                             "ImageNet and fMoW; --wd 0 is the authors' setting)")
    add_common_args(parser)
    return parser


def prepare_inputs(inputs: torch.Tensor, img_size: int) -> torch.Tensor:
    """LR mode feeds the nearest-downsampled image, exactly as the policy stages build it."""
    return inputs if inputs.shape[-1] == img_size else downsample(inputs, img_size)


def train_step(model, inputs, targets, optimizer, accel: Accel, *, img_size: int):
    """One SGD step on a batch already on the device; returns the logits and the loss (float32)."""
    with accel.autocast():
        logits = model(prepare_inputs(inputs, img_size)).float()
    loss = F.cross_entropy(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits.detach(), loss


def train_one_epoch(model, batches, optimizer, accel: Accel, *, img_size: int,
                    counted: int | None = None) -> dict:
    """One pass over ``batches``; ``counted``: this rank's images that count in the statistics
    (utils/metrics.py, Counted)."""
    model.train()
    stats = ClassifierStats(accel.device, limit=counted)
    for inputs, targets in batches:
        inputs, targets = accel.inputs(inputs, targets)
        logits, loss = train_step(model, inputs, targets, optimizer, accel, img_size=img_size)
        stats.update(logits, targets, loss)
    return stats.compute()


@torch.no_grad()
def evaluate(model, batches, accel: Accel, *, img_size: int) -> dict:
    model.eval()
    stats = ClassifierStats(accel.device)
    for inputs, targets in batches:
        inputs, targets = accel.inputs(inputs, targets)
        with accel.autocast():
            logits = model(prepare_inputs(inputs, img_size)).float()
        stats.update(logits, targets, F.cross_entropy(logits, targets))
    return stats.compute()


def build_optimizer(params, name: str, *, lr: float, weight_decay: float, momentum: float):
    """SGD with momentum (CIFAR, the paper's recipe) or Adam (the authors' ImageNet / fMoW setting)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def stage_of(args: argparse.Namespace) -> str:
    """The checkpoint stage this script writes: classifier_hr or classifier_lr, by --mode."""
    return f"classifier_{args.mode}"


def main(args: argparse.Namespace) -> dict:
    resume = load_resume(args.resume, args.cv_dir)
    args = resolve_defaults(args, stage_of, resume)  # flags not given: the checkpoint's, else the spec's
    if done := finished_run(args, resume):
        print(done)
        return resume["metrics"]
    stage = stage_of(args)
    spec, device = start(args, stage)
    if args.mode == "hr" and args.img_size != spec.hr_size:
        raise PatchDropError(f"--mode hr trains on full {spec.hr_size}px images of {spec.name}, got "
                             f"--img_size {args.img_size}; use --mode lr for a lower resolution")
    if args.img_size <= 0 or spec.hr_size % args.img_size:
        raise PatchDropError(f"--img_size must divide the HR size {spec.hr_size}, got {args.img_size}")
    model = build_model(spec.classifier_arch, spec.num_classes)
    notes = []
    if resume:
        load_weights(model, resume, "state_dict")
    elif args.pretrained:
        notes.append(load_pretrained(model, args.pretrained))
    accel = Accel(device, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                  parallel=args.parallel, sync_bn=args.sync_bn)
    model = accel.prepare(model, trainable=True)
    optimizer = build_optimizer(model.parameters(), args.optimizer, lr=args.lr, weight_decay=args.wd,
                                momentum=spec.stages[stage].momentum)
    if resume:
        optimizer.load_state_dict(resume["optimizer"])  # its learning rate is set anew every epoch

    with open_run(args, spec, stage, "test_accuracy", device, resume) as run:
        data = stage_loaders(args, spec, device, accel.memory_format)
        notes += accel.notes + run.notes + run.track_rng(data.generator, shared_by_ranks=data.shared_by_ranks)
        print("\n".join(run_summary(stage, args, data, device, run.start_epoch, notes)))
        for epoch in run.epochs():
            started = time.perf_counter()
            lr = set_lr(optimizer, lr_at(epoch, args.lr, args.lr_milestones))
            train = train_one_epoch(model, progress(data.train_epoch(epoch), "train", args.print_freq),
                                    optimizer, accel, img_size=args.img_size, counted=data.train_counted)
            metrics = {"epoch": epoch, "lr": lr, **timed("train", train, started)}
            if run.is_test_epoch(epoch):
                test_started = time.perf_counter()
                test = evaluate(model, progress(data.test, "test", args.print_freq), accel, img_size=args.img_size)
                metrics.update(timed("test", test, test_started))
            metrics["epoch_seconds"] = time.perf_counter() - started
            run.end_epoch(metrics, {"state_dict": model}, optimizer)
            print("\n".join(console_lines(metrics)), flush=True)
    print(closing_line(run))
    return run.last_metrics


if __name__ == "__main__":
    run_cli(main, get_args_parser())
