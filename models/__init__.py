"""Network architectures, by the names the spec table (utils/spec.py) uses.

Every builder takes the number of outputs and returns an ``nn.Module`` mapping images [B, 3, H, W] to
logits [B, num_outputs].
"""
from typing import Callable

from torch import nn

from .resnet_cifar import resnet8_cifar, resnet32_cifar
from .resnet_imagenet import resnet10, resnet34, resnet50

ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {
    "resnet8_cifar": resnet8_cifar,
    "resnet32_cifar": resnet32_cifar,
    "resnet10": resnet10,
    "resnet34": resnet34,
    "resnet50": resnet50,
}


def build_model(arch: str, num_outputs: int) -> nn.Module:
    """Build architecture ``arch`` (a key of ARCHITECTURES) with ``num_outputs`` logits."""
    return ARCHITECTURES[arch](num_outputs)
