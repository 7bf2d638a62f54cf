"""ResNets for 32x32 CIFAR images (He et al., 2016, Sec. 4.2), as used by PatchDrop.

Three stages of BasicBlocks with widths 16/32/64; the first stage keeps the input size and each later
stage halves it. Shortcuts that change shape are parameter-free (average-pool to halve, zero channels to
widen), as in the paper's "option A", so the parameter counts match the CIFAR ResNet literature:

    =========  ==================  ===========================
    network    blocks per stage    parameters (10 / 16 outputs)
    =========  ==================  ===========================
    ResNet-8   1, 1, 1             75,290 / 75,680
    ResNet-20  3, 3, 3             269,722
    ResNet-32  5, 5, 5             464,154 (100 classes: 470,004)
    ResNet-44  7, 7, 7             658,586
    ResNet-56  9, 9, 9             853,018
    =========  ==================  ===========================

``tests/test_models.py`` checks the ResNet-8 and ResNet-32 rows. Global average pooling makes the
networks size-agnostic: the LR classifier and the policy network run them on 8x8 inputs.
"""
import torch
from torch import nn
import torch.nn.functional as F


class ShortcutA(nn.Module):
    """Parameter-free shortcut: halve the resolution by 2x2 average pooling, pad channels with zeros."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra_channels = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = F.avg_pool2d(x, self.stride)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = ShortcutA(in_planes, planes, stride) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet with ``blocks_per_stage`` BasicBlocks in each of three stages."""

    widths = (16, 32, 64)

    def __init__(self, blocks_per_stage: tuple[int, int, int], num_outputs: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, self.widths[0], 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.widths[0])
        stages, in_planes = [], self.widths[0]
        for i, (planes, blocks) in enumerate(zip(self.widths, blocks_per_stage)):
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(self.widths[-1], num_outputs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        # Global average pooling instead of a fixed 8x8 pool, so 8x8 LR inputs work too.
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def resnet8_cifar(num_outputs: int) -> CifarResNet:
    """The PatchDrop policy network: 3 stages x 1 block, one logit per patch."""
    return CifarResNet((1, 1, 1), num_outputs)


def resnet32_cifar(num_outputs: int) -> CifarResNet:
    """The PatchDrop HR and LR classifier for CIFAR: 3 stages x 5 blocks."""
    return CifarResNet((5, 5, 5), num_outputs)
