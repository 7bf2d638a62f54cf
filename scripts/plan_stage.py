"""What scripts/reproduce.sh does with one training stage: the flags of its command, merged so that a
later occurrence of a flag replaces an earlier one (a profile's, or the user's after --, replaces the
paper command's), and the state of its run directory.

    python scripts/plan_stage.py SCRIPT RUN_DIR -- FLAG ...

Prints the state on the first line, then the merged flags, one per line:
  none     no run in RUN_DIR: start one;
  partial  a run made with these settings that has not reached --max_epochs: resume it;
  done     a run made with these settings that has: skip it.
A run made with other settings (other data, fake data, subsets, seed, objective, learning rate, starting
checkpoints...) is never reused: that is a one-line error naming each difference, exit status 2. Flags
that do not change what a run computes (epoch count, test interval, workers, speed options, logging)
may differ.
"""
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.errors import PatchDropError  # noqa: E402

# torch and the stage scripts are imported only where a run exists to compare with: planning a new
# stage costs no torch import (a few seconds), which is what each stage of a first run asks for.
LAST = "ckpt_last.pt"  # utils.checkpoint.LAST (tests/test_evaluation.py checks that the two agree)

# Flags that leave what a run computes unchanged: a run made with other values is reused.
NOT_COMPARED = ("cv_dir", "device", "overwrite", "resume", "max_epochs", "test_interval", "num_workers",
                "print_freq", "no_download", "amp", "channels_last", "compile", "gpu_data", "parallel", "no_tf32",
                "sync_bn")


def is_flag(token: str) -> bool:
    return token.startswith("--") and len(token) > 2


def merge_flags(tokens: list[str]) -> list[str]:
    """``--flag value ...`` groups in order of first appearance, each with the values of its last
    occurrence."""
    order, values = [], {}
    for token in tokens:
        if is_flag(token):
            flag = token
            if flag not in values:
                order.append(flag)
            values[flag] = []
        elif not order:
            raise PatchDropError(f"a value without a flag: {token!r}")
        else:
            values[flag].append(token)
    return [token for flag in order for token in (flag, *values[flag])]


def requested_args(script: str, run_dir: Path, flags: list[str]) -> tuple[str, dict]:
    """The stage and the resolved arguments (what args.json would record) of SCRIPT with ``flags``."""
    from utils.cli import resolve_defaults  # noqa: PLC0415 (imports torch)

    module = importlib.import_module(Path(script).stem)
    args = module.get_args_parser().parse_args([*flags, "--cv_dir", str(run_dir)])
    stage = getattr(module, "STAGE", None) or module.stage_of
    resolved = resolve_defaults(args, stage)
    return (stage(resolved) if callable(stage) else stage), vars(resolved)


def plan(script: str, run_dir: Path, flags: list[str]) -> str:
    if not (run_dir / LAST).is_file():
        return "none"
    from utils.checkpoint import load_checkpoint  # noqa: PLC0415 (imports torch)

    stage, requested = requested_args(script, run_dir, flags)
    ckpt = load_checkpoint(run_dir, stages=(stage,), model=requested["model"])
    recorded = ckpt["args"]
    differences = [f"--{name} {recorded[name]} in the run, {value} asked for" for name, value in requested.items()
                   if name not in NOT_COMPARED and name in recorded and recorded[name] != value]
    if differences:
        raise PatchDropError(f"{run_dir} holds a run made with other settings ({'; '.join(differences)}); "
                             f"choose another --out, or delete {run_dir}")
    return "done" if ckpt["epoch"] + 1 >= requested["max_epochs"] else "partial"


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[2] != "--":
        sys.exit("usage: python scripts/plan_stage.py SCRIPT RUN_DIR -- FLAG ...")
    try:
        flags = merge_flags(argv[3:])
        state = plan(argv[0], Path(argv[1]), flags)
    except PatchDropError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print("\n".join([state, *flags]))


if __name__ == "__main__":
    main(sys.argv[1:])
