"""Test-time augmentation with exactly the training augmentations.

Training flips and rotates the 9 slices (each 64 x 64 tile in place, identically for all
tiles and both channels: `grids.transform_tiles`); all 8 combinations of a left-right flip
and 0-3 quarter turns are those augmentations. The views go to the network as one batch
(one engine call); the probabilities are averaged and their standard deviation over views
reported as the spread. Rollout maps are taken back to the original orientation before they
are averaged (a 64 x 64 tile is 4 x 4 patches, so the same tile transform applies to the
12 x 12 patch map).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import rollout as rollout_module
from .grids import DIHEDRAL_VIEWS, transform_tiles, undo_transform_tiles
from .network import PATCH_GRID


@dataclass(frozen=True)
class Prediction:
    """probabilities (C,) mean over views; spread (C,) their std (0 without TTA);
    patch_map (12, 12) mean rollout map or None; views: how many views were averaged."""

    probabilities: np.ndarray
    spread: np.ndarray
    patch_map: Optional[np.ndarray]
    views: int


def module_engine(module, rollout: bool = True, head_fusion: str = "mean"):
    """A PyTorch module run as an engine in float32 on its own device: for a ViT of one's own
    (training, evaluation, tests); assessments build theirs from the model card instead
    (`registry.ipmn_recipe` + `engines.build_engine`)."""
    from PancreasAILib.engines import EngineChoice, TorchEngine

    device = next(module.parameters()).device.type
    network = rollout_module.with_attentions(module, head_fusion) if rollout else module
    return TorchEngine(network, EngineChoice("pytorch", "fp32", device))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (the probabilities are averaged and compared afterwards)."""
    shifted = np.asarray(logits, np.float64) - np.max(logits, axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def predict(network, x: np.ndarray, *, tta: bool = True, rollout: bool = True,
            head_fusion: str = "mean", discard_ratio: float = 0.0) -> Prediction:
    """Classify one (2, 192, 192) input (and roll its attention out) over the TTA views.

    network: an inference engine (`PancreasAILib.engines.Engine`: numpy batch in, [logits,
    *attentions] out), for rollout one built from `ipmn_recipe(card, head_fusion)` with this
    very head_fusion; or a PyTorch ViT, run as it is (`module_engine`).
    """
    from PancreasAILib.engines import Engine

    if not isinstance(network, Engine):
        network = module_engine(network, rollout, head_fusion)
    x = np.asarray(x, np.float32)
    views = DIHEDRAL_VIEWS if tta else DIHEDRAL_VIEWS[:1]
    batch = np.stack([transform_tiles(x, flip, turns) for flip, turns in views])
    patch_map = None
    if rollout:
        logits, maps = rollout_module.engine_logits_and_rollout_maps(network, batch, PATCH_GRID, head_fusion,
                                                                     discard_ratio)
        patch_map = np.mean([undo_transform_tiles(m, flip, turns)
                             for m, (flip, turns) in zip(maps, views)], axis=0)
    else:
        logits = network(batch)[0]
    probabilities = softmax(logits)
    return Prediction(probabilities.mean(0), probabilities.std(0), patch_map, len(views))


def gradient_rollout_map(vit, x: np.ndarray, target_class: int, *, tta: bool = True) -> np.ndarray:
    """Gradient-weighted attention rollout (`explanations`) of one (2, 192, 192) input over the
    TTA views, as `predict` rolls attention out: every view explains the same class (the
    assessment's, from the mean over views), and each view's map is taken back to the original
    orientation before the maps are averaged. vit: a timm ViT on PyTorch (gradients).
    Returns (12, 12) float64."""
    from .explanations import logits_and_gradient_rollout_maps

    x = np.asarray(x, np.float32)
    views = DIHEDRAL_VIEWS if tta else DIHEDRAL_VIEWS[:1]
    batch = np.stack([transform_tiles(x, flip, turns) for flip, turns in views])
    _, maps = logits_and_gradient_rollout_maps(vit, batch, target_class)
    return np.mean([undo_transform_tiles(m, flip, turns) for m, (flip, turns) in zip(maps, views)], axis=0)
