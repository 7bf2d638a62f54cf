"""The speed options: --gpu_data against the torchvision pipeline, --amp keeping the policy math in
float32, --channels_last, --compile and --parallel runs, and torchrun with two CPU processes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms
from torchvision.transforms import functional as TF

import classifier_training
import pretrain
from models import build_model
from tests.test_stages import ckpt, run
from utils.accel import Accel, bf16_supported
from utils.checkpoint import load_checkpoint, load_weights
from utils.data import build_datasets
from utils.gpu_data import DeviceLoader, augment, draw_augmentation
from utils.spec import SPECS

ROOT = Path(__file__).resolve().parents[1]
C10 = SPECS["R32_C10"]
CPU = torch.device("cpu")
FAKE = ["--fake_data", "--num_workers", 0, "--device", "cpu"]


# --- --gpu_data --------------------------------------------------------------------------------------

def coded_image() -> torch.Tensor:
    """uint8 [3, 32, 32] whose pixels tell their position (red: row, green: column; blue: 255, so zero
    padding shows): every crop offset and flip gives a different image."""
    rows = torch.arange(32)[:, None].expand(32, 32) * 8
    cols = torch.arange(32)[None, :].expand(32, 32) * 8
    return torch.stack([rows, cols, torch.full((32, 32), 255)]).to(torch.uint8)


def candidates(image: torch.Tensor) -> dict[bytes, tuple[int, int, bool]]:
    """All 9 x 9 offsets x 2 flips of RandomCrop(32, padding=4) + flip, by the image they give."""
    padded = F.pad(image, (4, 4, 4, 4))
    table = {}
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy:dy + 32, dx:dx + 32]
            for flip in (False, True):
                table[(crop.flip(2) if flip else crop).contiguous().numpy().tobytes()] = (dy, dx, flip)
    assert len(table) == 162
    return table


def test_gpu_augmentation_has_the_torchvision_distribution():
    image, draws = coded_image(), 8100  # 50 expected per (offset, flip)
    table = candidates(image)
    torch.manual_seed(0)
    pil = TF.to_pil_image(image)
    reference = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.PILToTensor()])
    theirs = [table[reference(pil).numpy().tobytes()] for _ in range(draws)]
    ours_batch = augment(image.expand(draws, 3, 32, 32), *draw_augmentation(draws, torch.Generator().manual_seed(0)))
    ours = [table[crop.contiguous().numpy().tobytes()] for crop in ours_batch]  # each one a valid draw
    for draws_of in (theirs, ours):
        counts = torch.tensor([draws_of.count(key) for key in table.values()], dtype=torch.float)
        chi2 = ((counts - 50) ** 2 / 50).sum().item()
        assert counts.min() > 0 and chi2 < 230, chi2  # uniform: chi2 ~ 161 +- 18 (161 dof)
    # Offsets 0..8 each way and flips, with matching frequencies in both pipelines.
    for index in range(3):
        a = torch.bincount(torch.tensor([d[index] for d in theirs], dtype=torch.long)).float() / draws
        b = torch.bincount(torch.tensor([d[index] for d in ours], dtype=torch.long)).float() / draws
        assert a.shape == b.shape and (a - b).abs().max() < 0.03


def test_gpu_data_normalization_and_order_match_the_loader_pipeline():
    raw_train, raw_test = build_datasets(C10, "unused", fake_data=True, train_samples=40, test_samples=24,
                                         raw=True)
    _, test = build_datasets(C10, "unused", fake_data=True, train_samples=40, test_samples=24)
    loader = DeviceLoader.from_dataset(raw_test, C10, 10, train=False, device=CPU, seed=0)
    images, labels = zip(*loader)
    images, labels = torch.cat(images), torch.cat(labels)
    expected = torch.stack([test[i][0] for i in range(24)])
    assert torch.allclose(images, expected, atol=1e-6) and labels.tolist() == [test[i][1] for i in range(24)]
    # A training epoch visits every image once, in a seeded random order, with its own label.
    train = DeviceLoader.from_dataset(raw_train, C10, 16, train=True, device=CPU, seed=0)
    train.images = torch.arange(40, dtype=torch.uint8)[:, None, None, None].expand(40, 3, 32, 32).clone()
    train.labels = torch.arange(40)
    seen = torch.cat([y for _, y in train])
    assert sorted(seen.tolist()) == list(range(40)) and seen.tolist() != list(range(40))
    assert len(train) == 3


def test_gpu_data_stage_runs(tmp_path):
    out = run(classifier_training, "--cv_dir", tmp_path, "--gpu_data", "--train_samples", 64,
              "--test_samples", 32, "--batch_size", 32, "--max_epochs", 2, *FAKE)
    assert 0 <= out["test_accuracy"] <= 1 and ckpt(tmp_path / "ckpt_last.pt")["epoch"] == 1


# --- --amp, --channels_last, --compile, --parallel --------------------------------------------------

@pytest.mark.skipif(not bf16_supported(CPU), reason="this CPU has no bf16")
def test_amp_keeps_the_policy_math_in_float32():
    agent, hr = build_model("resnet8_cifar", 16), build_model("resnet32_cifar", 10).eval()
    seen = []
    hr.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    amp = Accel(CPU, amp=True)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(10, (8,))
    correct, reward, action, baseline, loss = pretrain.train_step(
        agent, hr, x, y, optimizer, amp, penalty=-0.5, alpha=0.8, lr_size=8)
    assert seen == [torch.bfloat16, torch.bfloat16]  # the networks ran in bf16 ...
    assert {t.dtype for t in (reward, action, baseline, loss)} == {torch.float32}  # ... the rest did not
    assert all(p.dtype == torch.float32 for p in agent.parameters())


def test_channels_last_gives_the_same_run(tmp_path):
    # A small --lr: one step at 0.1 on random data is chaotic enough to amplify rounding differences.
    args = ["--train_samples", 32, "--test_samples", 16, "--batch_size", 16, "--max_epochs", 1, "--lr", 1e-3,
            *FAKE]
    plain = run(classifier_training, "--cv_dir", tmp_path / "plain", *args)
    other = run(classifier_training, "--cv_dir", tmp_path / "other", "--channels_last", *args)
    for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
        assert other[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-5), key


def test_parallel_wraps_the_networks_and_saves_the_plain_module(tmp_path, monkeypatch):
    """On the CPU DataParallel runs the module itself (its equality with one GPU is a GPU test): what can
    go wrong here is the wrapping and the saved keys."""
    wrapped = []

    class Recording(torch.nn.DataParallel):
        def __init__(self, net, device_ids=None):
            wrapped.append(type(net).__name__)
            super().__init__(net, device_ids=device_ids)

    monkeypatch.setattr(torch.nn, "DataParallel", Recording)
    run(classifier_training, "--cv_dir", tmp_path, "--parallel", "--train_samples", 32, "--test_samples", 16,
        "--batch_size", 16, "--max_epochs", 1, *FAKE)
    assert wrapped == ["CifarResNet"]
    saved = load_checkpoint(tmp_path, stages=("classifier_hr",), model="R32_C10")
    assert not any(k.startswith(("module.", "_orig_mod.", "net.")) for k in saved["state_dict"])
    load_weights(build_model("resnet32_cifar", 10), saved, "state_dict")


@pytest.mark.slow
def test_compile_saves_the_plain_module(tmp_path):
    """torch.compile with the default (inductor) backend: about a minute of compilation on 2 cores."""
    out = run(classifier_training, "--cv_dir", tmp_path, "--compile", "--train_samples", 16,
              "--test_samples", 16, "--batch_size", 16, "--max_epochs", 1, *FAKE)
    assert 0 <= out["test_accuracy"] <= 1
    saved = load_checkpoint(tmp_path, stages=("classifier_hr",), model="R32_C10")
    assert not any("_orig_mod" in k for k in saved["state_dict"])
    load_weights(build_model("resnet32_cifar", 10), saved, "state_dict")


# --- torchrun -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    cv = tmp_path / "cv"
    # 67 training images: DistributedSampler pads rank 1's share of 33 with one repeat (counted once).
    argv = ["--cv_dir", cv, "--train_samples", 67, "--test_samples", 30, "--batch_size", 32,
            "--max_epochs", 2, *FAKE]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           "2", "tests/ddp_launch.py", tmp_path, "classifier_training", *map(str, argv)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(rank0[0][k], rank1[0][k]) for k in rank0[0])  # same weights on both ranks
    # One set of outputs, written by rank 0 only.
    assert sorted(p.name for p in cv.iterdir()) == [".lock", "args.json", "ckpt_best.pt", "ckpt_last.pt", "log",
                                                   "metrics.jsonl"]
    assert len(list((cv / "log").iterdir())) == 1
    lines = [json.loads(line) for line in (cv / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1]
    assert [(line["train_images"], line["test_images"]) for line in lines] == [(67, 30), (67, 30)]
    # The checkpoint loads in a single process, and its logged test accuracy (gathered from both
    # ranks' shards of the 30 test images) is that of a single-process evaluation.
    saved = load_checkpoint(cv, stages=("classifier_hr",), model="R32_C10", default_name="ckpt_last.pt")
    model = build_model("resnet32_cifar", 10)
    load_weights(model, saved, "state_dict")
    _, test = build_datasets(C10, "unused", fake_data=True, train_samples=67, test_samples=30)
    accel = Accel(CPU)
    loader = torch.utils.data.DataLoader(test, batch_size=16)
    single = classifier_training.evaluate(model, loader, accel, img_size=32)
    assert single["accuracy"] == pytest.approx(lines[-1]["test_accuracy"], abs=1e-9)
