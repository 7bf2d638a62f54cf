"""Stage 4 (optional): two-stream fine-tuning, HR patches plus the LR image.

As stage 3, with a frozen LR classifier (--ckpt_lr_cl, from ``classifier_training.py --mode lr``)
added: the logits are f_h(masked HR image) + f_l(LR image) (``--fusion sum``) or weighted by the kept
fraction r and 1 - r (``--fusion ratio``); reward and cross-entropy use the fused logits. The policy and
HR classifier start from a finetune checkpoint (--load). Writes to --cv_dir: ckpt_last.pt and
ckpt_best.pt (stage "finetune2stream", weights "agent", "resnet_hr" and "resnet_lr"; best = test
reward), metrics.jsonl, TensorBoard logs under log/, args.json.

    python finetune2stream.py --model R32_C10 --lr 1e-4 --cv_dir cv/c10_ft2 --batch_size 128 --load cv/c10_ft --ckpt_lr_cl cv/c10_lr --penalty -10
"""
import argparse
import itertools
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import build_model
from utils.accel import Accel
from utils.checkpoint import init_policy_and_hr, load_all_weights, load_required, load_weights
from utils.cli import add_common_args, add_policy_args
from utils.data import build_loaders
from utils.errors import PatchDropError
from utils.metrics import PolicyStats, console_lines, prefixed
from utils.policy import (bound_probs, compute_reward, downsample, fuse_logits, greedy_action,
                          mask_image, reinforce_loss, sample_action)
from utils.runtime import Run, run_cli, run_summary, setup

STAGE = "finetune2stream"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PatchDrop stage 4: two-stream fine-tuning")
    parser.add_argument("--load", "--Load", dest="load", default=None,
                        help="finetune checkpoint (file or run dir): policy and HR classifier")
    parser.add_argument("--ckpt_hr_cl", default=None,
                        help="HR classifier checkpoint (default: the one stored in --load)")
    parser.add_argument("--ckpt_lr_cl", default=None, help="LR classifier checkpoint (required)")
    add_common_args(parser)
    add_policy_args(parser)
    parser.add_argument("--fusion", choices=("sum", "ratio"), default=None,
                        help="sum (default): f_h + f_l; ratio: r f_h + (1 - r) f_l, r = fraction of patches kept")
    return parser


def train_step(agent, resnet_hr, resnet_lr, inputs, targets, optimizer, accel: Accel, *,
               penalty: float, alpha: float, lr_size: int, fusion: str):
    """One joint update of the policy and the HR classifier, rewarded and trained on the logits fused
    with the frozen LR classifier's. Returns greedy correctness, sampled reward, sampled action, greedy
    reward and the loss."""
    inputs_lr = downsample(inputs, lr_size)
    with accel.autocast():
        logits = agent(inputs_lr).float()  # float32 from here on
    probs = bound_probs(torch.sigmoid(logits), alpha)
    sampled, greedy = sample_action(probs.detach()), greedy_action(probs.detach())
    with torch.no_grad(), accel.autocast():
        lr_logits = resnet_lr(inputs_lr).float()
        greedy_hr_logits = resnet_hr(mask_image(inputs, greedy)).float()
    with accel.autocast():
        sampled_hr_logits = resnet_hr(mask_image(inputs, sampled)).float()
    greedy_logits = fuse_logits(greedy_hr_logits, lr_logits, greedy, fusion)
    reward_greedy, correct_greedy = compute_reward(greedy_logits, targets, greedy, penalty)
    logits = fuse_logits(sampled_hr_logits, lr_logits, sampled, fusion)
    reward_sampled, _ = compute_reward(logits, targets, sampled, penalty)
    # Same loss as stage 3 (sum over patches, mean over batch), on the fused logits.
    loss = (reinforce_loss(probs, sampled, reward_sampled - reward_greedy, "sum")
            + F.cross_entropy(logits, targets))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return correct_greedy, reward_sampled, sampled, reward_greedy, loss


def train_one_epoch(agent, resnet_hr, resnet_lr, loader, optimizer, accel: Accel, *, penalty: float,
                    alpha: float, lr_size: int, fusion: str) -> dict:
    agent.train()
    resnet_hr.train()  # as in the authors' two-stream script
    resnet_lr.eval()  # frozen
    stats = PolicyStats(accel.device, with_baseline=True)
    for inputs, targets in tqdm(loader, desc="train", leave=False, disable=None):
        inputs, targets = accel.inputs(inputs, targets)
        correct, reward, action, baseline, loss = train_step(
            agent, resnet_hr, resnet_lr, inputs, targets, optimizer, accel, penalty=penalty,
            alpha=alpha, lr_size=lr_size, fusion=fusion)
        stats.update(correct, reward, action, baseline_reward=baseline, loss=loss)
    return stats.compute()


@torch.no_grad()
def evaluate(agent, resnet_hr, resnet_lr, loader, accel: Accel, *, penalty: float, lr_size: int,
             fusion: str) -> dict:
    """Accuracy, reward, S, V and # of the greedy policy with fused logits."""
    for net in (agent, resnet_hr, resnet_lr):
        net.eval()
    stats = PolicyStats(accel.device)
    for inputs, targets in tqdm(loader, desc="test", leave=False, disable=None):
        inputs, targets = accel.inputs(inputs, targets)
        inputs_lr = downsample(inputs, lr_size)
        with accel.autocast():
            action = greedy_action(torch.sigmoid(agent(inputs_lr).float()))
            hr_logits = resnet_hr(mask_image(inputs, action)).float()
            lr_logits = resnet_lr(inputs_lr).float()
        logits = fuse_logits(hr_logits, lr_logits, action, fusion)
        reward, correct = compute_reward(logits, targets, action, penalty)
        stats.update(correct, reward, action)
    return stats.compute()


def load_lr_classifier(resnet_lr, path: str | None, spec, lr_size: int) -> None:
    """The frozen LR classifier of stage 1, which must have been trained on ``lr_size`` inputs."""
    # DEVIATION: the authors' script ran with a random LR classifier when none was given.
    ckpt = load_required(path, "--ckpt_lr_cl", stages=("classifier_lr",), model=spec.name,
                         hint=f"from classifier_training.py --mode lr --img_size {lr_size}")
    trained_at = ckpt["args"].get("img_size")
    if trained_at != lr_size:
        raise PatchDropError(f"{ckpt['path']}: LR classifier trained on {trained_at}px images, "
                             f"but --lr_size is {lr_size}")
    load_weights(resnet_lr, ckpt, "state_dict")


def main(args: argparse.Namespace) -> dict:
    spec, device, resume = setup(args, STAGE)

    agent = build_model(spec.policy_arch, spec.num_patches)
    resnet_hr = build_model(spec.classifier_arch, spec.num_classes)
    resnet_lr = build_model(spec.classifier_arch, spec.num_classes)
    if resume:
        load_all_weights({"agent": agent, "resnet_hr": resnet_hr, "resnet_lr": resnet_lr}, resume)
    else:
        load_lr_classifier(resnet_lr, args.ckpt_lr_cl, spec, args.lr_size)
        for note in init_policy_and_hr(agent, resnet_hr, load=args.load, load_stage="finetune",
                                       ckpt_hr_cl=args.ckpt_hr_cl, model=spec.name):
            print(f"note: {note}", file=sys.stderr)
    accel = Accel(args, device)
    agent, resnet_hr = accel.prepare(agent, trainable=True), accel.prepare(resnet_hr, trainable=True)
    resnet_lr = accel.prepare(resnet_lr.requires_grad_(False), trainable=False)
    optimizer = torch.optim.Adam(itertools.chain(agent.parameters(), resnet_hr.parameters()), lr=args.lr)
    if resume:
        optimizer.load_state_dict(resume["optimizer"])

    # The run directory is checked before the data loads, so a wrong --cv_dir fails fast.
    run = Run(args, STAGE, score_key="test_reward", device=device, resume=resume)
    train_loader, test_loader = build_loaders(spec, args, device)
    rng_notes = run.attach(train_loader)

    print("\n".join(run_summary(STAGE, args, train_loader, test_loader, device, run.start_epoch)
                     + accel.notes + rng_notes))
    policy_args = dict(penalty=args.penalty, lr_size=args.lr_size, fusion=args.fusion)
    nets = {"agent": agent, "resnet_hr": resnet_hr, "resnet_lr": resnet_lr}
    for epoch in run.epochs():
        train_stats = train_one_epoch(agent, resnet_hr, resnet_lr, train_loader, optimizer, accel,
                                      alpha=args.alpha, **policy_args)
        metrics = {"epoch": epoch, **prefixed("train", train_stats)}
        if run.is_test_epoch(epoch):
            test_stats = evaluate(agent, resnet_hr, resnet_lr, test_loader, accel, **policy_args)
            metrics.update(prefixed("test", test_stats))
        run.end_epoch(metrics, nets, optimizer)
        print("\n".join(console_lines(metrics)), flush=True)
    run.close()
    return run.last_metrics


if __name__ == "__main__":
    run_cli(main, get_args_parser())
