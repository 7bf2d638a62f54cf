"""Architectures: parameter counts of the docstring table and output shapes over the spec registry."""
import pytest
import torch

from models import ARCHITECTURES, build_model
from utils.spec import SPECS


@pytest.mark.parametrize("arch,outputs,count", [
    ("resnet32_cifar", 10, 464_154),   # the ~0.46 M of the CIFAR ResNet literature
    ("resnet32_cifar", 100, 470_004),
    ("resnet8_cifar", 16, 75_680),     # the policy network, one logit per patch
    ("resnet10", 16, 4_914_000),       # ImageNet / fMoW policy: BasicBlock [1, 1, 1, 1]
    ("resnet34", 1000, 21_797_672),    # torchvision's published ResNet-34 count
    ("resnet34", 62, 21_316_478),
    ("resnet50", 1000, 25_557_032),    # torchvision's published ResNet-50 count
])
def test_parameter_counts(arch, outputs, count):
    assert sum(p.numel() for p in build_model(arch, outputs).parameters()) == count


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_networks_shapes(name):
    spec = SPECS[name]
    assert spec.classifier_arch in ARCHITECTURES and spec.policy_arch in ARCHITECTURES
    assert spec.num_patches == 16 and spec.hr_size % spec.lr_size == 0
    classifier = build_model(spec.classifier_arch, spec.num_classes).eval()
    policy = build_model(spec.policy_arch, spec.num_patches).eval()
    hr = torch.randn(2, 3, spec.hr_size, spec.hr_size)
    lr = torch.randn(2, 3, spec.lr_size, spec.lr_size)
    with torch.no_grad():
        assert classifier(hr).shape == (2, spec.num_classes)
        assert classifier(lr).shape == (2, spec.num_classes)  # the LR classifier: same network
        assert policy(lr).shape == (2, spec.num_patches)


def test_spec_defaults_are_the_papers():
    spec = SPECS["R32_C10"]
    hr, pt, ft = spec.stages["classifier_hr"], spec.stages["pretrain"], spec.stages["finetune"]
    assert (hr.lr, hr.batch_size, hr.momentum, hr.weight_decay, hr.lr_milestones, hr.max_epochs) == \
        (0.1, 128, 0.9, 5e-4, (150, 250), 300)
    assert (pt.lr, pt.batch_size, pt.penalty, pt.alpha) == (1e-4, 1024, -0.5, 0.8)
    assert (ft.lr, ft.batch_size, ft.penalty) == (1e-4, 128, -10.0)


def test_large_spec_defaults():
    for name, arch in (("R50_ImgNet", "resnet50"), ("R34_fMoW", "resnet34")):
        spec = SPECS[name]
        assert (spec.hr_size, spec.patch_size, spec.lr_size, spec.classifier_arch, spec.policy_arch) == \
            (224, 56, 56, arch, "resnet10")
        hr, pt, ft = spec.stages["classifier_hr"], spec.stages["pretrain"], spec.stages["finetune"]
        assert (hr.lr, hr.batch_size, hr.momentum) == (1e-3, 128, 0.9)
        assert (pt.lr, pt.batch_size, pt.penalty) == (1e-4, 1024, -0.5)
        assert (ft.lr, ft.batch_size, ft.penalty, spec.stages["finetune2stream"].penalty) == \
            (1e-4, 128, -20.0, -20.0)
    assert (SPECS["R50_ImgNet"].num_classes, SPECS["R34_fMoW"].num_classes) == (1000, 62)
