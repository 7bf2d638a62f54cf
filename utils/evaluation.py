"""What a trained model buys: accuracy against HR patches acquired, for the learned policy, budget
sweeps and baselines, all measured in one pass over the test split; FLOPs and speed.

A *setting* says which patches each image keeps:

    policy      the learned greedy policy, 1[s >= 0.5] (what the stage scripts report at test time)
    threshold   1[s >= t] for another probability threshold t
    budget      the k patches of highest probability s
    random      k patches drawn uniformly per image (seeded)
    center      the k patches nearest the image centre
    fixed_h     a horizontal band: rows nearest the centre first, left to right
    fixed_v     a vertical band: columns nearest the centre first, top to bottom
    full_hr     all patches
    lr_only     no HR patch: the LR classifier alone on the LR image

Every setting but ``lr_only`` feeds the HR classifier the masked HR image (fused with the LR classifier
for two-stream models), so baselines and policy share one classifier and one data pass.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from models import build_model

from .checkpoint import LAST, load_weights
from .metrics import PolicyStats
from .policy import (apply_curriculum, compute_reward, curriculum_learned, downsample, fuse_logits,
                     greedy_action, mask_image)
from .stats import mcnemar_exact, paired_bootstrap
from .weights import load_lr_classifier

POLICY_METHODS = ("policy", "threshold", "budget")  # settings that need the policy network
FIXED_METHODS = ("center", "fixed_h", "fixed_v")


@dataclass
class Setting:
    method: str
    value: float | int | None = None  # threshold t or budget k

    @property
    def name(self) -> str:
        if self.value is None:
            return self.method
        return f"{self.method} t={self.value:g}" if self.method == "threshold" else f"{self.method} k={self.value}"


def fixed_order(grid: int, method: str) -> list[int]:
    """Patch indices (row-major) in the order a fixed baseline keeps them."""
    centre = (grid - 1) / 2
    cells = [(row, col) for row in range(grid) for col in range(grid)]
    keys: dict[str, Callable] = {
        "center": lambda rc: ((rc[0] - centre) ** 2 + (rc[1] - centre) ** 2, rc),
        "fixed_h": lambda rc: (abs(rc[0] - centre), rc[0], rc[1]),
        "fixed_v": lambda rc: (abs(rc[1] - centre), rc[1], rc[0]),
    }
    return [row * grid + col for row, col in sorted(cells, key=keys[method])]


def topk_action(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k patches of highest probability (ties: lower index first)."""
    action = torch.zeros_like(probs)
    if k > 0:
        order = torch.sort(probs, dim=1, descending=True, stable=True).indices
        action.scatter_(1, order[:, :k], 1.0)
    return action


def setting_seed(seed: int, k: int) -> int:
    """The seed of the random baseline keeping k patches: from (seed, k) alone, so its row is the same
    whichever other budgets are scored beside it."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def random_action(batch: int, num_patches: int, k: int, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """Exactly k patches per image, uniformly at random."""
    scores = torch.rand(batch, num_patches, generator=generator)
    return topk_action(scores, k).to(device)


def fixed_action(method: str, grid: int, batch: int, k: int, device: torch.device) -> torch.Tensor:
    action = torch.zeros(grid * grid, device=device)
    action[fixed_order(grid, method)[:k]] = 1.0
    return action.expand(batch, -1).clone()


class Evaluator:
    """Scores settings with the networks of one checkpoint: ``agent`` may be None (classifier
    checkpoints), ``resnet_hr`` None for an LR classifier alone; ``resnet_lr`` is fused with the HR
    logits when ``fusion`` is set (two-stream) and used alone by ``lr_only``. ``learned`` [P] is the
    curriculum mask of a pretrain checkpoint saved during its curriculum phase: its policy and threshold
    actions keep the patches not learned yet, as pretrain.py's test did (None: all patches learned)."""

    def __init__(self, *, agent, resnet_hr, resnet_lr, fusion: str | None, grid: int, lr_size: int,
                 penalty: float, accel, seed: int = 0, learned: torch.Tensor | None = None):
        self.agent, self.resnet_hr, self.resnet_lr = agent, resnet_hr, resnet_lr
        self.fusion, self.grid, self.lr_size, self.penalty = fusion, grid, lr_size, penalty
        self.accel, self.seed = accel, seed
        self.learned = learned.to(accel.device) if learned is not None else None
        for net in (agent, resnet_hr, resnet_lr):
            if net is not None:
                net.eval()

    def action(self, setting: Setting, probs: torch.Tensor | None, batch: int, device, generator):
        method, value, patches = setting.method, setting.value, self.grid ** 2
        if method in ("policy", "threshold"):
            action = greedy_action(probs) if method == "policy" else (probs >= value).float()
            return action if self.learned is None else apply_curriculum(action, self.learned)
        if method == "budget":
            return topk_action(probs, int(value))
        if method == "random":
            return random_action(batch, patches, int(value), generator, device)
        if method in FIXED_METHODS:
            return fixed_action(method, self.grid, batch, int(value), device)
        if method == "full_hr":
            return torch.ones(batch, patches, device=device)
        if method == "lr_only":
            return torch.zeros(batch, patches, device=device)
        raise ValueError(f"unknown setting {method!r}")

    def logits(self, setting: Setting, inputs: torch.Tensor, action: torch.Tensor, lr_logits):
        if setting.method == "lr_only":
            return lr_logits
        with self.accel.autocast():
            hr_logits = self.resnet_hr(mask_image(inputs, action)).float()
        return fuse_logits(hr_logits, lr_logits, action, self.fusion) if self.fusion else hr_logits

    @torch.no_grad()
    def run(self, loader, settings: list[Setting]) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
        """Accuracy, reward, S, V, # and images of every setting over ``loader``, in one pass over the
        data, and each setting's per-image correctness [N] (bool, in the loader's order) for paired
        comparisons."""
        stats = {s.name: PolicyStats(self.accel.device) for s in settings}
        # Random baselines: each budget k draws from its own stream, seeded by (seed, k).
        generators = {s.name: torch.Generator().manual_seed(setting_seed(self.seed, int(s.value)))
                      for s in settings if s.method == "random"}
        needs_probs = any(s.method in POLICY_METHODS for s in settings)
        needs_lr = self.resnet_lr is not None and (self.fusion or any(s.method == "lr_only" for s in settings))
        for inputs, targets in loader:
            inputs, targets = self.accel.inputs(inputs, targets)
            inputs_lr = downsample(inputs, self.lr_size)
            with self.accel.autocast():
                probs = torch.sigmoid(self.agent(inputs_lr).float()) if needs_probs else None
                lr_logits = self.resnet_lr(inputs_lr).float() if needs_lr else None
            for setting in settings:
                action = self.action(setting, probs, len(targets), inputs.device, generators.get(setting.name))
                logits = self.logits(setting, inputs, action, lr_logits)
                reward, correct = compute_reward(logits, targets, action, self.penalty)
                stats[setting.name].update(correct, reward, action)
        correct = {name: torch.cat(s.correct).cpu().numpy() > 0.5 if s.correct else np.zeros(0, bool)
                   for name, s in stats.items()}
        return {name: s.compute() for name, s in stats.items()}, correct

    def flops_per_image(self, setting: Setting, hr_size: int, device) -> dict[str, int]:
        """FLOPs of one image through each network the setting uses, by torch.utils.flop_counter
        (multiply-adds of convolutions and matrix products counted as 2 FLOPs). Masking does not
        reduce them: the HR classifier always sees the full-size tensor."""
        used = {}
        if setting.method in POLICY_METHODS:
            used["policy"] = (self.agent, self.lr_size)
        if setting.method != "lr_only":
            used["resnet_hr"] = (self.resnet_hr, hr_size)
        if setting.method == "lr_only" or self.fusion:
            used["resnet_lr"] = (self.resnet_lr, self.lr_size)
        flops = {name: count_flops(net, size, device) for name, (net, size) in used.items()}
        return {"total": sum(flops.values()), **flops}


def load_evaluator(spec, ckpt: dict, ckpt_lr_cl: str | None, accel, seed: int = 0) -> Evaluator:
    """An Evaluator of the networks of checkpoint ``ckpt`` (any stage, loaded by load_checkpoint), with the
    LR classifier of ``ckpt_lr_cl`` when given, prepared on ``accel``'s device."""
    stage, saved = ckpt["stage"], ckpt["args"]
    lr_size = saved.get("lr_size") or (saved.get("img_size") if stage == "classifier_lr" else None)
    lr_size = lr_size or spec.lr_size
    if stage.startswith("classifier"):
        keys = {"resnet_hr" if stage == "classifier_hr" else "resnet_lr": "state_dict"}
    else:  # policy checkpoints store each network under its own name
        keys = {name: name for name in ("agent", "resnet_hr", "resnet_lr") if ckpt.get(name) is not None}
    nets = {"agent": None, "resnet_hr": None, "resnet_lr": None}
    for name, key in keys.items():
        nets[name] = build_model(*((spec.policy_arch, spec.num_patches) if name == "agent"
                                   else (spec.classifier_arch, spec.num_classes)))
        load_weights(nets[name], ckpt, key)
    if ckpt_lr_cl:
        nets["resnet_lr"] = build_model(spec.classifier_arch, spec.num_classes)
        load_lr_classifier(nets["resnet_lr"], ckpt_lr_cl, spec, lr_size)
    nets = {k: accel.prepare(v.requires_grad_(False), trainable=False) if v is not None else None
            for k, v in nets.items()}
    evaluator = Evaluator(**nets, fusion=saved.get("fusion", "sum") if stage == "finetune2stream" else None,
                          grid=spec.grid, lr_size=lr_size,
                          penalty=saved.get("penalty") or spec.stages["finetune"].penalty, accel=accel,
                          seed=seed, learned=curriculum_of(ckpt, spec.num_patches))
    return evaluator


# Folders this repository ships: outputs for a checkpoint inside one go to cv/eval/<run>/ instead.
SHIPPED = ("results", "figures")
REPO = Path(__file__).resolve().parents[1]


def run_name(ckpt_path: str | Path) -> str:
    """A checkpoint's run, by name: its folder's name, with the file's stem unless it is ckpt_last.pt
    (c10_ft for cv/c10_ft/ckpt_last.pt, c10_ft_ckpt_best for cv/c10_ft/ckpt_best.pt)."""
    path = Path(ckpt_path)
    return path.parent.name if path.name == LAST else f"{path.parent.name}_{path.stem}"


def output_dir(ckpt_path: str | Path, out: str | Path | None = None) -> Path:
    """Where evaluate.py and visualize.py write for a checkpoint: ``out`` when given; else the
    checkpoint's run folder, unless that is a folder this repository ships (results/, figures/), which
    is never written into: then cv/eval/<run name>/."""
    if out is not None:
        return Path(out)
    folder = Path(ckpt_path).resolve().parent
    if any(folder.is_relative_to(REPO / shipped) for shipped in SHIPPED):
        return Path("cv") / "eval" / run_name(ckpt_path)
    return Path(ckpt_path).parent


def curriculum_of(ckpt: dict, num_patches: int) -> torch.Tensor | None:
    """The curriculum mask [P] a pretrain checkpoint was tested with (pretrain.py --curriculum, saved
    after epoch e < P: only patches 0..e learned), or None when all patches were learned."""
    epoch = ckpt["epoch"]
    if ckpt["stage"] != "pretrain" or not ckpt["args"].get("curriculum") or epoch >= num_patches:
        return None
    return curriculum_learned(epoch, num_patches)


def count_flops(net, size: int, device) -> int:
    """FLOPs of ``net`` on one [1, 3, size, size] image."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, size, size, device=device))
    return int(counter.get_total_flops())


def comparisons(settings: list[Setting], correct: dict[str, np.ndarray], policy_budget: int | None) -> list[dict]:
    """The learned policy against each baseline that keeps as many patches: its greedy choice against
    the baselines at its own budget (its mean patches kept, rounded), and its top-k ranking ("budget k")
    against the baselines at each swept k. Each: the accuracy difference (policy - baseline) with its
    95 % paired-bootstrap interval over the test images, and McNemar's exact p-value (utils/stats.py)."""
    rows = []
    for baseline in settings:
        if baseline.method not in ("random", *FIXED_METHODS):
            continue
        k = int(baseline.value)
        for policy in ("policy" if k == policy_budget else None, f"budget k={k}"):
            if policy in correct:
                diff, low, high = paired_bootstrap(correct[policy], correct[baseline.name])
                p_value, only_policy, only_baseline = mcnemar_exact(correct[policy], correct[baseline.name])
                rows.append({"policy": policy, "baseline": baseline.name, "method": baseline.method, "k": k,
                             "difference": diff, "low": low, "high": high, "p_value": p_value,
                             "only_policy_right": only_policy, "only_baseline_right": only_baseline})
    return rows


def sweep_rows(results: dict[str, dict], settings: list[Setting], pairs: list[dict]) -> list[dict]:
    """Rows of the sweep CSV, one per setting: ``method, setting, patches`` (mean HR patches kept),
    ``accuracy`` with its 95 % interval, and for a baseline its comparison with the greedy policy
    (``vs_policy_*``, at the policy's budget) and with the top-k policy at the same k (``vs_topk_*``)."""
    rows = []
    for s in settings:
        r = results[s.name]
        row = {"method": s.method, "setting": "" if s.value is None else s.value, "patches": r["sparsity"],
               "accuracy": r["accuracy"], "accuracy_low": r["accuracy_low"], "accuracy_high": r["accuracy_high"]}
        for prefix, policy in (("vs_policy", "policy"), ("vs_topk", f"budget k={s.value}")):
            pair = next((c for c in pairs if c["baseline"] == s.name and c["policy"] == policy), None)
            for key in ("difference", "low", "high", "p_value"):
                row[f"{prefix}_{key}"] = pair[key] if pair else ""
        rows.append(row)
    return rows
