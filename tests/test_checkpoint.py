"""Checkpoint schema: round trip, directory arguments, refusals with clear messages, atomic writes."""
import os
import pickle

import pytest
import torch
from torch import nn

from models import build_model
from utils.checkpoint import load_checkpoint, load_weights, save_checkpoint
from utils.errors import PatchDropError


def save_classifier(path, stage="classifier_hr", model="R32_C10"):
    net = build_model("resnet32_cifar", 10)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()  # gives the optimizer a momentum buffer to round-trip
    save_checkpoint(path, stage=stage, model=model, epoch=3, nets={"state_dict": net}, optimizer=opt,
                    best_score=0.5, metrics={"epoch": 3, "test_accuracy": 0.5}, args={"lr": 0.1})
    return net, opt


def test_round_trip(tmp_path):
    net, opt = save_classifier(tmp_path / "ckpt_last.pt")
    ckpt = load_checkpoint(tmp_path, stages=("classifier_hr",), model="R32_C10")  # a directory works
    assert (ckpt["format_version"], ckpt["stage"], ckpt["model"], ckpt["epoch"]) == (1, "classifier_hr", "R32_C10", 3)
    assert ckpt["metrics"]["test_accuracy"] == 0.5 and ckpt["args"] == {"lr": 0.1}
    fresh = build_model("resnet32_cifar", 10)
    load_weights(fresh, ckpt, "state_dict")
    for a, b in zip(net.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    fresh_opt.load_state_dict(ckpt["optimizer"])
    assert torch.equal(fresh_opt.state_dict()["state"][0]["momentum_buffer"],
                       opt.state_dict()["state"][0]["momentum_buffer"])


def test_saved_keys_have_no_wrapper_prefix(tmp_path):
    net = torch.nn.DataParallel(build_model("resnet8_cifar", 16))
    save_checkpoint(tmp_path / "c.pt", stage="pretrain", model="R32_C10", epoch=0, nets={"agent": net})
    keys = load_checkpoint(tmp_path / "c.pt", stages=("pretrain",), model="R32_C10")["agent"].keys()
    assert not any(k.startswith("module.") for k in keys)


@pytest.mark.parametrize("stages,model,message", [
    (("pretrain",), "R32_C10", "expected a pretrain checkpoint for --model R32_C10, found a classifier_hr checkpoint"),
    (("classifier_hr",), "R32_C100", "expected a classifier_hr checkpoint for --model R32_C100, found a classifier_hr checkpoint for --model R32_C10"),
])
def test_wrong_stage_or_model_is_refused(tmp_path, stages, model, message):
    save_classifier(tmp_path / "ckpt_last.pt")
    with pytest.raises(PatchDropError, match=message):
        load_checkpoint(tmp_path, stages=stages, model=model)


def test_missing_file_names_what_to_pass(tmp_path):
    with pytest.raises(PatchDropError, match="ckpt_last.pt not found"):
        load_checkpoint(tmp_path, stages=("classifier_hr",), model="R32_C10")


def test_truncated_and_foreign_files_are_refused(tmp_path):
    save_classifier(tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(PatchDropError, match="truncated.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "truncated.pt", stages=("classifier_hr",), model="R32_C10")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(PatchDropError, match="text.pt: (refused|not a readable)"):
        load_checkpoint(tmp_path / "text.pt", stages=("classifier_hr",), model="R32_C10")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(PatchDropError, match="without the PatchDrop checkpoint keys"):
        load_checkpoint(tmp_path / "plain.pt", stages=("classifier_hr",), model="R32_C10")


class RunsCode:
    """Unpickling this calls os.system: a checkpoint carrying it must be refused, not run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_code_in_a_pickle_is_not_run(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format_version": 1, "payload": RunsCode(marker)}, f)
    torch.save({"format_version": 1, "payload": RunsCode(marker)}, tmp_path / "evil_zip.pt")
    for name in ("evil.pt", "evil_zip.pt"):
        with pytest.raises(PatchDropError, match=f"{name}: refused: not a PatchDrop checkpoint"):
            load_checkpoint(tmp_path / name, stages=("classifier_hr",), model="R32_C10")
    assert not marker.exists()


def test_mismatched_weights_are_refused(tmp_path):
    save_classifier(tmp_path / "c.pt")
    ckpt = load_checkpoint(tmp_path / "c.pt", stages=("classifier_hr",), model="R32_C10")
    with pytest.raises(PatchDropError, match="'state_dict' weights do not fit the network"):
        load_weights(build_model("resnet32_cifar", 100), ckpt, "state_dict")
    with pytest.raises(PatchDropError, match="has no 'agent' weights"):
        load_weights(build_model("resnet8_cifar", 16), ckpt, "agent")


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt_last.pt"
    save_classifier(path)
    before = path.read_bytes()

    def fail_half_way(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", fail_half_way)
    with pytest.raises(OSError):
        save_classifier(path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


class OnGpu(torch.Tensor):
    """A CPU tensor that says it lives on a GPU, as the state of a GPU run would (what any operation on it
    returns is a plain tensor)."""

    @property
    def device(self):
        return torch.device("cuda", 0)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def test_checkpoints_of_a_gpu_run_hold_cpu_tensors(tmp_path, monkeypatch):
    """A plain torch.load on a machine without a GPU must read them: every tensor is moved to the CPU
    before saving, weights and optimizer state alike."""
    net = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    on_gpu = lambda state: {k: v.as_subclass(OnGpu) for k, v in state.items()}  # noqa: E731
    monkeypatch.setattr(net, "state_dict", lambda: on_gpu(nn.Linear.state_dict(net)))
    for state in optimizer.state.values():
        state.update(on_gpu(state))
    assert all(isinstance(v, OnGpu) for v in net.state_dict().values())
    saved = {}
    monkeypatch.setattr(torch, "save", lambda payload, f: saved.update(payload))
    save_checkpoint(tmp_path / "c.pt", stage="classifier_hr", model="R32_C10", epoch=0,
                    nets={"state_dict": net}, optimizer=optimizer, args={})
    tensors = [*saved["state_dict"].values(), *(t for s in saved["optimizer"]["state"].values()
                                               for t in s.values())]
    assert len(tensors) == 2 + 2 * 3 and all(type(t) is torch.Tensor for t in tensors)
