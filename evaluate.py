"""Evaluate a checkpoint of any stage on the test split: accuracy against HR patches acquired, with
95 % intervals and paired comparisons against baselines of the same budget; FLOPs and speed.

    python evaluate.py --load cv/c10_ft
    python evaluate.py --load cv/c10_ft --ckpt_lr_cl cv/c10_lr --baselines --thresholds 0.3 0.5 0.7 --budgets all

The setting reported first is what the checkpoint does at test time: its greedy policy (policy
stages), all HR patches (an HR classifier) or the LR image alone (an LR classifier). With --baselines
the table adds full HR, LR only (given an LR classifier) and random, central and horizontal / vertical
band patches at the policy's budget (its mean patches kept, rounded); with --budgets they are also
swept over those budgets, beside the policy's own top-k. Each accuracy has its 95 % Wilson interval;
the policy against each baseline of the same budget gets the accuracy difference with a 95 %
paired-bootstrap interval over the test images and McNemar's exact p-value (utils/stats.py).

Writes, into --out (default: the checkpoint's run folder; cv/eval/<run>/ for a checkpoint this repository
ships): eval_<run>.json (every number), sweep_<run>.csv (a row per setting) and, with more than one
setting, sweep_<run>.png; --json, --sweep_csv and --sweep_png name other files.
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
from utils.cli import add_eval_args, eval_test_set, note_lines, progress, run_cli, start_eval
from utils.data import build_loader
from utils.errors import PatchDropError
from utils.evaluation import Evaluator, Setting, load_evaluator, output_dir, run_name
from utils.stats import wilson_interval

MAIN_SETTING = {"classifier_hr": "full_hr", "classifier_lr": "lr_only", "pretrain": "policy",
                "finetune": "policy", "finetune2stream": "policy"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PatchDrop evaluation: accuracy, patches, FLOPs, speed")
    add = parser.add_argument
    add_eval_args(parser, load_help="checkpoint of any stage (file or run dir)",
                  lr_help="LR classifier checkpoint: the 'LR only' baseline, and the LR stream of a "
                          "two-stream checkpoint instead of its own (default: none)")
    add("--seed", type=int, default=0, help="seed of the random baseline (with k: the stream of budget k; "
                                            "default: 0)")
    add("--amp", action="store_true", help="bfloat16 autocast (default: float32)")
    add("--channels_last", action="store_true", help="NHWC memory format (default: off)")
    add("--baselines", action="store_true",
        help="also full HR, LR only, random and fixed patches, each compared with the policy (costs one "
             "classifier pass per setting: README, Evaluate; default: off)")
    add("--thresholds", type=float, nargs="+", default=[], help="policy probability thresholds to sweep (default: none)")
    add("--budgets", nargs="+", default=[], help="k most probable patches to sweep: a list, or 'all' (default: none)")
    add("--json", default=None, help="the results as a JSON object (default: <out>/eval_<run>.json)")
    add("--sweep_csv", default=None, help="a row per setting (default: <out>/sweep_<run>.csv)")
    add("--sweep_png", default=None, help="accuracy against patches kept (default: <out>/sweep_<run>.png)")
    add("--speed_batches", type=int, default=4, help="batches timed for images per second (default: 4)")
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


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_sweep(path: Path, rows: list[dict], title: str, num_patches: int) -> None:
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


def score_settings(evaluator: Evaluator, loader, settings: list[Setting], baselines: bool, print_freq: int):
    """Results of every setting (with the 95 % interval of its accuracy) and its per-image correctness,
    and with --baselines of a policy also the random and fixed baselines at the policy's own budget (its
    mean patches kept, rounded) where not swept already: a second pass. Returns the settings (extended),
    their results, their correctness and that budget (None for a classifier checkpoint)."""
    def scored(batch_settings):
        return evaluator.run(progress(loader, f"scoring {len(batch_settings)} settings", print_freq),
                             batch_settings)

    results, correct = scored(settings)
    budget = None
    if settings[0].method == "policy":
        budget = round(results[settings[0].name]["sparsity"])
        extra = [Setting(m, budget) for m in ("random", *evaluation.FIXED_METHODS)
                 if baselines and evaluator.resnet_hr is not None and f"{m} k={budget}" not in results]
        if extra:
            more, more_correct = scored(extra)
            results, correct, settings = {**results, **more}, {**correct, **more_correct}, settings + extra
    for name, result in results.items():
        result["accuracy_low"], result["accuracy_high"] = wilson_interval(correct[name])
    return settings, results, correct, budget


def difference(pair: dict) -> str:
    return (f"{pair['difference']:+.4f} [{pair['low']:+.4f}, {pair['high']:+.4f}] "
            f"p={pair['p_value']:.2g}")


def console_table(report: dict, settings: list[Setting], results: dict, pairs: list[dict],
                  num_patches: int) -> list[str]:
    """The reported setting, the baselines at its budget (each with policy - baseline) and the policy
    sweeps; then, over --budgets, the top-k policy against each baseline; FLOPs and speed."""
    budget = report["policy_budget"]
    lines = [f"{report['model']} {report['stage']} checkpoint {report['checkpoint']} (epoch {report['epoch']}), "
             f"{report['test_images']} test images, {report['device']}",
             f"{'setting':<22} {'accuracy':>8} {'95% interval':>17} {'S':>7} {'HR pixels':>9}   policy - this "
             f"[95% paired interval], McNemar p"]
    for st in settings:
        if st.value is not None and st.method not in ("threshold", "budget") and st.value != budget:
            continue  # a baseline of another budget: in the sweep table below
        r = results[st.name]
        pair = next((c for c in pairs if c["baseline"] == st.name and c["policy"] == "policy"), None)
        lines.append(f"{st.name:<22} {r['accuracy']:8.4f} [{r['accuracy_low']:.4f}, {r['accuracy_high']:.4f}] "
                     f"{r['sparsity']:7.3f} {r['sparsity'] / num_patches:9.1%}"
                     + (f"   {difference(pair)}" if pair else ""))
    topk = sorted({c["k"] for c in pairs if c["policy"].startswith("budget")})
    if topk:
        lines.append("top-k policy against the baselines of the same k: accuracy, and top-k - baseline "
                     "[95% paired interval], McNemar p")
        for k in topk:
            row = [f"k={k:<3} top-k {results[f'budget k={k}']['accuracy']:.4f}"]
            row += [f"{c['method']} {results[c['baseline']]['accuracy']:.4f} ({difference(c)})"
                    for c in pairs if c["k"] == k and c["policy"] == f"budget k={k}"]
            lines.append("  " + "; ".join(row))
    flops = report["flops_per_image"]
    breakdown = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in flops.items() if k != "total")
    lines.append(f"FLOPs per image: {flops['total'] / 1e6:.2f} M ({breakdown}); "
                 f"{report['images_per_second']:.0f} images/s at batch {report['speed_batch_size']}, "
                 f"latency {report['latency_ms']:.1f} ms per image")
    return lines


def output_paths(args: argparse.Namespace, ckpt: dict) -> dict[str, Path]:
    """The JSON, CSV and PNG this evaluation writes: the flags' files, else <out>/<kind>_<run>.<ext>."""
    folder, name = output_dir(ckpt["path"], args.out), run_name(ckpt["path"])
    return {"json": Path(args.json or folder / f"eval_{name}.json"),
            "csv": Path(args.sweep_csv or folder / f"sweep_{name}.csv"),
            "png": Path(args.sweep_png or folder / f"sweep_{name}.png")}


def main(args: argparse.Namespace) -> dict:
    ckpt, spec, device = start_eval(args)
    if any(not 0 <= t <= 1 for t in args.thresholds):
        raise PatchDropError(f"--thresholds must lie in [0, 1], got {args.thresholds}")
    budgets = parse_budgets(args.budgets, spec.num_patches) if args.budgets else []
    accel = Accel(device, amp=args.amp, channels_last=args.channels_last)
    evaluator = load_evaluator(spec, ckpt, args.ckpt_lr_cl, accel, seed=args.seed)
    notes = check_sweeps(ckpt, evaluator, args.thresholds, budgets, spec.num_patches)
    test_loader = build_loader(eval_test_set(args, spec), args.batch_size, train=False,
                               num_workers=args.num_workers, device=device, seed=args.seed)

    main_setting = Setting(MAIN_SETTING[ckpt["stage"]])
    settings = choose_settings(main_setting, evaluator, args.thresholds, budgets, args.baselines)
    settings, results, correct, policy_budget = score_settings(evaluator, test_loader, settings, args.baselines,
                                                               args.print_freq)
    pairs = evaluation.comparisons(settings, correct, policy_budget)
    main_result = results[main_setting.name]
    flops = evaluator.flops_per_image(main_setting, spec.hr_size, device)
    speed = measure_speed(evaluator, main_setting, test_loader, args.speed_batches, device)
    report = {
        "model": spec.name, "checkpoint": ckpt["path"], "stage": ckpt["stage"], "epoch": ckpt["epoch"],
        "setting": main_setting.name, "test_images": len(test_loader.dataset),
        **{k: main_result[k] for k in ("accuracy", "accuracy_low", "accuracy_high", "sparsity", "variance",
                                       "unique_policies", "reward")},
        "hr_pixel_fraction": main_result["sparsity"] / spec.num_patches, "penalty": evaluator.penalty,
        "flops_per_image": flops, **speed, "device": device_name(device),
        "options": {"amp": accel.amp, "channels_last": accel.channels_last},
        "policy_budget": policy_budget, "seed": args.seed,
        "curriculum_learned_patches": int(evaluator.learned.sum()) if evaluator.learned is not None else None,
        "settings": {s.name: {"method": s.method, "setting": s.value, **results[s.name]} for s in settings},
        "comparisons": pairs,
    }
    paths = output_paths(args, ckpt)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    rows = evaluation.sweep_rows(results, settings, pairs)
    write_csv(paths["csv"], rows)
    written = [paths["json"], paths["csv"]]
    if len(settings) > 1:
        plot_sweep(paths["png"], rows, f"{spec.name}, {ckpt['stage']} ({run_name(ckpt['path'])}), "
                                       f"{report['test_images']} test images", spec.num_patches)
        written.append(paths["png"])
    print("\n".join(console_table(report, settings, results, pairs, spec.num_patches)
                     + note_lines(accel.notes + notes) + [f"wrote {', '.join(map(str, written))}"]))
    return report


if __name__ == "__main__":
    run_cli(main, get_args_parser())
