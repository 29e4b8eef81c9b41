"""MoNet's training losses, on the networks' logits: the paper's soft Dice on the sigmoid
probabilities, optionally plus binary cross-entropy computed from the logits themselves
(numerically stable, so no probability needs clipping)."""

from __future__ import annotations

from monet_protocol import MoNetProtocol


def soft_dice_loss(smooth: float):
    """loss(logits, masks): the paper's soft Dice loss (Keras: 1 - (2 sum(p g) + s) / (sum p +
    sum g + s) over the whole batch, p the sigmoid of the logits), as MONAI's DiceLoss."""
    from monai.losses import DiceLoss

    return DiceLoss(sigmoid=True, batch=True, smooth_nr=smooth, smooth_dr=smooth)


def training_loss(protocol: MoNetProtocol):
    """loss(logits, masks): the soft Dice, plus binary cross-entropy with logits for 'dice+bce'.
    Validation always uses the soft Dice alone."""
    import torch.nn.functional as F

    dice = soft_dice_loss(protocol.dice_smooth)
    if protocol.loss == "dice":
        return dice
    return lambda logits, masks: dice(logits, masks) + F.binary_cross_entropy_with_logits(logits, masks)
