"""How a MoNet run judges its network: the soft Dice over all validation slices, per-patient Dice
on the model's grid, and BatchNorm statistics measured again on whole slices after training on
crops. The networks return logits; the probabilities are `output_probabilities` of them, as at
inference."""

from __future__ import annotations

import math

import numpy as np

from PancreasSegMoNetLib.network import output_probabilities

from monet_data import SliceSet
from segmentation_data import CachedSlices
from trainkit.distributed import Distributed

VALIDATION_BATCH = 16


def validation_loss(network, slices: SliceSet, smooth: float, dist: Distributed) -> tuple[float, float]:
    """(soft Dice loss, soft Dice) over all validation slices at once: the same formula as the
    training loss, summed over batches (and processes) before dividing."""
    import torch

    network.eval()
    mine = np.array_split(np.arange(len(slices)), dist.world_size)[dist.rank]
    intersection = total = 0.0
    with torch.inference_mode():
        for start in range(0, len(mine), VALIDATION_BATCH):
            images, masks = slices.batch(mine[start:start + VALIDATION_BATCH])
            logits = network(images.to(dist.device).contiguous(memory_format=torch.channels_last))
            probabilities = output_probabilities(logits)
            masks = masks.to(dist.device)
            intersection += float((probabilities * masks).sum())
            total += float(probabilities.sum() + masks.sum())
    intersection, total = dist.sum([intersection, total])
    loss = 1 - (2 * intersection + smooth) / (total + smooth)
    return loss, 1 - loss


def patient_dice_on_model_grid(network, cases: list[CachedSlices], device, threshold: float = 0.5) -> list[float]:
    """Per-case Dice of the thresholded prediction over all slices of each case, on the model's
    grid (no resampling back, no clean-up); NaN for a case without pancreas."""
    import torch

    network.eval()
    scores = []
    with torch.inference_mode():
        for slices in cases:
            overlap = predicted = reference = 0
            for start in range(0, len(slices.images), VALIDATION_BATCH):
                images = torch.from_numpy(np.asarray(slices.images[start:start + VALIDATION_BATCH], np.float32)[:, None])
                probabilities = output_probabilities(network(images.to(device)))
                prediction = (probabilities[:, 0] >= threshold).cpu().numpy()
                truth = np.asarray(slices.masks[start:start + VALIDATION_BATCH]) > 0
                overlap += int(np.count_nonzero(prediction & truth))
                predicted += int(np.count_nonzero(prediction))
                reference += int(np.count_nonzero(truth))
            scores.append(2 * overlap / (predicted + reference) if reference else math.nan)
    return scores


def recalibrated_batch_norm(network, slices: SliceSet, rng: np.random.Generator, count: int, device):
    """A copy of `network` whose BatchNorm running statistics are measured again on `count`
    random whole slices, weights unchanged: trained on crops, the statistics describe crops,
    while inference sees whole slices with the air around the body."""
    import copy

    import torch

    calibrated = copy.deepcopy(network)
    batch_norms = [m for m in calibrated.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    dropouts = [m for m in calibrated.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    momenta, rates = [bn.momentum for bn in batch_norms], [d.p for d in dropouts]
    for bn in batch_norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration slices
    for dropout in dropouts:
        dropout.p = 0.0
    calibrated.train()
    pick = np.sort(rng.choice(len(slices), min(count, len(slices)), replace=False))
    with torch.no_grad():
        for start in range(0, len(pick), VALIDATION_BATCH):
            images, _ = slices.batch(pick[start:start + VALIDATION_BATCH])
            calibrated(images.to(device).contiguous(memory_format=torch.channels_last))
    for bn, momentum in zip(batch_norms, momenta):
        bn.momentum = momentum
    for dropout, rate in zip(dropouts, rates):
        dropout.p = rate
    return calibrated.eval()
