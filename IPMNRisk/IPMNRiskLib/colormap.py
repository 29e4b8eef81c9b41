"""A perceptually uniform colour map (inferno) for attention heat maps, without matplotlib.

The anchors are matplotlib's inferno sampled at 33 evenly spaced points (published data of
the colour map by Nathaniel Smith and Stefan van der Walt, CC0); linear interpolation
between them stays within 0.02 of the full 256-entry table.
"""

from __future__ import annotations

import numpy as np

INFERNO_ANCHORS = (
    (0.001, 0.000, 0.014), (0.014, 0.011, 0.072), (0.042, 0.028, 0.141), (0.082, 0.043, 0.215),
    (0.129, 0.047, 0.291), (0.183, 0.040, 0.355), (0.238, 0.037, 0.396), (0.291, 0.046, 0.419),
    (0.342, 0.062, 0.429), (0.391, 0.081, 0.433), (0.441, 0.099, 0.432), (0.491, 0.117, 0.426),
    (0.541, 0.135, 0.415), (0.591, 0.153, 0.400), (0.640, 0.171, 0.381), (0.689, 0.192, 0.358),
    (0.736, 0.216, 0.330), (0.781, 0.243, 0.300), (0.822, 0.275, 0.266), (0.861, 0.312, 0.231),
    (0.894, 0.353, 0.194), (0.923, 0.399, 0.155), (0.947, 0.449, 0.115), (0.965, 0.502, 0.074),
    (0.978, 0.558, 0.035), (0.986, 0.616, 0.026), (0.988, 0.675, 0.065), (0.984, 0.736, 0.130),
    (0.975, 0.798, 0.206), (0.961, 0.859, 0.298), (0.948, 0.917, 0.411), (0.955, 0.966, 0.540),
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
