"""Run a stage script's main() under torchrun and save, per rank, the weights it ended with.

    torchrun --standalone --nproc_per_node 2 tests/ddp_launch.py OUT_DIR classifier_training [args...]

Used by tests/test_speed.py to check that every rank ends with the same weights."""
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import distributed  # noqa: E402
from utils.checkpoint import unwrap  # noqa: E402

out_dir, script_name, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
script = importlib.import_module(script_name)
built = []
real_build = script.build_model
script.build_model = lambda arch, n: built.append(real_build(arch, n)) or built[-1]
script.main(script.get_args_parser().parse_args(argv))
torch.save([unwrap(net).state_dict() for net in built], out_dir / f"rank{distributed.rank()}.pt")
distributed.cleanup()
