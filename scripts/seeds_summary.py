"""Fine-tuning repeated over seeds: the README's tables (mean ± standard deviation over seeds, each
seed's paired interval against the best fixed baseline) and the operating-point arithmetic, in
Markdown, and a trade-off figure with the spread over seeds.

    python scripts/seeds_summary.py EVAL_DIR [--figure PNG]

EVAL_DIR holds one evaluate.py JSON per run, named <run>_s<seed>.json (e.g. ft_s0.json for the paper's
penalty, ft_p0.5_s2.json), each made with --baselines and --budgets over even k.

The operating point: with P patches, penalty p and accuracy A(S) at S patches kept, the expected reward
is A(S) (1 - (S/P)^2) + (1 - A(S)) p = A(S) c(S) + p with c(S) = 1 - (S/P)^2 - p. Dropping one patch
(S -> S - 1) raises it if A(S - 1) c(S - 1) > A(S) c(S), i.e. if the accuracy falls by less than
A(S) (1 - c(S) / c(S - 1)) points: the break-even slope. The policy settles where the classifier's
accuracy, as a function of the patches kept, falls about that steeply.
"""
import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

FIXED = ("center", "fixed_h", "fixed_v")
NAMES = {"center": "centre", "fixed_h": "horizontal band", "fixed_v": "vertical band", "random": "random"}


def load_runs(folder: Path) -> dict[str, dict[int, dict]]:
    """{run: {seed: evaluation report}} from <run>_s<seed>.json files."""
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in sorted(folder.glob("*_s*.json")):
        match = re.fullmatch(r"(.+)_s(\d+)", path.stem)
        if match:
            runs[match.group(1)][int(match.group(2))] = json.loads(path.read_text())
    return dict(runs)


def best_fixed(report: dict) -> dict:
    """The comparison of the greedy policy with the most accurate fixed baseline at its own budget."""
    pairs = [c for c in report["comparisons"] if c["policy"] == "policy" and c["method"] in FIXED]
    return max(pairs, key=lambda c: report["settings"][c["baseline"]]["accuracy"])


def mean_sd(values: list[float], digits: int = 4) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def topk_curve(report: dict) -> dict[int, float]:
    return {int(s["setting"]): s["accuracy"] for s in report["settings"].values() if s["method"] == "budget"}


def breakeven(accuracy: float, s: float, penalty: float, patches: int = 16) -> float:
    """Accuracy (points) one patch may cost at S for dropping it to pay: A(S) (1 - c(S)/c(S-1))."""
    def c(k):
        return 1 - (k / patches) ** 2 - penalty
    return 100 * accuracy * (1 - c(s) / c(s - 1))


def seed_table(run: str, seeds: dict[int, dict]) -> list[str]:
    penalty = next(iter(seeds.values()))["penalty"]
    lines = [f"**Penalty {penalty:g}** ({run}; {len(seeds)} seeds, 10,000 test images each)", "",
             "| seed | accuracy [95 %] | S | best fixed baseline at round(S) | policy − it [95 % paired] | McNemar p |"
             " policy − random [95 % paired] |",
             "|---|---|---|---|---|---|---|"]
    diffs, accs, sparsities = [], [], []
    for seed, report in sorted(seeds.items()):
        best = best_fixed(report)
        random = next(c for c in report["comparisons"] if c["policy"] == "policy" and c["method"] == "random")
        base = report["settings"][best["baseline"]]
        lines.append(f"| {seed} | {report['accuracy']:.4f} [{report['accuracy_low']:.4f}, {report['accuracy_high']:.4f}] "
                     f"| {report['sparsity']:.2f} | {NAMES[best['method']]}, k = {best['k']}: {base['accuracy']:.4f} "
                     f"| {100 * best['difference']:+.2f} [{100 * best['low']:+.2f}, {100 * best['high']:+.2f}] "
                     f"| {best['p_value']:.2g} | {100 * random['difference']:+.2f} [{100 * random['low']:+.2f}, "
                     f"{100 * random['high']:+.2f}] |")
        diffs.append(100 * best["difference"])
        accs.append(report["accuracy"])
        sparsities.append(report["sparsity"])
    lines.append(f"| mean ± sd | {mean_sd(accs)} | {mean_sd(sparsities, 2)} | | {mean_sd(diffs, 2)} points | | |")
    return lines


def operating_point(run: str, seeds: dict[int, dict]) -> list[str]:
    """The top-k curve of the fine-tuned classifier (mean over the seeds that swept --budgets) against
    the reward's break-even: between two swept budgets, the accuracy points each patch buys, and how
    many one patch must buy at the interval's middle for keeping it to pay. The policy keeps patches
    while the first exceeds the second."""
    swept = [r for r in seeds.values() if topk_curve(r)]
    if not swept:
        return []
    penalty = swept[0]["penalty"]
    curves = [topk_curve(r) for r in swept]
    curve = {k: statistics.mean(c[k] for c in curves) for k in curves[0]}
    ks = sorted(curve)
    spans = list(zip(ks, ks[1:]))
    s = statistics.mean(r["sparsity"] for r in seeds.values())
    lines = [f"**Penalty {penalty:g}**: the policy keeps S = {s:.2f} (mean of {len(seeds)} seeds); top-k curve "
             f"of {len(swept)} seed(s)", "",
             "| top-k budgets | " + " | ".join(f"{a}→{b}" for a, b in spans) + " |",
             "|---|" + "---|" * len(spans),
             "| accuracy at the upper budget | " + " | ".join(f"{curve[b]:.4f}" for _, b in spans) + " |",
             "| points one patch buys | " + " | ".join(f"{100 * (curve[b] - curve[a]) / (b - a):.2f}"
                                                       for a, b in spans) + " |",
             "| break-even: points one patch must buy | "
             + " | ".join(f"{breakeven((curve[a] + curve[b]) / 2, (a + b) / 2 + 0.5, penalty):.2f}"
                          for a, b in spans) + " |"]
    return lines


def figure(runs: dict[str, dict[int, dict]], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    styles = {"budget": ("tab:cyan", "s", "policy, top-k"), "random": ("tab:red", "x", "random patches"),
              "center": ("tab:green", "^", "fixed: centre"), "fixed_h": ("tab:olive", ">", "fixed: horizontal band"),
              "fixed_v": ("tab:purple", "v", "fixed: vertical band")}
    fig, axes = plt.subplots(1, len(runs), figsize=(5.4 * len(runs), 4.4), squeeze=False, sharey=True)
    for ax, (run, seeds) in zip(axes[0], sorted(runs.items(), key=lambda r: -next(iter(r[1].values()))["penalty"])):
        reports = list(seeds.values())
        for method, (color, marker, label) in styles.items():
            ks = sorted({int(s["setting"]) for s in reports[0]["settings"].values() if s["method"] == method})
            # The curves over the seeds that swept --budgets (the others hold only the policy's budget).
            values = [[r["settings"][f"{method} k={k}"]["accuracy"] for r in reports
                       if f"{method} k={k}" in r["settings"]] for k in ks]
            ks, values = zip(*[(k, v) for k, v in zip(ks, values) if v]) if any(values) else ((), ())
            ax.errorbar(ks, [statistics.mean(v) for v in values], [statistics.pstdev(v) for v in values], color=color,
                        marker=marker, markersize=4, linewidth=1, capsize=2, label=label)
        xs, ys = [r["sparsity"] for r in reports], [r["accuracy"] for r in reports]
        ax.errorbar([statistics.mean(xs)], [statistics.mean(ys)], [statistics.pstdev(ys)], [statistics.pstdev(xs)],
                    color="black", marker="*", markersize=13, capsize=3, linestyle="none", zorder=4,
                    label=f"greedy policy (mean ± sd of {len(reports)} seeds)")
        ax.scatter(xs, ys, color="black", s=6, zorder=5)
        ax.set_title(f"Ft-1 at penalty {reports[0]['penalty']:g}: {len(reports)} seeds", fontsize=9)
        ax.set_xlabel("HR patches acquired (mean of 16)")
        ax.set_xlim(0, 16.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right")
    axes[0][0].set_ylabel("test accuracy (10,000 images)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="tables and figure of fine-tuning runs over seeds")
    parser.add_argument("eval_dir", type=Path, help="folder of <run>_s<seed>.json evaluations")
    parser.add_argument("--figure", type=Path, default=None, help="also draw the trade-off figure here")
    args = parser.parse_args(argv)
    runs = load_runs(args.eval_dir)
    if not runs:
        sys.exit(f"error: {args.eval_dir} holds no <run>_s<seed>.json evaluations")
    for run, seeds in sorted(runs.items(), key=lambda r: -next(iter(r[1].values()))["penalty"]):
        print("\n".join(seed_table(run, seeds)) + "\n")
    for run, seeds in sorted(runs.items(), key=lambda r: -next(iter(r[1].values()))["penalty"]):
        if lines := operating_point(run, seeds):
            print("\n".join(lines) + "\n")
    if args.figure:
        figure(runs, args.figure)
        print(f"\nwrote {args.figure}")


if __name__ == "__main__":
    main()
