"""What a run directory guarantees: --resume applies what it records, one process per directory,
--overwrite that deletes nothing before the new run has a checkpoint, a ckpt_best.pt that matches
ckpt_last.pt after any kill, a metrics.jsonl with a broken line, a full disk at start, Ctrl-C."""
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
from torch import nn

import classifier_training
import pretrain
from tests.test_stages import ckpt, run
from utils import cli
from utils.checkpoint import BEST, LAST
from utils.errors import PatchDropError
from utils.run import REPLACED, Run, load_resume

ROOT = Path(__file__).resolve().parents[1]
FAKE = ["--fake_data", "--train_samples", 32, "--test_samples", 16, "--batch_size", 16, "--num_workers", 0,
        "--device", "cpu"]


def lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """The bytes of every file of a run directory (TensorBoard events included)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture
def classifier_run(tmp_path) -> Path:
    run(classifier_training, "--cv_dir", tmp_path / "hr", "--max_epochs", 2, "--test_interval", 1, *FAKE)
    return tmp_path / "hr"


# --- --resume applies what it records -------------------------------------------------------------------

def test_resume_applies_a_new_learning_rate_and_milestones(classifier_run):
    run(classifier_training, "--cv_dir", classifier_run, "--resume", "--max_epochs", 4, "--lr", 0.05,
        "--lr_milestones", 3)
    assert [(m["epoch"], m["lr"]) for m in lines(classifier_run)] == [(0, 0.1), (1, 0.1), (2, 0.05),
                                                                       (3, pytest.approx(0.005))]
    saved = ckpt(classifier_run / LAST)
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.005)  # what the optimizer used
    recorded = json.loads((classifier_run / "args.json").read_text())
    assert (recorded["lr"], recorded["lr_milestones"]) == (0.05, [3]) == (saved["args"]["lr"],
                                                                         saved["args"]["lr_milestones"])


def test_resume_sets_the_policy_stages_learning_rate(classifier_run, tmp_path):
    pt = tmp_path / "pt"
    run(pretrain, "--cv_dir", pt, "--ckpt_hr_cl", classifier_run, "--max_epochs", 1, "--lr", 1e-4, *FAKE)
    run(pretrain, "--cv_dir", pt, "--resume", "--max_epochs", 2, "--lr", 1e-3)
    assert [m["lr"] for m in lines(pt)] == [1e-4, 1e-3]
    assert ckpt(pt / LAST)["optimizer"]["param_groups"][0]["lr"] == 1e-3


@pytest.mark.parametrize("flag,value,message", [
    ("--seed", 5, "--seed 0 in the checkpoint, 5 given"),
    ("--batch_size", 8, "--batch_size 16 in the checkpoint, 8 given"),
    ("--train_samples", 16, "--train_samples 32 in the checkpoint, 16 given"),
    ("--wd", 0.0, "--wd 0.0005 in the checkpoint, 0.0 given"),
])
def test_resume_refuses_what_it_cannot_apply(classifier_run, flag, value, message):
    before = snapshot(classifier_run)
    with pytest.raises(PatchDropError, match=f"cannot change what the run optimizes or trains on: {message}; "
                                             f".*may change only --lr, --lr_milestones, --max_epochs"):
        run(classifier_training, "--cv_dir", classifier_run, "--resume", "--max_epochs", 3, flag, value)
    assert snapshot(classifier_run) == before


def test_resume_past_the_last_epoch_changes_nothing(classifier_run, capsys):
    before = snapshot(classifier_run)
    metrics = run(classifier_training, "--cv_dir", classifier_run, "--resume", "--max_epochs", 1)
    assert metrics["epoch"] == 1 and snapshot(classifier_run) == before
    assert "the run has finished 2 epochs and --max_epochs is 1: nothing to do" in capsys.readouterr().out


# --- one process per run directory ------------------------------------------------------------------------

HOLD_LOCK = ("import sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[2]); "
             "from utils.run import DirectoryLock; lock = DirectoryLock(Path(sys.argv[1])); lock.acquire(); "
             "print('locked', flush=True); time.sleep(120)")


def test_a_locked_directory_is_refused_and_a_dead_holders_lock_taken_over(tmp_path):
    cv = tmp_path / "run"
    cv.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(cv), str(ROOT)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PatchDropError, match=f"{cv} is in use by PID {holder.pid} on .*; wait for that "
                                                 f"run to end, or choose another --cv_dir"):
            run(classifier_training, "--cv_dir", cv, "--max_epochs", 1, *FAKE)
        assert not (cv / "args.json").exists()  # refused before anything was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert f"PID {holder.pid}" in (cv / ".lock").read_text()  # the dead holder's lock file is still there
    run(classifier_training, "--cv_dir", cv, "--max_epochs", 1, *FAKE)
    assert (cv / LAST).is_file() and f"PID {os.getpid()}" in (cv / ".lock").read_text()


@pytest.mark.slow
def test_two_processes_on_one_run_directory(tmp_path):
    argv = [sys.executable, "classifier_training.py", "--cv_dir", str(tmp_path / "run"), "--max_epochs", "3",
            *map(str, FAKE)]
    first = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    second = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [proc.communicate(timeout=600) + (proc.returncode,) for proc in (first, second)]
    codes = sorted(code for _, _, code in results)
    assert codes == [0, 1], results
    refused = next(err for _, err, code in results if code == 1).strip()
    assert len(refused.splitlines()) == 1 and " is in use by PID " in refused
    assert [m["epoch"] for m in lines(tmp_path / "run")] == [0, 1, 2]
    assert len(list((tmp_path / "run" / "log").glob("events.out.tfevents.*"))) == 1


# --- --overwrite deletes nothing before the new run has a checkpoint ----------------------------------------

def test_overwrite_with_bad_input_keeps_the_old_run(classifier_run, tmp_path):
    before = snapshot(classifier_run)
    with pytest.raises(PatchDropError, match="no CIFAR10 data under"):
        run(classifier_training, "--cv_dir", classifier_run, "--overwrite", "--max_epochs", 1,
            "--data_dir", tmp_path / "misspelt", "--no_download", "--device", "cpu", "--num_workers", 0)
    assert snapshot(classifier_run) == before and not (classifier_run / REPLACED).exists()


def test_overwrite_interrupted_before_its_first_checkpoint_puts_the_old_run_back(classifier_run, monkeypatch):
    before = snapshot(classifier_run)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(classifier_training, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt, match="before the first epoch ended; nothing of this run was saved "
                                                r"\(the run --overwrite was to replace is back in place\)"):
        run(classifier_training, "--cv_dir", classifier_run, "--overwrite", "--max_epochs", 1, *FAKE)
    assert snapshot(classifier_run) == before


def test_overwrite_killed_before_its_first_checkpoint_is_undone_next_time(classifier_run):
    """A SIGKILL leaves .replaced/ and the new run's args.json; the next command puts the old run back."""
    before = snapshot(classifier_run)
    (classifier_run / REPLACED).mkdir()
    for name in ("args.json", "metrics.jsonl", LAST, BEST, "log"):
        os.replace(classifier_run / name, classifier_run / REPLACED / name)
    (classifier_run / "args.json").write_text('{"the new run": true}')
    with pytest.raises(PatchDropError, match=r"already holds a run \(ckpt_last.pt\) \(an --overwrite run in .* "
                                             r"stopped before its first checkpoint; the run it was to replace "
                                             r"has been put back\); pass --resume"):
        run(classifier_training, "--cv_dir", classifier_run, "--max_epochs", 1, *FAKE)
    assert snapshot(classifier_run) == before

    (classifier_run / REPLACED).mkdir()  # killed again; this time the next command is a --resume
    for name in ("args.json", "metrics.jsonl", LAST, BEST, "log"):
        os.replace(classifier_run / name, classifier_run / REPLACED / name)
    run(classifier_training, "--cv_dir", classifier_run, "--resume", "--max_epochs", 3)
    assert [m["epoch"] for m in lines(classifier_run)] == [0, 1, 2] and not (classifier_run / REPLACED).exists()


def test_overwrite_removes_the_old_run_at_the_new_runs_first_checkpoint(classifier_run):
    old = ckpt(classifier_run / LAST)
    run(classifier_training, "--cv_dir", classifier_run, "--overwrite", "--max_epochs", 1, "--seed", 3, *FAKE)
    new = ckpt(classifier_run / LAST)
    assert (new["epoch"], new["args"]["seed"], old["args"]["seed"]) == (0, 3, 0)
    assert [m["epoch"] for m in lines(classifier_run)] == [0] and not (classifier_run / REPLACED).exists()
    assert len(list((classifier_run / "log").glob("events.out.tfevents.*"))) == 1


# --- ckpt_best.pt matches ckpt_last.pt --------------------------------------------------------------------

def test_a_kill_between_the_two_checkpoint_writes_is_repaired_on_resume(tmp_path, monkeypatch):
    net = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    config = dict(stage="classifier_hr", model="R32_C10", config={"max_epochs": 3}, max_epochs=3,
                  test_interval=1, seed=0, score_key="test_accuracy", device=torch.device("cpu"))
    with Run(tmp_path, **config) as first:
        first.end_epoch({"epoch": 0, "test_accuracy": 0.2}, {"state_dict": net}, optimizer)
        import utils.checkpoint as checkpoint
        real = checkpoint.write_atomically

        def killed_at_best(path, data):  # the process dies after ckpt_last.pt, before ckpt_best.pt
            if Path(path).name == BEST:
                raise KeyboardInterrupt
            real(path, data)

        monkeypatch.setattr(checkpoint, "write_atomically", killed_at_best)
        with torch.no_grad():
            net.weight.fill_(7.0)
        with pytest.raises(KeyboardInterrupt):
            first.end_epoch({"epoch": 1, "test_accuracy": 0.6}, {"state_dict": net}, optimizer)
        monkeypatch.undo()
    assert ckpt(tmp_path / LAST)["best_score"] == 0.6 and ckpt(tmp_path / BEST)["epoch"] == 0  # inconsistent
    with Run(tmp_path, **config, resume=load_resume("", tmp_path)) as resumed:
        assert any("rewritten from" in note for note in resumed.notes)
    best = ckpt(tmp_path / BEST)
    assert (best["epoch"], best["metrics"]["test_accuracy"]) == (1, 0.6)
    assert torch.equal(best["state_dict"]["weight"], torch.full((2, 2), 7.0))


# --- metrics.jsonl, a full disk, Ctrl-C -------------------------------------------------------------------

def test_a_broken_last_line_of_metrics_jsonl_is_dropped_on_resume(classifier_run, capsys):
    path = classifier_run / "metrics.jsonl"
    path.write_text(path.read_text() + '{"epoch": 2, "train_acc')
    run(classifier_training, "--cv_dir", classifier_run, "--resume", "--max_epochs", 3)
    assert [m["epoch"] for m in lines(classifier_run)] == [0, 1, 2]
    assert "metrics.jsonl: dropped its last line, which is not a complete record" in capsys.readouterr().out


def test_a_broken_middle_line_of_metrics_jsonl_is_one_line(classifier_run):
    path = classifier_run / "metrics.jsonl"
    first, second = path.read_text().splitlines()
    path.write_text(f"{first[:-5]}\n{second}\n")
    with pytest.raises(PatchDropError, match=r"metrics.jsonl, line 1: not a JSON record with an 'epoch'; "
                                             r"repair or delete the line"):
        run(classifier_training, "--cv_dir", classifier_run, "--resume", "--max_epochs", 3)


def test_a_full_disk_for_tensorboard_is_one_line(tmp_path, monkeypatch, capsys):
    import threading

    from tensorboard.summary.writer import record_writer

    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # run_cli replaces it

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    monkeypatch.setattr(sys, "argv", ["classifier_training.py", "--cv_dir", str(tmp_path / "run"),
                                      "--max_epochs", "1", *map(str, FAKE)])
    with pytest.raises(SystemExit) as exit_:
        cli.run_cli(classifier_training.main, classifier_training.get_args_parser())
    assert str(exit_.value) == (f"error: could not write TensorBoard events in {tmp_path / 'run' / 'log'} "
                                f"(No space left on device)")
    time.sleep(0.2)  # the writer thread has died by now; its traceback must not reach the user
    assert "Traceback" not in capsys.readouterr().err


def test_ctrl_c_says_what_was_saved(tmp_path, monkeypatch):
    real, calls = classifier_training.train_one_epoch, {"n": 0}

    def interrupted_in_epoch_1(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(classifier_training, "train_one_epoch", interrupted_in_epoch_1)
    with pytest.raises(KeyboardInterrupt, match=r"ckpt_last.pt holds the last finished epoch \(0\); continue "
                                                r"with --resume"):
        run(classifier_training, "--cv_dir", tmp_path, "--max_epochs", 3, *FAKE)
    def interrupted_at_once(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(classifier_training, "train_one_epoch", interrupted_at_once)
    with pytest.raises(KeyboardInterrupt, match="before the first epoch ended; nothing of this run was saved$"):
        run(classifier_training, "--cv_dir", tmp_path / "new", "--max_epochs", 3, *FAKE)
