"""Stage 3: fine-tune the policy and the HR classifier jointly.

Initializes the policy from a pretrain checkpoint (--load) and the HR classifier from stage 1
(--ckpt_hr_cl; without it, the HR classifier stored in the --load checkpoint). Both train with one Adam:
the REINFORCE loss summed over patches and averaged over the batch, plus the cross-entropy of the
classifier on the image masked by the sampled action. Writes to --cv_dir: ckpt_last.pt (the checkpoint
the next stage loads) and ckpt_best.pt (stage "finetune", weights "agent" and "resnet_hr"; best = test
reward), metrics.jsonl, TensorBoard logs under log/, args.json.

    python finetune.py --model R32_C10 --lr 1e-4 --cv_dir cv/c10_ft --batch_size 128 --load cv/c10_pt --ckpt_hr_cl cv/c10_hr --penalty -10
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
from utils.policy import (bound_probs, compute_reward, downsample, greedy_action, mask_image,
                          reinforce_loss, sample_action)
from utils.run import load_resume
from utils.schedule import set_lr
from utils.weights import init_policy_and_hr

STAGE = "finetune"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PatchDrop stage 3: joint fine-tuning")
    parser.add_argument("--load", "--Load", dest="load", default=None,
                        help="pretrain checkpoint (file or run dir) to start the policy from (default: none, a "
                             "random policy, with a note)")
    parser.add_argument("--ckpt_hr_cl", default=None,
                        help="HR classifier checkpoint (default: the one stored in --load)")
    add_common_args(parser)
    add_policy_args(parser)
    return parser


def train_step(agent, resnet_hr, inputs, targets, optimizer, accel: Accel, *, penalty: float,
               alpha: float, lr_size: int):
    """One joint update of the policy and the HR classifier on a batch already on the device. Returns
    greedy correctness, sampled reward, sampled action, greedy reward and the loss."""
    with accel.autocast():
        logits = agent(downsample(inputs, lr_size)).float()  # float32 from here on
    probs = bound_probs(torch.sigmoid(logits), alpha)
    sampled, greedy = sample_action(probs.detach()), greedy_action(probs.detach())
    with torch.no_grad(), accel.autocast():  # the greedy pass is only the baseline's reward
        greedy_logits = resnet_hr(mask_image(inputs, greedy)).float()
    with accel.autocast():  # with gradients: the classifier learns here
        sampled_logits = resnet_hr(mask_image(inputs, sampled)).float()
    reward_greedy, correct_greedy = compute_reward(greedy_logits, targets, greedy, penalty)
    reward_sampled, _ = compute_reward(sampled_logits, targets, sampled, penalty)
    # Fine-tuning sums -log pi(a_p) * A over patches and averages over the batch (method.md,
    # stage 3), then adds the classifier's cross-entropy on the sampled masked images.
    loss = (reinforce_loss(probs, sampled, reward_sampled - reward_greedy, "sum")
            + F.cross_entropy(sampled_logits, targets))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return correct_greedy, reward_sampled, sampled, reward_greedy, loss


def train_one_epoch(agent, resnet_hr, batches, optimizer, accel: Accel, *, penalty: float, alpha: float,
                    lr_size: int, counted: int | None = None) -> dict:
    """One pass over ``batches``; ``counted``: this rank's images that count in the statistics
    (utils/metrics.py, Counted)."""
    agent.train()
    # The HR classifier trains with batch-norm in train mode, as in the authors' final code (only their
    # 2019 finetune kept it in eval mode; method.md).
    resnet_hr.train()
    stats = PolicyStats(accel.device, with_baseline=True, limit=counted)
    for inputs, targets in batches:
        inputs, targets = accel.inputs(inputs, targets)
        correct, reward, action, baseline, loss = train_step(
            agent, resnet_hr, inputs, targets, optimizer, accel, penalty=penalty, alpha=alpha,
            lr_size=lr_size)
        stats.update(correct, reward, action, baseline_reward=baseline, loss=loss)
    return stats.compute()


@torch.no_grad()
def evaluate(agent, resnet_hr, batches, accel: Accel, *, penalty: float, lr_size: int) -> dict:
    """Accuracy, reward, S, V and # of the greedy policy."""
    agent.eval()
    resnet_hr.eval()
    stats = PolicyStats(accel.device)
    for inputs, targets in batches:
        inputs, targets = accel.inputs(inputs, targets)
        with accel.autocast():
            action = greedy_action(torch.sigmoid(agent(downsample(inputs, lr_size)).float()))
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
    notes = []
    if resume:
        load_all_weights({"agent": agent, "resnet_hr": resnet_hr}, resume)
    else:
        notes += init_policy_and_hr(agent, resnet_hr, load=args.load, load_stage="pretrain",
                                    ckpt_hr_cl=args.ckpt_hr_cl, spec=spec)
    accel = Accel(device, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                  parallel=args.parallel, sync_bn=args.sync_bn)
    agent, resnet_hr = accel.prepare(agent, trainable=True), accel.prepare(resnet_hr, trainable=True)
    optimizer = torch.optim.Adam(itertools.chain(agent.parameters(), resnet_hr.parameters()), lr=args.lr)
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
    lr = set_lr(optimizer, args.lr)  # the run's --lr, whatever rate the saved state held

    with open_run(args, spec, STAGE, "test_reward", device, resume) as run:
        data = stage_loaders(args, spec, device, accel.memory_format)
        notes += accel.notes + run.notes + run.track_rng(data.generator, shared_by_ranks=data.shared_by_ranks)
        print("\n".join(run_summary(STAGE, args, data, device, run.start_epoch, notes)))
        policy_args = dict(penalty=args.penalty, lr_size=args.lr_size)
        for epoch in run.epochs():
            started = time.perf_counter()
            train = train_one_epoch(agent, resnet_hr, progress(data.train_epoch(epoch), "train", args.print_freq),
                                    optimizer, accel, alpha=args.alpha, counted=data.train_counted, **policy_args)
            metrics = {"epoch": epoch, "lr": lr, **timed("train", train, started)}
            if run.is_test_epoch(epoch):
                test_started = time.perf_counter()
                test = evaluate(agent, resnet_hr, progress(data.test, "test", args.print_freq), accel,
                                **policy_args)
                metrics.update(timed("test", test, test_started))
            metrics["epoch_seconds"] = time.perf_counter() - started
            run.end_epoch(metrics, {"agent": agent, "resnet_hr": resnet_hr}, optimizer)
            print("\n".join(console_lines(metrics)), flush=True)
    print(closing_line(run))
    return run.last_metrics


if __name__ == "__main__":
    run_cli(main, get_args_parser())
