"""The normalization of a dataset spec, measured: the per-channel mean and standard deviation of the
training images' pixels (in [0, 1], after the spec's test-time resize and crop), printed as the two
lines to put in the spec file.

    python scripts/spec_stats.py --model specs/my_data.toml --data_dir data/
    python scripts/spec_stats.py --model specs/my_data.toml --data_dir data/ --samples 5000   # a subset

The spec's own mean and std are not used (they may be placeholders until this has run), so any values
will do there for the first run of this command.
"""
import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import check_counts  # noqa: E402
from utils.data import AUGMENTATIONS, build_datasets  # noqa: E402
from utils.errors import PatchDropError  # noqa: E402
from utils.spec import get_spec  # noqa: E402


def channel_stats(images, steps) -> tuple[list[float], list[float], int]:
    """Mean and standard deviation per channel over every pixel of ``images`` (uint8 [3, H, W] each),
    after the geometric transforms ``steps``; and the number of images."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    pixels, count = 0, 0
    for image in images:
        for step in steps:
            image = step(image)
        values = image.to(torch.float64).div(255).reshape(3, -1)
        total += values.sum(1)
        squares += (values ** 2).sum(1)
        pixels += values.shape[1]
        count += 1
    if count == 0:
        raise PatchDropError("the training split holds no images")
    mean = total / pixels
    std = (squares / pixels - mean ** 2).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist(), count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="mean and std of a dataset spec's training images")
    parser.add_argument("--model", required=True, help="the spec file (or a built-in name)")
    parser.add_argument("--data_dir", default="data/", help="dataset root (default: data/)")
    parser.add_argument("--samples", type=int, default=None, help="a fixed random subset of N images (default: all)")
    args = parser.parse_args(argv)
    try:
        check_counts(vars(args), positive=("samples",))
        spec = get_spec(args.model, args.data_dir)
        train, _ = build_datasets(spec, args.data_dir, download=False, train_samples=args.samples, raw=True)
        steps = AUGMENTATIONS[spec.augmentation](spec, train=False)  # resize and crop as at test time
        images = (train[i][0] for i in tqdm(range(len(train)), desc="images", leave=False, disable=None))
        mean, std, count = channel_stats(images, steps)
    except PatchDropError as err:
        sys.exit(f"error: {err}")
    print(f"# {count} training images of {spec.name} under {args.data_dir}")
    print(f"mean = [{', '.join(f'{v:.4f}' for v in mean)}]")
    print(f"std = [{', '.join(f'{v:.4f}' for v in std)}]")


if __name__ == "__main__":
    main()
