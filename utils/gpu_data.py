"""``--gpu_data``: a whole CIFAR split held in device memory, augmented and normalized there.

The images are decoded once into a uint8 tensor [N, 3, 32, 32] on the device. Each training batch then
gets, with tensor operations over the whole batch (no loop over images), exactly the torchvision
pipeline of utils/data.py: RandomCrop(32, padding=4) with zero padding (offsets 0..8 each way,
uniform), RandomHorizontalFlip (p = 0.5), ToTensor's division by 255 and Normalize.

At the start of each training epoch the loader's own CPU generator (``.generator``, seeded alike on
every rank and stored in checkpoints, so --resume stays exact) draws the epoch's order and the crop
offsets and flips of every position in it. Under torchrun the order is padded, as DistributedSampler
pads it, to a multiple of the number of processes, and rank r takes positions r, r + world, ...: every
rank gets an equal share (so none waits for another in DDP's all-reduce), the shares of an epoch cover
every image, and all ranks draw the same numbers, so their generators never drift apart. Test splits
are split without padding, each image scored once.
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


def draw_augmentation(count: int, generator: torch.Generator,
                      padding: int = CROP_PADDING) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop offsets dy, dx in 0..2*padding and flips (bool) for ``count`` images, each [count], drawn
    on the CPU from ``generator``."""
    dy = torch.randint(0, 2 * padding + 1, (count,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (count,), generator=generator)
    flip = torch.rand(count, generator=generator) < 0.5
    return dy, dx, flip


def augment(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
            padding: int = CROP_PADDING) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip of a batch [B, C, H, W] (any dtype): image b is
    cropped at offset (dy[b], dx[b]) of its padded version and flipped where flip[b]."""
    batch, _, height, width = images.shape
    device = images.device
    dy, dx, flip = dy.to(device), dx.to(device), flip.to(device)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = dy[:, None] + torch.arange(height, device=device)  # [B, H]
    cols = dx[:, None] + torch.arange(width, device=device)  # [B, W]
    # Advanced indexing on dims 0, 2, 3 gives [B, H, W, C]; back to [B, C, H, W].
    crops = padded[torch.arange(batch, device=device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    crops = crops.permute(0, 3, 1, 2)
    return torch.where(flip[:, None, None, None], crops.flip(3), crops)


def epoch_plan(num_images: int, world: int, generator: torch.Generator):
    """One training epoch for all ranks, drawn once: the order padded to a multiple of ``world`` (its
    first items repeated, as DistributedSampler does) and the crop offsets and flips of every position,
    [world * ceil(num_images / world)] each."""
    total = -(-num_images // world) * world
    order = torch.randperm(num_images, generator=generator)
    order = order.repeat(-(-total // num_images))[:total]
    return order, *draw_augmentation(total, generator)


class DeviceLoader:
    """Iterates (normalized images [B, 3, H, W], labels [B]) over a split held on ``device``, in
    ``memory_format`` (channels_last with --channels_last). ``rank`` and ``world`` default to the
    process group's."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, spec: ModelSpec, batch_size: int, *,
                 train: bool, device: torch.device, seed: int, rank: int | None = None,
                 world: int | None = None, memory_format: torch.memory_format = torch.contiguous_format):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.train, self.memory_format = batch_size, train, memory_format
        self.rank = distributed.rank() if rank is None else rank
        self.world = distributed.world_size() if world is None else world
        self.mean = torch.tensor(spec.mean, device=device)[:, None, None]
        self.std = torch.tensor(spec.std, device=device)[:, None, None]
        self.generator = torch.Generator().manual_seed(seed)  # the same on every rank

    @classmethod
    def from_dataset(cls, dataset: Dataset, spec: ModelSpec, batch_size: int, *, num_workers: int = 0,
                     **options) -> "DeviceLoader":
        images, labels = stack_images(dataset, num_workers)
        return cls(images, labels, spec, batch_size, **options)

    def share(self) -> int:
        """Images this rank sees per epoch: equal on all ranks in training, each test image once."""
        if self.train:
            return -(-len(self.labels) // self.world)
        return len(range(self.rank, len(self.labels), self.world))

    def __len__(self) -> int:
        return -(-self.share() // self.batch_size)

    def positions(self):
        """This rank's (image indices, (dy, dx, flip) or None) for the coming epoch."""
        if not self.train:
            return torch.arange(self.rank, len(self.labels), self.world), None
        order, dy, dx, flip = epoch_plan(len(self.labels), self.world, self.generator)
        mine = slice(self.rank, None, self.world)
        return order[mine], (dy[mine], dx[mine], flip[mine])

    def __iter__(self):
        indices, draws = self.positions()
        device = self.labels.device
        indices = indices.to(device)  # one copy to the device per epoch, not per batch
        draws = tuple(d.to(device) for d in draws) if draws is not None else None
        for start in range(0, len(indices), self.batch_size):
            batch = slice(start, start + self.batch_size)
            images = self.images[indices[batch]].float().div_(255)
            if draws is not None:
                images = augment(images, *(d[batch] for d in draws))
            images = ((images - self.mean) / self.std).contiguous(memory_format=self.memory_format)
            yield images, self.labels[indices[batch]]
