"""The results table of a scripts/reproduce.sh output folder, in Markdown.

Rows: full HR, LR only, Pt, then for each fine-tuned policy (the paper's penalty first, then the penalty
sweep's runs ``ft_p*``) random and fixed patches (centre, horizontal band, vertical band) at that
policy's budget k on its own classifier and the policy itself, then Ft-2. Columns: accuracy with its 95 %
interval, S (mean HR patches kept of 16), for a baseline the policy's advantage over it with its 95 %
paired interval, and the checkpoint the numbers come from. A last table gives each stage's wall time
(from OUT/wall_times.tsv).

    python scripts/results_table.py OUT [--profile PROFILE]

With --profile quick the table is headed as an installation check: its numbers mean nothing.
"""
import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

BASELINES = (("random", "random"), ("center", "fixed: centre"), ("fixed_h", "fixed: horizontal band"),
             ("fixed_v", "fixed: vertical band"))


def checkpoint_label(report: dict) -> str:
    return f"{Path(report['checkpoint']).parent.name}/{Path(report['checkpoint']).name}, epoch {report['epoch']}"


def finetune_runs(evals: dict) -> list[str]:
    """The fine-tuned runs present: ``ft`` (the paper's penalty) first, then ``ft_p*`` by penalty."""
    sweep = sorted((name for name in evals if name.startswith("ft_p")), key=lambda n: -float(n[4:]))
    return (["ft"] if "ft" in evals else []) + sweep


def interval(result: dict) -> str:
    """The accuracy's 95 % interval, where the evaluation has one (evaluate.py of 2026-12 on)."""
    return f"[{result['accuracy_low']:.4f}, {result['accuracy_high']:.4f}]" if "accuracy_low" in result else ""


def paired(report: dict, setting: str | None) -> str:
    """policy - baseline in points with its 95 % paired-bootstrap interval, for a baseline at the
    policy's budget."""
    pair = next((c for c in report.get("comparisons", []) if c["policy"] == "policy" and c["baseline"] == setting),
                None)
    if pair is None:
        return ""
    return f"{100 * pair['difference']:+.2f} [{100 * pair['low']:+.2f}, {100 * pair['high']:+.2f}]"


def table_rows(evals: dict) -> list[tuple[str, float, str, float, str, str]]:
    rows = []

    def add(label: str, report: str, setting: str | None = None) -> None:
        if report in evals:
            result = evals[report]["settings"][setting] if setting else evals[report]
            rows.append((label, result["accuracy"], interval(result), result["sparsity"],
                         paired(evals[report], setting), checkpoint_label(evals[report])))

    add("full HR (stage-1 HR classifier)", "hr")
    add("LR only (stage-1 LR classifier)", "lr")
    add("Pt: pretrained policy, stage-1 HR classifier", "pt")
    for name in finetune_runs(evals):
        tag = f"Ft-1 at penalty {evals[name]['penalty']:g}"
        k = evals[name]["policy_budget"]
        for method, label in BASELINES:
            add(f"{label}, k = {k} ({tag} classifier)", name, f"{method} k={k}")
        add(f"**{tag}**: greedy policy", name)
    add("Ft-2: two-stream finetune (from Ft-1 at the paper's penalty)", "ft2")
    return rows


def wall_times(out: Path) -> dict[str, int]:
    """Seconds per stage, summed over the runs of a resumed stage."""
    seconds = defaultdict(int)
    path = out / "wall_times.tsv"
    if path.is_file():
        for line in path.read_text().splitlines():
            name, value = line.split("\t")
            seconds[name] += int(value)
    return dict(seconds)


QUICK_NOTE = ("**Installation check (quick profile): 2 epochs a stage on a small subset. These numbers mean "
              "nothing about the method; the `cpu_full` and `paper` profiles measure it.**\n")


def main(out: Path, profile: str | None = None) -> None:
    evals = {p.stem: json.loads(p.read_text()) for p in sorted((out / "eval").glob("*.json"))}
    first = next(iter(evals.values()), {})
    if profile == "quick":
        print(QUICK_NOTE)
    print(f"| {first.get('model', '?')}, {first.get('test_images', '?')} test images | accuracy | 95 % interval | "
          f"S (of 16) | policy − this, points [95 % paired] | checkpoint |")
    print("|---|---|---|---|---|---|")
    for label, accuracy, low_high, sparsity, difference, source in table_rows(evals):
        print(f"| {label} | {accuracy:.4f} | {low_high} | {sparsity:.2f} | {difference} | {source} |")
    times = wall_times(out)
    if times:
        print("\n| stage | wall time |\n|---|---|")
        for name, seconds in times.items():
            print(f"| {name} | {seconds // 60} min {seconds % 60:02d} s |")
        total = sum(times.values())
        print(f"| total | {total // 3600} h {total % 3600 // 60:02d} min |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the results table of a scripts/reproduce.sh output folder")
    parser.add_argument("out", type=Path, help="the folder (with eval/)")
    parser.add_argument("--profile", default=None, help="the profile it ran; quick marks the table")
    args = parser.parse_args()
    if not (args.out / "eval").is_dir():
        sys.exit(f"error: {args.out} has no eval/ folder; run scripts/reproduce.sh first")
    main(args.out, args.profile)
