"""Faithful to the authors' final code: run directories mean their latest checkpoint, the optimizer and
test interval of each spec, --resume that cannot change the objective, curriculum checkpoints scored as
pretrain scored them, and one-line errors for CIFAR images of the wrong size."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import classifier_training
import evaluate
import finetune
import finetune2stream
import pretrain
from models import build_model
from tests.trees import CIFAR10_CLASSES
from utils.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from utils.cli import resolve_defaults
from utils.errors import PatchDropError

ROOT = Path(__file__).resolve().parents[1]
FAKE = ["--fake_data", "--train_samples", 32, "--test_samples", 16, "--num_workers", 0, "--batch_size", 16,
        "--device", "cpu"]
EVAL_FAKE = ["--fake_data", "--test_samples", 16, "--num_workers", 0, "--batch_size", 16, "--device", "cpu"]


def run(script, *argv):
    return script.main(script.get_args_parser().parse_args([str(a) for a in argv]))


# --- which checkpoint a run directory means ----------------------------------------------------------

def test_a_run_directory_means_its_latest_checkpoint(tmp_path):
    net = build_model("resnet32_cifar", 10)
    for name, epoch in (("ckpt_best.pt", 3), ("ckpt_last.pt", 7)):
        save_checkpoint(tmp_path / name, stage="classifier_hr", model="R32_C10", epoch=epoch,
                        nets={"state_dict": net}, args={})
    assert resolve_checkpoint(tmp_path) == tmp_path / "ckpt_last.pt"
    assert load_checkpoint(tmp_path, stages=("classifier_hr",), model="R32_C10")["epoch"] == 7
    # ckpt_best.pt is read only when named.
    assert load_checkpoint(tmp_path / "ckpt_best.pt", stages=("classifier_hr",), model="R32_C10")["epoch"] == 3


def test_stages_load_the_latest_not_the_best_epoch(tmp_path):
    """A classifier run whose best test epoch (0) is not its last (2): pretrain's frozen copy is the last."""
    best, last = build_model("resnet32_cifar", 10), build_model("resnet32_cifar", 10)
    assert not torch.equal(best.fc.weight, last.fc.weight)
    (tmp_path / "hr").mkdir()
    for name, epoch, net in (("ckpt_best.pt", 0, best), ("ckpt_last.pt", 2, last)):
        save_checkpoint(tmp_path / "hr" / name, stage="classifier_hr", model="R32_C10", epoch=epoch,
                        nets={"state_dict": net}, args={})
    run(pretrain, "--cv_dir", tmp_path / "pt", "--ckpt_hr_cl", tmp_path / "hr", "--max_epochs", 1, *FAKE)
    frozen = torch.load(tmp_path / "pt" / "ckpt_last.pt", weights_only=True)["resnet_hr"]
    assert all(torch.equal(frozen[k], v) for k, v in last.state_dict().items())
    assert not torch.equal(frozen["fc.weight"], best.state_dict()["fc.weight"])


# --- defaults of the spec table ------------------------------------------------------------------------

@pytest.mark.parametrize("model,optimizer,lr,wd,milestones", [
    ("R32_C10", "sgd", 0.1, 5e-4, [150, 250]),
    ("R32_C100", "sgd", 0.1, 5e-4, [150, 250]),
    ("R50_ImgNet", "adam", 1e-3, 0.0, []),
    ("R34_fMoW", "adam", 1e-3, 0.0, []),
])
def test_classifier_defaults_per_spec(model, optimizer, lr, wd, milestones):
    args = classifier_training.get_args_parser().parse_args(["--model", model])
    args = resolve_defaults(args, "classifier_hr")
    assert (args.optimizer, args.lr, args.wd, args.lr_milestones, args.test_interval) == \
        (optimizer, lr, wd, milestones, 5)


def test_test_interval_defaults_to_five_in_every_stage():
    for script in (classifier_training, pretrain, finetune, finetune2stream):
        args = script.get_args_parser().parse_args([])
        assert resolve_defaults(args, "classifier_hr" if script is classifier_training else
                                script.STAGE).test_interval == 5


@pytest.mark.parametrize("optimizer,state_key", [("sgd", "momentum_buffer"), ("adam", "exp_avg")])
def test_the_optimizer_flag_picks_the_optimizer(tmp_path, optimizer, state_key):
    run(classifier_training, "--cv_dir", tmp_path, "--max_epochs", 1, "--optimizer", optimizer, *FAKE)
    saved = torch.load(tmp_path / "ckpt_last.pt", weights_only=True)
    assert saved["args"]["optimizer"] == optimizer
    assert state_key in saved["optimizer"]["state"][0]


# --- --resume cannot change the objective ------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    cv = tmp_path_factory.mktemp("runs")
    run(classifier_training, "--cv_dir", cv / "hr", "--max_epochs", 1, *FAKE)
    run(pretrain, "--cv_dir", cv / "pt", "--ckpt_hr_cl", cv / "hr", "--max_epochs", 1, "--penalty", -2,
        "--alpha", 0.9, "--lr", 1e-3, *FAKE)
    return cv


def test_resume_with_another_objective_is_refused_naming_each_flag(pretrain_run, tmp_path):
    with pytest.raises(PatchDropError) as err:
        run(pretrain, "--cv_dir", pretrain_run / "pt", "--resume", "--max_epochs", 2, "--penalty", -10,
            "--alpha", 0.9, "--lr_size", 4, *FAKE)
    message = str(err.value)
    assert "--resume cannot change what the run optimizes" in message and "\n" not in message
    assert "--penalty -2.0 in the checkpoint, -10.0 given" in message
    assert "--lr_size 8 in the checkpoint, 4 given" in message
    assert "--alpha" not in message  # given with the checkpoint's value
    with pytest.raises(PatchDropError, match="--model R32_C10 in the checkpoint, R32_C100 given"):
        run(pretrain, "--cv_dir", pretrain_run / "pt", "--resume", "--model", "R32_C100", *FAKE)
    with pytest.raises(PatchDropError, match="--curriculum False in the checkpoint, True given"):
        run(pretrain, "--cv_dir", pretrain_run / "pt", "--resume", "--curriculum", *FAKE)
    with pytest.raises(PatchDropError, match="--mode hr in the checkpoint, lr given"):
        run(classifier_training, "--cv_dir", pretrain_run / "hr", "--resume", "--mode", "lr", *FAKE)
    with pytest.raises(PatchDropError, match="--optimizer sgd in the checkpoint, adam given"):
        run(classifier_training, "--cv_dir", pretrain_run / "hr", "--resume", "--optimizer", "adam", *FAKE)


def test_resume_takes_the_flags_not_given_from_the_checkpoint(pretrain_run, tmp_path):
    metrics = run(pretrain, "--cv_dir", pretrain_run / "pt", "--resume", "--max_epochs", 2, *FAKE)
    saved = torch.load(pretrain_run / "pt" / "ckpt_last.pt", weights_only=True)
    assert metrics["epoch"] == 1 and saved["epoch"] == 1
    assert (saved["args"]["penalty"], saved["args"]["alpha"], saved["args"]["lr"]) == (-2.0, 0.9, 1e-3)
    assert saved["optimizer"]["param_groups"][0]["lr"] == 1e-3


def test_resume_keeps_the_data_and_speed_flags_of_the_run(tmp_path):
    """Every flag not given with --resume comes from the checkpoint, switches and data flags included
    (resuming without --gpu_data or --fake_data must not silently change the data); an on/off speed
    option can be switched off with its --no-... form."""
    run(classifier_training, "--cv_dir", tmp_path, "--max_epochs", 1, "--gpu_data", "--channels_last",
        "--seed", 3, "--test_interval", 2, *FAKE)
    run(classifier_training, "--cv_dir", tmp_path, "--resume", "--max_epochs", 2)
    kept = json.loads((tmp_path / "args.json").read_text())
    assert (kept["gpu_data"], kept["channels_last"], kept["fake_data"], kept["seed"], kept["test_interval"],
            kept["train_samples"], kept["batch_size"], kept["device"]) == (True, True, True, 3, 2, 32, 16, "auto")
    run(classifier_training, "--cv_dir", tmp_path, "--resume", "--max_epochs", 3, "--no-gpu_data")
    switched = json.loads((tmp_path / "args.json").read_text())
    assert (switched["gpu_data"], switched["channels_last"]) == (False, True)
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
        [0, 1, 2]


def test_fusion_change_on_resume_is_refused(tmp_path):
    run(classifier_training, "--cv_dir", tmp_path / "hr", "--max_epochs", 1, *FAKE)
    run(classifier_training, "--cv_dir", tmp_path / "lr", "--max_epochs", 1, "--mode", "lr", *FAKE)
    run(finetune2stream, "--cv_dir", tmp_path / "ft2", "--ckpt_hr_cl", tmp_path / "hr", "--ckpt_lr_cl",
        tmp_path / "lr", "--max_epochs", 1, "--fusion", "ratio", *FAKE)
    with pytest.raises(PatchDropError, match="--fusion ratio in the checkpoint, sum given"):
        run(finetune2stream, "--cv_dir", tmp_path / "ft2", "--resume", "--fusion", "sum", "--max_epochs", 2,
            *FAKE)


# --- evaluate.py on a checkpoint of the curriculum phase ------------------------------------------------

def test_curriculum_checkpoint_is_scored_as_pretrain_scored_it(pretrain_run, tmp_path, capsys):
    """After epoch 1 of --curriculum only patches 0 and 1 are learned; pretrain's test kept the other
    14, and evaluate.py must report exactly the numbers of that test."""
    metrics = run(pretrain, "--cv_dir", tmp_path / "pt", "--ckpt_hr_cl", pretrain_run / "hr", "--max_epochs",
                  2, "--test_interval", 1, "--curriculum", *FAKE)
    report = run(evaluate, "--load", tmp_path / "pt", *EVAL_FAKE)
    assert report["curriculum_learned_patches"] == 2
    assert report["sparsity"] >= 14
    for key in ("accuracy", "sparsity", "reward", "unique_policies"):
        assert report[key] == pytest.approx(metrics[f"test_{key}"], abs=1e-6), key
    assert "patches 2..15 are kept, as pretrain.py's test did" in capsys.readouterr().out
    with pytest.raises(PatchDropError, match="curriculum phase of pretrain.py .* drop --budgets"):
        run(evaluate, "--load", tmp_path / "pt", "--budgets", 4, *EVAL_FAKE)


# --- images of the wrong size ---------------------------------------------------------------------------

def cifar_folder(root: Path, odd: str | None = None) -> Path:
    """CIFAR10/{train,test}/<10 classes>/ with 32x32 PNGs, and one 64x48 image at ``odd`` if given."""
    for split in ("train", "test"):
        for cls in CIFAR10_CLASSES:
            folder = root / "CIFAR10" / split / cls
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(folder / f"{i}.png")
    if odd:
        Image.new("RGB", (64, 48)).save(root / "CIFAR10" / odd)
    return root


@pytest.mark.parametrize("odd,extra", [("test/automobile/big.png", []),
                                        ("train/airplane/big.png", ["--gpu_data"])])
def test_wrong_size_cifar_image_is_one_line(tmp_path, odd, extra):
    data = cifar_folder(tmp_path / "data", odd)
    argv = [sys.executable, "classifier_training.py", "--data_dir", data, "--cv_dir", tmp_path / "cv",
            "--max_epochs", 1, "--batch_size", 4, "--num_workers", 1, "--device", "cpu", *extra]
    proc = subprocess.run([str(a) for a in argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0] == (f"error: image {data / 'CIFAR10' / odd} is 64x48 pixels, expected 32x32; "
                        f"remove or resize the file")


def test_right_size_cifar_folder_trains(tmp_path):
    data = cifar_folder(tmp_path / "data")
    metrics = run(classifier_training, "--data_dir", data, "--cv_dir", tmp_path / "cv", "--max_epochs", 1,
                  "--batch_size", 4, "--num_workers", 0, "--device", "cpu")
    assert 0 <= metrics["test_accuracy"] <= 1
