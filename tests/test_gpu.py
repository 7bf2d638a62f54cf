"""On a GPU (``pytest -m gpu``; skipped with the reason where CUDA is absent): the five CIFAR stages with
--gpu_data --amp --channels_last, evaluate and visualize, checkpoints across devices, resume, a one-rank
NCCL process group through every policy stage, and --parallel over two GPUs.

Exactness: a GPU run is repeatable bit for bit only with cuDNN's deterministic algorithms (the
``deterministic`` fixture; by default cuDNN picks its algorithms by timing them) and strict float32
(--no_tf32). The resume and process-group tests use both and compare exactly, with a negative control
(a resume that does not restore the random state must differ). Numbers compared across devices (CPU
against GPU) are allowed 0.05 in accuracy (3 of the 64 test images) and 5 % in losses and rewards."""
import json
from pathlib import Path

import pytest
import torch

import classifier_training
import evaluate
import pretrain
import visualize
from tests.test_distributed import policy_stages, policy_stages_in_a_group_of_one
from tests.test_reliability import check_resume_is_the_uninterrupted_run
from tests.test_stages import chain, check_chain_outputs, run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (pytest -m gpu "
                                                                       "needs one)")]

FAST = ["--gpu_data", "--amp", "--channels_last", "--device", "cuda"]
FAKE_FAST = ["--gpu_data", "--amp", "--channels_last", "--device", "cuda", "--no_tf32"]
SMALL = ["--fake_data", "--train_samples", 256, "--test_samples", 64, "--num_workers", 0, "--max_epochs", 2,
         "--test_interval", 1]
EVAL = ["--fake_data", "--test_samples", 64, "--num_workers", 0]


def metrics_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def close(a: dict, b: dict, exact: bool = False) -> None:
    for key, value in a.items():
        if key == "epoch" or not isinstance(value, float) or key.endswith(("seconds", "images_per_second")):
            continue
        if exact:
            assert b[key] == value, key
            continue
        tolerance = 0.05 if key.endswith("accuracy") else 0.05 * max(abs(value), 1.0)
        assert b[key] == pytest.approx(value, abs=tolerance), key


@pytest.fixture
def deterministic(monkeypatch):
    """cuDNN's deterministic algorithms, no autotuner, no TF32: a GPU run repeats bit for bit."""
    import utils.cli
    from utils.accel import configure_backends

    def strict(device, tf32=True):
        configure_backends(device, tf32=False)
        torch.backends.cudnn.benchmark = False

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(utils.cli, "configure_backends", strict)


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
    out = run(visualize, "--load", gpu_chain / "ft2", "--png", tmp_path / "v.png", "--device", "cuda", *EVAL)
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
def test_resume_on_cuda_is_the_uninterrupted_run(gpu_chain, tmp_path, script, extra, deterministic, monkeypatch):
    extra = [gpu_chain / e if e == "hr" else e for e in extra]
    args = [*SMALL[:-4], "--test_interval", 1, *FAKE_FAST, "--batch_size", 64, *extra]
    check_resume_is_the_uninterrupted_run(script, tmp_path, args, monkeypatch)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="--parallel needs two GPUs")
def test_parallel_over_two_gpus_gives_the_single_gpu_run(tmp_path, deterministic):
    args = [*SMALL, "--device", "cuda", "--batch_size", 64, "--lr", 1e-3]
    single = run(classifier_training, "--cv_dir", tmp_path / "one", *args)
    split = run(classifier_training, "--cv_dir", tmp_path / "two", "--parallel", *args)
    for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
        assert split[key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key


def test_one_rank_nccl_group_trains_as_a_single_process(gpu_chain, tmp_path, deterministic):
    """With --sync_bn, which over one rank must change nothing either."""
    data = [*SMALL[:-4], "--max_epochs", 1, "--device", "cuda", "--batch_size", 64, "--no_tf32", "--gpu_data"]
    single = policy_stages(tmp_path / "single", gpu_chain / "hr", gpu_chain / "lr", data)
    grouped = policy_stages_in_a_group_of_one("nccl", tmp_path / "group", gpu_chain / "hr", gpu_chain / "lr",
                                              [*data, "--sync_bn"])
    for alone, in_group in zip(single, grouped):
        close(alone, in_group, exact=True)
