"""Which IPMN risk models exist (bundled, or downloaded on first use), and what the inference
engines run for a model card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from PancreasAILib.engines import NetworkRecipe
from PancreasAILib.weights import ModelCard, ModelRegistry

MODELS_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"


def model_registry(cache_dir: Optional[Path] = None) -> ModelRegistry:
    """The known IPMNRisk models (Resources/Models/IPMNRisk-models.json)."""
    return ModelRegistry.from_json(MODELS_DIR / "IPMNRisk-models.json", cache_dir)


def ipmn_recipe(card: ModelCard, head_fusion: Optional[str] = "mean") -> NetworkRecipe:
    """What the inference engines run for `card`: grids (B, 2, 192, 192) in; out the logits
    (B, 3) and, unless head_fusion is None, each block's attention fused over heads
    (B, 1, 145, 145) for the rollout (`rollout.with_attentions`).

    The kind names the head fusion (each is its own graph) and a digest of the architecture:
    the converted network is cached by the weights' SHA256, and a card that changed only, say,
    num_heads would otherwise find the graph of the old one.
    """
    from .grids import GRID_SIZE
    from .network import IN_CHANNELS

    outputs = "logits" if head_fusion is None else f"logits-attentions-{head_fusion}"
    kind = f"ipmn-vit-{outputs}-{_architecture_digest(card)}"

    def make_module():
        from .network import load_vit
        from .rollout import with_attentions

        vit = load_vit(card)
        return vit if head_fusion is None else with_attentions(vit, head_fusion)

    return NetworkRecipe(kind, make_module, (IN_CHANNELS, GRID_SIZE, GRID_SIZE))


def _architecture_digest(card: ModelCard) -> str:
    text = json.dumps([card.architecture, card.architecture_params], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
