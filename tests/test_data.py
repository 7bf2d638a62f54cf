"""Data layouts, subsets, transforms and the messages for missing or malformed data."""
import shutil

import pytest
import torch
from PIL import Image

from utils.data import build_datasets, take_subset
from utils.errors import PatchDropError
from tests.trees import CIFAR10_CLASSES
from utils.spec import CIFAR_MEAN, CIFAR_STD, SPECS

C10, C100 = SPECS["R32_C10"], SPECS["R32_C100"]


def make_image_folders(root, classes=CIFAR10_CLASSES, per_class=3, colour=(125, 123, 114)):
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
    assert (len(train), len(test)) == (30, 30)
    x, y = test[5]
    assert x.shape == (3, 32, 32) and y == 1  # classes numbered in sorted order: airplane 0, automobile 1
    expected = (torch.tensor([125, 123, 114]) / 255 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)
    assert torch.allclose(x[:, 0, 0], expected, atol=1e-6)


def test_train_transform_crops_with_zero_padding_and_flips(tmp_path):
    """A left-dark, right-bright image: random crops with 4-pixel zero padding show black borders
    (normalized: -mean/std) on some draws, and flips put the bright half on the left on about half."""
    make_image_folders(tmp_path, per_class=1)
    picture = Image.new("RGB", (32, 32), (255, 255, 255))
    picture.paste((0, 0, 0), (0, 0, 16, 32))
    picture.save(tmp_path / "CIFAR10" / "train" / "airplane" / "0.png")
    train, _ = build_datasets(C10, tmp_path, download=False)
    torch.manual_seed(0)
    draws = torch.stack([train[0][0] for _ in range(200)])
    padded = -torch.tensor(CIFAR_MEAN) / torch.tensor(CIFAR_STD)
    corners = draws[:, :, [0, 0, -1, -1], [0, -1, 0, -1]].permute(0, 2, 1).reshape(-1, 3)
    is_pad = torch.isclose(corners, padded, atol=1e-5).all(1)
    assert 0 < is_pad.float().mean() < 1
    # Unflipped, the left half of every crop is darker than its right half (offsets are at most 4 px).
    bright_left = draws[:, 0, :, :16].mean((1, 2)) > draws[:, 0, :, 16:].mean((1, 2))
    assert 0.4 < bright_left.float().mean() < 0.6


def test_more_class_folders_than_classes_is_refused(tmp_path):
    make_image_folders(tmp_path, classes=[f"c{i:02d}" for i in range(11)], per_class=1)
    with pytest.raises(PatchDropError, match="11 class folders but R32_C10 declares 10 classes"):
        build_datasets(C10, tmp_path, download=False)


def test_empty_class_folder_is_named(tmp_path):
    make_image_folders(tmp_path)
    (tmp_path / "CIFAR10" / "train" / "empty").mkdir()
    with pytest.raises(PatchDropError, match=f"{tmp_path / 'CIFAR10' / 'train'}: Found no valid file for the "
                                             f"classes empty"):
        build_datasets(C10, tmp_path, download=False)


def test_fewer_class_folders_than_the_spec_declares_are_refused(tmp_path):
    """Labels are folder indices: with a class missing, every later class would take another's label."""
    make_image_folders(tmp_path, classes=[c for c in CIFAR10_CLASSES if c != "cat"])
    with pytest.raises(PatchDropError, match="train has 9 class folders but R32_C10 declares 10 classes"):
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
    assert f"{spec.folder}/train/<class>" in message and "--no_download" in message
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


# --- every image mode decodes to the right 8-bit RGB ----------------------------------------------------

RGB = (200, 120, 40)


def saved_as(folder, mode: str, suffix: str):
    """A 32x32 image of colour RGB converted to ``mode`` and saved as ``suffix``; returns (path, what PIL's
    own conversion of that image back to RGB gives)."""
    image = Image.new("RGB", (32, 32), RGB).convert(mode)
    path = folder / f"{mode}{suffix}"
    image.save(path)
    with Image.open(path) as reread:
        expected = reread.convert("RGB").getpixel((5, 5))
    return path, expected


@pytest.mark.parametrize("mode,suffix", [("1", ".png"), ("L", ".png"), ("LA", ".png"), ("P", ".png"),
                                         ("P", ".gif"), ("RGB", ".jpg"), ("RGBA", ".png"), ("CMYK", ".jpg"),
                                         ("CMYK", ".tif"), ("YCbCr", ".jpg"), ("LAB", ".tif"), ("RGBX", ".tif")])
def test_8_bit_modes_convert_as_pil_converts_them(tmp_path, mode, suffix):
    from utils.data import load_rgb

    path, expected = saved_as(tmp_path, mode, suffix)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (32, 32) and image.getpixel((5, 5)) == expected


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    """PIL itself clips 16-bit values at 255: the whole image would be white."""
    import numpy as np

    from utils.data import load_rgb

    values = np.array([[0, 257, 257 * 100, 257 * 100 + 128, 65535]], dtype=np.uint16).repeat(32, 0)
    values = np.pad(values, ((0, 0), (0, 27)))
    Image.fromarray(values).save(tmp_path / "gray16.png")
    with Image.open(tmp_path / "gray16.png") as raw:
        assert raw.mode == "I;16" and raw.convert("RGB").getpixel((2, 0)) == (255, 255, 255)  # PIL's clip
    row = [load_rgb(tmp_path / "gray16.png").getpixel((x, 0)) for x in range(5)]
    assert row == [(0, 0, 0), (1, 1, 1), (100, 100, 100), (100, 100, 100), (255, 255, 255)]


@pytest.mark.parametrize("mode,kind", [("I", "32-bit integers"), ("F", "floating-point numbers")])
def test_pixels_of_unknown_range_are_refused_naming_the_file(tmp_path, mode, kind):
    from utils.data import load_rgb

    path = tmp_path / f"{mode}.tif"
    Image.new(mode, (32, 32), 70000 if mode == "I" else 0.5).save(path)
    with pytest.raises(PatchDropError, match=f"cannot read image {path}: its pixels are {kind} "
                                             fr"\(PIL mode {mode}\) of unknown range"):
        load_rgb(path)


def test_a_16_bit_cifar_image_trains_as_its_8_bit_pixels(tmp_path):
    """The same picture as 8-bit RGB and as 16-bit grayscale gives the same normalized tensor."""
    import numpy as np

    make_image_folders(tmp_path, per_class=1)
    gray = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "CIFAR10" / "test" / "airplane" / "0.png")
    Image.fromarray(gray).convert("RGB").save(tmp_path / "CIFAR10" / "test" / "automobile" / "0.png")
    _, test = build_datasets(C10, tmp_path, download=False)
    assert torch.equal(test[0][0], test[1][0])
