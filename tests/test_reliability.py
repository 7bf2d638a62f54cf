"""Reliability: bit-exact resume after a SIGKILL, crash-safe writes, NaN/inf losses, concurrent runs,
and the one-line errors of the command line for bad data."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import classifier_training
from tests.test_stages import ckpt, run
from tests.trees import CIFAR10_CLASSES
from utils.checkpoint import load_checkpoint
from utils.errors import PatchDropError, error_line
from utils.metrics import LossWatch

ROOT = Path(__file__).resolve().parents[1]
FAKE = ["--fake_data", "--num_workers", 0, "--device", "cpu"]


def metrics_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def cli(*argv, cwd=ROOT) -> list[str]:
    return [sys.executable, *[str(a) for a in argv]]


@pytest.fixture(scope="module")
def hr_run(tmp_path_factory) -> Path:
    cv = tmp_path_factory.mktemp("hr")
    run(classifier_training, "--cv_dir", cv, "--train_samples", 64, "--test_samples", 32, "--max_epochs", 1,
        "--batch_size", 32, *FAKE)
    return cv


# --- exact resume ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, hr_run):
    """Pretrain draws from every generator: data order, random crops and flips, policy sampling."""
    argv = cli("pretrain.py", "--ckpt_hr_cl", hr_run, "--train_samples", 512, "--test_samples", 64,
               "--batch_size", 64, "--lr", 1e-3, "--max_epochs", 3, "--test_interval", 1, *FAKE)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(argv + ["--cv_dir", str(whole)], cwd=ROOT, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(argv + ["--cv_dir", str(killed)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ((killed / "metrics.jsonl").exists() and (killed / "ckpt_last.pt").exists()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 1 (an epoch takes about 1.5 s on 2 cores)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_epoch = ckpt(killed / "ckpt_last.pt")["epoch"]
    assert killed_epoch < 2 and len(metrics_lines(killed)) == killed_epoch + 1  # it stopped mid-run

    subprocess.run(argv + ["--cv_dir", str(killed), "--resume"], cwd=ROOT, check=True, capture_output=True,
                   timeout=600)
    assert timing_free(killed) == timing_free(whole)
    a, b = ckpt(whole / "ckpt_last.pt"), ckpt(killed / "ckpt_last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key in ("agent", "resnet_hr"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key
    assert all(torch.equal(a["optimizer"]["state"][i]["exp_avg"], b["optimizer"]["state"][i]["exp_avg"])
               for i in a["optimizer"]["state"])
    assert not list(killed.glob(".*.tmp*"))


def timing_free(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall times and rates, which differ between any two runs."""
    return [{k: v for k, v in line.items() if not k.endswith(("seconds", "images_per_second"))}
            for line in metrics_lines(run_dir)]


def resumed_metrics(script, tmp_path: Path, args: list, monkeypatch, *, restore: bool = True) -> list[dict]:
    """A run of 3 epochs made of 2 and a --resume of 1; with ``restore`` False the resume does not put the
    random generators back (a broken resume: the negative control)."""
    from utils import run as run_module

    parts = tmp_path / ("parts" if restore else "parts_without_rng")
    run(script, "--cv_dir", parts, "--max_epochs", 2, *args)
    with monkeypatch.context() as patch:
        if not restore:
            patch.setattr(run_module, "restore_rng", lambda *a, **k: None)
        run(script, "--cv_dir", parts, "--max_epochs", 3, "--resume", *args)
    return timing_free(parts)


def check_resume_is_the_uninterrupted_run(script, tmp_path: Path, args: list, monkeypatch) -> None:
    """The resumed run equals the uninterrupted one exactly, and one resumed without its random state does
    not: the comparison can tell a broken resume (used on the CPU here and in tests/test_gpu.py)."""
    run(script, "--cv_dir", tmp_path / "whole", "--max_epochs", 3, *args)
    whole = timing_free(tmp_path / "whole")
    assert [m["epoch"] for m in whole] == [0, 1, 2]
    assert resumed_metrics(script, tmp_path, args, monkeypatch) == whole
    assert resumed_metrics(script, tmp_path, args, monkeypatch, restore=False) != whole


def test_resume_in_process_is_the_uninterrupted_run(tmp_path, hr_run, monkeypatch):
    import pretrain

    check_resume_is_the_uninterrupted_run(pretrain, tmp_path, [
        "--ckpt_hr_cl", hr_run, "--train_samples", 128, "--test_samples", 32, "--batch_size", 32,
        "--test_interval", 1, *FAKE], monkeypatch)


def test_checkpoint_holds_every_generator_state(tmp_path):
    run(classifier_training, "--cv_dir", tmp_path, "--train_samples", 16, "--test_samples", 16,
        "--max_epochs", 1, *FAKE)
    rng = load_checkpoint(tmp_path, stages=("classifier_hr",), model="R32_C10")["rng"]
    assert set(rng) == {"python", "numpy", "torch", "cuda", "data"}
    assert rng["torch"].dtype == torch.uint8 and rng["data"].dtype == torch.uint8


# --- crash-safe writes -----------------------------------------------------------------------------

def fail_nth_fsync(monkeypatch, name_part: str, n: int) -> None:
    """Make the n-th flush to disk of a temporary file whose name contains ``name_part`` fail as on a
    full disk, after its bytes were written: a write that fails half-way."""
    real, seen = os.fsync, {"count": 0}

    def fsync(fd):
        if name_part in os.readlink(f"/proc/self/fd/{fd}"):
            seen["count"] += 1
            if seen["count"] == n:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("name", ["ckpt_last.pt", "metrics.jsonl"])
def test_failed_write_stops_the_run_and_keeps_the_last_epoch(tmp_path, monkeypatch, name):
    args = ["--cv_dir", tmp_path, "--train_samples", 32, "--test_samples", 16, "--batch_size", 16, *FAKE]
    fail_nth_fsync(monkeypatch, f".{name}.tmp", 2)  # the write of epoch 1
    with pytest.raises(PatchDropError, match=rf"could not write {tmp_path / name} \(No space left on "
                                             rf"device\); the previous version of the file is intact"):
        run(classifier_training, *args, "--max_epochs", 3)
    assert load_checkpoint(tmp_path, stages=("classifier_hr",), model="R32_C10",
                           default_name="ckpt_last.pt")["epoch"] == 0
    lines = metrics_lines(tmp_path)
    assert [line["epoch"] for line in lines][0] == 0 and len(lines) <= 2  # parseable, nothing half-written
    assert not list(tmp_path.glob(".*.tmp*"))
    monkeypatch.undo()
    run(classifier_training, *args, "--max_epochs", 3, "--resume")
    assert [line["epoch"] for line in metrics_lines(tmp_path)] == [0, 1, 2]


# --- numerical faults ------------------------------------------------------------------------------

def test_loss_watch_finds_the_first_bad_step():
    watch = LossWatch(torch.device("cpu"))
    for value in (1.0, 2.0, float("nan"), float("inf"), 3.0):
        watch.update(torch.tensor(value))
    assert watch.compute() == {"nonfinite_step": 2}
    good = LossWatch(torch.device("cpu"))
    good.update(torch.tensor(0.5))
    assert good.compute() == {}


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_build = classifier_training.build_model

    def build_poisoned(arch, num_outputs):
        model, calls = real_build(arch, num_outputs), {"train": 0}

        def poison(module, inputs, output):  # NaN logits from the 4th training step on
            if module.training:
                calls["train"] += 1
                if calls["train"] >= 4:
                    return output * float("nan")
            return output

        model.register_forward_hook(poison)
        return model

    monkeypatch.setattr(classifier_training, "build_model", build_poisoned)
    # 32 images in batches of 16: two steps per epoch, so the 4th step is epoch 1, step 1.
    with pytest.raises(PatchDropError, match=r"epoch 1, train step 1: the loss is NaN or infinite; "
                                             r"stopped; .*ckpt_last.pt holds the last good epoch \(0\)"):
        run(classifier_training, "--cv_dir", tmp_path, "--train_samples", 32, "--test_samples", 16,
            "--batch_size", 16, "--max_epochs", 3, *FAKE)
    saved = ckpt(tmp_path / "ckpt_last.pt")
    assert saved["epoch"] == 0 and all(torch.isfinite(v).all() for v in saved["state_dict"].values()
                                       if v.is_floating_point())
    assert [line["epoch"] for line in metrics_lines(tmp_path)] == [0]


# --- load ------------------------------------------------------------------------------------------

def make_cifar_folders(root: Path, per_class: int = 16) -> Path:
    for split in ("train", "test"):
        for c, name in enumerate(CIFAR10_CLASSES):
            folder = root / "CIFAR10" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (32, 32), (40 * c + i, 90, 200 - 5 * i)).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_two_runs_at_once_on_the_same_data(tmp_path):
    data = make_cifar_folders(tmp_path / "data")
    argv = cli("classifier_training.py", "--data_dir", data, "--max_epochs", 2, "--batch_size", 8,
               "--train_samples", 48, "--test_samples", 48, "--num_workers", 2, "--no_download", "--device", "cpu")
    procs = [subprocess.Popen(argv + ["--cv_dir", str(tmp_path / name)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    for name in ("a", "b"):
        assert [line["epoch"] for line in metrics_lines(tmp_path / name)] == [0, 1]
        for file in ("ckpt_last.pt", "ckpt_best.pt"):
            assert load_checkpoint(tmp_path / name / file, stages=("classifier_hr",), model="R32_C10")
    # Same seed, same data: the two runs agree exactly.
    assert timing_free(tmp_path / "a") == timing_free(tmp_path / "b")


# --- bad data on the command line --------------------------------------------------------------------

def test_worker_errors_keep_only_the_message():
    wrapped = PatchDropError("Caught PatchDropError in DataLoader worker process 0.\nOriginal Traceback "
                             "(most recent call last):\n  File \"x.py\", line 1\nutils.errors.PatchDropError:"
                             " cannot read image /d/1.png: broken")
    assert error_line(wrapped) == "cannot read image /d/1.png: broken"
    assert error_line(PatchDropError("plain")) == "plain"


def corrupt_image(data: Path) -> str:
    bad = data / "CIFAR10" / "train" / "bird" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return f"error: cannot read image {bad}"


def empty_class(data: Path) -> str:
    for split in ("train", "test"):
        (data / "CIFAR10" / split / "zebra").mkdir()
    return "error: " + str(data / "CIFAR10" / "train") + ": Found no valid file for the classes zebra"


def missing_split(data: Path) -> str:
    import shutil

    shutil.rmtree(data / "CIFAR10" / "test")
    return f"error: {data / 'CIFAR10'} has no 'test' folder"


@pytest.mark.parametrize("damage", [corrupt_image, empty_class, missing_split])
def test_bad_data_is_one_line_on_the_command_line(tmp_path, damage):
    data = make_cifar_folders(tmp_path / "data", per_class=4)
    expected = damage(data)
    # Two DataLoader workers: an error in a worker must still reach the user as one line.
    proc = subprocess.run(cli("classifier_training.py", "--data_dir", data, "--max_epochs", 1,
                              "--num_workers", 2, "--cv_dir", tmp_path / "cv", "--no_download"),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(expected), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bad_fmow_csv_is_one_line_on_the_command_line(tmp_path):
    root = tmp_path / "data" / "fMoW"
    root.mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(root / "a.jpg")
    (root / "train.csv").write_text("label,location\n0,a.jpg\n7.5,a.jpg\n")
    (root / "test.csv").write_text("0,a.jpg\n")
    proc = subprocess.run(cli("classifier_training.py", "--model", "R34_fMoW", "--data_dir", tmp_path / "data",
                              "--cv_dir", tmp_path / "cv"), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {root / 'train.csv'}, line 3: the label '7.5' is not an integer"
