"""Training throughput of each stage with its real data pipeline and paper batch size, its peak device
memory, and the wall time the paper's schedule takes at that rate.

    python -m bench.stage_speed --model R32_C10 --data_dir data/ --gpu_data --amp --channels_last
    python -m bench.stage_speed --model R50_ImgNet --synthetic --stages pretrain finetune --amp

For each stage: its networks (random weights: the speed does not depend on them), its optimizer, its
batch size from the spec table (or --batch_size), and the training loader the stage script builds (with
--synthetic: one random batch already on the device, for datasets that are not on this machine). The
first step is timed on its own (it holds cuDNN's algorithm search and, with --compile, the compilation);
then --steps steps are timed, data loading included. The projection is the spec's epochs times the
dataset's training images divided by that rate: training only, without the test passes (every 5 epochs,
forward only) and start-up. This is a benchmark, not a test: nothing is asserted.
"""
import argparse
import itertools
import json
import time

import torch

import classifier_training
import finetune
import finetune2stream
import pretrain
from models import build_model
from utils.accel import Accel, configure_backends, device_name, select_device, synchronize
from utils.cli import check_counts, run_cli
from utils.data import build_loaders
from utils.spec import STAGES, get_spec

# Training images of the full datasets, for the projection (fMoW's count depends on the preprocessing).
TRAIN_IMAGES = {"R32_C10": 50_000, "R32_C100": 50_000, "R50_ImgNet": 1_281_167}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PatchDrop stage throughput and projected wall time")
    add = parser.add_argument
    add("--model", default="R32_C10", help="R32_C10 (default), R32_C100, R50_ImgNet or R34_fMoW")
    add("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="stages to time (default: all five)")
    add("--steps", type=int, default=50, help="timed steps per stage, after the first (default: 50)")
    add("--batch_size", type=int, default=None, help="one batch size for all stages (default: the spec's)")
    add("--data_dir", default="data/", help="dataset root (default: data/)")
    add("--fake_data", action="store_true", help="random images of the right shape (default: off)")
    add("--train_samples", type=int, default=None, help="images held or read; a subset is enough (default: all)")
    add("--synthetic", action="store_true", help="a random batch on the device instead of a loader (default: off)")
    add("--num_workers", type=int, default=4, help="DataLoader worker processes (default: 4)")
    add("--device", default="auto", help="auto (CUDA if available; default), cpu, cuda, cuda:N")
    for flag, what in (("--amp", "bfloat16 autocast"), ("--channels_last", "NHWC memory format"),
                       ("--compile", "torch.compile"), ("--gpu_data", "CIFAR held and augmented on the device")):
        add(flag, action="store_true", help=f"{what} (default: off)")
    add("--json", default=None, help="also write the rows to this JSON file (default: none)")
    return parser


def stage_step(stage: str, spec, accel: Accel):
    """(step(inputs, targets), batch size): one training step of ``stage`` on fresh networks."""
    defaults = spec.stages[stage]
    policy = dict(penalty=defaults.penalty, alpha=defaults.alpha, lr_size=spec.lr_size)
    net = lambda arch, n, trainable=True: accel.prepare(  # noqa: E731
        build_model(arch, n).requires_grad_(trainable), trainable=trainable)
    if stage.startswith("classifier"):
        model = net(spec.classifier_arch, spec.num_classes).train()
        optimizer = classifier_training.build_optimizer(model.parameters(), defaults.optimizer, lr=defaults.lr,
                                                        weight_decay=defaults.weight_decay, momentum=0.9)
        size = spec.hr_size if stage == "classifier_hr" else spec.lr_size
        return lambda x, y: classifier_training.train_step(model, x, y, optimizer, accel, img_size=size)
    agent = net(spec.policy_arch, spec.num_patches).train()
    if stage == "pretrain":
        hr = net(spec.classifier_arch, spec.num_classes, trainable=False).eval()
        optimizer = torch.optim.Adam(agent.parameters(), lr=defaults.lr)
        return lambda x, y: pretrain.train_step(agent, hr, x, y, optimizer, accel, **policy)
    hr = net(spec.classifier_arch, spec.num_classes).train()
    optimizer = torch.optim.Adam(itertools.chain(agent.parameters(), hr.parameters()), lr=defaults.lr)
    if stage == "finetune":
        return lambda x, y: finetune.train_step(agent, hr, x, y, optimizer, accel, **policy)
    lr_net = net(spec.classifier_arch, spec.num_classes, trainable=False).eval()
    return lambda x, y: finetune2stream.train_step(agent, hr, lr_net, x, y, optimizer, accel, fusion="sum",
                                                   **policy)


def batches(stage: str, spec, args, accel: Accel, batch_size: int):
    """An endless iterator of training batches on the device, as the stage's loader gives them: epoch
    after epoch, each one loaded (decoded, augmented) anew, nothing replayed from memory."""
    if args.synthetic:
        x = torch.randn(batch_size, 3, spec.hr_size, spec.hr_size)
        batch = accel.inputs(x, torch.randint(spec.num_classes, (batch_size,)))
        return itertools.repeat(batch)
    data = build_loaders(spec, accel.device, data_dir=args.data_dir, batch_size=batch_size,
                         num_workers=args.num_workers, seed=0, download=False, fake_data=args.fake_data,
                         train_samples=args.train_samples, test_samples=1, gpu_data=args.gpu_data,
                         memory_format=accel.memory_format)
    return (accel.inputs(x, y) for epoch in itertools.count() for x, y in data.train_epoch(epoch))


def measure(stage: str, spec, args, accel: Accel) -> dict:
    batch_size = args.batch_size or spec.stages[stage].batch_size
    torch.manual_seed(0)
    step = stage_step(stage, spec, accel)
    data = batches(stage, spec, args, accel, batch_size)
    if accel.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accel.device)
    synchronize(accel.device)
    start = time.perf_counter()
    step(*next(data))
    synchronize(accel.device)
    first = time.perf_counter() - start
    start = time.perf_counter()
    images = 0
    for _ in range(args.steps):
        x, y = next(data)
        step(x, y)
        images += len(y)
    synchronize(accel.device)
    rate = images / (time.perf_counter() - start)
    epochs, train_images = spec.stages[stage].max_epochs, TRAIN_IMAGES.get(spec.name)
    return {"stage": stage, "batch_size": batch_size, "images_per_second": rate, "first_step_s": first,
            "peak_memory_gib": (torch.cuda.max_memory_allocated(accel.device) / 2**30
                                if accel.device.type == "cuda" else None),
            "paper_epochs": epochs, "train_images": train_images,
            "projected_hours": epochs * train_images / rate / 3600 if train_images else None}


def main(args: argparse.Namespace) -> list[dict]:
    check_counts(vars(args), positive=("steps", "batch_size", "train_samples"), at_least_zero=("num_workers",))
    spec, device = get_spec(args.model), select_device(args.device)
    configure_backends(device)
    accel = Accel(device, amp=args.amp, channels_last=args.channels_last, compile=args.compile)
    options = " ".join(f"--{k}" for k in ("amp", "channels_last", "compile", "gpu_data", "synthetic")
                       if getattr(args, k)) or "default"
    print(f"{args.model} on {device_name(device)}, torch {torch.__version__}, options: {options}; "
          f"{args.steps} timed steps per stage")
    rows = []
    for stage in args.stages:
        row = {"model": args.model, "device": device_name(device), "options": options, **measure(stage, spec, args,
                                                                                                  accel)}
        rows.append(row)
        memory = f"{row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] is not None else "n/a"
        hours = f"{row['projected_hours']:.2f} h" if row["projected_hours"] is not None else "n/a"
        print(f"  {stage:<16} batch {row['batch_size']:>5}  {row['images_per_second']:9.0f} images/s  first step "
              f"{row['first_step_s']:6.1f} s  peak {memory:>9}  {row['paper_epochs']} epochs: {hours}", flush=True)
    for note in accel.notes:
        print(f"note: {note}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return rows


if __name__ == "__main__":
    run_cli(main, get_args_parser())
