"""CT slices exactly as MoNet saw them in training: canonical axial, 256 x 256, intensities in [0, 1].

Used by inference and by the training scripts (Resources/Training), so the two cannot drift.
The parameters come from the model card's "preprocessing" section; its optional
"intensity_scaling" says how Hounsfield units become [0, 1]:

- "window" (the default when the key is absent): clip to `window_hu` and scale that window
  to [0, 1], the same for every CT.
- "volume_min_max": the MoNet authors' `preprocess_scan` (TUM-AIMED/MoNet,
  preprocessing/data_loader.py): clip to `window_hu`, then scale the clipped volume's own
  minimum and maximum to 0 and 1. The range belongs to the whole CT, so a CT segmented slab by
  slab needs it computed once (`intensity_range`) and given to every slab.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from PancreasAILib.errors import ModelFileError
from PancreasAILib.resample import resample
from PancreasAILib.volume import Volume

DEFAULT_PREPROCESSING = {
    "orientation": "axial LPS (i to patient left, j to posterior, k to superior)",
    "input_size": 256,
    "window_hu": [-160.0, 240.0],
    "fill_hu": -1024.0,
    "inplane_resampling": "bilinear, square field of view over the longer slice side, centred",
}
#: The values of the card's "intensity_scaling" (see the module's docstring); the first is the default.
INTENSITY_SCALINGS = ("window", "volume_min_max")


def intensity_scaling(preprocessing: dict) -> str:
    """The card's "intensity_scaling", "window" when it has none; an unknown one is refused."""
    scaling = preprocessing.get("intensity_scaling", INTENSITY_SCALINGS[0])
    if scaling not in INTENSITY_SCALINGS:
        raise ModelFileError(
            f"The model card's pre-processing asks for intensity_scaling {scaling!r}, which this version "
            f"of PancreasSegMoNet cannot reproduce; it knows {' and '.join(map(repr, INTENSITY_SCALINGS))}. "
            "Use a PancreasSegMoNet version made for this model, or correct its card.")
    return scaling


def check_preprocessing(preprocessing: dict) -> None:
    """Refuse, before any work, a card's pre-processing that this version cannot reproduce."""
    missing = [key for key in ("input_size", "window_hu", "fill_hu") if key not in preprocessing]
    if missing:
        raise ModelFileError(
            f"The model card's pre-processing lacks {', '.join(missing)}: without them the CT cannot be "
            "prepared as the model saw it in training. Correct the card.")
    intensity_scaling(preprocessing)
    try:
        low, high = (float(value) for value in preprocessing["window_hu"])
    except (TypeError, ValueError) as error:
        raise ModelFileError(f"The model card's window_hu {preprocessing['window_hu']!r} is not two numbers "
                             "(the Hounsfield units shown black and white). Correct the card.") from error
    if not low < high:
        raise ModelFileError(
            f"The model card's window_hu [{low:g}, {high:g}] is empty: its first value, the Hounsfield "
            "units shown black, must lie below its second, those shown white. Correct the card.")


def intensity_range(ct_or_canonical: Volume, preprocessing: dict) -> tuple[float, float]:
    """(low, high) Hounsfield units that the model's input maps to 0 and 1.

    "window": `window_hu` itself. "volume_min_max": the window narrowed to the range of the
    volume's own voxels (max(window low, volume min), min(window high, volume max)): the
    clipped volume's minimum and maximum. Take it over the whole CT (any orientation: the range
    does not depend on it), never over one slab, and never over resampled slices (whose fill
    outside the field of view is not part of the CT). A volume constant after clipping gives
    high <= low; `model_slices` then gives zeros where the authors' code stops on an assertion.
    """
    low, high = (float(value) for value in preprocessing["window_hu"])
    if intensity_scaling(preprocessing) == "volume_min_max":
        low = max(low, float(ct_or_canonical.array.min()))
        high = min(high, float(ct_or_canonical.array.max()))
    return low, high


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
    """Clip to the window (low, high), Hounsfield units, and scale it to [0, 1], in place on a
    float32 array; low < high."""
    low, high = float(window_hu[0]), float(window_hu[1])
    np.clip(hu, low, high, out=hu)
    hu -= low
    hu /= high - low
    return hu


def model_slices(canonical: Volume, preprocessing: dict,
                 intensity: Optional[tuple[float, float]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Canonical CT slab (K, J, I), Hounsfield units -> ((K, size, size) float32 in [0, 1],
    IJK-to-RAS of that grid).

    intensity: the (low, high) Hounsfield units mapped to 0 and 1, `intensity_range` of the
    whole CT the slab belongs to; None computes it from `canonical`, right only when it is the
    whole CT. Values beyond the range, the fill outside the slice included, are clipped to it.
    An empty range (a constant volume) gives zeros.
    """
    low, high = intensity_range(canonical, preprocessing) if intensity is None else intensity
    size = int(preprocessing["input_size"])
    grid = inplane_grid(canonical, size)
    hu = resample(canonical, (canonical.shape[0], size, size), grid,
                  order=1,  # pragma: no mutate (resample's default; explicit: bilinear, as in training)
                  fill_value=float(preprocessing["fill_hu"]))
    if not low < high:
        hu[...] = 0.0
        return hu, grid
    return window(hu, (low, high)), grid
