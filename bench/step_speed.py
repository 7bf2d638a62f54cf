"""Training-step throughput of each stage against the authors' step (bench/reference.py).

    python -m bench.step_speed --model R32_C10 --batch_size 256                  # default options
    python -m bench.step_speed --model R32_C10 --batch_size 256 --amp --channels_last

Both steps run on the same networks (randomly initialized, copied so neither disturbs the other) and
on the same synthetic batch already on the device, so only the step itself is timed. For each stage
the two are run interleaved (their order alternating) for --reps repetitions of --steps steps after a
warm-up; the table gives images per second as median [min-max] and the ratio of the medians. With
--frozen_pass both, pretrain is also timed with the frozen classifier's two passes batched as one.
This is a benchmark, not a test: nothing is asserted.
"""
import argparse
import copy
import json
import statistics
import time

import torch

import classifier_training
import finetune
import finetune2stream
import pretrain
from bench import reference
from models import build_model
from utils.accel import Accel, configure_backends, device_name, select_device, synchronize
from utils.cli import check_counts, run_cli
from utils.spec import get_spec

STAGES = ("classifier_hr", "classifier_lr", "pretrain", "finetune", "finetune2stream")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PatchDrop training-step benchmark")
    add = parser.add_argument
    add("--model", default="R32_C10", help="R32_C10 (default), R32_C100, R50_ImgNet or R34_fMoW")
    add("--batch_size", type=int, default=256, help="images per step (default: 256)")
    add("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="stages to time (default: all five)")
    add("--reps", type=int, default=5, help="timed repetitions per implementation (default: 5)")
    add("--steps", type=int, default=5, help="steps per repetition (default: 5)")
    add("--device", default="auto", help="auto (CUDA if available; default), cpu, cuda, cuda:N")
    add("--amp", action="store_true", help="bfloat16 autocast (default: off)")
    add("--channels_last", action="store_true", help="NHWC memory format (default: off)")
    add("--compile", action="store_true", help="torch.compile (default: off)")
    add("--frozen_pass", choices=("default", "both"), default="default",
        help="both: also time pretrain with one 2B pass of the frozen classifier (default: default)")
    add("--json", default=None, help="also write the rows to this JSON file (default: none)")
    return parser


def build_steps(stage: str, spec, batch: tuple, accel: Accel, device: torch.device, batched: bool | None):
    """(ours, reference): two closures running one training step of ``stage`` each."""
    inputs, targets = batch
    defaults = spec.stages[stage]
    policy = dict(penalty=defaults.penalty, alpha=defaults.alpha, lr_size=spec.lr_size)
    grid = spec.grid

    def nets(*archs):
        built = [build_model(arch, n) for arch, n in archs]
        return built, [copy.deepcopy(net) for net in built]

    if stage.startswith("classifier"):
        size = spec.hr_size if stage == "classifier_hr" else spec.lr_size
        (ours_net,), (ref_net,) = nets((spec.classifier_arch, spec.num_classes))
        ours_net, ref_net = accel.prepare(ours_net, trainable=True).train(), ref_net.to(device).train()
        ours_opt = torch.optim.SGD(ours_net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        ref_opt = torch.optim.SGD(ref_net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        x, y = accel.inputs(inputs, targets)
        return (lambda: classifier_training.train_step(ours_net, x, y, ours_opt, accel, img_size=size),
                lambda: reference.classifier_step(ref_net, inputs, targets, ref_opt, img_size=size))

    archs = [(spec.policy_arch, spec.num_patches), (spec.classifier_arch, spec.num_classes)]
    if stage == "finetune2stream":
        archs.append((spec.classifier_arch, spec.num_classes))
    ours_nets, ref_nets = nets(*archs)
    ref_nets = [net.to(device).train() for net in ref_nets]
    x, y = accel.inputs(inputs, targets)
    if stage == "pretrain":
        agent = accel.prepare(ours_nets[0], trainable=True).train()
        hr = accel.prepare(ours_nets[1].requires_grad_(False), trainable=False).eval()
        if batched is not None:
            accel.batch_frozen_passes = batched
        ours_opt = torch.optim.Adam(agent.parameters(), lr=1e-4)
        ref_nets[1].eval()  # frozen in eval mode, but with requires_grad left on, as theirs
        ref_opt = torch.optim.Adam(ref_nets[0].parameters(), lr=1e-4)
        return (lambda: pretrain.train_step(agent, hr, x, y, ours_opt, accel, **policy),
                lambda: reference.pretrain_step(*ref_nets, inputs, targets, ref_opt, grid=grid, **policy))
    agent = accel.prepare(ours_nets[0], trainable=True).train()
    hr = accel.prepare(ours_nets[1], trainable=True).train()
    ours_opt = torch.optim.Adam(list(agent.parameters()) + list(hr.parameters()), lr=1e-4)
    ref_opt = torch.optim.Adam(list(ref_nets[0].parameters()) + list(ref_nets[1].parameters()), lr=1e-4)
    if stage == "finetune":
        return (lambda: finetune.train_step(agent, hr, x, y, ours_opt, accel, **policy),
                lambda: reference.finetune_step(*ref_nets, inputs, targets, ref_opt, grid=grid, **policy))
    lr_net = accel.prepare(ours_nets[2].requires_grad_(False), trainable=False).eval()
    ref_nets[2].eval()
    return (lambda: finetune2stream.train_step(agent, hr, lr_net, x, y, ours_opt, accel, fusion="sum",
                                               **policy),
            lambda: reference.finetune_step(ref_nets[0], ref_nets[1], inputs, targets, ref_opt, grid=grid,
                                            resnet_lr=ref_nets[2], **policy))


def timed(step, steps: int, batch_size: int, device: torch.device) -> float:
    """Images per second of ``steps`` calls of ``step``."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def measure(steps: dict, args, device) -> dict:
    """Images/s of each named step, --reps times, interleaved with the order rotating each time."""
    for step in steps.values():  # warm-up (and compilation)
        step()
    names = list(steps)
    results = {name: [] for name in names}
    for rep in range(args.reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            results[name].append(timed(steps[name], args.steps, args.batch_size, device))
    return results


def main(args: argparse.Namespace) -> list[dict]:
    check_counts(vars(args), positive=("batch_size", "reps", "steps"))
    spec, device = get_spec(args.model), select_device(args.device)
    configure_backends(device)  # cuDNN's autotuner, as in the stage scripts
    torch.manual_seed(0)
    accel = Accel(device, amp=args.amp, channels_last=args.channels_last, compile=args.compile)
    inputs = torch.randn(args.batch_size, 3, spec.hr_size, spec.hr_size, device=device)
    targets = torch.randint(spec.num_classes, (args.batch_size,), device=device)
    options = " ".join(f"--{name}" for name in ("amp", "channels_last", "compile") if getattr(accel, name))
    print(f"{args.model}, batch {args.batch_size}, {device_name(device)}, torch {torch.__version__}, "
          f"options: {options or 'default'}; images/s, median [min-max] of {args.reps} x {args.steps} steps")
    rows = []
    for stage in args.stages:
        ours, ref = build_steps(stage, spec, (inputs, targets), accel, device, None)
        steps = {"ours": ours, "reference": ref}
        if stage == "pretrain" and args.frozen_pass == "both":
            other = not accel.batch_frozen_passes
            steps[f"ours, {'one 2B' if other else 'two B'} frozen passes"] = build_steps(
                stage, spec, (inputs, targets), copy.copy(accel), device, other)[0]
        results = measure(steps, args, device)
        med = {k: statistics.median(v) for k, v in results.items()}
        for name in [n for n in steps if n != "reference"]:
            label = stage if name == "ours" else f"{stage} ({name.removeprefix('ours, ')})"
            row = {"stage": label, "device": device_name(device), "options": options or "default",
                   "batch_size": args.batch_size, "ours": results[name], "reference": results["reference"],
                   "ratio": med[name] / med["reference"]}
            rows.append(row)
            print(f"  {label:<38} ours {med[name]:8.1f} [{min(results[name]):.1f}-{max(results[name]):.1f}]"
                  f"   reference {med['reference']:8.1f} [{min(results['reference']):.1f}-"
                  f"{max(results['reference']):.1f}]   ratio {row['ratio']:.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    run_cli(main, get_args_parser())
