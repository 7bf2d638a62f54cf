"""Reference training steps that do, on the same networks, what the authors' scripts did each step
(their behaviour, rewritten here; it is the baseline of bench/step_speed.py, never used for training):

* the input batch is cloned three times (agent, greedy and sampled copies);
* each masked image is built by a loop over the 16 patches into a zero buffer in host memory, copying
  the kept patches from the device batch, and the buffer is copied back to the device: twice per step;
* frozen classifiers run with autograd on (their ``volatile`` flag is a no-op in current PyTorch), so
  every forward pass records a graph, the greedy one included;
* the greedy action is a clone of the probabilities thresholded in place, the policy loss goes through
  ``torch.distributions.Bernoulli``;
* per-step statistics are copied to the host (``.cpu()``), a synchronization per step.
Everything runs in float32 with contiguous (NCHW) tensors, as theirs did.
"""
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli


def loop_mask(inputs: torch.Tensor, action: torch.Tensor, grid: int) -> torch.Tensor:
    """Patches kept by ``action`` [B, P] copied one patch index at a time into a host buffer."""
    patch = inputs.shape[-1] // grid
    buffer = torch.zeros(inputs.shape)  # host memory
    for index in range(grid * grid):
        keep = (action[:, index] == 1).cpu()
        row, col = divmod(index, grid)
        rows, cols = slice(row * patch, (row + 1) * patch), slice(col * patch, (col + 1) * patch)
        buffer[keep, :, rows, cols] = inputs[keep.to(inputs.device), :, rows, cols].cpu()
    return buffer.to(inputs.device)


def reward_of(logits: torch.Tensor, targets: torch.Tensor, action: torch.Tensor, penalty: float):
    kept = action.sum(1) / action.shape[1]
    match = (logits.max(1)[1] == targets).detach()
    reward = 1 - kept ** 2
    reward[~match] = penalty
    return reward.unsqueeze(1), match


def _sample(agent, inputs, lr_size, alpha):
    probs = torch.sigmoid(agent(F.interpolate(inputs, size=(lr_size, lr_size))))
    probs = probs * alpha + (1 - alpha) * (1 - probs)
    distr = Bernoulli(probs)
    sampled = distr.sample()
    greedy = probs.detach().clone()
    greedy[greedy < 0.5] = 0.0
    greedy[greedy >= 0.5] = 1.0
    return distr, sampled, greedy


def classifier_step(model, inputs, targets, optimizer, *, img_size: int):
    if inputs.shape[-1] != img_size:
        inputs = F.interpolate(inputs, size=(img_size, img_size))
    logits = model(inputs)
    loss = F.cross_entropy(logits, targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    (logits.max(1)[1] == targets).cpu(), loss.cpu()


def pretrain_step(agent, resnet_hr, inputs, targets, optimizer, *, grid, lr_size, alpha, penalty):
    inputs_agent, inputs_map, inputs_sample = inputs.clone(), inputs.clone(), inputs.clone()
    distr, sampled, greedy = _sample(agent, inputs_agent, lr_size, alpha)
    preds_map = resnet_hr(loop_mask(inputs_map, greedy, grid))
    preds_sample = resnet_hr(loop_mask(inputs_sample, sampled.int(), grid))
    reward_map, match = reward_of(preds_map, targets, greedy, penalty)
    reward_sample, _ = reward_of(preds_sample, targets, sampled, penalty)
    loss = (-distr.log_prob(sampled) * (reward_sample - reward_map).expand_as(sampled)).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    match.cpu(), reward_sample.cpu(), reward_map.cpu(), sampled.cpu()


def finetune_step(agent, resnet_hr, inputs, targets, optimizer, *, grid, lr_size, alpha, penalty,
                  resnet_lr=None):
    """Stage 3, and stage 4 when ``resnet_lr`` is given (logits summed with the LR classifier's)."""
    inputs_agent, inputs_map, inputs_sample = inputs.clone(), inputs.clone(), inputs.clone()
    distr, sampled, greedy = _sample(agent, inputs_agent, lr_size, alpha)
    preds_map = resnet_hr(loop_mask(inputs_map, greedy, grid))
    preds_sample = resnet_hr(loop_mask(inputs_sample, sampled.int(), grid))
    if resnet_lr is not None:
        preds_lr = resnet_lr(F.interpolate(inputs_agent, size=(lr_size, lr_size)))
        preds_map, preds_sample = preds_map + preds_lr, preds_sample + preds_lr
    reward_map, match = reward_of(preds_map, targets, greedy, penalty)
    reward_sample, _ = reward_of(preds_sample, targets, sampled, penalty)
    advantage = (reward_sample - reward_map).detach()
    loss = (-distr.log_prob(sampled).sum(1, keepdim=True) * advantage).mean()
    loss = loss + F.cross_entropy(preds_sample, targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    match.cpu(), reward_sample.cpu(), reward_map.cpu(), sampled.cpu()
