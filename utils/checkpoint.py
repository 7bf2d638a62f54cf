"""The one checkpoint schema of every stage, written atomically and loaded without running code. (Which
checkpoint each stage starts its networks from is utils/weights.py.)

A checkpoint is a plain dict that ``torch.load(weights_only=True)`` can read:

    format_version  FORMAT_VERSION
    stage           one of spec.STAGES
    model           the name of the dataset spec (R32_C10, ..., or a spec file's name)
    spec            the whole dataset spec (utils/spec.py, spec_record), so that later stages and
                    evaluate.py rebuild it, and refuse a spec file changed since
    epoch           last completed epoch (0-based)
    state_dict      classifier weights (classifier stages), or
    agent, resnet_hr, resnet_lr   policy-stage weights (the networks the stage uses)
    optimizer       its state_dict (the learning rate of each epoch follows from ``args``:
                    utils/schedule.py)
    best_score      best test accuracy (classifiers) or test reward (policy stages) so far
    metrics         the epoch's metrics dict
    args            the run's arguments as a plain dict
    rng             the state of every random generator at the end of the epoch (run.capture_rng),
                    so --resume continues bit-for-bit; None in checkpoints written outside a run

Each run directory holds ``ckpt_last.pt`` (every epoch) and ``ckpt_best.pt`` (best test score). A run
directory given where a checkpoint is expected means its ``ckpt_last.pt``: the authors' README says
"load from the latest checkpoint", and there is no validation split, so a checkpoint picked by its test
score would inflate every number measured downstream. ``ckpt_best.pt`` is read only when named as a file.
"""
import io
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from .accel import DynamicBatch
from .errors import PatchDropError
from .files import write_atomically
from .spec import STAGES

FORMAT_VERSION = 1
LAST, BEST = "ckpt_last.pt", "ckpt_best.pt"
WEIGHT_KEYS = ("state_dict", "agent", "resnet_hr", "resnet_lr")
REQUIRED_KEYS = ("format_version", "stage", "model", "epoch", "args")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind DataParallel/DistributedDataParallel (.module), torch.compile
    (._orig_mod) and accel.DynamicBatch (.net), so saved keys carry no 'module.', '_orig_mod.' or
    'net.' prefix."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(model, DynamicBatch):
            model = model.net
        else:
            return model


def on_cpu(value):
    """``value`` (tensors in nested dicts, lists and tuples) with every tensor on the CPU, so that a
    checkpoint written on a GPU loads with a plain ``torch.load`` on a machine without one."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu() if value.device.type != "cpu" else value
    if isinstance(value, dict):
        return {key: on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(item) for item in value)
    return value


def save_checkpoint(paths: Path | list[Path], *, stage: str, model: str, epoch: int,
                    nets: dict[str, nn.Module], optimizer=None, best_score: float | None = None,
                    metrics: dict | None = None, args: dict | None = None, rng: dict | None = None,
                    spec: dict | None = None) -> None:
    """Serialize a checkpoint once, every tensor on the CPU, and write it atomically to each of
    ``paths``: to a temporary file in the same folder, flushed to disk, then renamed, so a crash
    mid-write never leaves a truncated checkpoint behind."""
    assert stage in STAGES and set(nets) <= set(WEIGHT_KEYS), (stage, list(nets))
    payload = on_cpu({
        "format_version": FORMAT_VERSION, "stage": stage, "model": model, "epoch": epoch,
        **{key: unwrap(net).state_dict() for key, net in nets.items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "best_score": best_score, "metrics": metrics or {}, "args": args or {}, "rng": rng, "spec": spec,
    })
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        write_atomically(path, buffer.getbuffer())


def resolve_checkpoint(path: str | Path, default_name: str = LAST) -> Path:
    """A checkpoint argument is a file, or a run directory meaning its ``default_name`` (the latest)."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    if not path.is_file():
        raise PatchDropError(f"checkpoint {path} not found: pass a checkpoint file or a run directory "
                             f"(--cv_dir of an earlier run) that holds {default_name}")
    return path


def safe_load(path: Path):
    """``torch.load(path, weights_only=True)`` on the CPU, every failure a one-line PatchDropError."""
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols before refusing them
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which is exactly what must not be done.
        raise PatchDropError(f"{path}: refused: not a PatchDrop checkpoint (torch.load with "
                             f"weights_only=True rejected it; a file that is not a checkpoint, or a "
                             f"pickle that would run code, which was not run)") from None
    except Exception as err:  # garbage makes the unpickler fail in many ways (KeyError, EOFError, ...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PatchDropError(f"{path}: not a readable checkpoint (truncated or not written by torch.save):"
                             f" {reason}") from None


def load_checkpoint(path: str | Path, *, stages: tuple[str, ...], model: str | None,
                    default_name: str = LAST) -> dict:
    """Load a checkpoint written by save_checkpoint, refusing anything else.

    ``path`` is a file or a run directory (its ``default_name``). The file is read with
    ``weights_only=True``, so a pickle that would run code is refused, not executed. The stage must be
    one of ``stages`` and the model equal to ``model`` (any model when None); otherwise the message
    names the file, what was expected and what was found.
    """
    path = resolve_checkpoint(path, default_name)
    ckpt = safe_load(path)
    what = f"a {' or '.join(stages)} checkpoint" + (f" for --model {model}" if model else "")
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in REQUIRED_KEYS):
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise PatchDropError(f"{path}: expected {what}, found an object without the PatchDrop checkpoint "
                             f"keys {list(REQUIRED_KEYS)} (has: {found})")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise PatchDropError(f"{path}: checkpoint format {ckpt['format_version']}, this code reads "
                             f"format {FORMAT_VERSION}")
    if ckpt["stage"] not in stages or model not in (None, ckpt["model"]):
        raise PatchDropError(f"{path}: expected {what}, found a {ckpt['stage']} checkpoint for "
                             f"--model {ckpt['model']}")
    ckpt["path"] = str(path)  # for the messages of load_weights
    return ckpt


def load_weights(net: nn.Module, ckpt: dict, key: str) -> None:
    """Copy ``ckpt[key]`` into ``net``; a missing key or mismatched shapes is a PatchDropError."""
    path = ckpt.get("path", "checkpoint")
    if ckpt.get(key) is None:
        raise PatchDropError(f"{path}: {ckpt['stage']} checkpoint has no '{key}' weights")
    try:
        unwrap(net).load_state_dict(ckpt[key])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise PatchDropError(f"{path}: '{key}' weights do not fit the network: {first}") from None


def load_all_weights(nets: dict[str, nn.Module], ckpt: dict) -> None:
    """Every network of ``nets`` from the checkpoint key of the same name (resuming a stage)."""
    for key, net in nets.items():
        load_weights(net, ckpt, key)
