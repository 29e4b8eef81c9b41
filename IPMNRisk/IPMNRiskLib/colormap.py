"""A perceptually uniform colour map (inferno) for attention heat maps, without matplotlib.

The anchors are matplotlib's inferno sampled at 17 evenly spaced points (published data of
the colour map by Nathaniel Smith and Stefan van der Walt, CC0); linear interpolation
between them stays within about 0.01 of the full 256-entry table.
"""

from __future__ import annotations

import numpy as np

INFERNO_ANCHORS = (
    (0.001, 0.000, 0.014), (0.042, 0.028, 0.141), (0.129, 0.047, 0.291), (0.238, 0.037, 0.396),
    (0.342, 0.062, 0.429), (0.441, 0.099, 0.432), (0.541, 0.135, 0.415), (0.640, 0.171, 0.381),
    (0.736, 0.216, 0.330), (0.822, 0.275, 0.266), (0.894, 0.353, 0.194), (0.947, 0.449, 0.115),
    (0.978, 0.558, 0.035), (0.988, 0.675, 0.065), (0.975, 0.798, 0.206), (0.948, 0.917, 0.411),
    (0.988, 0.998, 0.645),
)


def colormap_table(size: int = 256, anchors=INFERNO_ANCHORS) -> np.ndarray:
    """(size, 3) float RGB in [0, 1]: entry n is the colour of value n / (size - 1)."""
    anchors = np.asarray(anchors, float)
    positions = np.linspace(0.0, 1.0, len(anchors))
    values = np.linspace(0.0, 1.0, size)
    return np.stack([np.interp(values, positions, anchors[:, c]) for c in range(3)], axis=1)


def apply_colormap(values: np.ndarray, size: int = 256) -> np.ndarray:
    """Values in [0, 1] (clipped), any shape -> (..., 3) uint8 RGB."""
    table = np.round(colormap_table(size) * 255).astype(np.uint8)
    index = np.round(np.clip(np.asarray(values, float), 0.0, 1.0) * (size - 1)).astype(int)
    return table[index]
