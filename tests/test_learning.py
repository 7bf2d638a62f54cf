"""Learning actually happens: the classifier stage on an easy task; the RL sanity task of the policy,
where the label is visible in one HR patch whose position shows in the LR image; and the finetune
mechanism, on the same task with a background that a classifier trained on full images depends on."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import classifier_training
import finetune
import pretrain
from models import build_model
from utils.accel import Accel, bf16_supported
from utils.policy import downsample, mask_image

CPU = Accel(torch.device("cpu"))
AMP = Accel(torch.device("cpu"), amp=True)
needs_bf16 = pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no bf16")


def batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


@pytest.mark.slow
@pytest.mark.parametrize("accel", [CPU, pytest.param(AMP, marks=needs_bf16)], ids=["fp32", "amp"])
def test_classifier_learns_an_easy_task(accel):
    """Two classes that differ by colour: ResNet-32 reaches 100% test accuracy in a few epochs, in
    float32 and under bf16 autocast (--amp)."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(2, (192,), generator=gen)
    x = torch.randn(192, 3, 32, 32, generator=gen) * 0.5
    x[:, 0] += 2 * y[:, None, None] - 1  # the red channel carries the class
    torch.manual_seed(0)
    model = build_model("resnet32_cifar", 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = classifier_training.evaluate(model, batches(x[128:], y[128:], 64), accel, img_size=32)
    for _ in range(4):
        classifier_training.train_one_epoch(model, batches(x[:128], y[:128], 32), optimizer, accel,
                                            img_size=32)
    after = classifier_training.evaluate(model, batches(x[128:], y[128:], 64), accel, img_size=32)
    assert before["accuracy"] < 0.8 and after["accuracy"] == 1.0


# Pixels that nearest downsampling by 4 keeps (rows and columns 0, 4, 8, ...): they carry the marker.
_KEPT_BY_LR = ((torch.arange(32) % 4 == 0)[:, None] & (torch.arange(32) % 4 == 0)[None, :]).float()


def make_task(n: int, gen: torch.Generator):
    """HR images [n, 3, 32, 32] that are zero except in one of the 16 patches, k: there the pixels the
    LR image keeps are +2 (the marker, visible in LR) and all others are +1 or -1 (the label, invisible
    in LR). Returns images, labels and k."""
    k = torch.randint(16, (n,), generator=gen)
    y = torch.randint(2, (n,), generator=gen)
    patch = torch.zeros(n, 16, 1, 1)
    patch[torch.arange(n), k] = 1
    in_patch = nn.functional.interpolate(patch.view(n, 1, 4, 4), scale_factor=8)  # [n, 1, 32, 32]
    sign = (2.0 * y - 1).view(n, 1, 1, 1)
    x = in_patch * (2 * _KEPT_BY_LR + sign * (1 - _KEPT_BY_LR))
    return x.expand(n, 3, 32, 32).contiguous(), y, k


class LabelReader(nn.Module):
    """A frozen classifier that reads the label off the hidden pixels; with the label patch dropped it
    sees zeros and answers class 0, right for half of the images."""

    def forward(self, x):
        s = (x * (1 - _KEPT_BY_LR)).sum(dim=(1, 2, 3))
        return torch.stack([-s, s], dim=1)


@pytest.mark.slow
@pytest.mark.parametrize("accel", [CPU, pytest.param(AMP, marks=needs_bf16)], ids=["fp32", "amp"])
def test_policy_learns_to_keep_the_informative_patch(accel):
    gen = torch.Generator().manual_seed(0)
    x_train, y_train, _ = make_task(2048, gen)
    x_test, y_test, k_test = make_task(512, gen)
    assert torch.equal(downsample(x_test, 8).abs().sum((1, 2, 3)), torch.full((512,), 3 * 4 * 2.0)), \
        "the LR image shows only the marker"
    torch.manual_seed(0)
    agent, reader = build_model("resnet8_cifar", 16), LabelReader()
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    test = batches(x_test, y_test, 256)
    before = pretrain.evaluate(agent, reader, test, accel, penalty=-0.5, lr_size=8)
    for _ in range(8):
        pretrain.train_one_epoch(agent, reader, batches(x_train, y_train, 64), optimizer, accel,
                                 penalty=-0.5, alpha=0.8, lr_size=8)
    after = pretrain.evaluate(agent, reader, test, accel, penalty=-0.5, lr_size=8)
    with torch.no_grad():
        action = (torch.sigmoid(agent.eval()(downsample(x_test, 8))) >= 0.5).float()
    kept_informative = action[torch.arange(512), k_test].mean().item()
    # Keeping only the informative patch earns 1 - (1/16)^2; keeping everything earns 0.
    assert after["accuracy"] >= 0.95 and kept_informative >= 0.95
    assert after["sparsity"] <= 3.0, "most uninformative patches are dropped"
    assert after["unique_policies"] >= 12, "the kept patch follows the marker, not a fixed choice"
    assert after["reward"] > before["reward"] + 0.3


# --- the finetune mechanism: a classifier that only works on full images ----------------------------

BACKGROUND = 0.5  # every pixel outside the label patch: neither a label value (+-1) nor a dropped one (0)


def make_context_task(n: int, gen: torch.Generator):
    """make_task's label patch (marker +2 where the LR image looks, label +-1 elsewhere) on a background
    of BACKGROUND: a classifier trained on full images can lean on the background, which the policy is
    rewarded for dropping."""
    x, y, k = make_task(n, gen)
    in_patch = (x.abs().sum(1, keepdim=True) > 0).float()
    return x + (1 - in_patch) * BACKGROUND, y, k


class PatchMeans(nn.Module):
    """A classifier with a known weak spot: per patch, the mean of the pixels the LR image keeps and the
    mean of the others, then a linear layer. Trained on full images only, it subtracts the background it
    always saw through its bias; it can also learn, from masked images, to cancel each patch's
    background with that patch's LR pixels, which makes it indifferent to which patches are dropped."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        mean_of = lambda pixels: F.avg_pool2d((x * pixels).mean(1, keepdim=True), 8).flatten(1)  # noqa: E731
        lr_kept = mean_of(_KEPT_BY_LR) * 4  # 16 of each patch's 64 pixels
        others = mean_of(1 - _KEPT_BY_LR) * 64 / 48
        return self.head(torch.cat([lr_kept, others], dim=1))


@pytest.mark.slow
def test_finetune_drops_the_context_the_stage1_classifier_needed():
    """The mechanism the CIFAR-10 runs depend on, where the optimum is known. A classifier trained on
    full images fails when only the label patch is kept, so against it, frozen, pretraining keeps most
    of the background; fine-tuning trains it on the sampled masked images, it stops needing the
    background, and the policy drops it while accuracy holds. Both stages use penalty -2, so only the
    classifier's training differs."""
    gen = torch.Generator().manual_seed(0)
    x_train, y_train, _ = make_context_task(1024, gen)
    x_test, y_test, k_test = make_context_task(512, gen)
    train, test = batches(x_train, y_train, 64), batches(x_test, y_test, 256)
    torch.manual_seed(0)
    classifier = PatchMeans()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-2)
    for _ in range(10):  # stage 1: full images
        classifier_training.train_one_epoch(classifier, train, optimizer, CPU, img_size=32)
    full = classifier_training.evaluate(classifier, test, CPU, img_size=32)["accuracy"]
    only_label_patch = torch.zeros(512, 16)
    only_label_patch[torch.arange(512), k_test] = 1
    with torch.no_grad():
        masked = (classifier(mask_image(x_test, only_label_patch)).argmax(1) == y_test).float().mean().item()
    assert full >= 0.95 and masked <= 0.6, (full, masked)

    agent = build_model("resnet8_cifar", 16)
    frozen = PatchMeans().requires_grad_(False)
    frozen.load_state_dict(classifier.state_dict())
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    for _ in range(10):  # stage 2: the classifier frozen
        pretrain.train_one_epoch(agent, frozen, train, optimizer, CPU, penalty=-2, alpha=0.8, lr_size=8)
    pretrained = pretrain.evaluate(agent, frozen, test, CPU, penalty=-2, lr_size=8)
    assert pretrained["accuracy"] >= 0.9 and pretrained["sparsity"] >= 13, pretrained

    optimizer = torch.optim.Adam(list(agent.parameters()) + list(classifier.parameters()), lr=1e-3)
    for _ in range(80):  # stage 3: both trained
        finetune.train_one_epoch(agent, classifier, train, optimizer, CPU, penalty=-2, alpha=0.8, lr_size=8)
    finetuned = finetune.evaluate(agent, classifier, test, CPU, penalty=-2, lr_size=8)
    assert finetuned["accuracy"] >= 0.95, finetuned
    assert finetuned["sparsity"] <= pretrained["sparsity"] - 4, (pretrained, finetuned)
