"""Policy helpers against a slow loop oracle and hand-worked numbers."""
import math

import pytest
import torch

from utils import policy


def mask_by_loop(x, action):
    """The oracle: zero each dropped patch, one patch at a time (as the authors' code did)."""
    out = x.clone()
    grid = math.isqrt(action.shape[1])
    ps = x.shape[-1] // grid
    for b in range(x.shape[0]):
        for k in range(action.shape[1]):
            if action[b, k] == 0:
                row, col = divmod(k, grid)
                out[b, :, row * ps:(row + 1) * ps, col * ps:(col + 1) * ps] = 0
    return out


@pytest.mark.parametrize("size,num_patches", [(32, 16), (224, 16), (12, 9)])
def test_mask_matches_loop_oracle(size, num_patches):
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(5, 3, size, size, generator=gen)
    action = torch.bernoulli(torch.full((5, num_patches), 0.5), generator=gen)
    assert torch.equal(policy.mask_image(x, action), mask_by_loop(x, action))


def test_mask_layout_is_row_major():
    action = torch.zeros(1, 16)
    action[0, 6] = 1  # grid row 1, column 2 -> rows 8..15, columns 16..23
    mask = policy.action_to_mask(action, 32)[0, 0]
    assert mask.sum() == 64
    assert mask[8:16, 16:24].all()


def test_downsample_is_nearest():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(policy.downsample(x, 2), torch.tensor([[[[0.0, 2.0], [8.0, 10.0]]]]))


def test_bound_probs_and_greedy():
    s = torch.tensor([[0.0, 0.3, 0.5, 1.0]])
    bounded = policy.bound_probs(s, 0.8)
    assert torch.allclose(bounded, torch.tensor([[0.2, 0.38, 0.5, 0.8]]))
    assert torch.equal(policy.greedy_action(s), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    # The bound never changes the greedy action.
    assert torch.equal(policy.greedy_action(bounded), policy.greedy_action(s))


def test_sample_action_frequencies():
    probs = torch.tensor([0.2, 0.8]).expand(20000, 2)
    freq = policy.sample_action(probs, torch.Generator().manual_seed(0)).mean(0)
    assert torch.allclose(freq, torch.tensor([0.2, 0.8]), atol=0.01)


def test_reward_hand_worked():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0]])
    targets = torch.tensor([0, 1, 1])  # right, right, wrong
    action = torch.zeros(3, 16)
    action[0, :4] = 1  # 4 of 16 kept: 1 - (1/4)^2 = 0.9375
    action[1, :8] = 1  # 8 of 16 kept: 1 - (1/2)^2 = 0.75
    reward, correct = policy.compute_reward(logits, targets, action, penalty=-10)
    assert torch.allclose(reward, torch.tensor([0.9375, 0.75, -10.0]))
    assert torch.equal(correct, torch.tensor([1.0, 1.0, 0.0]))


def test_loss_reductions_hand_worked():
    probs = torch.tensor([[0.5, 0.8], [0.2, 0.5]])
    action = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    advantage = torch.tensor([2.0, -1.0])
    # log pi: [[log .5, log .8], [log .2, log .5]]
    l = torch.log(torch.tensor([[0.5, 0.8], [0.2, 0.5]]))
    terms = -l * advantage[:, None]
    assert torch.isclose(policy.reinforce_loss(probs, action, advantage, "mean"), terms.mean())
    assert torch.isclose(policy.reinforce_loss(probs, action, advantage, "sum"), terms.sum(1).mean())
    # By hand: row sums 2*(.693147+.223144) = 1.832582 and -(1.609438+.693147) = -2.302585;
    # mean over 4 terms = -0.470003/4 = -0.117501, mean over 2 rows = -0.235002.
    assert policy.reinforce_loss(probs, action, advantage, "mean").item() == pytest.approx(-0.117501, abs=1e-5)
    assert policy.reinforce_loss(probs, action, advantage, "sum").item() == pytest.approx(-0.235002, abs=1e-5)


def test_curriculum_mask_and_loss():
    learned = policy.curriculum_learned(2, 16)
    assert learned.tolist() == [1.0] * 3 + [0.0] * 13
    action = torch.zeros(2, 16)
    assert policy.apply_curriculum(action, learned).sum(1).tolist() == [13.0, 13.0]
    probs = torch.full((2, 16), 0.3)
    full = policy.reinforce_loss(probs, action, torch.ones(2), "mean")
    masked = policy.reinforce_loss(probs, action, torch.ones(2), "mean", learned)
    # Only 3 of 16 terms survive; the mean still divides by all B*P terms.
    assert masked.item() == pytest.approx(full.item() * 3 / 16)


def test_reinforce_step_moves_probability_towards_better_action():
    """Sign test: a gradient step on the loss makes a positive-advantage action more likely and a
    negative-advantage action less likely."""
    logits = torch.zeros(2, 4, requires_grad=True)
    action = torch.tensor([[1.0, 0, 1, 0], [1, 1, 0, 0]])
    advantage = torch.tensor([1.0, -1.0])
    loss = policy.reinforce_loss(torch.sigmoid(logits), action, advantage, "sum")
    loss.backward()
    with torch.no_grad():
        new_probs = torch.sigmoid(logits - 0.1 * logits.grad)
    logp_new = policy.log_prob(new_probs, action).sum(1)
    logp_old = policy.log_prob(torch.full((2, 4), 0.5), action).sum(1)
    assert logp_new[0] > logp_old[0]  # rewarded action: more likely
    assert logp_new[1] < logp_old[1]  # punished action: less likely


def test_log_prob_and_its_gradient_are_finite_at_certain_probabilities():
    probs = torch.tensor([[0.0, 1.0, 0.25]], requires_grad=True)
    logp = policy.log_prob(probs, torch.tensor([[0.0, 1.0, 1.0]]))
    assert torch.allclose(logp, torch.tensor([[0.0, 0.0, math.log(0.25)]]))
    logp.sum().backward()
    assert torch.isfinite(probs.grad).all()


def test_fusion():
    hr, lr = torch.tensor([[1.0, 3.0]]), torch.tensor([[5.0, 1.0]])
    action = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # r = 0.75
    assert torch.equal(policy.fuse_logits(hr, lr, action, "sum"), torch.tensor([[6.0, 4.0]]))
    assert torch.allclose(policy.fuse_logits(hr, lr, action, "ratio"), torch.tensor([[2.0, 2.5]]))


def test_action_codes_distinguish_policies():
    actions = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 1, 1]])
    assert policy.action_codes(actions).tolist() == [1, 2, 1, 7]
