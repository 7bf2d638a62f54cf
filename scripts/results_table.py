"""The results table of a scripts/reproduce.sh output folder, in Markdown: rows full HR, LR only,
random, fixed (centre, horizontal band, vertical band) at the fine-tuned policy's budget, Pt, Ft-1,
Ft-2; columns accuracy and S (mean HR patches kept of 16). Usage: python scripts/results_table.py OUT"""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
evals = {p.stem: json.loads(p.read_text()) for p in (out / "eval").glob("*.json")}
rows = []


def add(label: str, report: str, setting: str | None = None) -> None:
    if report not in evals:
        return
    result = evals[report]["settings"][setting or evals[report]["setting"]] if setting else evals[report]
    rows.append((label, result["accuracy"], result["sparsity"]))


add("full HR (stage-1 HR classifier)", "hr")
add("LR only (stage-1 LR classifier)", "lr")
if "ft" in evals:
    k = evals["ft"]["policy_budget"]
    for method, label in (("random", "random"), ("center", "fixed: centre"), ("fixed_h", "fixed: horizontal band"),
                          ("fixed_v", "fixed: vertical band")):
        add(f"{label}, k = {k} (Ft-1 classifier)", "ft", f"{method} k={k}")
add("Pt (pretrained policy, stage-1 HR classifier)", "pt")
add("Ft-1 (finetune)", "ft")
add("Ft-2 (two-stream finetune)", "ft2")
first = next(iter(evals.values()), {})
print(f"| {first.get('model', '?')} | accuracy | S (of 16) |")
print("|---|---|---|")
for label, accuracy, sparsity in rows:
    print(f"| {label} | {accuracy:.4f} | {sparsity:.2f} |")
