"""On a GPU (``pytest -m gpu``; skipped with the reason where CUDA is absent): the five CIFAR stages with
--gpu_data --amp --channels_last, evaluate and visualize, checkpoints across devices, resume, and a
one-rank NCCL process group through every policy stage.

Tolerances: a GPU run is not bit-for-bit repeatable (cuDNN picks its algorithms by timing them, and
some of them accumulate in a varying order), and its float32 convolutions use TF32 by default (a 10-bit
mantissa). Numbers compared across a resume or across devices are allowed 0.05 in accuracy (3 of the
64 test images) and 5 % in losses and rewards; a broken resume or a wrong device transfer is off by far
more."""
import json
from pathlib import Path

import pytest
import torch

import classifier_training
import evaluate
import pretrain
import visualize
from tests.test_distributed import policy_stages_in_a_group_of_one
from tests.test_stages import chain, check_chain_outputs, run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (pytest -m gpu "
                                                                       "needs one)")]

FAST = ["--gpu_data", "--amp", "--channels_last", "--device", "cuda"]
SMALL = ["--fake_data", "--train_samples", 256, "--test_samples", 64, "--num_workers", 0, "--max_epochs", 2,
         "--test_interval", 1]
EVAL = ["--fake_data", "--test_samples", 64, "--num_workers", 0]


def metrics_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def close(a: dict, b: dict) -> None:
    for key, value in a.items():
        if key == "epoch" or not isinstance(value, float):
            continue
        tolerance = 0.05 if key.endswith("accuracy") else 0.05 * max(abs(value), 1.0)
        assert b[key] == pytest.approx(value, abs=tolerance), key


@pytest.fixture(scope="module")
def gpu_chain(tmp_path_factory):
    cv = tmp_path_factory.mktemp("gpu_chain")
    chain(cv, "R32_C10", [*SMALL, *FAST, "--batch_size", 64])
    return cv


def test_five_stages_on_cuda_with_the_speed_options(gpu_chain):
    check_chain_outputs(gpu_chain, "R32_C10", epochs=2)
    saved = torch.load(gpu_chain / "ft2" / "ckpt_last.pt", weights_only=True)
    assert saved["args"]["device"] == "cuda" and saved["rng"]["cuda"] is not None
    assert all(t.device.type == "cpu" for t in saved["agent"].values())  # loadable without a GPU


def test_evaluate_and_visualize_on_cuda(gpu_chain, tmp_path):
    report = run(evaluate, "--load", gpu_chain / "ft", "--baselines", "--budgets", 4, 8, "--device", "cuda",
                 "--amp", "--channels_last", *EVAL)
    assert report["device"] == torch.cuda.get_device_name() and 0 <= report["accuracy"] <= 1
    out = run(visualize, "--load", gpu_chain / "ft2", "--out", tmp_path / "v.png", "--device", "cuda", *EVAL)
    assert Path(out).is_file()


def test_checkpoints_move_between_cpu_and_gpu(gpu_chain, tmp_path):
    """A GPU checkpoint evaluated on the CPU and on the GPU (float32, strict) gives the same numbers; a
    CPU checkpoint resumes on the GPU."""
    on_cpu = run(evaluate, "--load", gpu_chain / "ft", "--device", "cpu", *EVAL)
    on_gpu = run(evaluate, "--load", gpu_chain / "ft", "--device", "cuda", "--no_tf32", *EVAL)
    close({k: on_cpu[k] for k in ("accuracy", "sparsity", "reward")}, on_gpu)
    args = ["--cv_dir", tmp_path, "--fake_data", "--train_samples", 64, "--test_samples", 32, "--num_workers", 0,
            "--batch_size", 32]
    run(classifier_training, *args, "--max_epochs", 1, "--device", "cpu")
    resumed = run(classifier_training, *args, "--max_epochs", 2, "--device", "cuda", "--resume")
    assert resumed["epoch"] == 1 and torch.load(tmp_path / "ckpt_last.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("script,extra", [(classifier_training, []), (pretrain, ["--ckpt_hr_cl", "hr"])])
def test_resume_on_cuda_continues_with_the_same_metrics(gpu_chain, tmp_path, script, extra):
    extra = [gpu_chain / e if e == "hr" else e for e in extra]
    args = [*SMALL[:-4], "--test_interval", 1, *FAST, "--batch_size", 64, *extra]
    run(script, "--cv_dir", tmp_path / "whole", "--max_epochs", 3, *args)
    run(script, "--cv_dir", tmp_path / "parts", "--max_epochs", 2, *args)
    run(script, "--cv_dir", tmp_path / "parts", "--max_epochs", 3, "--resume", *args)
    whole, parts = metrics_of(tmp_path / "whole"), metrics_of(tmp_path / "parts")
    assert [m["epoch"] for m in parts] == [0, 1, 2]
    for a, b in zip(whole, parts):
        close(a, b)


def test_one_rank_nccl_group_runs_every_policy_stage(gpu_chain, tmp_path):
    data = [*SMALL[:-4], "--max_epochs", 1, "--device", "cuda", "--batch_size", 64]
    outs = policy_stages_in_a_group_of_one("nccl", tmp_path, gpu_chain / "hr", gpu_chain / "lr", data)
    for out in outs:
        assert 0 <= out["test_accuracy"] <= 1 and "train_baseline_reward" in out
