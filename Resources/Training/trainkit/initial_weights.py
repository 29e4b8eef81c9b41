"""--initial-weights: start a run from an earlier model file (fine-tuning a published model on a
site's data, or training longer from an earlier run's result), and record which one."""

from __future__ import annotations

import logging
from typing import Optional

logger = logging.getLogger(__name__)


def add_initial_weights_argument(group) -> None:
    group.add_argument("--initial-weights", metavar="MODEL",
                       help="start from this model file (.safetensors with its card) instead of random weights")


def initial_weights_record(path) -> Optional[dict]:
    """What the model card keeps of the starting model: its name and SHA256 (None without one)."""
    if not path:
        return None
    from PancreasAILib.weights import read_model_card

    card = read_model_card(path)
    return {"name": card.name, "sha256": card.sha256}


def load_initial_weights(network, path: str, architecture: str) -> None:
    """Load the model file at `path` (verified, strictly) into `network`; a file of another
    architecture or size is refused with a ModelFileError and `network` is left as it was."""
    from PancreasAILib.weights import load_into, load_state_dict, read_model_card

    card = read_model_card(path)
    load_into(network, load_state_dict(card, architecture), card)
    logger.info("Starting from the weights of %s (SHA256 %s...)", card.name, card.sha256[:12])
