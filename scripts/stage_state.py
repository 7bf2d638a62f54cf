"""Prints the state of a stage's run directory for scripts/reproduce.sh: ``done`` (its ckpt_last.pt
finished the epochs it was started for), ``partial`` (a checkpoint of an unfinished run: resume it) or
``none``. A checkpoint that cannot be read is a one-line error, as in the stage scripts.

    python scripts/stage_state.py RUN_DIR MODEL"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.checkpoint import LAST, load_checkpoint  # noqa: E402
from utils.errors import PatchDropError  # noqa: E402
from utils.spec import STAGES  # noqa: E402

run_dir, model = Path(sys.argv[1]), sys.argv[2]
if not (run_dir / LAST).is_file():
    print("none")
    sys.exit(0)
try:
    ckpt = load_checkpoint(run_dir, stages=STAGES, model=model, default_name=LAST)
except PatchDropError as err:
    sys.exit(f"error: {err}")
print("done" if ckpt["epoch"] >= ckpt["args"]["max_epochs"] - 1 else "partial")
