"""Make the records of a run portable before they are shipped: absolute paths of the machine that ran it
become paths relative to the repository, or bare names, so a user sees paths that mean something.

    python scripts/portable_paths.py [--root OLD=NEW ...] FILE [FILE ...]
    python scripts/portable_paths.py --root /scratch/runs/R32_C10_cpu_full=cv/R32_C10_cpu_full results/R32_C10_cpu_full/eval/*.json

Each absolute path in a file is rewritten: one under a --root OLD prefix has OLD replaced by NEW; one
inside this repository becomes relative to it; any other keeps only its last component (a data folder
/scratch/data becomes data, an interpreter /opt/venv/bin/python becomes python). Text files are rewritten
in place; checkpoints (.pt) have the strings of their "args" rewritten and are saved again, weights and
everything else unchanged (read with weights_only=True). scripts/export_weights.py applies the same rule
to the checkpoints it exports. Prints each file it changed.
"""
import argparse
import io
import re
import sys
from pathlib import Path, PurePosixPath

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils.checkpoint import safe_load  # noqa: E402
from utils.errors import PatchDropError  # noqa: E402
from utils.files import write_atomically  # noqa: E402

# An absolute POSIX path: a "/" that does not continue a word, a number, a URL or another path.
ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?:[\w.+@-]+/)*[\w.+@-]+")


def portable_path(path: str, roots: dict[str, str]) -> str:
    """``path`` (absolute) as shipped: under a root OLD, NEW + the rest; inside the repository, relative
    to it; else its last component."""
    for old, new in sorted(roots.items(), key=lambda item: -len(item[0])):
        if path == old or path.startswith(old.rstrip("/") + "/"):
            return new + path[len(old.rstrip("/")):]
    if path.startswith(f"{REPO}/"):
        return path[len(str(REPO)) + 1:]
    return PurePosixPath(path).name


def portable(text: str, roots: dict[str, str]) -> str:
    """Every absolute path in ``text`` made portable."""
    return ABSOLUTE.sub(lambda match: portable_path(match.group(0), roots), text)


def portable_args(args: dict, roots: dict[str, str]) -> dict:
    """A checkpoint's "args" with every string value made portable."""
    return {key: portable(value, roots) if isinstance(value, str) else value for key, value in args.items()}


def rewrite(path: Path, roots: dict[str, str]) -> bool:
    """Make one file portable in place; True when it changed."""
    if path.suffix == ".pt":
        ckpt = safe_load(path)
        args = portable_args(ckpt.get("args") or {}, roots)
        if args == ckpt.get("args"):
            return False
        buffer = io.BytesIO()
        torch.save({**ckpt, "args": args}, buffer)
        write_atomically(path, buffer.getbuffer())
        return True
    text = path.read_text()
    new = portable(text, roots)
    if new != text:
        write_atomically(path, new.encode())
    return new != text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="make the paths in shipped run records portable")
    parser.add_argument("--root", action="append", default=[], metavar="OLD=NEW",
                        help="an absolute folder and what it becomes (repeatable)")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if any("=" not in root for root in args.root):
        sys.exit("error: --root takes OLD=NEW, e.g. --root /scratch/runs/x=cv/x")
    roots = dict(root.split("=", 1) for root in args.root)
    try:
        for path in args.files:
            if rewrite(path, roots):
                print(f"rewrote {path}")
    except (PatchDropError, OSError, UnicodeDecodeError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
