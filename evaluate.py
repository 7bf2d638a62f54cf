"""Evaluate a checkpoint of any stage on the test split: accuracy against HR patches acquired, FLOPs,
speed, and optionally budget sweeps and baselines on the same classifier.

    python evaluate.py --model R32_C10 --load cv/c10_ft --json cv/c10_ft/eval.json
    python evaluate.py --model R32_C10 --load cv/c10_ft --ckpt_lr_cl cv/c10_lr --baselines \
        --thresholds 0.1 0.3 0.5 0.7 0.9 --budgets all --sweep_csv sweep.csv --sweep_png sweep.png

The setting reported first is what the checkpoint does at test time: its greedy policy (policy
stages), all HR patches (an HR classifier) or the LR image alone (an LR classifier). With --baselines
the table adds full HR, LR only (given an LR classifier) and random, central and horizontal / vertical
band patches at the policy's budget (its mean patches kept, rounded); with --budgets they are also
swept over those budgets. See utils/evaluation.py for the settings.
"""
import argparse
import csv
import json
import statistics
import time
from itertools import islice
from pathlib import Path


from utils import evaluation
from utils.accel import Accel, device_name, synchronize
from utils.cli import add_eval_args, eval_test_set, note_lines, run_cli, start_eval
from utils.data import build_loader
from utils.errors import PatchDropError
from utils.evaluation import Evaluator, Setting, load_evaluator

MAIN_SETTING = {"classifier_hr": "full_hr", "classifier_lr": "lr_only", "pretrain": "policy",
                "finetune": "policy", "finetune2stream": "policy"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PatchDrop evaluation: accuracy, patches, FLOPs, speed")
    add = parser.add_argument
    add_eval_args(parser, load_help="checkpoint of any stage (file or run dir)",
                  lr_help="LR classifier checkpoint: the 'LR only' baseline, and the LR stream of a "
                          "two-stream checkpoint instead of its own")
    add("--seed", type=int, default=0, help="seed of the random baseline")
    add("--amp", action="store_true")
    add("--channels_last", action="store_true")
    add("--baselines", action="store_true", help="full HR, LR only, random and fixed patches")
    add("--thresholds", type=float, nargs="+", default=[], help="policy probability thresholds to sweep")
    add("--budgets", nargs="+", default=[], help="k most probable patches to sweep (list, or 'all')")
    add("--sweep_csv", default=None, help="write method,setting,patches,accuracy rows here")
    add("--sweep_png", default=None, help="draw accuracy against patches kept here")
    add("--json", default=None, help="write the results as a JSON object here")
    add("--speed_batches", type=int, default=4, help="batches timed for images per second")
    return parser


def parse_budgets(values: list[str], num_patches: int) -> list[int]:
    if values == ["all"]:
        return list(range(1, num_patches + 1))
    try:
        budgets = [int(v) for v in values]
    except ValueError:
        raise PatchDropError(f"--budgets takes integers 1..{num_patches} or 'all', got {values}") from None
    if any(not 0 <= k <= num_patches for k in budgets):
        raise PatchDropError(f"--budgets must lie in 0..{num_patches}, got {budgets}")
    return budgets


def measure_speed(evaluator: Evaluator, setting: Setting, loader, num_batches: int, device) -> dict:
    """Images per second of the setting's whole pipeline on batches held in memory, and the latency of
    one image (median of 20 runs), on ``device``."""
    batches = [(x.to(device), y.to(device)) for x, y in islice(iter(loader), num_batches)]
    evaluator.run(batches[:1], [setting])  # warm-up
    synchronize(device)
    start = time.perf_counter()
    evaluator.run(batches, [setting])
    synchronize(device)
    images = sum(len(y) for _, y in batches)
    rate = images / (time.perf_counter() - start)
    single = [(batches[0][0][:1], batches[0][1][:1])]
    times = []
    for _ in range(20):
        synchronize(device)
        start = time.perf_counter()
        evaluator.run(single, [setting])
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"images_per_second": rate, "latency_ms": 1000 * statistics.median(times),
            "speed_batch_size": len(batches[0][1])}


def write_csv(path: str, rows: list[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["method", "setting", "patches", "accuracy"])
        writer.writeheader()
        writer.writerows(rows)


def plot_sweep(path: str, rows: list[dict], title: str, num_patches: int) -> None:
    """Accuracy against mean patches kept: one curve per method with several settings, points else."""
    import matplotlib  # noqa: PLC0415 (only figures need it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    styles = {"policy": dict(marker="*", markersize=14, color="black", label="learned policy"),
              "threshold": dict(marker="o", color="tab:blue", label="policy, thresholds"),
              "budget": dict(marker="s", color="tab:cyan", label="policy, top-k budgets"),
              "random": dict(marker="x", color="tab:red", label="random patches"),
              "center": dict(marker="^", color="tab:green", label="fixed: centre"),
              "fixed_h": dict(marker=">", color="tab:olive", label="fixed: horizontal band"),
              "fixed_v": dict(marker="v", color="tab:purple", label="fixed: vertical band"),
              "full_hr": dict(marker="D", color="tab:gray", label="full HR"),
              "lr_only": dict(marker="P", color="tab:brown", label="LR only")}
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, style in styles.items():
        points = sorted((r["patches"], r["accuracy"]) for r in rows if r["method"] == method)
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, linestyle="-" if len(points) > 1 else "none",
                    zorder=3 if method == "policy" else 2, **style)
    ax.set_xlabel(f"HR patches acquired (mean of {num_patches})")
    ax.set_ylabel("test accuracy")
    ax.set_xlim(-0.5, num_patches + 0.5)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def check_sweeps(ckpt: dict, evaluator: Evaluator, thresholds: list[float], budgets: list[int],
                 num_patches: int) -> list[str]:
    """Refuse the sweeps the checkpoint cannot serve; returns notes on how it is scored."""
    if evaluator.agent is None and (thresholds or budgets):
        raise PatchDropError(f"--thresholds and --budgets sweep a policy; {ckpt['path']} is a "
                             f"{ckpt['stage']} checkpoint without one")
    if evaluator.learned is None:
        return []
    learned = int(evaluator.learned.sum())
    if budgets:
        raise PatchDropError(f"{ckpt['path']}: saved in the curriculum phase of pretrain.py (epoch "
                             f"{ckpt['epoch']}: patches 0..{learned - 1} learned), so its policy cannot "
                             f"rank all patches; drop --budgets, or evaluate a checkpoint of epoch "
                             f"{num_patches - 1} or later")
    return [f"curriculum checkpoint (epoch {ckpt['epoch']}): patches {learned}..{num_patches - 1} are "
            f"kept, as pretrain.py's test did at that epoch"]


def choose_settings(main_setting: Setting, evaluator: Evaluator, thresholds: list[float],
                    budgets: list[int], baselines: bool) -> list[Setting]:
    """The reported setting first, then the policy sweeps, then (--baselines) full HR, LR only and the
    random and fixed baselines over the budgets."""
    settings = [main_setting]
    settings += [Setting("threshold", t) for t in thresholds]
    settings += [Setting("budget", k) for k in budgets]
    if baselines:
        if evaluator.resnet_hr is not None and main_setting.method != "full_hr":
            settings.append(Setting("full_hr"))
        if evaluator.resnet_lr is not None and main_setting.method != "lr_only":
            settings.append(Setting("lr_only"))
        if evaluator.resnet_hr is not None:
            settings += [Setting(m, k) for k in budgets for m in ("random", *evaluation.FIXED_METHODS)]
    return settings


def score_settings(evaluator: Evaluator, loader, settings: list[Setting], baselines: bool):
    """Results of every setting, and with --baselines of a policy also the random and fixed baselines
    at the policy's own budget (its mean patches kept, rounded) where not swept already. Returns the
    settings (extended), their results and that budget (None for a classifier checkpoint)."""
    results = evaluator.run(loader, settings)
    if settings[0].method != "policy":
        return settings, results, None
    budget = round(results[settings[0].name]["sparsity"])
    if baselines and evaluator.resnet_hr is not None:
        extra = [Setting(m, budget) for m in ("random", *evaluation.FIXED_METHODS)]
        extra = [s for s in extra if s.name not in results]
        if extra:
            results.update(evaluator.run(loader, extra))
            settings = settings + extra
    return settings, results, budget


def console_table(report: dict, settings: list[Setting], results: dict, num_patches: int) -> list[str]:
    """The reported setting, the baselines at its budget and the policy sweeps (the baseline curves over
    --budgets are in the JSON and CSV); FLOPs and speed."""
    budget = report["policy_budget"]
    shown = [st for st in settings if st.value is None or st.method in ("threshold", "budget")
             or st.value == budget]
    lines = [f"{report['model']} {report['stage']} checkpoint {report['checkpoint']} (epoch {report['epoch']}), "
             f"{report['test_images']} test images, {report['device']}",
             f"{'setting':<22} {'accuracy':>8} {'S':>7} {'HR pixels':>9}"]
    for st in shown:
        r = results[st.name]
        lines.append(f"{st.name:<22} {r['accuracy']:8.4f} {r['sparsity']:7.3f} "
                     f"{r['sparsity'] / num_patches:9.1%}")
    flops = report["flops_per_image"]
    breakdown = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in flops.items() if k != "total")
    lines.append(f"FLOPs per image: {flops['total'] / 1e6:.2f} M ({breakdown}); "
                 f"{report['images_per_second']:.0f} images/s at batch {report['speed_batch_size']}, "
                 f"latency {report['latency_ms']:.1f} ms per image")
    return lines


def main(args: argparse.Namespace) -> dict:
    spec, device = start_eval(args)
    if any(not 0 <= t <= 1 for t in args.thresholds):
        raise PatchDropError(f"--thresholds must lie in [0, 1], got {args.thresholds}")
    budgets = parse_budgets(args.budgets, spec.num_patches) if args.budgets else []
    accel = Accel(device, amp=args.amp, channels_last=args.channels_last)
    ckpt, evaluator = load_evaluator(spec, args.load, args.ckpt_lr_cl, accel, seed=args.seed)
    notes = check_sweeps(ckpt, evaluator, args.thresholds, budgets, spec.num_patches)
    test_loader = build_loader(eval_test_set(args, spec), args.batch_size, train=False,
                               num_workers=args.num_workers, device=device, seed=args.seed)

    main_setting = Setting(MAIN_SETTING[ckpt["stage"]])
    settings = choose_settings(main_setting, evaluator, args.thresholds, budgets, args.baselines)
    settings, results, policy_budget = score_settings(evaluator, test_loader, settings, args.baselines)
    main_result = results[main_setting.name]
    flops = evaluator.flops_per_image(main_setting, spec.hr_size, device)
    speed = measure_speed(evaluator, main_setting, test_loader, args.speed_batches, device)
    report = {
        "model": spec.name, "checkpoint": ckpt["path"], "stage": ckpt["stage"], "epoch": ckpt["epoch"],
        "setting": main_setting.name, "test_images": len(test_loader.dataset),
        **{k: main_result[k] for k in ("accuracy", "sparsity", "variance", "unique_policies", "reward")},
        "hr_pixel_fraction": main_result["sparsity"] / spec.num_patches, "penalty": evaluator.penalty,
        "flops_per_image": flops, **speed, "device": device_name(device),
        "options": {"amp": accel.amp, "channels_last": accel.channels_last},
        "policy_budget": policy_budget,
        "curriculum_learned_patches": int(evaluator.learned.sum()) if evaluator.learned is not None else None,
        "settings": {s.name: {"method": s.method, "setting": s.value, **results[s.name]} for s in settings},
    }
    print("\n".join(console_table(report, settings, results, spec.num_patches)
                     + note_lines(accel.notes + notes)))

    rows = evaluation.sweep_rows(results, settings)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.sweep_csv:
        write_csv(args.sweep_csv, rows)
    if args.sweep_png:
        plot_sweep(args.sweep_png, rows, f"{spec.name}, {ckpt['stage']} ({Path(ckpt['path']).parent.name}), "
                                         f"{report['test_images']} test images", spec.num_patches)
    return report


if __name__ == "__main__":
    run_cli(main, get_args_parser())
