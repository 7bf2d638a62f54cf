"""The data of the README's "Your own data" example: the first classes of the CIFAR-10 sample shipped in
data/cifar10_sample, upscaled (bicubic) to a larger side, as class folders a spec file can describe.

    python scripts/make_example_data.py                      # data/cifar5_64/{train,test}/<class>/*.png
    python scripts/make_example_data.py --classes 3 --size 96 --dst data/cifar3_96

The images are upscaled CIFAR-10 pictures: they carry no more detail than the 32-px originals, so the
example exercises the code path of a new image size, grid and class count, not a harder task.
"""
import argparse
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make(src: Path, dst: Path, classes: int, size: int) -> int:
    """Write ``classes`` class folders of ``src`` (CIFAR10/{train,test}/<class>/) upscaled to ``size``
    pixels into ``dst``/{train,test}/<class>/; returns the number of images written."""
    written = 0
    for split in ("train", "test"):
        names = sorted(p.name for p in (src / split).iterdir() if p.is_dir())[:classes]
        for name in names:
            folder = dst / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for source in sorted((src / split / name).glob("*.jpg")):
                with Image.open(source) as image:
                    image.convert("RGB").resize((size, size), Image.BICUBIC).save(folder / f"{source.stem}.png")
                written += 1
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the README's own-data example, made from the CIFAR-10 sample")
    parser.add_argument("--src", type=Path, default=ROOT / "data" / "cifar10_sample" / "CIFAR10",
                        help="CIFAR10 image folders (default: the shipped sample)")
    parser.add_argument("--dst", type=Path, default=Path("data") / "cifar5_64",
                        help="where the class folders go (default: data/cifar5_64)")
    parser.add_argument("--classes", type=int, default=5, help="how many classes, in sorted order (default: 5)")
    parser.add_argument("--size", type=int, default=64, help="side of the upscaled images (default: 64)")
    args = parser.parse_args(argv)
    if not (args.src / "train").is_dir() or not (args.src / "test").is_dir():
        sys.exit(f"error: {args.src} has no train/ and test/ class folders")
    if not 1 <= args.classes <= 10 or args.size < 1:
        sys.exit(f"error: --classes must lie in 1..10 and --size be positive, got {args.classes}, {args.size}")
    count = make(args.src, args.dst, args.classes, args.size)
    print(f"wrote {count} images of {args.size} x {args.size} px, {args.classes} classes, into {args.dst}")


if __name__ == "__main__":
    main()
