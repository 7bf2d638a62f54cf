"""Figures of a scripts/reproduce.sh output folder, written to OUT/eval/:

tradeoff.png         test accuracy against HR patches kept, one panel per fine-tuned policy (the paper's
                     penalty, then the penalty sweep's): its greedy policy, its top-k ranking, random
                     patches and the fixed baselines over k on its classifier, that classifier with all
                     patches, and the stage-1 HR classifier; the other penalties' greedy points hollow.
finetune_curves.png  test accuracy and S (mean patches kept) over the epochs of each fine-tuning run,
                     from its metrics.jsonl.

    python scripts/results_figures.py OUT [--profile PROFILE]

With --profile quick every figure is titled as an installation check: its numbers mean nothing.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVES = {"budget": dict(marker="s", color="tab:cyan", label="policy, top-k"),
          "random": dict(marker="x", color="tab:red", label="random patches"),
          "center": dict(marker="^", color="tab:green", label="fixed: centre"),
          "fixed_h": dict(marker=">", color="tab:olive", label="fixed: horizontal band"),
          "fixed_v": dict(marker="v", color="tab:purple", label="fixed: vertical band")}


def read_sweep(path: Path) -> dict[str, list[tuple[float, float]]]:
    """{method: sorted [(patches, accuracy)]} of an evaluate.py --sweep_csv file."""
    points: dict[str, list] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            points.setdefault(row["method"], []).append((float(row["patches"]), float(row["accuracy"])))
    return {method: sorted(values) for method, values in points.items()}


def finetune_runs(out: Path) -> list[str]:
    """``ft`` (the paper's penalty) first, then the sweep's ``ft_p*`` by penalty, where a sweep exists."""
    names = [p.stem.removeprefix("sweep_") for p in (out / "eval").glob("sweep_ft*.csv")]
    names = [n for n in names if n == "ft" or n.startswith("ft_p")]
    return sorted(names, key=lambda n: (n != "ft", -float(n[4:]) if n.startswith("ft_p") else 0))


def penalty_of(out: Path, name: str) -> float:
    return json.loads((out / "eval" / f"{name}.json").read_text())["penalty"]


QUICK_NOTE = "installation check (quick profile): 2 epochs a stage, numbers not meaningful"


def tradeoff_figure(out: Path, runs: list[str], note: str | None = None) -> Path:
    sweeps = {name: read_sweep(out / "eval" / f"sweep_{name}.csv") for name in runs}
    hr_report = out / "eval" / "hr.json"
    stage1_hr = json.loads(hr_report.read_text())["accuracy"] if hr_report.is_file() else None
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.4), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], runs):
        sweep = sweeps[name]
        for method, style in CURVES.items():
            if method in sweep:
                xs, ys = zip(*sweep[method])
                ax.plot(xs, ys, linewidth=1, markersize=4, **style)
        if "full_hr" in sweep:
            ax.axhline(sweep["full_hr"][0][1], color="tab:gray", linewidth=0.8,
                       label="this classifier, all 16 patches")
        if stage1_hr is not None:
            ax.axhline(stage1_hr, color="black", linestyle="--", linewidth=0.8, label="stage-1 HR classifier")
        for other in runs:
            x, y = sweeps[other]["policy"][0]
            own = other == name
            ax.plot([x], [y], marker="*", markersize=15 if own else 10, linestyle="none", zorder=4,
                    color="black", markerfacecolor="black" if own else "none",
                    label=f"greedy policy, penalty {penalty_of(out, other):g}"
                          + ("" if own else " (own classifier)"))
        ax.set_title(f"Ft-1 at penalty {penalty_of(out, name):g}: baselines on its classifier", fontsize=9)
        ax.set_xlabel("HR patches acquired (mean of 16)")
        ax.set_xlim(0, 16.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right")
    axes[0][0].set_ylabel("test accuracy")
    if note:
        fig.suptitle(note, color="tab:red", fontsize=10)
    fig.tight_layout()
    path = out / "eval" / "tradeoff.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def curves_figure(out: Path, runs: list[str], note: str | None = None) -> Path:
    fig, (acc_ax, s_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in runs:
        lines = [json.loads(l) for l in (out / name / "metrics.jsonl").read_text().splitlines() if l.strip()]
        tested = [l for l in lines if "test_accuracy" in l]
        epochs = [l["epoch"] for l in tested]
        label = name + (" (two-stream)" if name == "ft2" else "")
        if (out / "eval" / f"{name}.json").is_file():
            label += f": penalty {penalty_of(out, name):g}"
        acc_ax.plot(epochs, [l["test_accuracy"] for l in tested], marker="o", markersize=3, label=label)
        s_ax.plot(epochs, [l["test_sparsity"] for l in tested], marker="o", markersize=3, label=label)
    acc_ax.set_ylabel("test accuracy (greedy policy)")
    s_ax.set_ylabel("test S: HR patches kept (of 16)")
    for ax in (acc_ax, s_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if note:
        fig.suptitle(note, color="tab:red", fontsize=10)
    fig.tight_layout()
    path = out / "eval" / "finetune_curves.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="figures of a scripts/reproduce.sh output folder")
    parser.add_argument("out", type=Path, help="the folder (with eval/)")
    parser.add_argument("--profile", default=None, help="the profile it ran; quick marks the figures")
    args = parser.parse_args(argv)
    out, note = args.out, QUICK_NOTE if args.profile == "quick" else None
    runs = finetune_runs(out)
    if not runs:
        sys.exit(f"error: {out}/eval holds no sweep_ft*.csv; run scripts/reproduce.sh first")
    print(f"wrote {tradeoff_figure(out, runs, note)}")
    curve_runs = runs + (["ft2"] if (out / "ft2" / "metrics.jsonl").is_file() else [])
    print(f"wrote {curves_figure(out, curve_runs, note)}")


if __name__ == "__main__":
    main()
