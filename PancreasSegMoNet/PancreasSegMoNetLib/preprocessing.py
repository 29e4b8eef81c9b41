"""Slices exactly as MoNet saw them in training: canonical axial, 256 x 256, intensities in [0, 1].

Used by inference and by the training scripts (Resources/Training), so the two cannot drift.
The parameters come from the model card's "preprocessing" section. Its optional "modality" is
"CT" (the default: every card written before the key existed is a CT model) or "MR"; its
optional "intensity_scaling" says how the image's values become [0, 1]:

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
INTENSITY_SCALINGS = ("window", "volume_min_max", "volume_percentiles")
#: The values of the card's "modality"; the first is the default.
MODALITIES = ("CT", "MR")
#: The percentiles an MR model's intensities are scaled by unless its training said otherwise.
MR_PERCENTILES = (1.0, 99.0)
#: Voxels over which the percentiles of a larger volume are taken (an even subsample): the
#: percentiles of 512 x 512 x 600 voxels would take seconds and change in the fourth digit.
PERCENTILE_VOXELS = 8_000_000


def mr_preprocessing(input_size: int, percentiles=MR_PERCENTILES) -> dict:
    """The pre-processing section of an MR model's card."""
    return {"modality": "MR", "orientation": DEFAULT_PREPROCESSING["orientation"], "input_size": int(input_size),
            "intensity_scaling": "volume_percentiles", "percentiles": [float(p) for p in percentiles],
            "inplane_resampling": DEFAULT_PREPROCESSING["inplane_resampling"]}


def modality(preprocessing: dict) -> str:
    """The card's "modality", "CT" when it has none; an unknown one is refused."""
    value = preprocessing.get("modality", MODALITIES[0])
    if value not in MODALITIES:
        raise ModelFileError(f"The model card's pre-processing names the modality {value!r}; PancreasSegMoNet "
                             f"knows {' and '.join(MODALITIES)}. Correct the card.")
    return value


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
    kind = modality(preprocessing)
    scaling = intensity_scaling(preprocessing)
    needed = ("input_size", "percentiles") if scaling == "volume_percentiles" else ("input_size", "window_hu",
                                                                                     "fill_hu")
    missing = [key for key in needed if key not in preprocessing]
    if missing:
        raise ModelFileError(
            f"The model card's pre-processing lacks {', '.join(missing)}: without them the image cannot be "
            "prepared as the model saw it in training. Correct the card.")
    if kind == "MR" and scaling != "volume_percentiles":
        raise ModelFileError(
            f"The model card is for MR but scales intensities by {scaling!r}, a Hounsfield-unit rule; an MR model "
            "needs intensity_scaling 'volume_percentiles'. Correct the card.")
    if scaling == "volume_percentiles":
        _check_percentiles(preprocessing["percentiles"])
        return
    try:
        low, high = (float(value) for value in preprocessing["window_hu"])
    except (TypeError, ValueError) as error:
        raise ModelFileError(f"The model card's window_hu {preprocessing['window_hu']!r} is not two numbers "
                             "(the Hounsfield units shown black and white). Correct the card.") from error
    if not low < high:
        raise ModelFileError(
            f"The model card's window_hu [{low:g}, {high:g}] is empty: its first value, the Hounsfield "
            "units shown black, must lie below its second, those shown white. Correct the card.")


def _check_percentiles(percentiles) -> None:
    try:
        low, high = (float(value) for value in percentiles)
    except (TypeError, ValueError) as error:
        raise ModelFileError(f"The model card's percentiles {percentiles!r} are not two numbers (the "
                             "percentiles of the volume shown black and white). Correct the card.") from error
    if not 0.0 <= low < high <= 100.0:
        raise ModelFileError(f"The model card's percentiles [{low:g}, {high:g}] must rise within 0..100. "
                             "Correct the card.")


def volume_percentiles(array: np.ndarray, percentiles) -> tuple[float, float]:
    """The (low, high) percentiles of an array's values; an even subsample of at most
    PERCENTILE_VOXELS voxels when it is larger."""
    values = np.ravel(array)
    if values.size > PERCENTILE_VOXELS:
        values = values[::-(-values.size // PERCENTILE_VOXELS)]
    low, high = np.percentile(values, [float(p) for p in percentiles])
    return float(low), float(high)


def intensity_range(ct_or_canonical: Volume, preprocessing: dict) -> tuple[float, float]:
    """(low, high) image values that the model's input maps to 0 and 1.

    "volume_percentiles": the volume's own percentiles. "window": `window_hu` itself. "volume_min_max": the window narrowed to the range of the
    volume's own voxels (max(window low, volume min), min(window high, volume max)): the
    clipped volume's minimum and maximum. Take it over the whole CT (any orientation: the range
    does not depend on it), never over one slab, and never over resampled slices (whose fill
    outside the field of view is not part of the CT). A volume constant after clipping gives
    high <= low; `model_slices` then gives zeros where the authors' code stops on an assertion.
    """
    if intensity_scaling(preprocessing) == "volume_percentiles":
        return volume_percentiles(ct_or_canonical.array, preprocessing["percentiles"])
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
    """Canonical slab (K, J, I) of a CT (Hounsfield units) or an MR -> ((K, size, size) float32
    in [0, 1], IJK-to-RAS of that grid).

    intensity: the (low, high) values mapped to 0 and 1, `intensity_range` of the whole volume
    the slab belongs to; None computes it from `canonical`, right only when it is the whole
    volume. Values beyond the range, the fill outside the slice included (`fill_hu`, or the low
    end for a card without one), are clipped to it. An empty range (a constant volume) gives
    zeros.
    """
    low, high = intensity_range(canonical, preprocessing) if intensity is None else intensity
    size = int(preprocessing["input_size"])
    grid = inplane_grid(canonical, size)
    hu = resample(canonical, (canonical.shape[0], size, size), grid,
                  order=1,  # pragma: no mutate (resample's default; explicit: bilinear, as in training)
                  fill_value=float(preprocessing.get("fill_hu", low)))
    if not low < high:
        hu[...] = 0.0
        return hu, grid
    return window(hu, (low, high)), grid
