"""Copy the latest checkpoint of finished runs without their optimizer and random-generator state:
weights, stage, model, epoch, metrics and arguments only, which evaluate.py and visualize.py load as they
are (resuming training from them is refused: they hold no optimizer state). Writes
DST/<name>/ckpt_last.pt for every SRC/<name> given, and DST/SHA256SUMS. The paths in the arguments are
made portable (scripts/portable_paths.py): SRC itself becomes cv/<its name>, where scripts/reproduce.sh
puts such a run by default.

    python scripts/export_weights.py SRC DST NAME [NAME ...]
    python scripts/export_weights.py cv/R32_C10_cpu_full results/R32_C10_cpu_full/checkpoints hr lr pt ft ft_p2 ft2
"""
import hashlib
import io
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.checkpoint import LAST, load_checkpoint  # noqa: E402
from utils.errors import PatchDropError  # noqa: E402
from utils.files import write_atomically  # noqa: E402
from utils.spec import STAGES  # noqa: E402

from portable_paths import portable_args  # noqa: E402  (scripts/, this script's folder)

DROPPED = ("optimizer", "scheduler", "rng", "path")  # training state, and the loader's own note


def export(src: Path, dst: Path, roots: dict[str, str]) -> str:
    """Write the weights-only copy of ``src``'s latest checkpoint to ``dst``, its paths made portable
    with ``roots``; returns its SHA-256."""
    ckpt = load_checkpoint(src, stages=STAGES, model=None)
    payload = {key: value for key, value in ckpt.items() if key not in DROPPED}
    payload.update(optimizer=None, rng=None, args=portable_args(ckpt["args"], roots))
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(dst, buffer.getbuffer())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def main(src: Path, dst: Path, names: list[str]) -> None:
    sums, roots = [], {str(src.resolve()): f"cv/{src.resolve().name}"}
    for name in names:
        digest = export(src / name, dst / name / LAST, roots)
        size = (dst / name / LAST).stat().st_size
        sums.append(f"{digest}  {name}/{LAST}")
        print(f"{dst / name / LAST}: {size / 2**20:.2f} MiB")
    write_atomically(dst / "SHA256SUMS", ("\n".join(sums) + "\n").encode())
    print(f"{dst / 'SHA256SUMS'} (check with: cd {dst} && sha256sum -c SHA256SUMS)")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: python scripts/export_weights.py SRC DST NAME [NAME ...]")
    try:
        main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
    except PatchDropError as err:
        sys.exit(f"error: {err}")
