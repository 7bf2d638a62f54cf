"""evaluate.py, visualize.py and scripts/reproduce.sh: FLOPs against hand-computed counts, baselines
at exactly their budget, monotone sweeps, agreement with the training scripts' test metrics, and the
files they write on fake and on real CIFAR-10 data."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import classifier_training
import evaluate
import finetune
import pretrain
import visualize
from models import build_model
from tests.test_stages import run
from utils.accel import Accel
from utils.data import build_datasets, build_loader
from utils.errors import PatchDropError
from utils.evaluation import (Evaluator, Setting, count_flops, fixed_action, fixed_order, random_action,
                              topk_action)
from utils.spec import SPECS

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
FAKE = ["--fake_data", "--num_workers", 0, "--device", "cpu"]
SMALL = [*FAKE, "--test_samples", 48, "--speed_batches", 1]  # evaluations that need no more images
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- FLOPs ---------------------------------------------------------------------------------------------

def conv_macs(side: int, c_in: int, c_out: int) -> int:
    """Multiply-adds of a 3x3 convolution with a side x side output."""
    return side * side * c_in * c_out * 9


def resnet_cifar_macs(blocks: int, side: int, outputs: int) -> int:
    """Hand count: stem, then per stage 2 x blocks 3x3 convolutions (the first one striding from the
    second stage on), then the linear layer; option-A shortcuts, batch norm and pooling cost none."""
    macs = conv_macs(side, 3, 16)
    for stage, width in enumerate((16, 32, 64)):
        out_side = side >> stage
        c_in = 16 if stage == 0 else width // 2
        macs += conv_macs(out_side, c_in, width) + (2 * blocks - 1) * conv_macs(out_side, width, width)
    return macs + 64 * outputs


@pytest.mark.parametrize("arch,outputs,side,blocks,flops", [
    ("resnet32_cifar", 10, 32, 5, 137_725_184),  # the HR classifier on a 32 px image
    ("resnet32_cifar", 10, 8, 5, 8_609_024),     # the LR classifier on an 8 px image
    ("resnet8_cifar", 16, 8, 1, 1_531_904),      # the policy on an 8 px image
])
def test_flops_of_the_cifar_models(arch, outputs, side, blocks, flops):
    assert 2 * resnet_cifar_macs(blocks, side, outputs) == flops
    assert count_flops(build_model(arch, outputs).eval(), side, CPU) == flops


# --- settings --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", range(17))
def test_baselines_keep_exactly_the_requested_budget(k):
    generator = torch.Generator().manual_seed(k)
    assert torch.all(random_action(64, 16, k, generator, CPU).sum(1) == k)
    assert torch.all(topk_action(torch.rand(64, 16), k).sum(1) == k)
    for method in ("center", "fixed_h", "fixed_v"):
        action = fixed_action(method, 4, 8, k, CPU)
        assert torch.all(action.sum(1) == k) and torch.all(action == action[0])


def test_fixed_orders():
    assert sorted(fixed_order(4, "center")[:4]) == [5, 6, 9, 10]  # the four central patches
    assert sorted(fixed_order(4, "fixed_h")[:8]) == list(range(4, 12))  # the two middle rows
    assert sorted(fixed_order(4, "fixed_v")[:8]) == [1, 2, 5, 6, 9, 10, 13, 14]  # the two middle columns
    assert sorted(fixed_order(4, "center")) == list(range(16))


def test_random_baseline_covers_patches_uniformly():
    action = random_action(8000, 16, 4, torch.Generator().manual_seed(0), CPU)
    assert torch.allclose(action.mean(0), torch.full((16,), 0.25), atol=0.02)


def test_sweeps_are_monotone_in_patches_kept():
    torch.manual_seed(0)
    agent, hr = build_model("resnet8_cifar", 16), build_model("resnet32_cifar", 10)
    evaluator = Evaluator(agent=agent, resnet_hr=hr, resnet_lr=None, fusion=None, grid=4, lr_size=8,
                          penalty=-10, accel=Accel(CPU))
    _, test = build_datasets(SPECS["R32_C10"], "unused", fake_data=True, train_samples=1, test_samples=96)
    thresholds = [Setting("threshold", t) for t in (0.0, 0.3, 0.45, 0.5, 0.55, 0.7, 1.0)]
    budgets = [Setting("budget", k) for k in range(17)]
    results, correct = evaluator.run(build_loader(test, 32, train=False, num_workers=0, device=CPU, seed=0),
                                     thresholds + budgets)
    assert all(correct[s.name].shape == (96,) and correct[s.name].mean() == results[s.name]["accuracy"]
               for s in thresholds + budgets)  # per-image correctness, for the paired comparisons
    kept = [results[s.name]["sparsity"] for s in thresholds]
    assert kept == sorted(kept, reverse=True) and kept[0] == 16
    assert [results[s.name]["sparsity"] for s in budgets] == list(range(17))
    assert results["budget k=16"]["accuracy"] == results["threshold t=0"]["accuracy"]  # both: all patches


# --- evaluate.py and visualize.py -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_chain(tmp_path_factory):
    cv = tmp_path_factory.mktemp("chain")
    data = ["--train_samples", 64, "--test_samples", 48, "--max_epochs", 1, "--batch_size", 16, *FAKE]
    run(classifier_training, "--cv_dir", cv / "hr", *data)
    run(classifier_training, "--cv_dir", cv / "lr", "--mode", "lr", *data)
    run(pretrain, "--cv_dir", cv / "pt", "--ckpt_hr_cl", cv / "hr", *data)
    metrics = run(finetune, "--cv_dir", cv / "ft", "--load", cv / "pt", *data)
    return cv, metrics


def test_evaluate_agrees_with_the_training_script_and_writes_its_files(tmp_path, fake_chain):
    cv, metrics = fake_chain
    out = tmp_path / "out"
    report = run(evaluate, "--load", cv / "ft", "--ckpt_lr_cl", cv / "lr", "--test_samples", 48,
                 "--baselines", "--thresholds", 0.3, 0.5, 0.7, "--budgets", "all", "--json", out / "e.json",
                 "--sweep_csv", out / "s.csv", "--sweep_png", out / "s.png", "--batch_size", 16, *FAKE)
    # The greedy policy's test metrics are those the finetune script logged (one epoch: same weights).
    for key in ("accuracy", "sparsity", "variance", "unique_policies", "reward"):
        assert report[key] == pytest.approx(metrics[f"test_{key}"], abs=1e-9), key
    saved = json.loads((out / "e.json").read_text())
    for key in ("accuracy", "sparsity", "variance", "unique_policies", "hr_pixel_fraction",
                "flops_per_image", "images_per_second", "latency_ms", "device"):
        assert key in saved, key
    assert saved["hr_pixel_fraction"] == pytest.approx(saved["sparsity"] / 16)
    assert saved["flops_per_image"] == {"total": 1_531_904 + 137_725_184, "policy": 1_531_904,
                                        "resnet_hr": 137_725_184}
    assert saved["images_per_second"] > 0
    rows = list(csv.DictReader((out / "s.csv").open()))
    assert list(rows[0])[:6] == ["method", "setting", "patches", "accuracy", "accuracy_low", "accuracy_high"]
    methods = {row["method"] for row in rows}
    assert methods == {"policy", "threshold", "budget", "full_hr", "lr_only", "random", "center", "fixed_h",
                       "fixed_v"}
    k = saved["policy_budget"]
    assert saved["settings"][f"random k={k}"]["sparsity"] == k  # baselines at the policy's budget
    assert (out / "s.png").read_bytes()[:8] == PNG_MAGIC
    # Paired comparisons: the greedy policy against each baseline at its budget, the top-k policy against
    # each baseline at every k; the difference is that of the two accuracies on the same images.
    pairs = {(c["policy"], c["baseline"]): c for c in saved["comparisons"]}
    assert {b for p, b in pairs if p == "policy"} == {f"{m} k={k}" for m in ("random", "center", "fixed_h", "fixed_v")}
    assert len([1 for p, _ in pairs if p.startswith("budget")]) == 4 * 16
    for (policy, baseline), pair in pairs.items():
        settings = saved["settings"]
        assert pair["difference"] == pytest.approx(settings[policy]["accuracy"] - settings[baseline]["accuracy"])
        assert pair["low"] <= pair["difference"] <= pair["high"] and 0 <= pair["p_value"] <= 1
    centre = next(row for row in rows if row["method"] == "center" and row["setting"] == str(k))
    assert float(centre["vs_policy_difference"]) == pytest.approx(pairs[("policy", f"center k={k}")]["difference"])
    for name, setting in saved["settings"].items():
        assert setting["accuracy_low"] <= setting["accuracy"] <= setting["accuracy_high"], name


def test_evaluate_classifier_checkpoints(tmp_path, fake_chain):
    cv, _ = fake_chain
    hr = run(evaluate, "--load", cv / "hr", "--test_samples", 48, *FAKE)
    lr = run(evaluate, "--load", cv / "lr", "--test_samples", 48, *FAKE)
    assert (hr["setting"], hr["sparsity"], lr["setting"], lr["sparsity"]) == ("full_hr", 16, "lr_only", 0)
    assert lr["flops_per_image"] == {"total": 8_609_024, "resnet_lr": 8_609_024}
    with pytest.raises(PatchDropError, match="sweep a policy; .* is a classifier_hr checkpoint"):
        run(evaluate, "--load", cv / "hr", "--budgets", 4, *FAKE)
    with pytest.raises(PatchDropError, match="--budgets must lie in 0..16"):
        run(evaluate, "--load", cv / "ft", "--budgets", 17, *FAKE)


def test_random_baseline_of_a_budget_does_not_depend_on_the_other_budgets(fake_chain):
    cv, _ = fake_chain
    alone = run(evaluate, "--load", cv / "ft", "--baselines", "--budgets", 4, "--out", cv / "a", *SMALL)
    among = run(evaluate, "--load", cv / "ft", "--baselines", "--budgets", 2, 4, 8, "--out", cv / "b", *SMALL)
    assert alone["settings"]["random k=4"] == among["settings"]["random k=4"]
    from utils.evaluation import setting_seed

    assert len({setting_seed(0, 4), setting_seed(1, 4), setting_seed(0, 2), setting_seed(0, 8)}) == 4


def test_outputs_go_into_the_run_folder_and_the_model_comes_from_the_checkpoint(fake_chain, capsys):
    from utils.evaluation import output_dir

    cv, _ = fake_chain
    report = run(evaluate, "--load", cv / "ft", *SMALL)  # no --model: the checkpoint's
    assert report["model"] == "R32_C10"
    assert json.loads((cv / "ft" / "eval_ft.json").read_text())["accuracy"] == report["accuracy"]
    assert (cv / "ft" / "sweep_ft.csv").is_file() and f"wrote {cv / 'ft' / 'eval_ft.json'}" in capsys.readouterr().out
    assert run(visualize, "--load", cv / "ft", "--num_images", 2, "--test_samples", 48, *FAKE) == str(cv / "ft" / "policy_ft.png")
    assert run(visualize, "--load", cv / "ft" / "ckpt_best.pt", "--num_images", 2, "--test_samples", 48, *FAKE) == \
        str(cv / "ft" / "policy_ft_ckpt_best.png")
    # A checkpoint this repository ships is never written beside: cv/eval/<run>/ instead.
    shipped = ROOT / "results" / "R32_C10_cpu_full" / "checkpoints" / "ft_p0.5" / "ckpt_last.pt"
    assert output_dir(shipped) == Path("cv") / "eval" / "ft_p0.5"
    with pytest.raises(PatchDropError, match="expected a .* checkpoint for --model R32_C100, found a finetune "
                                             "checkpoint for --model R32_C10"):
        run(evaluate, "--load", cv / "ft", "--model", "R32_C100", *FAKE)


def test_visualize_writes_a_figure(tmp_path, fake_chain):
    cv, _ = fake_chain
    out = run(visualize, "--load", cv / "ft", "--test_samples", 48, "--num_images", 6, "--out",
              tmp_path / "v.png", *FAKE)
    assert Path(out).read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(PatchDropError, match="has no policy to draw"):
        run(visualize, "--load", cv / "hr", "--out", tmp_path / "x.png", *FAKE)


@pytest.mark.slow
def test_evaluate_and_visualize_on_real_cifar10(tmp_path, cifar10_dir):
    data = ["--data_dir", cifar10_dir, "--no_download", "--num_workers", 0, "--device", "cpu"]
    run(classifier_training, "--cv_dir", tmp_path / "hr", "--max_epochs", 1, *data)
    run(pretrain, "--cv_dir", tmp_path / "pt", "--ckpt_hr_cl", tmp_path / "hr", "--max_epochs", 1, *data)
    report = run(evaluate, "--load", tmp_path / "pt", "--baselines", "--budgets", 2, 8, "--json",
                 tmp_path / "e.json", "--sweep_png", tmp_path / "s.png", *data)
    assert report["test_images"] == 100 and json.loads((tmp_path / "e.json").read_text())["model"] == "R32_C10"
    out = run(visualize, "--load", tmp_path / "pt", "--out", tmp_path / "v.png", *data)
    assert Path(out).read_bytes()[:8] == PNG_MAGIC and (tmp_path / "s.png").is_file()


def shim_path(tmp_path: Path) -> str:
    """A PATH whose first python and python3 cannot import anything (they exit 1): what a clean
    machine's system Python is to this project, which needs torch."""
    shims = tmp_path / "shims"
    shims.mkdir()
    for name in ("python", "python3"):
        (shims / name).write_text("#!/bin/sh\necho 'not the interpreter of this environment' >&2\nexit 1\n")
        (shims / name).chmod(0o755)
    return f"{shims}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.mark.slow
def test_reproduce_script_runs_then_skips_finished_stages(tmp_path):
    """The quick profile on fake data with tiny subsets (flags after -- replace the profile's: one epoch a
    stage instead of its 2), with the interpreter given by $PYTHON while the first python on
    PATH cannot import torch."""
    out = tmp_path / "out"
    argv = ["bash", "scripts/reproduce.sh", "R32_C10", "--profile", "quick", "--out", str(out), "--",
            "--fake_data", "--num_workers", "0", "--train_samples", "48", "--test_samples", "32",
            "--max_epochs", "1", "--device", "cpu"]
    env = {**os.environ, "PATH": shim_path(tmp_path), "PYTHON": sys.executable}
    first = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    for path in ("hr/ckpt_last.pt", "ft2/ckpt_last.pt", "ft_p2/ckpt_last.pt", "eval/ft.json",
                 "eval/ft_p2.json", "eval/sweep_ft.csv", "eval/sweep_ft_p2.png", "eval/policy_ft.png",
                 "eval/tradeoff.png", "eval/finetune_curves.png", "results.md", "wall_times.tsv"):
        assert (out / path).is_file(), path
    table = (out / "results.md").read_text()
    for row in ("| Ft-2: two-stream finetune", "| **Ft-1 at penalty -10**", "| **Ft-1 at penalty -2**",
                "| random, k = ", "ft_p2/ckpt_last.pt, epoch 0 |", "| total |"):
        assert row in table, row
    # The finetune at penalty -2 started from the same pretrained policy and HR classifier as -10's.
    assert json.loads((out / "ft_p2" / "args.json").read_text())["penalty"] == -2
    # Each command has each flag once: the profile's and the user's replace the paper command's.
    pretrain_line = next(line for line in first.stdout.splitlines() if line.startswith("== pt: "))
    assert pretrain_line.count("--lr ") == 1 and "--lr 1e-3" in pretrain_line and "--max_epochs 1" in pretrain_line
    second = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert second.returncode == 0 and second.stdout.count("finished earlier, skipped") == 6
    # Asked for real data now, into the same folders: refused, nothing reused or overwritten.
    real = argv[:argv.index("--")] + ["--data_dir", str(tmp_path / "elsewhere")] + argv[argv.index("--"):]
    real.remove("--fake_data")
    third = subprocess.run(real, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert third.returncode == 2, third.stdout[-2000:]
    assert third.stderr.strip() == (f"error: {out / 'hr'} holds a run made with other settings (--data_dir "
                                    f"data/cifar10_sample in the run, {tmp_path / 'elsewhere'} asked for; "
                                    f"--fake_data True in the run, False asked for); choose another --out, or "
                                    f"delete {out / 'hr'}")


def test_plan_stage_merges_flags_and_mirrors_the_code_it_avoids_importing(monkeypatch):
    """scripts/plan_stage.py plans a new stage without importing torch; its copies of the checkpoint's
    file name and of the command's own flags must agree with utils/."""
    from utils.checkpoint import LAST
    from utils.cli import COMMAND_FLAGS, RESUME_MAY_CHANGE

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import plan_stage

    assert plan_stage.LAST == LAST
    assert set(COMMAND_FLAGS) <= set(plan_stage.NOT_COMPARED) <= set(COMMAND_FLAGS) | set(RESUME_MAY_CHANGE)
    assert plan_stage.merge_flags(["--lr", "1e-4", "--penalty", "-10", "--lr", "1e-3", "--amp"]) == \
        ["--lr", "1e-3", "--penalty", "-10", "--amp"]


def test_reproduce_script_refuses_an_interpreter_without_torch(tmp_path):
    env = {**os.environ, "PATH": shim_path(tmp_path)}
    env.pop("PYTHON", None)
    proc = subprocess.run(["bash", "scripts/reproduce.sh", "R32_C10", "--out", str(tmp_path / "o")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: python3 cannot import torch; set PYTHON to the interpreter of "
                                   "your environment")


@pytest.mark.parametrize("script,argv,message", [
    ("evaluate", ["--test_samples", "0"], "--test_samples must be positive, got 0"),
    ("evaluate", ["--test_samples", "-5"], "--test_samples must be positive, got -5"),
    ("evaluate", ["--num_workers", "-1"], "--num_workers must be 0 or more, got -1"),
    ("evaluate", ["--batch_size", "0"], "--batch_size must be positive, got 0"),
    ("evaluate", ["--speed_batches", "0"], "--speed_batches must be positive, got 0"),
    ("visualize", ["--num_images", "0"], "--num_images must be positive, got 0"),
    ("visualize", ["--test_samples", "-1"], "--test_samples must be positive, got -1"),
    ("bench.stage_speed", ["--steps", "0"], "--steps must be positive, got 0"),
    ("bench.stage_speed", ["--num_workers", "-2"], "--num_workers must be 0 or more, got -2"),
    ("bench.step_speed", ["--reps", "0"], "--reps must be positive, got 0"),
    ("bench.step_speed", ["--batch_size", "-8"], "--batch_size must be positive, got -8"),
])
def test_out_of_range_flags_of_evaluation_and_benchmarks_are_one_line(script, argv, message):
    """The same check as the stage scripts' flags (utils.cli.check_counts), before anything is loaded."""
    import importlib

    module = importlib.import_module(script)
    load = ["--load", "no_such_checkpoint"] if script in ("evaluate", "visualize") else []
    with pytest.raises(PatchDropError, match=message):
        module.main(module.get_args_parser().parse_args([*load, *argv]))
