"""Datasets, transforms and loaders (method.md, "Inputs").

CIFAR is read from one of two layouts under ``--data_dir``:
  * image folders ``<data_dir>/CIFAR10/{train,test}/<class>/<image>`` (``CIFAR100`` likewise), class
    folders in label order when sorted by name (true for CIFAR-10);
  * torchvision's own files (``<data_dir>/cifar-10-batches-py``, ``<data_dir>/cifar-100-python``),
    downloaded there when missing unless ``download=False``, as the authors' code did.
``fake_data=True`` serves random images of the right shape instead, for smoke runs.
"""
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from .errors import PatchDropError
from .spec import ModelSpec

# Subsets (--train_samples / --test_samples) are drawn with this fixed seed, not --seed, so every stage
# of a chain sees the same images whatever seed each stage trains with.
SUBSET_SEED = 0
FAKE_SIZES = {"train": 512, "test": 256}
TORCHVISION_CLASSES = {"CIFAR10": datasets.CIFAR10, "CIFAR100": datasets.CIFAR100}


def build_transform(spec: ModelSpec, train: bool) -> transforms.Compose:
    """CIFAR: RandomCrop(32, padding=4) + horizontal flip for training, nothing for testing; then
    ToTensor and the dataset's normalization."""
    steps = []
    if train:
        steps += [transforms.RandomCrop(spec.hr_size, padding=4), transforms.RandomHorizontalFlip()]
    steps += [transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)]
    return transforms.Compose(steps)


def _layout_help(spec: ModelSpec, data_dir: Path) -> str:
    tv_folder = datasets.CIFAR10.base_folder if spec.dataset == "CIFAR10" else datasets.CIFAR100.base_folder
    return (f"expected image folders {data_dir / spec.dataset}/train/<class>/* and "
            f"{data_dir / spec.dataset}/test/<class>/*, or torchvision's {spec.dataset} files in "
            f"{data_dir / tv_folder} (downloaded there automatically unless --no_download); "
            f"see data/README.md, or pass --fake_data for a smoke run")


def _image_folders(spec: ModelSpec, root: Path, transform_train, transform_test) -> tuple[Dataset, Dataset]:
    splits = {}
    for split, transform in (("train", transform_train), ("test", transform_test)):
        folder = root / split
        if not folder.is_dir():
            raise PatchDropError(f"{root} has no '{split}' folder: expected {root}/train/<class>/* and "
                                 f"{root}/test/<class>/*")
        try:
            splits[split] = datasets.ImageFolder(str(folder), transform=transform)
        except (FileNotFoundError, RuntimeError) as err:
            # ImageFolder raises when a folder has no classes or a class folder has no images.
            raise PatchDropError(f"{folder}: {str(err).strip().splitlines()[0]}") from None
    train, test = splits["train"], splits["test"]
    if len(train.classes) > spec.num_classes:
        raise PatchDropError(f"{root / 'train'} has {len(train.classes)} class folders but --model "
                             f"{spec.name} has {spec.num_classes} classes")
    if test.classes != train.classes:
        raise PatchDropError(f"{root}: the class folders of train/ and test/ differ, so their labels "
                             f"would not match (train: {len(train.classes)}, test: {len(test.classes)})")
    return train, test


def _torchvision(spec: ModelSpec, data_dir: Path, download: bool, transform_train,
                 transform_test) -> tuple[Dataset, Dataset]:
    dataset_class = TORCHVISION_CLASSES[spec.dataset]
    try:
        return (dataset_class(str(data_dir), train=True, download=download, transform=transform_train),
                dataset_class(str(data_dir), train=False, download=download, transform=transform_test))
    except Exception as err:  # no files and no network: torchvision raises RuntimeError or URLError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        attempt = f"download failed ({reason})" if download else "--no_download was given"
        raise PatchDropError(f"no {spec.dataset} data under {data_dir}: {attempt}; "
                             f"{_layout_help(spec, data_dir)}") from None


def take_subset(dataset: Dataset, num_samples: int | None) -> Dataset:
    """A fixed random subset of ``num_samples`` items (the whole dataset if it has no more)."""
    if num_samples is None or num_samples >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    indices = torch.randperm(len(dataset), generator=generator)[:num_samples].sort().values
    return Subset(dataset, indices.tolist())


def build_datasets(spec: ModelSpec, data_dir: str | Path, *, download: bool = True,
                   fake_data: bool = False, train_samples: int | None = None,
                   test_samples: int | None = None) -> tuple[Dataset, Dataset]:
    """Train and test datasets of ``spec.dataset`` yielding (normalized HR image [3, H, W], label)."""
    data_dir = Path(data_dir)
    transform_train, transform_test = build_transform(spec, True), build_transform(spec, False)
    if fake_data:
        shape = (3, spec.hr_size, spec.hr_size)
        train = datasets.FakeData(train_samples or FAKE_SIZES["train"], shape, spec.num_classes,
                                  transform_train, random_offset=0)
        test = datasets.FakeData(test_samples or FAKE_SIZES["test"], shape, spec.num_classes,
                                 transform_test, random_offset=10**6)
        return train, test
    folder = data_dir / spec.dataset
    if folder.is_dir():
        train, test = _image_folders(spec, folder, transform_train, transform_test)
    else:
        train, test = _torchvision(spec, data_dir, download, transform_train, transform_test)
    return take_subset(train, train_samples), take_subset(test, test_samples)


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, num_workers: int,
                 device: torch.device, seed: int) -> DataLoader:
    """Shuffled (training) or ordered (testing) loader; the shuffle order is seeded by ``seed``."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train, num_workers=num_workers,
        pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed) if train else None,
    )


def build_loaders(spec: ModelSpec, args, device: torch.device) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders for a stage script, from its --data_dir, --batch_size, --num_workers,
    --seed, --no_download, --fake_data, --train_samples and --test_samples."""
    train_set, test_set = build_datasets(spec, args.data_dir, download=not args.no_download,
                                         fake_data=args.fake_data, train_samples=args.train_samples,
                                         test_samples=args.test_samples)
    options = dict(num_workers=args.num_workers, device=device, seed=args.seed)
    return (build_loader(train_set, args.batch_size, train=True, **options),
            build_loader(test_set, args.batch_size, train=False, **options))
