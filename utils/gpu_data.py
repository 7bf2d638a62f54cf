"""``--gpu_data``: a whole CIFAR split held in device memory, augmented and normalized there.

The images are decoded once into a uint8 tensor [N, 3, 32, 32] on the device. Each training batch then
gets, with tensor operations over the whole batch (no loop over images), exactly the torchvision
pipeline of utils/data.py: RandomCrop(32, padding=4) with zero padding (offsets 0..8 each way,
uniform), RandomHorizontalFlip (p = 0.5), ToTensor's division by 255 and Normalize. The data order and
the augmentation draw from the loader's own CPU generator (``.generator``), which checkpoints store, so
--resume stays exact. Under torchrun each process takes every world-th image of the epoch's order.
"""
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .spec import ModelSpec

CROP_PADDING = 4


def stack_images(dataset: Dataset, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All (uint8 image [3, H, W], label) items of ``dataset`` as one uint8 tensor and one label tensor."""
    images, labels = [], []
    for batch_images, batch_labels in DataLoader(dataset, batch_size=1024, num_workers=num_workers):
        images.append(batch_images)
        labels.append(torch.as_tensor(batch_labels))
    return torch.cat(images), torch.cat(labels)


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = CROP_PADDING) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip of a batch [B, C, H, W] (any dtype),
    drawing offsets and flips from ``generator`` (CPU)."""
    batch, _, height, width = images.shape
    device = images.device
    dy = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(device)
    dx = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(device)
    flip = (torch.rand(batch, generator=generator) < 0.5).to(device)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = dy[:, None] + torch.arange(height, device=device)  # [B, H]
    cols = dx[:, None] + torch.arange(width, device=device)  # [B, W]
    # Advanced indexing on dims 0, 2, 3 gives [B, H, W, C]; back to [B, C, H, W].
    crops = padded[torch.arange(batch, device=device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    crops = crops.permute(0, 3, 1, 2)
    return torch.where(flip[:, None, None, None], crops.flip(3), crops)


class DeviceLoader:
    """Iterates (normalized images [B, 3, H, W], labels [B]) over a split held on ``device``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, spec: ModelSpec, batch_size: int, *,
                 train: bool, device: torch.device, seed: int):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.train = batch_size, train
        self.mean = torch.tensor(spec.mean, device=device)[:, None, None]
        self.std = torch.tensor(spec.std, device=device)[:, None, None]
        self.generator = torch.Generator().manual_seed(seed)  # data order and augmentation
        self.dataset = self.labels  # len(loader.dataset): the number of images of the split

    @classmethod
    def from_dataset(cls, dataset: Dataset, spec: ModelSpec, batch_size: int, *, train: bool,
                     device: torch.device, seed: int, num_workers: int = 0) -> "DeviceLoader":
        images, labels = stack_images(dataset, num_workers)
        return cls(images, labels, spec, batch_size, train=train, device=device, seed=seed)

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.train else torch.arange(n)
        return order[distributed.rank()::distributed.world_size()].to(self.labels.device)

    def __len__(self) -> int:
        share = len(range(distributed.rank(), len(self.labels), distributed.world_size()))
        return -(-share // self.batch_size)

    def __iter__(self):
        indices = self._indices()
        for start in range(0, len(indices), self.batch_size):
            batch = indices[start:start + self.batch_size]
            images = self.images[batch].float().div_(255)
            if self.train:
                images = augment(images, self.generator)
            yield (images - self.mean) / self.std, self.labels[batch]
