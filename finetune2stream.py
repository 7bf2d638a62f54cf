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
import time

import torch
import torch.nn.functional as F

from models import build_model
from utils.accel import Accel
from utils.checkpoint import load_all_weights
from utils.cli import (add_common_args, add_policy_args, closing_line, finished_run, open_run, progress,
                       resolve_defaults, run_cli, run_summary, stage_loaders, start)
from utils.metrics import PolicyStats, console_lines, timed
from utils.policy import (bound_probs, compute_reward, downsample, fuse_logits, greedy_action,
                          mask_image, reinforce_loss, sample_action)
from utils.run import load_resume
from utils.schedule import set_lr
from utils.weights import init_policy_and_hr, load_lr_classifier

STAGE = "finetune2stream"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PatchDrop stage 4: two-stream fine-tuning")
    parser.add_argument("--load", "--Load", dest="load", default=None,
                        help="finetune checkpoint (file or run dir): policy and HR classifier (default: none, a "
                             "random policy, with a note)")
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


def train_one_epoch(agent, resnet_hr, resnet_lr, batches, optimizer, accel: Accel, *, penalty: float,
                    alpha: float, lr_size: int, fusion: str, counted: int | None = None) -> dict:
    """One pass over ``batches``; ``counted``: this rank's images that count in the statistics
    (utils/metrics.py, Counted)."""
    agent.train()
    resnet_hr.train()  # as in the authors' two-stream script
    resnet_lr.eval()  # frozen
    stats = PolicyStats(accel.device, with_baseline=True, limit=counted)
    for inputs, targets in batches:
        inputs, targets = accel.inputs(inputs, targets)
        correct, reward, action, baseline, loss = train_step(
            agent, resnet_hr, resnet_lr, inputs, targets, optimizer, accel, penalty=penalty,
            alpha=alpha, lr_size=lr_size, fusion=fusion)
        stats.update(correct, reward, action, baseline_reward=baseline, loss=loss)
    return stats.compute()


@torch.no_grad()
def evaluate(agent, resnet_hr, resnet_lr, batches, accel: Accel, *, penalty: float, lr_size: int,
             fusion: str) -> dict:
    """Accuracy, reward, S, V and # of the greedy policy with fused logits."""
    for net in (agent, resnet_hr, resnet_lr):
        net.eval()
    stats = PolicyStats(accel.device)
    for inputs, targets in batches:
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


def main(args: argparse.Namespace) -> dict:
    resume = load_resume(args.resume, args.cv_dir)
    args = resolve_defaults(args, STAGE, resume)  # flags not given: the checkpoint's, else the spec's
    if done := finished_run(args, resume):
        print(done)
        return resume["metrics"]
    spec, device = start(args, STAGE)

    agent = build_model(spec.policy_arch, spec.num_patches)
    resnet_hr = build_model(spec.classifier_arch, spec.num_classes)
    resnet_lr = build_model(spec.classifier_arch, spec.num_classes)
    notes = []
    if resume:
        load_all_weights({"agent": agent, "resnet_hr": resnet_hr, "resnet_lr": resnet_lr}, resume)
    else:
        # DEVIATION: the authors' script ran with a random LR classifier when none was given.
        load_lr_classifier(resnet_lr, args.ckpt_lr_cl, spec, args.lr_size)
        notes += init_policy_and_hr(agent, resnet_hr, load=args.load, load_stage="finetune",
                                    ckpt_hr_cl=args.ckpt_hr_cl, spec=spec)
    accel = Accel(device, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                  parallel=args.parallel, sync_bn=args.sync_bn)
    agent, resnet_hr = accel.prepare(agent, trainable=True), accel.prepare(resnet_hr, trainable=True)
    resnet_lr = accel.prepare(resnet_lr.requires_grad_(False), trainable=False)
    optimizer = torch.optim.Adam(itertools.chain(agent.parameters(), resnet_hr.parameters()), lr=args.lr)
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
    lr = set_lr(optimizer, args.lr)  # the run's --lr, whatever rate the saved state held

    with open_run(args, spec, STAGE, "test_reward", device, resume) as run:
        data = stage_loaders(args, spec, device, accel.memory_format)
        notes += accel.notes + run.notes + run.track_rng(data.generator, shared_by_ranks=data.shared_by_ranks)
        print("\n".join(run_summary(STAGE, args, data, device, run.start_epoch, notes)))
        policy_args = dict(penalty=args.penalty, lr_size=args.lr_size, fusion=args.fusion)
        nets = {"agent": agent, "resnet_hr": resnet_hr, "resnet_lr": resnet_lr}
        for epoch in run.epochs():
            started = time.perf_counter()
            train = train_one_epoch(agent, resnet_hr, resnet_lr,
                                    progress(data.train_epoch(epoch), "train", args.print_freq), optimizer, accel,
                                    alpha=args.alpha, counted=data.train_counted, **policy_args)
            metrics = {"epoch": epoch, "lr": lr, **timed("train", train, started)}
            if run.is_test_epoch(epoch):
                test_started = time.perf_counter()
                test = evaluate(agent, resnet_hr, resnet_lr, progress(data.test, "test", args.print_freq), accel,
                                **policy_args)
                metrics.update(timed("test", test, test_started))
            metrics["epoch_seconds"] = time.perf_counter() - started
            run.end_epoch(metrics, nets, optimizer)
            print("\n".join(console_lines(metrics)), flush=True)
    print(closing_line(run))
    return run.last_metrics


if __name__ == "__main__":
    run_cli(main, get_args_parser())
