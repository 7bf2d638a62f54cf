"""Epoch statistics against hand-worked numbers; console, JSONL and TensorBoard outputs."""
import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from utils.metrics import MetricsLogger, PolicyStats, console_lines


def test_policy_stats_hand_worked():
    stats = PolicyStats(torch.device("cpu"), with_baseline=True)
    a1 = torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 0]])  # 2 kept, twice the same policy
    a2 = torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0]])  # 4 and 0 kept
    stats.update(torch.tensor([1.0, 0]), torch.tensor([0.75, -1.0]), a1, torch.tensor([0.0, 0.0]))
    stats.update(torch.tensor([1.0, 1]), torch.tensor([0.0, 1.0]), a2, torch.tensor([1.0, 1.0]))
    out = stats.compute()
    assert out["accuracy"] == 0.75
    assert out["reward"] == pytest.approx(0.1875)
    assert out["sparsity"] == 2.0
    # counts 2, 2, 4, 0: sample variance ((0+0+4+4)/3) -> std sqrt(8/3)
    assert out["variance"] == pytest.approx((8 / 3) ** 0.5)
    assert out["unique_policies"] == 3
    assert out["baseline_reward"] == 0.5


def test_console_line_shape():
    metrics = {"epoch": 4, "train_accuracy": 0.5, "train_reward": 0.25, "train_sparsity": 8.0,
               "train_variance": 1.5, "train_unique_policies": 12, "test_accuracy": 0.75,
               "test_reward": 0.5, "test_sparsity": 6.0, "test_variance": 1.0, "test_unique_policies": 3}
    assert console_lines(metrics) == [
        "Train: 4 | Acc: 0.500 | Rw: 2.50E-01 | S: 8.000 | V: 1.500 | #: 12",
        "Test: 4 | Acc: 0.750 | Rw: 5.00E-01 | S: 6.000 | V: 1.000 | #: 3",
    ]


def test_logger_writes_jsonl_and_tensorboard_and_truncates_on_resume(tmp_path):
    logger = MetricsLogger(tmp_path)
    for epoch in range(3):
        logger.log({"epoch": epoch, "train_accuracy": epoch / 10})
    logger.close()
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [0, 1, 2]
    events = EventAccumulator(str(tmp_path / "log"))
    events.Reload()
    assert events.Tags()["scalars"] == ["train_accuracy"]  # the same tag names as metrics.jsonl
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train_accuracy")] == [(0, 0.0), (1, 0.1), (2, 0.2)]
    # Resuming from the checkpoint of epoch 1 drops the line of epoch 2, which will run again.
    MetricsLogger(tmp_path, resume_epoch=1).close()
    assert [json.loads(l)["epoch"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_padding_repeats_do_not_count_in_the_statistics():
    """65 images over 2 ranks: DistributedSampler pads rank 1's share (32 images) with one repeat of the
    epoch's first image, at its end. Rank 1 counts 32 of its 33."""
    from utils.metrics import ClassifierStats, Counted

    counted = Counted(32)
    assert [counted.take(16), counted.take(16), counted.take(1)] == [16, 16, 0]
    assert Counted(None).take(7) == 7
    stats = PolicyStats(torch.device("cpu"), limit=3)
    action = torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]])  # the last row is the repeat
    stats.update(torch.tensor([1.0, 1, 0, 0]), torch.tensor([1.0, 1, -1, 5]), action)
    out = stats.compute()
    assert (out["images"], out["unique_policies"], out["accuracy"]) == (3, 3, pytest.approx(2 / 3))
    assert out["reward"] == pytest.approx(1 / 3)
    classifier = ClassifierStats(torch.device("cpu"), limit=2)
    logits = torch.tensor([[1.0, 0], [0, 1], [0, 1]])
    classifier.update(logits, torch.tensor([0, 0, 1]), torch.tensor(0.5))
    assert classifier.compute() == {"accuracy": 0.5, "loss": 0.5, "images": 2}
