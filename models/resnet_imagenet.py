"""ResNets for 224-pixel images (ImageNet, fMoW), built from torchvision's ``ResNet`` class.

The HR and LR classifiers are torchvision's ResNet-50 (ImageNet) and ResNet-34 (fMoW) with the class
count as output size; their state dicts therefore match torchvision's ImageNet weights files, which
``--pretrained`` loads (utils/weights.py, ``load_pretrained``). The policy network is the
ResNet-10 layout, BasicBlock x [1, 1, 1, 1], with one output per patch. All three end in adaptive
average pooling, so the same network runs on 224-pixel HR and 56-pixel LR inputs.

    ==========  =============================  ==========================================
    network     blocks                         parameters
    ==========  =============================  ==========================================
    ResNet-10   BasicBlock 1, 1, 1, 1          4,914,000 (16 outputs)
    ResNet-34   BasicBlock 3, 4, 6, 3          21,797,672 (1000 classes), 21,316,478 (62)
    ResNet-50   Bottleneck 3, 4, 6, 3          25,557,032 (1000 classes)
    ==========  =============================  ==========================================

``tests/test_models.py`` checks these counts.
"""
from torchvision.models import resnet34 as _tv_resnet34, resnet50 as _tv_resnet50
from torchvision.models.resnet import BasicBlock, ResNet


def resnet10(num_outputs: int) -> ResNet:
    """The policy network of ImageNet and fMoW: torchvision's ResNet with one BasicBlock per stage."""
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_outputs)


def resnet34(num_outputs: int) -> ResNet:
    """torchvision's ResNet-34, randomly initialized (no download), ``num_outputs`` classes."""
    return _tv_resnet34(weights=None, num_classes=num_outputs)


def resnet50(num_outputs: int) -> ResNet:
    """torchvision's ResNet-50, randomly initialized (no download), ``num_outputs`` classes."""
    return _tv_resnet50(weights=None, num_classes=num_outputs)
