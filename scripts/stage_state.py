"""Prints the state of a stage's run directory for scripts/reproduce.sh: ``done`` (its ckpt_last.pt
finished the epochs it was started for), ``partial`` (a checkpoint of an unfinished run: resume it) or
``none``. Usage: python scripts/stage_state.py RUN_DIR"""
import sys
from pathlib import Path

import torch

path = Path(sys.argv[1]) / "ckpt_last.pt"
if not path.is_file():
    print("none")
else:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    print("done" if ckpt["epoch"] >= ckpt["args"]["max_epochs"] - 1 else "partial")
