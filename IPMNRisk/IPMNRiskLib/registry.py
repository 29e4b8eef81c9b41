"""Which IPMN risk models exist (bundled, or downloaded on first use)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PancreasAILib.weights import ModelRegistry

MODELS_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"


def model_registry(cache_dir: Optional[Path] = None) -> ModelRegistry:
    """The known IPMNRisk models (Resources/Models/IPMNRisk-models.json)."""
    return ModelRegistry.from_json(MODELS_DIR / "IPMNRisk-models.json", cache_dir)
