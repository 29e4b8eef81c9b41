"""Which MoNet weights exist, and turning a model card into a ready network."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

from PancreasAILib.engines import NetworkRecipe
from PancreasAILib.weights import ModelCard, ModelRegistry, load_into, load_state_dict

MODELS_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"
ARCHITECTURE = "MoNet"


def model_registry(cache_dir: Optional[Path] = None) -> ModelRegistry:
    """The known PancreasSegMoNet models (Resources/Models/PancreasSegMoNet-models.json)."""
    return ModelRegistry.from_json(MODELS_DIR / "PancreasSegMoNet-models.json", cache_dir)


def build_monet(card: ModelCard, device: str = "cpu"):
    """The network described by `card`, with its verified weights, ready for inference."""
    return _cached_model(str(card.card_path), card.sha256, device)


@lru_cache(maxsize=2)
def _cached_model(card_path: str, sha256: str, device: str):
    from PancreasAILib.weights import read_model_card

    from .network import MoNet, prepare_for_inference

    card = read_model_card(card_path)
    state_dict = load_state_dict(card, ARCHITECTURE)
    model = MoNet(**card.architecture_params)
    load_into(model, state_dict, card)
    return prepare_for_inference(model).to(device)


def monet_recipe(card: ModelCard) -> NetworkRecipe:
    """What the inference engines run: the card's MoNet (BatchNorm folded) with its output
    activation, slices (B, in_channels, size, size) in, probabilities of the same size out."""
    size = int(card.preprocessing.get("input_size", 256))
    channels = int(card.architecture_params.get("in_channels", 1))

    def make_module():
        from .network import WithProbabilities

        return WithProbabilities(build_monet(card, "cpu"))

    return NetworkRecipe("monet-probabilities", make_module, (channels, size, size))
