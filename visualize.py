"""Where does the policy zoom? A figure of test images with the HR patches the policy acquires drawn
over the LR image, and a heat map of how often each patch is kept over the test split.

    python visualize.py --load cv/c10_ft --num_images 8      # writes cv/c10_ft/policy_c10_ft.png

The figure goes into the checkpoint's run folder (for a checkpoint this repository ships, cv/eval/<run>/),
into the folder --out names, or to the file --png names; it is named after the run.

Kept patches show the HR pixels; dropped patches show the LR image (what the policy saw, upsampled)
dimmed and crossed out. Each title gives the true and the predicted label (green right, red wrong).
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from utils.accel import Accel
from utils.cli import add_eval_args, eval_test_set, run_cli, start_eval
from utils.data import build_loader
from utils.errors import PatchDropError
from utils.evaluation import Evaluator, Setting, load_evaluator, output_dir, run_name
from utils.policy import action_to_mask, downsample


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PatchDrop: draw the patches a policy acquires")
    add = parser.add_argument
    add_eval_args(parser, load_help="pretrain, finetune or finetune2stream checkpoint",
                  lr_help="LR stream for a two-stream checkpoint (default: its own)")
    add("--num_images", type=int, default=8, help="test images drawn (default: 8)")
    add("--png", default=None, help="the figure's file (default: <out>/policy_<run>.png)")
    add("--seed", type=int, default=0, help="which test images are shown (default: 0)")
    return parser


def class_names(dataset) -> list[str] | None:
    while dataset is not None and not hasattr(dataset, "classes"):
        dataset = getattr(dataset, "dataset", None)
    return list(dataset.classes) if dataset is not None else None


def to_rgb(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalized [B, 3, H, W] back to displayable [B, H, W, 3] in [0, 1]."""
    mean, std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    return (images.cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1)


def composite(hr: torch.Tensor, action: torch.Tensor, lr_size: int) -> torch.Tensor:
    """Kept patches from the HR image, dropped ones from the upsampled LR image, dimmed."""
    lr = F.interpolate(downsample(hr, lr_size), size=hr.shape[-2:], mode="nearest")
    mask = action_to_mask(action, hr.shape[-1])
    return mask * hr + (1 - mask) * (0.35 * lr + 0.65 * hr.new_full((1, 3, 1, 1), 0.5).expand_as(lr))


@torch.no_grad()
def keep_frequency(evaluator: Evaluator, loader, device: torch.device, grid: int) -> tuple[torch.Tensor, int]:
    """How often the policy keeps each patch over the loader's images, as a [G, G] map, and the
    number of images."""
    policy = Setting("policy")  # the greedy action (with a curriculum checkpoint's forced patches)
    kept, count = torch.zeros(grid * grid), 0
    for inputs, _ in loader:
        probs = torch.sigmoid(evaluator.agent(downsample(inputs.to(device), evaluator.lr_size)).float())
        kept += evaluator.action(policy, probs, len(inputs), device, None).sum(0).cpu()
        count += len(inputs)
    return (kept / count).reshape(grid, grid), count


@torch.no_grad()
def policy_on(evaluator: Evaluator, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy action [B, P] on ``images`` and the model's prediction [B] from the patches kept."""
    policy, images_lr = Setting("policy"), downsample(images, evaluator.lr_size)
    probs = torch.sigmoid(evaluator.agent(images_lr).float())
    action = evaluator.action(policy, probs, len(images), images.device, None)
    lr_logits = evaluator.resnet_lr(images_lr).float() if evaluator.fusion else None
    return action, evaluator.logits(policy, images, action, lr_logits).argmax(1)


def draw(path: Path, spec, shown: torch.Tensor, action: torch.Tensor, labels: torch.Tensor,
         predicted: torch.Tensor, heat: torch.Tensor, count: int, names: list[str] | None, title: str) -> None:
    """Draw to ``path``: each image with its dropped patches crossed out and its true and predicted
    label, and the heat map of keep frequencies beside them."""
    import matplotlib  # noqa: PLC0415 (only figures need it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    name = (lambda k: names[k] if names and k < len(names) else str(k))  # noqa: E731
    n = len(shown)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols + 1, figsize=(2.0 * (cols + 1), 2.5 * rows), squeeze=False)
    side, step = spec.hr_size, spec.patch_size
    for index, ax in enumerate(axes[:, :cols].flat):
        ax.axis("off")
        if index >= n:
            continue
        ax.imshow(shown[index].numpy(), interpolation="nearest", extent=(0, side, side, 0))
        for p in range(spec.num_patches):
            r, c = divmod(p, spec.grid)
            x0, y0 = c * step, r * step
            if action[index, p] < 0.5:  # dropped: crossed out
                ax.plot([x0, x0 + step], [y0, y0 + step], color="red", linewidth=0.6, alpha=0.7)
                ax.plot([x0, x0 + step], [y0 + step, y0], color="red", linewidth=0.6, alpha=0.7)
            ax.add_patch(plt.Rectangle((x0, y0), step, step, fill=False, linewidth=0.4, edgecolor="white"))
        right = bool(predicted[index] == labels[index])
        ax.set_title(f"true: {name(int(labels[index]))}\npred: {name(int(predicted[index]))}",
                     fontsize=8, color="green" if right else "red")
    for ax in axes[1:, cols]:
        ax.axis("off")
    heat_ax = axes[0, cols]
    picture = heat_ax.imshow(heat.numpy(), vmin=0, vmax=1, cmap="viridis")
    for r in range(spec.grid):
        for c in range(spec.grid):
            heat_ax.text(c, r, f"{heat[r, c]:.2f}", ha="center", va="center", fontsize=6,
                         color="white" if heat[r, c] < 0.6 else "black")
    heat_ax.set_xticks([])
    heat_ax.set_yticks([])
    heat_ax.set_title(f"kept, over {count}\ntest images (mean {heat.sum():.1f})", fontsize=8)
    fig.colorbar(picture, ax=heat_ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(args: argparse.Namespace) -> str:
    ckpt, spec, device = start_eval(args)
    evaluator = load_evaluator(spec, ckpt, args.ckpt_lr_cl, Accel(device))
    if evaluator.agent is None:
        raise PatchDropError(f"{ckpt['path']}: a {ckpt['stage']} checkpoint has no policy to draw; pass a "
                             f"pretrain, finetune or finetune2stream checkpoint")
    test_set = eval_test_set(args, spec)
    loader = build_loader(test_set, args.batch_size, train=False, num_workers=args.num_workers,
                          device=device, seed=args.seed)
    heat, count = keep_frequency(evaluator, loader, device, spec.grid)

    # The shown images: a seeded random choice of the test split.
    n = min(args.num_images, len(test_set))
    picks = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(args.seed))[:n].tolist()
    images = torch.stack([test_set[i][0] for i in picks]).to(device)
    labels = torch.tensor([int(test_set[i][1]) for i in picks], device=device)
    action, predicted = policy_on(evaluator, images)
    shown = to_rgb(composite(images, action, evaluator.lr_size), spec.mean, spec.std)
    if args.png is None and args.out is not None and args.out.endswith(".png"):
        args.png = args.out  # --out naming the file, as this script's --out did before it became a folder
    out = Path(args.png or output_dir(ckpt["path"], args.out) / f"policy_{run_name(ckpt['path'])}.png")
    draw(out, spec, shown, action, labels, predicted, heat, count, class_names(test_set),
         f"{spec.name} {ckpt['stage']}: HR patches acquired (dropped: LR, crossed out)")
    print(f"wrote {out}")
    return str(out)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
