"""The learning rate of each epoch, as a function of the run's flags alone.

``--lr`` is the rate of epoch 0; the classifier stages multiply it by 0.1 at each of ``--lr_milestones``
(the authors' MultiStepLR, stepped once an epoch); the policy stages keep it constant. The stage scripts
set it on the optimizer at the start of every epoch, so a resumed run trains with the rate its flags
record, a changed ``--lr`` or ``--lr_milestones`` included, whatever rate its saved optimizer state held.
"""
import torch

GAMMA = 0.1  # the authors' factor at each milestone


def lr_at(epoch: int, lr: float, milestones: list[int] | tuple[int, ...] = ()) -> float:
    """The learning rate during ``epoch`` (0-based): ``lr`` times GAMMA per milestone m <= epoch, as
    MultiStepLR(milestones, GAMMA) gives after ``epoch`` steps."""
    rate = lr
    for milestone in milestones:
        if milestone <= epoch:
            rate *= GAMMA
    return rate


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set ``lr`` on every parameter group of ``optimizer``; returns it."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
