"""CT slices exactly as MoNet saw them in training: canonical axial, 256 x 256, windowed.

Used by inference and by the training scripts (Resources/Training), so the two cannot drift.
The parameters come from the model card's "preprocessing" section.
"""

from __future__ import annotations

import numpy as np

from PancreasAILib.resample import resample
from PancreasAILib.volume import Volume

DEFAULT_PREPROCESSING = {
    "orientation": "axial LPS (i to patient left, j to posterior, k to superior)",
    "input_size": 256,
    "window_hu": [-160.0, 240.0],
    "fill_hu": -1024.0,
    "inplane_resampling": "bilinear, square field of view over the longer slice side, centred",
}


def inplane_grid(canonical: Volume, size: int) -> np.ndarray:
    """IJK-to-RAS of a (K, size, size) grid on the same slices, covering each slice's field of view.

    The square grid spans the longer physical side of the slice, centred, so anisotropic
    pixels and non-square slices keep their aspect ratio. For a square 512 x 512 slice it is
    exactly the paper's 2x bilinear down-sampling (pixel centres at half-pixel offsets).
    """
    n_rows, n_columns = canonical.shape[1], canonical.shape[2]
    spacing_i, spacing_j = canonical.spacing[0], canonical.spacing[1]
    field_of_view = max(n_columns * spacing_i, n_rows * spacing_j)
    pixel = field_of_view / size
    target_to_source = np.eye(4)
    target_to_source[0, 0] = pixel / spacing_i
    target_to_source[1, 1] = pixel / spacing_j
    target_to_source[0, 3] = (n_columns - 1) / 2 - (size - 1) / 2 * target_to_source[0, 0]
    target_to_source[1, 3] = (n_rows - 1) / 2 - (size - 1) / 2 * target_to_source[1, 1]
    return canonical.ijk_to_ras @ target_to_source


def window(hu: np.ndarray, window_hu) -> np.ndarray:
    """Clip to the window and scale to [0, 1], in place on a float32 array."""
    low, high = float(window_hu[0]), float(window_hu[1])
    np.clip(hu, low, high, out=hu)
    hu -= low
    hu /= high - low
    return hu


def model_slices(canonical: Volume, preprocessing: dict) -> tuple[np.ndarray, np.ndarray]:
    """Canonical CT slab -> ((K, size, size) float32 in [0, 1], IJK-to-RAS of that grid)."""
    size = int(preprocessing["input_size"])
    grid = inplane_grid(canonical, size)
    hu = resample(canonical, (canonical.shape[0], size, size), grid,
                  order=1,  # pragma: no mutate (resample's default; explicit: bilinear, as in training)
                  fill_value=float(preprocessing["fill_hu"]))
    return window(hu, preprocessing["window_hu"]), grid
