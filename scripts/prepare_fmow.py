"""fMoW preprocessing: crop every bounding box of the fMoW-rgb images, with context, and list the crops
in the ``train.csv`` / ``test.csv`` that ``--model R34_fMoW`` reads.

    python scripts/prepare_fmow.py --src /data/fMoW-rgb --dst data/fMoW [--workers 4]

``--src`` is the official fMoW-rgb layout,

    <src>/<split>/<category>/<category>_<n>/<category>_<n>_<k>_rgb.jpg  (+ the .json metadata beside it)

for the splits ``train`` and ``val`` (fMoW's ``val`` becomes our ``test``; its ``test`` and ``seq``
splits carry no labels and are not read). Every box of ``bounding_boxes`` is cropped with the context
rule of the fMoW baseline (``utils.fmow.context_box``) and saved at its cropped size as
``<dst>/<split>/<category>/<category>_<n>_<k>_<box>.jpg``; each CSV row is ``label,location`` with the
label an index into ``utils.fmow.CATEGORIES`` and the location relative to ``--dst``. Boxes labelled
``false_detection`` and boxes of 2 pixels or less a side are left out, as in the baseline. An unknown
category, a malformed JSON file or a missing or unreadable image is reported with its path and skipped;
the counts are printed at the end. Crops that already exist are not cut again, so an interrupted run
continues where it stopped when started again.
"""
import argparse
import csv
import io
import json
import os
import sys
from multiprocessing import Pool
from pathlib import Path

from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import PatchDropError  # noqa: E402
from utils.files import write_atomically  # noqa: E402
from utils.fmow import FALSE_DETECTION, LABELS, MIN_BOX_SIDE, SPLITS, context_box  # noqa: E402

# Satellite images can exceed PIL's decompression-bomb limit (89 M pixels) by far; they are trusted input.
Image.MAX_IMAGE_PIXELS = None
JPEG_QUALITY = 95


def find_images(src: Path) -> list[tuple[str, Path]]:
    """(our split, metadata JSON) for every image of the labelled splits, in a fixed order."""
    return [(ours, path) for split, ours in SPLITS.items()
            for path in sorted((src / split).glob("*/*/*_rgb.json"))]


def process_image(job: tuple[str, str, str]) -> dict:
    """Crop the boxes of one image. ``job`` = (our split, JSON path, --dst). Returns the CSV rows
    [(label, location)], the problems (messages naming a path) and counts of what was skipped."""
    split, json_path, dst = job[0], Path(job[1]), Path(job[2])
    result = {"rows": [], "problems": [], "written": 0, "kept": 0, "small": 0, "false_detection": 0}
    folder_category = json_path.parent.parent.name
    if folder_category not in LABELS:
        result["problems"].append(f"{json_path}: unknown category folder {folder_category!r}")
        return result
    try:
        boxes = json.loads(json_path.read_text())["bounding_boxes"]
        boxes = [(b.get("category", folder_category), [int(v) for v in b["box"]]) for b in boxes]
        if any(len(box) != 4 for _, box in boxes):
            raise ValueError("a box is not [x, y, width, height]")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        result["problems"].append(f"{json_path}: malformed metadata ({type(err).__name__}: {err})")
        return result
    image_path = json_path.with_suffix(".jpg")
    if not image_path.is_file():
        result["problems"].append(f"{image_path}: missing image (named by {json_path.name})")
        return result

    stem = json_path.stem.removesuffix("_rgb")
    pending = []  # (index, category, box, output path) of the crops to cut
    for index, (category, box) in enumerate(boxes):
        if category == FALSE_DETECTION:
            result["false_detection"] += 1
            continue
        if category not in LABELS:
            result["problems"].append(f"{json_path}: box {index} has unknown category {category!r}")
            continue
        if box[2] < MIN_BOX_SIDE or box[3] < MIN_BOX_SIDE:
            result["small"] += 1
            continue
        out = dst / split / category / f"{stem}_{index}.jpg"
        pending.append((category, box, out))
    if not pending:
        return result
    todo = [item for item in pending if not item[2].is_file()]
    if todo:
        try:
            with Image.open(image_path) as image:  # one image in memory at a time per worker
                image = image.convert("RGB")
                for category, box, out in todo:
                    crop = context_box(box, image.width, image.height)
                    if crop is None:
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    buffer = io.BytesIO()
                    image.crop(crop).save(buffer, "JPEG", quality=JPEG_QUALITY)
                    write_atomically(out, buffer.getbuffer())  # never a half-written crop
                    result["written"] += 1
        except (OSError, ValueError, SyntaxError) as err:
            result["problems"].append(f"{image_path}: unreadable image ({err})")
            return result
    for category, box, out in pending:
        if out.is_file():  # a box outside the image produced no crop
            result["rows"].append((LABELS[category], out.relative_to(dst).as_posix()))
    result["kept"] = len(pending) - len(todo)
    return result


def write_csv(path: Path, rows: list[tuple[int, str]]) -> None:
    """``label,location`` with a header row, written atomically."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["label", "location"])
    writer.writerows(rows)
    write_atomically(path, text.getvalue().encode())


def preprocess(src: str | Path, dst: str | Path, workers: int = 1, progress: bool = True) -> dict:
    """Crop all labelled fMoW images under ``src`` into ``dst`` and write its two CSV files. Returns
    the totals: rows per split, problems (list of messages) and skip counts."""
    src, dst = Path(src), Path(dst)
    jobs = [(split, str(path), str(dst)) for split, path in find_images(src)]
    if not jobs:
        raise FileNotFoundError(f"no fMoW metadata found under {src}: expected "
                                f"{src}/train/<category>/<category>_<n>/<category>_<n>_<k>_rgb.json "
                                f"(and val/ likewise), the layout of the fMoW-rgb download")
    dst.mkdir(parents=True, exist_ok=True)
    totals = {"rows": {ours: [] for ours in SPLITS.values()}, "problems": [], "written": 0, "kept": 0,
              "small": 0, "false_detection": 0}
    pool = Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(process_image, jobs, chunksize=4) if pool else map(process_image, jobs)
        for (split, _, _), result in tqdm(zip(jobs, results), total=len(jobs), desc="fMoW crops",
                                          disable=not progress):
            totals["rows"][split] += result["rows"]
            for message in result["problems"]:
                tqdm.write(f"skipped: {message}", file=sys.stderr)
            totals["problems"] += result["problems"]
            for key in ("written", "kept", "small", "false_detection"):
                totals[key] += result[key]
    finally:
        if pool:
            pool.close()
            pool.join()
    for split, rows in totals["rows"].items():
        write_csv(dst / f"{split}.csv", rows)
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Crop fMoW-rgb bounding boxes with context into "
                                                 "train.csv / test.csv for --model R34_fMoW")
    parser.add_argument("--src", required=True, help="fMoW-rgb root, holding train/ and val/")
    parser.add_argument("--dst", required=True, help="output folder, normally <data_dir>/fMoW")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes; each holds one image in memory at a time (default: 4)")
    args = parser.parse_args(argv)
    if not Path(args.src).is_dir():
        parser.exit(1, f"error: --src {args.src} is not a directory\n")
    if args.workers < 1:
        parser.exit(1, f"error: --workers must be 1 or more, got {args.workers}\n")
    try:
        totals = preprocess(args.src, args.dst, workers=args.workers)
    except (OSError, PatchDropError) as err:  # no fMoW layout under --src, a full or read-only --dst
        parser.exit(1, f"error: {err}\n")
    dst = Path(args.dst)
    for split, rows in totals["rows"].items():
        print(f"{dst / f'{split}.csv'}: {len(rows)} crops")
    print(f"crops cut: {totals['written']}, already present: {totals['kept']}; boxes left out: "
          f"{totals['false_detection']} false_detection, {totals['small']} of 2 px or less; "
          f"skipped items: {len(totals['problems'])}" + (" (listed above)" if totals["problems"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
