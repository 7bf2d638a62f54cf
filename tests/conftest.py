"""Shared fixtures: a small real CIFAR-10 subset, extracted from the archive named by
PATCHDROP_CIFAR10_TAR or, when that is unset, copied from the sample shipped in data/cifar10_sample
(the same files either way); all 10,000 test images (the archive only; skipped with the reason
without it); and the CPU pinned for every test not marked ``gpu``."""
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

CIFAR_TAR_ENV = "PATCHDROP_CIFAR10_TAR"
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "cifar10_sample"  # 200 train + 100 test a class
# Images per class extracted for the real-data tests: 30 train + 10 test per class.
PER_CLASS = {"train": 30, "test": 10}


def extract_cifar10(tmp_path_factory, name: str, keep) -> Path:
    """A fresh data directory holding the CIFAR10/<split>/<class>/NNNN.jpg files of the archive named by
    PATCHDROP_CIFAR10_TAR for which ``keep(split, number)`` is true; the test is skipped with the reason
    when the variable is unset or names no file."""
    archive = os.environ.get(CIFAR_TAR_ENV)
    if not archive:
        pytest.skip(f"{CIFAR_TAR_ENV} is not set (point it at cifar10-jpeg.tar.gz)")
    if not Path(archive).is_file():
        pytest.skip(f"{CIFAR_TAR_ENV}={archive} is not a file")
    root = tmp_path_factory.mktemp(name)
    pattern = re.compile(r"CIFAR10/(train|test)/\w+/(\d+)\.jpg$")
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            match = pattern.match(member.name)
            if match and keep(match.group(1), int(match.group(2))):
                tar.extract(member, root, filter="data")
    return root


def copy_from_sample(tmp_path_factory, name: str, keep) -> Path:
    """extract_cifar10 from the shipped sample instead of the archive (its files are the archive's)."""
    root = tmp_path_factory.mktemp(name)
    for image in sorted(SAMPLE.glob("CIFAR10/*/*/*.jpg")):
        split = image.parent.parent.name
        if keep(split, int(image.stem)):
            target = root / image.relative_to(SAMPLE)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, target)
    return root


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory) -> Path:
    """A data directory holding CIFAR10/{train,test}/<class>/NNNN.jpg, 300 train and 100 test images
    (numbers below 30 and 10 in each class): from the archive, or from the shipped sample without it."""
    keep = lambda split, number: number < PER_CLASS[split]  # noqa: E731
    if not os.environ.get(CIFAR_TAR_ENV):
        return copy_from_sample(tmp_path_factory, "cifar", keep)
    return extract_cifar10(tmp_path_factory, "cifar", keep)


@pytest.fixture(scope="session")
def cifar10_full_test(tmp_path_factory) -> Path:
    """A data directory holding all 10,000 CIFAR10/test images (train/ holds one image a class, which
    the image-folder loader needs to list the classes)."""
    return extract_cifar10(tmp_path_factory, "cifar_test", lambda split, number: split == "test" or number == 0)


@pytest.fixture(autouse=True)
def cpu_only_unless_marked_gpu(request, monkeypatch):
    """Every test not marked ``gpu`` runs on the CPU, also on a machine with a GPU: in process CUDA
    reads as absent (``--device auto`` picks the CPU, nothing is compared across devices), and the
    scripts a test starts see no GPU."""
    if request.node.get_closest_marker("gpu"):
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

