"""Several processes, shown on the CPU: collectives get tensors on the run's device (also from a rank
without batches), --gpu_data gives every rank an equal share of each epoch, a process group of one rank
runs every policy stage, and torchrun runs that hung or crashed before now finish or fail fast."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import classifier_training
import finetune
import finetune2stream
import pretrain
from tests.test_faithful import cifar_folder
from tests.test_stages import run
from utils import distributed
from utils.gpu_data import DeviceLoader
from utils.metrics import ClassifierStats, LossWatch, PolicyStats
from utils.spec import SPECS

ROOT = Path(__file__).resolve().parents[1]
FAKE = ["--fake_data", "--num_workers", 0, "--device", "cpu", "--max_epochs", 1]
META = torch.device("meta")  # stands in for CUDA: a tensor built without the device would be on the CPU


# --- collectives --------------------------------------------------------------------------------------

@pytest.fixture
def recorded_collectives(monkeypatch):
    """Pretend to be rank 0 of 2 whose statistics saw no batch: every tensor given to a collective is
    recorded (its device), and the other rank answers with its own numbers (on the CPU)."""
    seen = []

    def all_cat(value):
        seen.append(value.device)
        if value.dtype == torch.long:  # the loss watch's first bad step (none), or policy codes
            return torch.tensor([-1, -1]) if value.shape == (1,) else torch.tensor([5, 5, 6])
        return torch.tensor([1.0, 0.0, 1.0])

    def all_sum(value):
        seen.append(value.device)
        return torch.tensor([3.0, 1.5, 4.0], dtype=torch.float64)

    monkeypatch.setattr(distributed, "all_cat", all_cat)
    monkeypatch.setattr(distributed, "all_sum", all_sum)
    return seen


def test_statistics_of_a_rank_without_batches_reach_collectives_on_its_device(recorded_collectives):
    policy = PolicyStats(META, with_baseline=True).compute()
    assert policy["accuracy"] == pytest.approx(2 / 3) and policy["unique_policies"] == 2
    assert "baseline_reward" in policy and "nonfinite_step" not in policy
    classifier = ClassifierStats(META).compute()
    assert classifier == {"accuracy": 0.75, "loss": 0.375, "images": 4}
    assert LossWatch(META).compute() == {}
    # kept, correct, reward, codes, baseline, loss watch; correct/loss/count sums, loss watch; loss watch
    assert len(recorded_collectives) == 6 + 2 + 1
    assert set(recorded_collectives) == {META}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def policy_stages(cv: Path, hr: Path, lr: Path, data: list) -> list[dict]:
    """Pretrain, finetune and two-stream finetune, each from the one before."""
    return [run(pretrain, "--cv_dir", cv / "pt", "--ckpt_hr_cl", hr, *data),
            run(finetune, "--cv_dir", cv / "ft", "--load", cv / "pt", *data),
            run(finetune2stream, "--cv_dir", cv / "ft2", "--load", cv / "ft", "--ckpt_lr_cl", lr, *data)]


def policy_stages_in_a_group_of_one(backend: str, cv: Path, hr: Path, lr: Path, data: list) -> list[dict]:
    """policy_stages inside a process group of one rank (``backend``): the stages then wrap their
    networks in DDP and gather their statistics through the collectives."""
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        return policy_stages(cv, hr, lr, data)
    finally:
        dist.destroy_process_group()


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith(("seconds", "images_per_second"))}


def test_a_one_rank_process_group_trains_exactly_as_a_single_process(tmp_path):
    """gloo here; NCCL in tests/test_gpu.py. DDP over one rank (its all-reduce, its broadcast, the
    gathered statistics) must change nothing: every metric equals the single process's. (--gpu_data: the
    same data order with and without a process group; a DistributedSampler draws another one.)"""
    data = [*FAKE, "--train_samples", 32, "--test_samples", 16, "--batch_size", 16, "--gpu_data"]
    run(classifier_training, "--cv_dir", tmp_path / "hr", *data)
    run(classifier_training, "--cv_dir", tmp_path / "lr", "--mode", "lr", *data)
    single = policy_stages(tmp_path / "single", tmp_path / "hr", tmp_path / "lr", data)
    grouped = policy_stages_in_a_group_of_one("gloo", tmp_path / "group", tmp_path / "hr", tmp_path / "lr", data)
    for alone, in_group in zip(single, grouped):
        assert "train_baseline_reward" in in_group
        assert without_timing(in_group) == without_timing(alone)


# --- --gpu_data shards ---------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [2, 3])
def test_gpu_data_gives_every_rank_an_equal_share_of_every_image(world):
    """1000 images whose label is their index, three epochs: on every rank the same number of batches
    of the same size, together covering every image (the few padded positions repeat the epoch's first
    images), the ranks' generators in step, and each epoch in another order."""
    n = 1000
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    loaders = [DeviceLoader(images, torch.arange(n), SPECS["R32_C10"], 64, train=True, device=torch.device("cpu"),
                            seed=7, rank=rank, world=world) for rank in range(world)]
    share = -(-n // world)
    orders = []
    for _ in range(3):
        seen = [torch.cat([labels for _, labels in loader]) for loader in loaders]
        assert {len(loader) for loader in loaders} == {-(-share // 64)}
        assert [len(labels) for labels in seen] == [share] * world
        assert set(torch.cat(seen).tolist()) == set(range(n))
        assert len({loader.generator.get_state().sum().item() for loader in loaders}) == 1
        order = torch.stack(seen, dim=1).reshape(-1)  # interleaved back into the epoch's order
        assert order[:n].sort().values.tolist() == list(range(n))
        assert order[n:].tolist() == order[:world * share - n].tolist()  # padding, as DistributedSampler
        orders.append(order)
    assert not torch.equal(orders[0], orders[1])


def test_gpu_data_test_split_is_scored_once_per_image():
    labels = torch.arange(10)
    loaders = [DeviceLoader(torch.zeros(10, 3, 32, 32, dtype=torch.uint8), labels, SPECS["R32_C10"], 4,
                            train=False, device=torch.device("cpu"), seed=0, rank=r, world=3) for r in range(3)]
    seen = [torch.cat([y for _, y in loader]).tolist() for loader in loaders]
    assert seen == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


# --- torchrun (gloo) ---------------------------------------------------------------------------------

def torchrun(*argv, timeout: int):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           "2", *map(str, argv)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_torchrun_gpu_data_with_unequal_shares_finishes(tmp_path):
    """257 images over 2 ranks at 128 each: rank 0 once had 2 batches and rank 1 one, and DDP waited
    forever for rank 1's second all-reduce."""
    proc = torchrun("classifier_training.py", "--cv_dir", tmp_path, "--gpu_data", "--train_samples", 257,
                    "--test_samples", 33, "--batch_size", 256, *FAKE, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert (lines[-1]["train_images"], lines[-1]["test_images"]) == (257, 33)  # the padding repeat not counted


@pytest.mark.slow
def test_torchrun_error_on_one_rank_ends_the_run(tmp_path):
    """A wrong-size test image on one rank's shard: that rank stops with its one-line error, leaves the
    process group, and the run ends instead of the other rank waiting for it."""
    data = cifar_folder(tmp_path / "data", "test/automobile/big.png")
    start = time.monotonic()
    proc = torchrun("classifier_training.py", "--data_dir", data, "--cv_dir", tmp_path / "cv", "--batch_size", 4,
                    "--num_workers", 0, "--device", "cpu", "--max_epochs", 1, timeout=300)
    assert proc.returncode != 0
    assert "error: image " in proc.stderr and "is 64x48 pixels, expected 32x32" in proc.stderr
    assert time.monotonic() - start < 120


def test_process_group_is_created_with_a_finite_timeout(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    assert distributed.init_distributed("cpu") == torch.device("cpu")
    assert calls == [("gloo", {"timeout": distributed.TIMEOUT})]
    assert 0 < distributed.TIMEOUT.total_seconds() < 24 * 3600


def test_cpu_tests_see_no_gpu():
    """tests/conftest.py pins the CPU for every test not marked gpu, in process and in subprocesses."""
    assert not torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES") == ""


def test_torchrun_resume_reseeds_each_rank_and_restores_the_shared_data_order(tmp_path, monkeypatch):
    """Only rank 0's random state is in a checkpoint: on a torchrun resume every rank reseeds from
    (--seed, rank, epoch), except the --gpu_data generator, which is the same on all ranks."""
    from utils.checkpoint import load_checkpoint
    from utils.run import Run

    args = ["--fake_data", "--train_samples", 32, "--test_samples", 16, "--batch_size", 16, "--num_workers", 0,
            "--device", "cpu", "--gpu_data", "--seed", 5]
    run(classifier_training, "--cv_dir", tmp_path, "--max_epochs", 2, *args)
    resume = load_checkpoint(tmp_path, stages=("classifier_hr",), model="R32_C10")
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    shared = DeviceLoader(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.arange(4), SPECS["R32_C10"], 2,
                          train=True, device=torch.device("cpu"), seed=0)
    def resumed_run():
        return Run(tmp_path, "classifier_hr", "R32_C10", config=resume["args"], max_epochs=4, test_interval=1,
                   seed=5, score_key="test_accuracy", device=torch.device("cpu"), resume=resume)

    notes = resumed_run().track_rng(shared.generator, shared_by_ranks=True)
    assert notes and "reseeded from --seed, its rank and the epoch (2)" in notes[0]
    assert torch.equal(shared.generator.get_state(), resume["rng"]["data"])
    assert torch.initial_seed() == 5 + 1 + 2 * 2
    per_rank = torch.utils.data.DataLoader(list(range(4)), generator=torch.Generator())
    resumed_run().track_rng(per_rank.generator, shared_by_ranks=False)
    assert per_rank.generator.initial_seed() == 5 + 1 + 2 * 2
