"""Datasets, transforms and loaders (method.md, "Inputs"), for any dataset spec (utils/spec.py).

A spec's data is read from ``<data_dir>/<spec.folder>`` in one of two layouts, looked up by name:
  * ``image_folder``: ``{train,test}/<class>/<image>``, classes numbered in sorted folder order (for
    CIFAR-10 the official label order); train/ and test/ must hold the spec's number of class folders.
    A spec with ``download`` (CIFAR-10/100) falls back to torchvision's own files in ``<data_dir>``,
    downloaded there when missing unless ``download=False``, as the authors' code did;
  * ``csv``: ``train.csv`` and ``test.csv``, rows ``label,location`` (see ``read_image_csv``), as
    ``python scripts/prepare_fmow.py`` writes them for fMoW.
Images are augmented by the spec's family, also looked up by name: ``cifar`` (pad-crop + flip; images
must already have the HR size), ``imagenet`` (resize + crop + flip), ``fmow`` (resize + crop, no flip).
Every image file is decoded by ``load_rgb`` (any PIL mode becomes 8-bit RGB; a file that cannot be
decoded is an error naming it). ``fake_data=True`` serves random images of the right shape instead.
"""
import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import datasets, transforms

from . import distributed
from .errors import PatchDropError
from .spec import ModelSpec

# Subsets (--train_samples / --test_samples) are drawn with this fixed seed, not --seed, so every stage
# of a chain sees the same images whatever seed each stage trains with.
SUBSET_SEED = 0
FAKE_SIZES = {"train": 512, "test": 256}
TORCHVISION_CLASSES = {"CIFAR10": datasets.CIFAR10, "CIFAR100": datasets.CIFAR100}


SIXTEEN_BIT_GRAY = ("I;16", "I;16L", "I;16B", "I;16N")  # PIL's modes of 16-bit grayscale pixels


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file as 8-bit RGB. Every PIL mode converts as PIL converts it (grayscale, palette,
    CMYK, YCbCr, LAB, HSV; alpha is dropped), except 16-bit grayscale, which PIL would clip at 255 (a
    white image): it is scaled to 8 bits (value / 257, rounded). Pixels whose range is unknown (32-bit
    integers outside a PNG, floats) and files that cannot be decoded raise a PatchDropError naming the
    file."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in SIXTEEN_BIT_GRAY or (mode == "I" and image.format == "PNG"):  # "I": older PIL's 16-bit PNG
                values = np.asarray(image).astype(np.float64)
                return Image.fromarray(np.round(values / 257).clip(0, 255).astype(np.uint8), "L").convert("RGB")
            if mode in ("I", "F"):
                kind = "32-bit integers" if mode == "I" else "floating-point numbers"
                raise PatchDropError(f"cannot read image {path}: its pixels are {kind} (PIL mode {mode}) of "
                                     f"unknown range; save it with 8- or 16-bit pixels")
            if mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")  # palette transparency goes through RGBA, as PIL advises
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise PatchDropError(f"cannot read image {path}: {err}; remove or replace the file") from None


def load_rgb_of_size(path: str | Path, size: int) -> Image.Image:
    """``load_rgb`` for a split whose transform does not resize (CIFAR): an image that is not
    ``size`` x ``size`` raises a PatchDropError naming the file and both sizes, instead of failing later
    in the batch collation (or being cropped silently)."""
    image = load_rgb(path)
    if image.size != (size, size):
        raise PatchDropError(f"image {path} is {image.size[0]}x{image.size[1]} pixels, expected "
                             f"{size}x{size}; remove or resize the file")
    return image


def _cifar(spec: ModelSpec, train: bool) -> list:
    """RandomCrop(hr, padding=4) + RandomHorizontalFlip for training; nothing for testing."""
    return [transforms.RandomCrop(spec.hr_size, padding=4), transforms.RandomHorizontalFlip()] if train else []


def _imagenet(spec: ModelSpec, train: bool) -> list:
    """Resize(256) + RandomCrop(224) + flip for training, Resize(256) + CenterCrop(224) for testing, at
    224 px (the resize keeps the ratio 256/224 at other sizes)."""
    resize = transforms.Resize(round(spec.hr_size * 256 / 224))
    if train:
        return [resize, transforms.RandomCrop(spec.hr_size), transforms.RandomHorizontalFlip()]
    return [resize, transforms.CenterCrop(spec.hr_size)]


def _fmow(spec: ModelSpec, train: bool) -> list:
    """Resize(hr) + RandomCrop(hr), no flip, for training; Resize(hr) + CenterCrop(hr) for testing."""
    crop = transforms.RandomCrop(spec.hr_size) if train else transforms.CenterCrop(spec.hr_size)
    return [transforms.Resize(spec.hr_size), crop]


AUGMENTATIONS = {"cifar": _cifar, "imagenet": _imagenet, "fmow": _fmow}
RESIZES = {"cifar": False, "imagenet": True, "fmow": True}  # brings an image of any size to the HR size


def build_transform(spec: ModelSpec, train: bool) -> transforms.Compose:
    """The spec's augmentation family (method.md for the paper's datasets), then ToTensor and the spec's
    normalization."""
    steps = AUGMENTATIONS[spec.augmentation](spec, train)
    steps += [transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)]
    return transforms.Compose(steps)


def _layout_help(spec: ModelSpec, data_dir: Path) -> str:
    root = data_dir / spec.folder
    if spec.layout == "csv":
        expected = f"expected {root}/train.csv and {root}/test.csv (rows: label,location)"
    else:
        expected = f"expected image folders {root}/train/<class>/* and {root}/test/<class>/*"
        if spec.download:
            tv_folder = TORCHVISION_CLASSES[spec.download].base_folder
            expected += (f", or torchvision's {spec.download} files in {data_dir / tv_folder} (downloaded "
                         f"there automatically unless --no_download)")
    hint = f", {spec.hint.replace('<data_dir>', str(data_dir))}" if spec.hint else ""
    return f"{expected}{hint}; see data/README.md, or pass --fake_data for a smoke run"


def _image_folders(spec: ModelSpec, root: Path, transform_train, transform_test) -> tuple[Dataset, Dataset]:
    # A family that does not resize (cifar) needs every image at the HR size already.
    loader = load_rgb if RESIZES[spec.augmentation] else partial(load_rgb_of_size, size=spec.hr_size)
    splits = {}
    for split, transform in (("train", transform_train), ("test", transform_test)):
        folder = root / split
        if not folder.is_dir():
            raise PatchDropError(f"{root} has no '{split}' folder: expected {root}/train/<class>/* and "
                                 f"{root}/test/<class>/*")
        try:
            splits[split] = datasets.ImageFolder(str(folder), transform=transform, loader=loader)
        except (FileNotFoundError, RuntimeError) as err:
            # ImageFolder raises when a folder has no classes or a class folder has no images.
            raise PatchDropError(f"{folder}: {str(err).strip().splitlines()[0]}") from None
    train, test = splits["train"], splits["test"]
    if len(train.classes) != spec.num_classes:
        # Fewer folders would silently shift the labels of every class after a missing one.
        raise PatchDropError(f"{root / 'train'} has {len(train.classes)} class folders but {spec.name} "
                             f"declares {spec.num_classes} classes ({spec.source})")
    if test.classes != train.classes:
        raise PatchDropError(f"{root}: the class folders of train/ and test/ differ, so their labels "
                             f"would not match (train: {len(train.classes)}, test: {len(test.classes)})")
    return train, test


def _torchvision(spec: ModelSpec, data_dir: Path, download: bool, transform_train,
                 transform_test) -> tuple[Dataset, Dataset]:
    dataset_class = TORCHVISION_CLASSES[spec.download]
    try:
        return (dataset_class(str(data_dir), train=True, download=download, transform=transform_train),
                dataset_class(str(data_dir), train=False, download=download, transform=transform_test))
    except Exception as err:  # no files and no network: torchvision raises RuntimeError or URLError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        attempt = f"download failed ({reason})" if download else "--no_download was given"
        raise PatchDropError(f"no {spec.folder} data under {data_dir}: {attempt}; "
                             f"{_layout_help(spec, data_dir)}") from None


def read_image_csv(csv_path: Path, num_classes: int) -> list[tuple[str, int]]:
    """The (image path, label) rows of an fMoW-style CSV: two columns, the integer label in
    [0, num_classes) and then the image location, absolute or relative to the CSV's folder; further
    columns are ignored. A first row whose label cell is not a number is a header. Any other bad row (a
    missing column, a label that is not an integer or is out of range, an image that does not exist)
    raises a PatchDropError naming the file and line."""
    samples = []
    with open(csv_path, newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip():
                continue  # blank line
            where = f"{csv_path}, line {line_no}"
            if len(row) < 2 or not row[1].strip():
                raise PatchDropError(f"{where}: expected two columns 'label,location', got {row!r}")
            label_text, location = row[0].strip(), row[1].strip()
            try:
                label = int(label_text)
            except ValueError:
                if line_no == 1 and not samples:
                    continue  # header row
                raise PatchDropError(f"{where}: the label {label_text!r} is not an integer") from None
            if not 0 <= label < num_classes:
                raise PatchDropError(f"{where}: label {label} is outside 0..{num_classes - 1}")
            path = Path(location) if Path(location).is_absolute() else csv_path.parent / location
            if not path.is_file():
                raise PatchDropError(f"{where}: image {path} does not exist")
            samples.append((str(path), label))
    if not samples:
        raise PatchDropError(f"{csv_path} lists no images")
    return samples


class CsvImageDataset(Dataset):
    """Images listed in a ``label,location`` CSV (fMoW), decoded by ``load_rgb``."""

    def __init__(self, csv_path: str | Path, num_classes: int, transform=None):
        self.samples = read_image_csv(Path(csv_path), num_classes)
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = load_rgb(path)
        return (self.transform(image) if self.transform else image), label


def _csv_splits(spec: ModelSpec, root: Path, transform_train, transform_test) -> tuple[Dataset, Dataset]:
    missing = [name for name in ("train.csv", "test.csv") if not (root / name).is_file()]
    if missing:
        raise PatchDropError(f"{root} has no {' or '.join(missing)}: {_layout_help(spec, root.parent)}")
    return (CsvImageDataset(root / "train.csv", spec.num_classes, transform_train),
            CsvImageDataset(root / "test.csv", spec.num_classes, transform_test))


def take_subset(dataset: Dataset, num_samples: int | None) -> Dataset:
    """A fixed random subset of ``num_samples`` items (the whole dataset if it has no more)."""
    if num_samples is None or num_samples >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    indices = torch.randperm(len(dataset), generator=generator)[:num_samples].sort().values
    return Subset(dataset, indices.tolist())


def build_datasets(spec: ModelSpec, data_dir: str | Path, *, download: bool = True,
                   fake_data: bool = False, train_samples: int | None = None,
                   test_samples: int | None = None, raw: bool = False) -> tuple[Dataset, Dataset]:
    """Train and test datasets of ``spec`` yielding (normalized HR image [3, H, W], label), or
    with ``raw`` (un-augmented uint8 image [3, H, W], label), from which --gpu_data builds its copy."""
    data_dir = Path(data_dir)
    if raw:
        transform_train = transform_test = transforms.PILToTensor()
    else:
        transform_train, transform_test = build_transform(spec, True), build_transform(spec, False)
    if fake_data:
        shape = (3, spec.hr_size, spec.hr_size)
        train = datasets.FakeData(train_samples or FAKE_SIZES["train"], shape, spec.num_classes,
                                  transform_train, random_offset=0)
        test = datasets.FakeData(test_samples or FAKE_SIZES["test"], shape, spec.num_classes,
                                 transform_test, random_offset=10**6)
        return train, test
    folder = data_dir / spec.folder
    if spec.layout == "csv":
        train, test = _csv_splits(spec, folder, transform_train, transform_test)
    elif folder.is_dir():
        train, test = _image_folders(spec, folder, transform_train, transform_test)
    elif spec.download:
        # Under torchrun the processes of a machine share the folder: the first downloads, then the rest.
        with distributed.local_main_first(enabled=download):
            train, test = _torchvision(spec, data_dir, download, transform_train, transform_test)
    else:
        raise PatchDropError(f"no {spec.folder} data under {data_dir}: {_layout_help(spec, data_dir)}")
    return take_subset(train, train_samples), take_subset(test, test_samples)


class ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, rank + 2 world, ... in order: this process's share of a test split
    under torchrun, with no index repeated (DistributedSampler would pad the last shard)."""

    def __init__(self, num_items: int, rank: int, world: int):
        self.indices = list(range(rank, num_items, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, num_workers: int,
                 device: torch.device, seed: int) -> DataLoader:
    """Shuffled (training) or ordered (testing) loader; the shuffle order is seeded by ``seed``. Under
    torchrun each process loads its own share: DistributedSampler (training; the same ``seed`` on every
    rank, so the shares fit together), ShardSampler (testing); the generator that seeds the worker
    processes' augmentations gets ``seed + rank``, so each rank draws its own."""
    sampler = None
    rank, world = distributed.rank(), distributed.world_size()
    if distributed.is_distributed():
        sampler = (DistributedSampler(dataset, world, rank, shuffle=True, seed=seed) if train
                   else ShardSampler(len(dataset), rank, world))
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
        num_workers=num_workers, pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed + rank) if train else None,
    )


def default_num_workers(spec: ModelSpec) -> int:
    """DataLoader workers per process when --num_workers is not given: 4 for CIFAR's 32-px images (or
    fewer CPUs); for 224-px images, which need every core they can get (4 PIL workers decode about 1k
    ImageNet images/s, a ResNet-50 in bf16 on one H100 trains on about 3k), this process's share of the
    CPUs, less one for the process itself."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cpus // distributed.local_world_size())
    if not RESIZES[spec.augmentation]:  # small images stored at their size (CIFAR): little to decode
        return min(4, share)
    return max(1, share - 1)


@dataclass
class Loaders:
    """A stage's training and test batches, and what the run needs to know about them."""
    train: Iterable  # (normalized images [B, 3, H, W], labels [B]) batches: a DataLoader or a DeviceLoader
    test: Iterable
    train_size: int  # images of each split over all processes (after --train_samples / --test_samples)
    test_size: int
    generator: torch.Generator  # draws the training order and augmentations, or the workers' seeds
    shared_by_ranks: bool  # the generator is the same on every rank (--gpu_data), not each rank's own
    sampler: DistributedSampler | None = None  # under torchrun without --gpu_data

    @property
    def train_counted(self) -> int | None:
        """Training images of this rank that count in the epoch's statistics: under torchrun its share
        without the padding repeats at its end (utils/metrics.py, Counted); None in a single process."""
        if distributed.world_size() == 1:
            return None
        return len(range(distributed.rank(), self.train_size, distributed.world_size()))

    def train_epoch(self, epoch: int) -> Iterable:
        """The training batches of ``epoch``; a DistributedSampler is told the epoch, so each epoch has
        its own order (the other loaders draw it from their generator)."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        return self.train


def build_loaders(spec: ModelSpec, device: torch.device, *, data_dir: str | Path, batch_size: int,
                  num_workers: int, seed: int, download: bool = True, fake_data: bool = False,
                  train_samples: int | None = None, test_samples: int | None = None,
                  gpu_data: bool = False,
                  memory_format: torch.memory_format = torch.contiguous_format) -> Loaders:
    """Train and test batches of a stage script. ``batch_size`` is the total over all processes under
    torchrun (each takes its share; the caller has checked that it divides). With ``gpu_data`` (CIFAR
    only) the splits are held on ``device`` and batches come out in ``memory_format``; otherwise
    DataLoaders with ``num_workers`` worker processes feed them."""
    batch_size //= distributed.world_size()
    train, test = build_datasets(spec, data_dir, download=download, fake_data=fake_data,
                                 train_samples=train_samples, test_samples=test_samples, raw=gpu_data)
    if gpu_data:
        from .gpu_data import DeviceLoader  # noqa: PLC0415 (only --gpu_data needs it)

        options = dict(device=device, seed=seed, num_workers=num_workers, memory_format=memory_format)
        train_loader = DeviceLoader.from_dataset(train, spec, batch_size, train=True, **options)
        test_loader = DeviceLoader.from_dataset(test, spec, batch_size, train=False, **options)
        return Loaders(train_loader, test_loader, len(train), len(test), train_loader.generator,
                       shared_by_ranks=True)
    options = dict(num_workers=num_workers, device=device, seed=seed)
    train_loader = build_loader(train, batch_size, train=True, **options)
    sampler = train_loader.sampler if isinstance(train_loader.sampler, DistributedSampler) else None
    return Loaders(train_loader, build_loader(test, batch_size, train=False, **options), len(train),
                   len(test), train_loader.generator, shared_by_ranks=False, sampler=sampler)
