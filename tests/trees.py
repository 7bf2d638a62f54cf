"""Generators of small dataset trees for the tests: an ImageNet-layout folder with images of assorted
sizes and colour modes, and an fMoW-rgb-layout folder with JSON metadata."""
import json
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGENET_CLASSES = ("n01440764", "n01443537", "n01484850")
# (mode, file suffix): the modes that occur in ImageNet besides RGB.
MODES = (("RGB", ".JPEG"), ("L", ".JPEG"), ("P", ".png"), ("CMYK", ".JPEG"), ("RGBA", ".png"))


def random_image(rng: np.random.Generator, width: int, height: int, mode: str = "RGB") -> Image.Image:
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return image.convert(mode)


def make_imagenet_tree(root: Path, per_class: dict[str, int] | None = None, seed: int = 0) -> Path:
    """<root>/ImageNet/{train,test}/<wnid>/*: for the three IMAGENET_CLASSES, images of assorted sizes
    (some smaller than 224) and modes (RGB, grayscale, palette, CMYK, RGBA); then 997 more class folders
    of one small image each, so that the tree has ImageNet's 1000 classes. Returns ``root`` (the
    --data_dir)."""
    per_class = per_class or {"train": 4, "test": 2}
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for c, wnid in enumerate(IMAGENET_CLASSES):
            folder = root / "ImageNet" / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                mode, suffix = MODES[(c + i) % len(MODES)]
                width, height = [(300, 240), (120, 90), (64, 200), (500, 375)][(c + 2 * i) % 4]
                random_image(rng, width, height, mode).save(folder / f"{wnid}_{i}{suffix}")
        for i in range(1000 - len(IMAGENET_CLASSES)):  # sorted after the three above
            folder = root / "ImageNet" / split / f"n9{i:07d}"
            folder.mkdir(parents=True, exist_ok=True)
            random_image(rng, 16, 16).save(folder / "0.png")
    return root


# The boxes of the fMoW test tree: (category folder, image size, boxes [(box category, [x, y, w, h])]).
FMOW_IMAGES = (
    ("airport", (400, 300), [("airport", [100, 80, 120, 60])]),                   # middle of the image
    ("airport", (400, 300), [("airport", [0, 0, 30, 20]), ("airport", [5, 5, 2, 9])]),  # border + tiny
    ("zoo", (500, 500), [("zoo", [300, 260, 190, 230]), ("false_detection", [10, 10, 40, 40])]),
    ("dam", (256, 256), [("dam", [60, 60, 100, 90])]),
)


def make_fmow_tree(root: Path, seed: int = 0, bad: bool = True) -> Path:
    """<root>/{train,val}/<category>/<category>_<n>/<category>_<n>_0_rgb.{jpg,json}: the images of
    FMOW_IMAGES in both splits; with ``bad``, also a malformed JSON, a JSON without its image and an
    unknown category folder. Returns ``root`` (the --src)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for n, (category, (width, height), boxes) in enumerate(FMOW_IMAGES):
            folder = root / split / category / f"{category}_{n}"
            folder.mkdir(parents=True, exist_ok=True)
            stem = folder / f"{category}_{n}_0_rgb"
            random_image(rng, width, height).save(stem.with_suffix(".jpg"), quality=95)
            meta = {"img_width": width, "img_height": height,
                    "bounding_boxes": [{"box": box, "category": cat, "ID": i}
                                       for i, (cat, box) in enumerate(boxes)]}
            stem.with_suffix(".json").write_text(json.dumps(meta))
    if bad:
        broken = root / "train" / "dam" / "dam_90"
        broken.mkdir(parents=True)
        random_image(rng, 64, 64).save(broken / "dam_90_0_rgb.jpg")
        (broken / "dam_90_0_rgb.json").write_text('{"bounding_boxes": [{"box": [1, 2,')  # truncated
        orphan = root / "train" / "dam" / "dam_91"
        orphan.mkdir(parents=True)
        (orphan / "dam_91_0_rgb.json").write_text(json.dumps({"bounding_boxes": [{"box": [1, 1, 9, 9]}]}))
        unknown = root / "train" / "volcano" / "volcano_0"
        unknown.mkdir(parents=True)
        random_image(rng, 64, 64).save(unknown / "volcano_0_0_rgb.jpg")
        (unknown / "volcano_0_0_rgb.json").write_text(json.dumps({"bounding_boxes": [{"box": [1, 1, 9, 9]}]}))
    return root
