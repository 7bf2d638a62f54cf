"""The four stage scripts, in process: chains on fake and on real CIFAR-10 data, outputs, loading of
earlier stages, resume, and the short errors of the command line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import classifier_training
import finetune
import finetune2stream
import pretrain
from utils.errors import PatchDropError

ROOT = Path(__file__).resolve().parents[1]
POLICY_TAGS = ["accuracy", "reward", "sparsity", "variance", "unique_policies"]


def run(script, *argv):
    return script.main(script.get_args_parser().parse_args([str(a) for a in argv]))


def ckpt(path):
    return torch.load(path, weights_only=True)


def chain(cv: Path, model: str, data: list, *, lr: float = 1e-1, sizes: tuple[int, int] = (32, 8),
          penalty: float = -10) -> dict:
    """The five commands of the paper's README (with small sizes appended). ``lr``, ``sizes`` (HR,
    LR) and ``penalty`` are the README's per-dataset values: CIFAR's by default; ImageNet and fMoW
    use 1e-3, (224, 56) and -20."""
    out = {}
    out["hr"] = run(classifier_training, "--model", model, "--lr", lr, "--cv_dir", cv / "hr",
                    "--batch_size", 128, "--img_size", sizes[0], "--mode", "hr", *data)
    out["lr"] = run(classifier_training, "--model", model, "--lr", lr, "--cv_dir", cv / "lr",
                    "--batch_size", 128, "--img_size", sizes[1], "--mode", "lr", *data)
    out["pt"] = run(pretrain, "--model", model, "--lr", 1e-4, "--cv_dir", cv / "pt", "--batch_size",
                    1024, "--penalty", -0.5, "--ckpt_hr_cl", cv / "hr", *data)
    # --Load: the spelling of the authors' README for this stage.
    out["ft"] = run(finetune, "--model", model, "--lr", 1e-4, "--cv_dir", cv / "ft", "--batch_size",
                    128, "--Load", cv / "pt", "--ckpt_hr_cl", cv / "hr", "--penalty", penalty, *data)
    out["ft2"] = run(finetune2stream, "--model", model, "--lr", 1e-4, "--cv_dir", cv / "ft2",
                     "--batch_size", 128, "--load", cv / "ft", "--ckpt_lr_cl", cv / "lr", "--penalty",
                     penalty, *data)
    return out


def check_chain_outputs(cv: Path, model: str, epochs: int) -> None:
    stages = {"hr": "classifier_hr", "lr": "classifier_lr", "pt": "pretrain", "ft": "finetune",
              "ft2": "finetune2stream"}
    for name, stage in stages.items():
        run_dir = cv / name
        assert json.loads((run_dir / "args.json").read_text())["model"] == model
        lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [l["epoch"] for l in lines] == list(range(epochs))
        tags = ["accuracy"] + (POLICY_TAGS if name in ("pt", "ft", "ft2") else [])
        for tag in tags:
            assert f"train_{tag}" in lines[-1] and f"test_{tag}" in lines[-1]
        if name in ("pt", "ft", "ft2"):
            assert "train_baseline_reward" in lines[-1]
        # The learning rate, wall times, images and images per second of every epoch.
        for key in ("lr", "train_seconds", "train_images", "train_images_per_second", "test_seconds",
                    "test_images", "epoch_seconds"):
            assert all(key in line for line in lines), key
        assert all(line["train_images_per_second"] > 0 and line["epoch_seconds"] >= line["train_seconds"]
                   for line in lines)
        assert list((run_dir / "log").glob("events.out.tfevents.*"))
        for file in ("ckpt_last.pt", "ckpt_best.pt"):
            saved = ckpt(run_dir / file)
            assert (saved["stage"], saved["model"], saved["format_version"]) == (stage, model, 1)
        assert ckpt(run_dir / "ckpt_last.pt")["epoch"] == epochs - 1
    # Frozen networks come through unchanged: pretrain's HR classifier is stage 1's, two-stream's LR
    # classifier is the LR stage's (weights and batch-norm statistics).
    for frozen, source, key in (("pt", "hr", "resnet_hr"), ("ft2", "lr", "resnet_lr")):
        # Run directories mean their latest checkpoint.
        saved, original = ckpt(cv / frozen / "ckpt_last.pt")[key], ckpt(cv / source / "ckpt_last.pt")["state_dict"]
        assert all(torch.equal(saved[k], original[k]) for k in original)


@pytest.mark.parametrize("model", ["R32_C10", "R32_C100"])  # the 224-px models: tests/test_large_datasets.py
def test_chain_on_fake_data(tmp_path, model):
    data = ["--fake_data", "--train_samples", 48, "--test_samples", 24, "--max_epochs", 2,
            "--num_workers", 0, "--batch_size", 16]
    out = chain(tmp_path, model, data)
    check_chain_outputs(tmp_path, model, epochs=2)
    assert 0 <= out["ft2"]["test_accuracy"] <= 1 and 0 <= out["ft2"]["test_sparsity"] <= 16


@pytest.mark.slow
def test_chain_on_real_cifar10(tmp_path, cifar10_dir):
    """The README's five commands, as written, on 300 real CIFAR-10 training images."""
    data = ["--data_dir", cifar10_dir, "--max_epochs", 2, "--num_workers", 0, "--no_download"]
    out = chain(tmp_path, "R32_C10", data)
    check_chain_outputs(tmp_path, "R32_C10", epochs=2)
    assert ckpt(tmp_path / "hr" / "ckpt_last.pt")["args"]["data_dir"] == str(cifar10_dir)
    assert 0 <= out["pt"]["test_accuracy"] <= 1


def test_finetune_starts_from_the_pretrained_policy(tmp_path):
    data = ["--fake_data", "--train_samples", 16, "--test_samples", 16, "--num_workers", 0,
            "--max_epochs", 1, "--batch_size", 16]
    run(classifier_training, "--cv_dir", tmp_path / "hr", *data)
    run(pretrain, "--cv_dir", tmp_path / "pt", "--ckpt_hr_cl", tmp_path / "hr", *data)
    # An Adam step moves each weight by about lr, so with lr 1e-12 the weights must be the loaded ones.
    run(finetune, "--cv_dir", tmp_path / "ft", "--load", tmp_path / "pt", "--lr", 1e-12, *data)
    pt, ft = ckpt(tmp_path / "pt" / "ckpt_last.pt"), ckpt(tmp_path / "ft" / "ckpt_last.pt")
    for key in ("agent", "resnet_hr"):  # without --ckpt_hr_cl the HR classifier comes from --load
        for name, value in pt[key].items():
            if value.is_floating_point() and "running" not in name:
                assert torch.allclose(ft[key][name], value, atol=1e-9), (key, name)


def test_resume_continues_and_overwrite_is_explicit(tmp_path):
    args = ["--fake_data", "--train_samples", 32, "--test_samples", 16, "--num_workers", 0,
            "--batch_size", 16, "--cv_dir", tmp_path]
    run(classifier_training, *args, "--max_epochs", 2)
    with pytest.raises(PatchDropError, match="already holds a run.*--resume"):
        run(classifier_training, *args, "--max_epochs", 3)
    run(classifier_training, *args, "--max_epochs", 4, "--resume")
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [0, 1, 2, 3]
    saved = ckpt(tmp_path / "ckpt_last.pt")
    assert saved["epoch"] == 3
    with pytest.raises(PatchDropError, match="--resume needs a pretrain checkpoint, found a classifier_hr"):
        run(pretrain, *args, "--max_epochs", 4, "--resume")
    run(classifier_training, *args, "--max_epochs", 1, "--overwrite")
    assert ckpt(tmp_path / "ckpt_last.pt")["epoch"] == 0 and ckpt(tmp_path / "ckpt_best.pt")["epoch"] == 0
    assert len(list((tmp_path / "log").glob("events.out.tfevents.*"))) == 1


@pytest.mark.parametrize("script,argv,message", [
    (pretrain, ["--model", "R50"], "unknown --model 'R50'; choose one of: R32_C10, R32_C100"),
    (pretrain, ["--fake_data"], "--ckpt_hr_cl is required"),
    (finetune2stream, ["--fake_data", "--ckpt_hr_cl", "x"], "--ckpt_lr_cl is required"),
    (pretrain, ["--penalty", "0.5"], "--penalty .* must be negative, got 0.5"),
    (finetune, ["--alpha", "0.4"], r"--alpha must lie in \(0.5, 1\], got 0.4"),
    (pretrain, ["--lr_size", "5"], "--lr_size must divide the HR size 32"),
    (classifier_training, ["--batch_size", "0"], "--batch_size must be positive"),
    (classifier_training, ["--max_epochs", "-1"], "--max_epochs must be positive"),
    (classifier_training, ["--mode", "hr", "--img_size", "8"], "use --mode lr"),
    (pretrain, ["--fake_data", "--ckpt_hr_cl", "missing_dir"], "checkpoint missing_dir not found"),
])
def test_bad_input_is_a_short_error(tmp_path, script, argv, message):
    with pytest.raises(PatchDropError, match=message):
        run(script, "--cv_dir", tmp_path / "run", "--num_workers", 0, *argv)


def test_wrong_stage_checkpoint_is_refused(tmp_path):
    data = ["--fake_data", "--train_samples", 16, "--test_samples", 16, "--num_workers", 0,
            "--max_epochs", 1]
    run(classifier_training, "--cv_dir", tmp_path / "lr", "--mode", "lr", *data)
    with pytest.raises(PatchDropError, match="expected a classifier_hr checkpoint .* found a classifier_lr"):
        run(pretrain, "--cv_dir", tmp_path / "pt", "--ckpt_hr_cl", tmp_path / "lr", *data)


@pytest.mark.parametrize("argv,message", [
    (["pretrain.py", "--model", "R50"], "error: unknown --model 'R50'"),
    (["classifier_training.py", "--data_dir", "{tmp}/nothing", "--no_download", "--cv_dir", "{tmp}/cv"],
     "error: no CIFAR10 data under"),
])
def test_command_line_error_has_no_traceback(tmp_path, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_progress_lines_in_a_log_file_and_the_closing_line(tmp_path, capsys):
    """Off a terminal (pytest captures the output), --print_freq N prints a line every N steps."""
    run(classifier_training, "--cv_dir", tmp_path, "--fake_data", "--train_samples", 48, "--test_samples", 16,
        "--batch_size", 16, "--max_epochs", 1, "--num_workers", 0, "--print_freq", 2)
    out = capsys.readouterr().out
    assert "  train step 2/3, " in out and "train step 1/3" not in out and "train step 3/3" not in out
    assert out.strip().splitlines()[-1].startswith(f"checkpoint: {tmp_path / 'ckpt_last.pt'} (epoch 0); best ")
    assert "| lr: 1.0E-01 | " in out


def test_summary_says_when_a_subset_request_exceeds_the_split():
    from argparse import Namespace

    from utils.cli import run_summary
    from utils.data import Loaders

    data = Loaders(train=[], test=[], train_size=300, test_size=100, generator=torch.Generator(),
                   shared_by_ranks=False)
    args = Namespace(model="R32_C10", max_epochs=3, train_samples=500, test_samples=None)
    lines = run_summary("pretrain", args, data, "cpu", 0)
    assert lines == ["pretrain R32_C10: 300 train / 100 test images, epochs 0..2, device cpu",
                     "note: --train_samples 500 is more than the split's 300 images; using all"]
