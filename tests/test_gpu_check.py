"""scripts/gpu_check.sh --cpu-smoke: every step of the GPU check runs (on the CPU, at tiny sizes) and
the summary table is written, so the script a lent GPU runs cannot rot unnoticed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["versions", "gpu_tests", "step_speed_default", "step_speed_amp_cl", "classifier_throughput",
         "stages_paper_fp32", "stages_paper_fast", "memory_r50_fp32", "memory_r50_bf16", "two_ranks"]


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_every_step(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", str(out), "--cpu-smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    statuses = dict(line.split("\t")[:2] for line in (out / "steps.tsv").read_text().splitlines())
    # Inductor's compilation (half a minute on 2 cores) is left to tests/test_speed.py.
    assert statuses == {**{name: "ok" for name in STEPS}, "compile": "n/a: not in the CPU smoke run"}
    # The GPU tests skip cleanly here, with their reason.
    assert "skipped" in (out / "gpu_tests.log").read_text()
    stages = json.loads((out / "stages_paper_fast.json").read_text())
    assert [row["stage"] for row in stages] == ["classifier_hr", "classifier_lr", "pretrain", "finetune",
                                                "finetune2stream"]
    assert all(row["images_per_second"] > 0 and row["projected_hours"] > 0 for row in stages)
    memory = json.loads((out / "memory_r50_bf16.json").read_text())
    assert [(row["model"], row["stage"]) for row in memory] == [("R50_ImgNet", "pretrain"),
                                                                ("R50_ImgNet", "finetune")]
    summary = (out / "summary.md").read_text()
    assert "| compile | n/a: not in the CPU smoke run |" in summary and "0 step(s) not ok" in summary
    assert "the CIFAR-10 paper profile projects to" in summary
