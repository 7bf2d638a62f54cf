"""Policy, mask and reward functions of PatchDrop (method.md, "Policy and reward").

All functions are pure and batched: no loops over patches, no device moves, no ``args``.
Shapes: B batch, P = G*G patches (row-major, patch k at grid row k // G, column k % G), C channels,
H = W image side, ps = H // G patch side.
"""
import math

import torch
import torch.nn.functional as F


def downsample(x_hr: torch.Tensor, lr_size: int) -> torch.Tensor:
    """LR image [B, C, lr, lr] from the normalized HR image [B, C, H, W] by nearest sampling."""
    return F.interpolate(x_hr, size=(lr_size, lr_size))


def bound_probs(probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """Exploration bound s <- alpha*s + (1-alpha)*(1-s), keeping s in [1-alpha, alpha]. [B, P]."""
    return alpha * probs + (1 - alpha) * (1 - probs)


def greedy_action(probs: torch.Tensor) -> torch.Tensor:
    """Test-time action 1[s >= 0.5] as floats [B, P] (unchanged by bound_probs for alpha > 0.5)."""
    return (probs >= 0.5).float()


def sample_action(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Action a ~ Bernoulli(probs), floats [B, P]."""
    return torch.bernoulli(probs, generator=generator)


def log_prob(probs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log pi(a_p) = a_p log s_p + (1 - a_p) log(1 - s_p), per patch [B, P], computed in float32.

    Written as -BCE, whose log is clamped at -100 and whose gradient stays finite where s is exactly 0
    or 1 (possible with --alpha 1 and a saturated sigmoid); a*log(s) would give NaN there.
    """
    return -F.binary_cross_entropy(probs.float(), action.float(), reduction="none")


def action_to_mask(action: torch.Tensor, image_size: int) -> torch.Tensor:
    """Pixel mask [B, 1, H, H] that is 1 on kept patches: each grid cell of ``action`` [B, P] blown up
    to a ps x ps block by nearest upsampling."""
    batch, num_patches = action.shape
    grid = math.isqrt(num_patches)
    assert grid * grid == num_patches and image_size % grid == 0, (num_patches, image_size)
    cells = action.view(batch, 1, grid, grid)
    return F.interpolate(cells, scale_factor=image_size // grid, mode="nearest")


def mask_image(x_hr: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """HR image [B, C, H, W] with dropped patches set to 0, the dataset mean in normalized units."""
    return x_hr * action_to_mask(action, x_hr.shape[-1]).to(x_hr.dtype)


def compute_reward(logits: torch.Tensor, targets: torch.Tensor, action: torch.Tensor,
                   penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward R = 1 - (|a|_1 / P)^2 where the prediction is right, ``penalty`` where it is wrong.

    Returns (reward [B], correct [B] as floats). No gradient flows through either.
    """
    with torch.no_grad():
        correct = (logits.argmax(dim=1) == targets).float()
        kept_fraction = action.float().mean(dim=1)
        reward = torch.where(correct.bool(), 1 - kept_fraction**2, torch.full_like(correct, penalty))
    return reward, correct


def reinforce_loss(probs: torch.Tensor, action: torch.Tensor, advantage: torch.Tensor,
                   reduction: str, learned: torch.Tensor | None = None) -> torch.Tensor:
    """Self-critical REINFORCE loss -log pi(a) * A with A = R(a) - R(a_greedy), [B].

    ``reduction`` is where the stages differ (method.md):
      "mean": mean over batch and patches of -log pi(a_p) A (pretrain);
      "sum":  mean over the batch of -(sum_p log pi(a_p)) A (finetune, two-stream).
    ``learned`` [B, P] or [P] zeroes the terms of patches not yet learned (pretrain curriculum); the mean
    still runs over all B*P terms, so the loss scale does not jump as patches are added.
    """
    terms = -log_prob(probs, action) * advantage.detach().float().unsqueeze(1)
    if learned is not None:
        terms = terms * learned
    if reduction == "mean":
        return terms.mean()
    if reduction == "sum":
        return terms.sum(dim=1).mean()
    raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")


def curriculum_learned(epoch: int, num_patches: int, device: torch.device | None = None) -> torch.Tensor:
    """Pretrain curriculum: at epoch e < P only patches 0..e are learned. Mask [P] of 1 = learned."""
    return (torch.arange(num_patches, device=device) <= epoch).float()


def apply_curriculum(action: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
    """Force the patches that are not learned yet to 1 (kept) in an action [B, P]."""
    return torch.maximum(action, 1 - learned)


def fuse_logits(hr_logits: torch.Tensor, lr_logits: torch.Tensor, action: torch.Tensor,
                fusion: str) -> torch.Tensor:
    """Two-stream logits [B, K]. "sum": f_h + f_l. "ratio": r f_h + (1 - r) f_l with r = |a|_1 / P
    of the action that masked the HR input, per image."""
    if fusion == "sum":
        return hr_logits + lr_logits
    if fusion == "ratio":
        r = action.float().mean(dim=1, keepdim=True)
        return r * hr_logits + (1 - r) * lr_logits
    raise ValueError(f"fusion must be 'sum' or 'ratio', not {fusion!r}")


def action_codes(action: torch.Tensor) -> torch.Tensor:
    """Each binary action [B, P] as one integer [B] (bit p = patch p), to count distinct policies."""
    weights = 2 ** torch.arange(action.shape[1], device=action.device, dtype=torch.int64)
    return (action.long() * weights).sum(dim=1)
