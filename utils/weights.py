"""Where each stage's networks start from: the checkpoints of earlier stages (the HR classifier, the
LR classifier at the policy's LR size, the policy) and torchvision-format weights (``--pretrained``).

Each function loads into networks it is given and returns notes for the user (plain sentences) where
there is something to say; a checkpoint that is missing, of the wrong stage or model, or of the wrong
size is a PatchDropError that says what to pass instead.
"""
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint, load_weights, safe_load, unwrap
from .errors import PatchDropError
from .spec import ModelSpec, check_same_spec


def load_earlier(path: str | Path, *, stages: tuple[str, ...], spec: ModelSpec) -> dict:
    """load_checkpoint of an earlier stage, made with this run's dataset spec (a spec file changed since
    is refused, naming the field)."""
    ckpt = load_checkpoint(path, stages=stages, model=spec.name)
    check_same_spec(ckpt, spec)
    return ckpt


def load_required(path: str | Path | None, flag: str, *, stages: tuple[str, ...], spec: ModelSpec,
                  hint: str) -> dict:
    """load_earlier for a flag the stage cannot run without: a missing flag is an error that says how
    to make the checkpoint (``hint``), never a silent fallback to random weights."""
    if path is None:
        raise PatchDropError(f"{flag} is required: the {' or '.join(stages)} checkpoint ({hint})")
    return load_earlier(path, stages=stages, spec=spec)


def load_hr_classifier(net: nn.Module, path: str | Path | None, spec: ModelSpec, *, hint: str) -> None:
    """The HR classifier of stage 1 (``--ckpt_hr_cl``) into ``net``."""
    ckpt = load_required(path, "--ckpt_hr_cl", stages=("classifier_hr",), spec=spec, hint=hint)
    load_weights(net, ckpt, "state_dict")


def load_lr_classifier(net: nn.Module, path: str | Path | None, spec: ModelSpec, lr_size: int) -> None:
    """The LR classifier of stage 1 (``--ckpt_lr_cl``) into ``net``. It must have been trained on the
    ``lr_size`` images the policy sees, or its logits would mean nothing for them."""
    ckpt = load_required(path, "--ckpt_lr_cl", stages=("classifier_lr",), spec=spec,
                         hint=f"from classifier_training.py --mode lr --img_size {lr_size}")
    trained_at = ckpt["args"].get("img_size")
    if trained_at != lr_size:
        raise PatchDropError(f"{ckpt['path']}: LR classifier trained on {trained_at}px images, but the "
                             f"policy sees {lr_size}px LR images (--lr_size {lr_size})")
    load_weights(net, ckpt, "state_dict")


def init_policy_and_hr(agent: nn.Module, resnet_hr: nn.Module, *, load: str | None, load_stage: str,
                       ckpt_hr_cl: str | None, spec: ModelSpec) -> list[str]:
    """Start a fine-tuning stage: the policy from ``load`` (a ``load_stage`` checkpoint), the HR
    classifier from ``ckpt_hr_cl`` when given, else the one stored in ``load``. Returns notes for the
    user (e.g. that the policy starts from random weights)."""
    notes = []
    earlier = load_earlier(load, stages=(load_stage,), spec=spec) if load else None
    if earlier:
        load_weights(agent, earlier, "agent")
    else:
        notes.append(f"no --load given: the policy starts from random weights, not a {load_stage} run")
    if ckpt_hr_cl or not earlier:
        load_hr_classifier(resnet_hr, ckpt_hr_cl, spec, hint=f"from classifier_training.py --mode hr, "
                                                            f"or pass --load with a {load_stage} run")
    else:
        load_weights(resnet_hr, earlier, "resnet_hr")
    return notes


def load_pretrained(net: nn.Module, path: str | Path) -> str:
    """Initialize a classifier from a torchvision-format state dict (``--pretrained``), such as the
    ImageNet weights file of torchvision's ResNet-34 or ResNet-50, read with ``weights_only=True``.

    A dict holding the state dict under "state_dict" or "model" is accepted too. When the final linear
    layer has another class count (ImageNet's 1000 against fMoW's 62) it is left freshly initialized,
    i.e. replaced to fit; every other tensor must be present with the same shape. Returns a note for the
    user.
    """
    path = Path(path)
    if not path.is_file():
        raise PatchDropError(f"--pretrained {path}: no such file; pass a torchvision-format state dict "
                             f"(for example resnet34-b627a593.pth from torchvision's model zoo)")
    weights = safe_load(path)
    if isinstance(weights, dict) and isinstance(weights.get("state_dict", weights.get("model")), dict):
        weights = weights.get("state_dict", weights.get("model"))
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise PatchDropError(f"--pretrained {path}: expected a state dict (parameter name -> tensor), "
                             f"found {type(weights).__name__}")
    net = unwrap(net)
    own = net.state_dict()
    head = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)][-1]
    head_keys = {f"{head}.weight", f"{head}.bias"}
    replaced = {k for k in head_keys if k in weights and k in own and weights[k].shape != own[k].shape}
    missing = sorted(k for k in own if k not in weights)
    unexpected = sorted(k for k in weights if k not in own)
    wrong = sorted(k for k in own if k in weights and k not in replaced and weights[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        details = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                            for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                ("other shape", wrong)) if keys)
        raise PatchDropError(f"--pretrained {path}: does not fit the {type(net).__name__} of this "
                             f"--model ({details}); pass weights of the same architecture")
    net.load_state_dict({k: v for k, v in weights.items() if k not in replaced}, strict=False)
    note = f"initialized from --pretrained {path}"
    if replaced:
        old, new = weights[f"{head}.weight"].shape[0], own[f"{head}.weight"].shape[0]
        note += f"; final layer '{head}' replaced ({old} -> {new} outputs, random init)"
    return note
