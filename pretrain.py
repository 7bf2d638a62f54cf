"""Stage 2: pre-train the policy network against a frozen HR classifier.

The policy sees the LR image and picks HR patches; the HR classifier of stage 1 (--ckpt_hr_cl) is
frozen (eval mode, no gradients) and only scores the masked images. Only the policy trains (Adam), with
the self-critical REINFORCE loss averaged over batch and patches. Writes to --cv_dir: ckpt_last.pt (the
checkpoint the next stage loads) and ckpt_best.pt (stage "pretrain", weights "agent" and the frozen
"resnet_hr"; best = test reward), metrics.jsonl, TensorBoard logs under log/, args.json.

    python pretrain.py --model R32_C10 --lr 1e-4 --cv_dir cv/c10_pt --batch_size 1024 --penalty -0.5 --ckpt_hr_cl cv/c10_hr
"""
import argparse
import time

import torch

from models import build_model
from utils.accel import Accel
from utils.checkpoint import load_all_weights
from utils.cli import (add_common_args, add_policy_args, closing_line, finished_run, open_run, progress,
                       resolve_defaults, run_cli, run_summary, stage_loaders, start)
from utils.metrics import PolicyStats, console_lines, timed
from utils.policy import (apply_curriculum, bound_probs, compute_reward, curriculum_learned, downsample,
                          greedy_action, mask_image, reinforce_loss, sample_action)
from utils.run import load_resume
from utils.schedule import set_lr
from utils.weights import load_hr_classifier

STAGE = "pretrain"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PatchDrop stage 2: policy pre-training")
    parser.add_argument("--ckpt_hr_cl", default=None, help="HR classifier checkpoint (file or run dir; required)")
    add_common_args(parser)
    add_policy_args(parser)
    # Not in the authors' final pretrain; their earlier commit 1df48e5 always ran it (method.md).
    parser.add_argument("--curriculum", action="store_true", default=None,
                        help="at epoch e < P learn only patches 0..e, keeping the others (off by default)")
    return parser


def train_step(agent, resnet_hr, inputs, targets, optimizer, accel: Accel, *, penalty: float,
               alpha: float, lr_size: int, learned: torch.Tensor | None = None):
    """One policy update on a batch already on the device. ``learned`` [P] is the curriculum's mask
    (None: all patches). Returns what the epoch statistics need: greedy correctness, sampled reward,
    sampled action, greedy reward and the loss."""
    with accel.autocast():
        logits = agent(downsample(inputs, lr_size)).float()  # float32 from here on
    probs = bound_probs(torch.sigmoid(logits), alpha)
    sampled, greedy = sample_action(probs.detach()), greedy_action(probs.detach())
    if learned is not None:
        sampled, greedy = apply_curriculum(sampled, learned), apply_curriculum(greedy, learned)
    # The frozen classifier only scores, without autograd.
    greedy_logits, sampled_logits = accel.score_pair(resnet_hr, mask_image(inputs, greedy),
                                                     mask_image(inputs, sampled))
    reward_greedy, correct_greedy = compute_reward(greedy_logits, targets, greedy, penalty)
    reward_sampled, _ = compute_reward(sampled_logits, targets, sampled, penalty)
    # Pretraining averages -log pi(a_p) * A over batch AND patches (method.md, stage 2).
    loss = reinforce_loss(probs, sampled, reward_sampled - reward_greedy, "mean", learned)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return correct_greedy, reward_sampled, sampled, reward_greedy, loss


def train_one_epoch(agent, resnet_hr, batches, optimizer, accel: Accel, *, penalty: float, alpha: float,
                    lr_size: int, learned: torch.Tensor | None = None, counted: int | None = None) -> dict:
    """One pass over ``batches``; ``counted``: this rank's images that count in the statistics
    (utils/metrics.py, Counted)."""
    agent.train()
    resnet_hr.eval()  # frozen: batch-norm statistics stay those of stage 1
    stats = PolicyStats(accel.device, with_baseline=True, limit=counted)
    for inputs, targets in batches:
        inputs, targets = accel.inputs(inputs, targets)
        correct, reward, action, baseline, loss = train_step(
            agent, resnet_hr, inputs, targets, optimizer, accel, penalty=penalty, alpha=alpha,
            lr_size=lr_size, learned=learned)
        # As in the authors' code: greedy accuracy, sampled reward/S/V/#, greedy reward as baseline.
        stats.update(correct, reward, action, baseline_reward=baseline, loss=loss)
    return stats.compute()


@torch.no_grad()
def evaluate(agent, resnet_hr, batches, accel: Accel, *, penalty: float, lr_size: int,
             learned: torch.Tensor | None = None) -> dict:
    """Accuracy, reward, S, V and # of the greedy policy."""
    agent.eval()
    resnet_hr.eval()
    stats = PolicyStats(accel.device)
    for inputs, targets in batches:
        inputs, targets = accel.inputs(inputs, targets)
        with accel.autocast():
            action = greedy_action(torch.sigmoid(agent(downsample(inputs, lr_size)).float()))
            if learned is not None:
                action = apply_curriculum(action, learned)
            logits = resnet_hr(mask_image(inputs, action)).float()
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
    if resume:
        load_all_weights({"agent": agent, "resnet_hr": resnet_hr}, resume)
    else:
        load_hr_classifier(resnet_hr, args.ckpt_hr_cl, spec,
                           hint="python classifier_training.py --mode hr")
    accel = Accel(device, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                  parallel=args.parallel, sync_bn=args.sync_bn)
    agent = accel.prepare(agent, trainable=True)
    resnet_hr = accel.prepare(resnet_hr.requires_grad_(False), trainable=False)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.lr)
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
    lr = set_lr(optimizer, args.lr)  # the run's --lr, whatever rate the saved state held

    with open_run(args, spec, STAGE, "test_reward", device, resume) as run:
        data = stage_loaders(args, spec, device, accel.memory_format)
        notes = accel.notes + run.notes + run.track_rng(data.generator, shared_by_ranks=data.shared_by_ranks)
        print("\n".join(run_summary(STAGE, args, data, device, run.start_epoch, notes)))
        policy_args = dict(penalty=args.penalty, lr_size=args.lr_size)
        for epoch in run.epochs():
            started = time.perf_counter()
            learned = None
            if args.curriculum and epoch < spec.num_patches:
                learned = curriculum_learned(epoch, spec.num_patches, device)
            train = train_one_epoch(agent, resnet_hr, progress(data.train_epoch(epoch), "train", args.print_freq),
                                    optimizer, accel, alpha=args.alpha, learned=learned,
                                    counted=data.train_counted, **policy_args)
            metrics = {"epoch": epoch, "lr": lr, **timed("train", train, started)}
            if run.is_test_epoch(epoch):
                test_started = time.perf_counter()
                test = evaluate(agent, resnet_hr, progress(data.test, "test", args.print_freq), accel,
                                learned=learned, **policy_args)
                metrics.update(timed("test", test, test_started))
            metrics["epoch_seconds"] = time.perf_counter() - started
            run.end_epoch(metrics, {"agent": agent, "resnet_hr": resnet_hr}, optimizer)
            print("\n".join(console_lines(metrics)), flush=True)
    print(closing_line(run))
    return run.last_metrics


if __name__ == "__main__":
    run_cli(main, get_args_parser())
