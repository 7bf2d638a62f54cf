"""Data layouts, subsets, transforms and the messages for missing or malformed data."""
import shutil

import pytest
import torch
from PIL import Image

from utils.data import build_datasets, take_subset
from utils.errors import PatchDropError
from utils.spec import CIFAR_MEAN, CIFAR_STD, SPECS

C10, C100 = SPECS["R32_C10"], SPECS["R32_C100"]


def make_image_folders(root, classes=("cat", "dog"), per_class=3, colour=(125, 123, 114)):
    for split in ("train", "test"):
        for c in classes:
            folder = root / "CIFAR10" / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (32, 32), colour).save(folder / f"{i}.png")
    return root


def test_image_folder_layout_and_normalization(tmp_path):
    # A flat image of the dataset's mean colour (rounded to integers) normalizes to about 0.
    train, test = build_datasets(C10, make_image_folders(tmp_path), download=False)
    assert (len(train), len(test)) == (6, 6)
    x, y = test[5]
    assert x.shape == (3, 32, 32) and y == 1  # classes numbered in sorted order: cat 0, dog 1
    expected = (torch.tensor([125, 123, 114]) / 255 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)
    assert torch.allclose(x[:, 0, 0], expected, atol=1e-6)


def test_train_transform_crops_with_zero_padding_and_flips(tmp_path):
    # Random crops with 4-pixel zero padding show black borders (normalized: -mean/std) on some draws.
    train, _ = build_datasets(C10, make_image_folders(tmp_path, colour=(255, 255, 255)), download=False)
    torch.manual_seed(0)
    padded = -torch.tensor(CIFAR_MEAN) / torch.tensor(CIFAR_STD)
    draws = torch.stack([train[0][0] for _ in range(50)])
    corners = draws[:, :, [0, 0, -1, -1], [0, -1, 0, -1]].permute(0, 2, 1).reshape(-1, 3)
    is_pad = torch.isclose(corners, padded, atol=1e-5).all(1)
    assert 0 < is_pad.float().mean() < 1


def test_more_class_folders_than_classes_is_refused(tmp_path):
    make_image_folders(tmp_path, classes=[f"c{i:02d}" for i in range(11)], per_class=1)
    with pytest.raises(PatchDropError, match="11 class folders but --model R32_C10 has 10 classes"):
        build_datasets(C10, tmp_path, download=False)


def test_empty_class_folder_is_named(tmp_path):
    make_image_folders(tmp_path)
    (tmp_path / "CIFAR10" / "train" / "empty").mkdir()
    with pytest.raises(PatchDropError, match="train"):
        build_datasets(C10, tmp_path, download=False)


def test_missing_split_is_named(tmp_path):
    make_image_folders(tmp_path)
    shutil.rmtree(tmp_path / "CIFAR10" / "test")
    with pytest.raises(PatchDropError, match="has no 'test' folder"):
        build_datasets(C10, tmp_path, download=False)


@pytest.mark.parametrize("spec", [C10, C100])
def test_no_data_names_both_layouts(tmp_path, spec):
    with pytest.raises(PatchDropError) as err:
        build_datasets(spec, tmp_path, download=False)
    message = str(err.value)
    assert f"{spec.dataset}/train/<class>" in message and "--no_download" in message
    assert ("cifar-10-batches-py" if spec is C10 else "cifar-100-python") in message


def test_subsets_are_fixed_and_clipped():
    data = list(range(100))
    first, second = take_subset(data, 10), take_subset(data, 10)
    assert list(first) == list(second) and len(set(first)) == 10
    assert take_subset(data, 500) is data  # more than the split: the whole split


def test_fake_data_shapes():
    train, test = build_datasets(C100, "unused", fake_data=True, train_samples=7, test_samples=5)
    assert (len(train), len(test)) == (7, 5)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 100
