"""Test-time augmentation with exactly the training augmentations.

Training flips and rotates the 9 slices (each 64 x 64 tile in place, identically for all
tiles and both channels: `grids.transform_tiles`); all 8 combinations of a left-right flip
and 0-3 quarter turns are those augmentations. Each view is classified in one batch; the
probabilities are averaged and their standard deviation over views reported as the spread.
Rollout maps are taken back to the original orientation before they are averaged (a 64 x 64
tile is 4 x 4 patches, so the same tile transform applies to the 12 x 12 patch map).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import rollout as rollout_module
from .grids import DIHEDRAL_VIEWS, transform_tiles, undo_transform_tiles


@dataclass(frozen=True)
class Prediction:
    """probabilities (C,) mean over views; spread (C,) their std (0 without TTA);
    patch_map (12, 12) mean rollout map or None; views: how many views were averaged."""

    probabilities: np.ndarray
    spread: np.ndarray
    patch_map: Optional[np.ndarray]
    views: int


def _model_device(model):
    return next(model.parameters()).device


def predict(model, x: np.ndarray, *, tta: bool = True, rollout: bool = True,
            head_fusion: str = "mean", discard_ratio: float = 0.0) -> Prediction:
    """Classify one (2, 192, 192) input (and roll its attention out) over the TTA views."""
    import torch

    x = np.asarray(x, np.float32)
    views = DIHEDRAL_VIEWS if tta else DIHEDRAL_VIEWS[:1]
    batch = np.stack([transform_tiles(x, flip, turns) for flip, turns in views])
    batch_tensor = torch.from_numpy(batch).to(_model_device(model))
    patch_map = None
    if rollout:
        logits, maps = rollout_module.logits_and_rollout_maps(model, batch_tensor, head_fusion, discard_ratio)
        patch_map = np.mean([undo_transform_tiles(m, flip, turns)
                             for m, (flip, turns) in zip(maps, views)], axis=0)
    else:
        with torch.no_grad():
            logits = model(batch_tensor)
    probabilities = torch.softmax(logits.cpu().double(), dim=1).numpy()
    return Prediction(probabilities.mean(0), probabilities.std(0), patch_map, len(views))
