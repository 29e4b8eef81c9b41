"""The paper's optional MRI pre-processing: N4 bias-field correction, edge-preserving
smoothing and intensity standardisation across patients.

Each step takes a Volume and returns a float32 Volume on the same grid. Which steps run, and
with which parameters, is read from the model card's "preprocessing" entry, so a model is
always fed the way it was trained:

    "preprocessing": {
      ...grids.INPUT_FORMAT (slices, tile size, resize, normalisation: any of
         grids.NORMALISATIONS),
      "n4_bias_correction": {"shrink_factor": 4, "iterations": [50, 50, 30]},   (or absent: off)
      "smoothing": {"iterations": 5, "conductance": 1.0},                         (or absent: off)
      "standardisation": {"percentiles": [1, 10, ..., 99],
                          "t1_landmarks": [...], "t2_landmarks": [...]}          (or absent: off)
    }

All three are off for the demo model: N4 and the smoothing each take about 2-3 s on a
160 x 160 x 24 phantom on 2 CPU cores, so on the order of a minute on a full 512 x 512 x 80 MR.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from PancreasAILib.errors import ModelFileError
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import sitk_from_volume, volume_from_sitk

from .grids import INPUT_FORMAT, NORMALISATIONS

STEPS = ("n4_bias_correction", "smoothing", "standardisation")
#: Nyul-Udupa landmarks: intensity percentiles mapped onto a standard scale.
DEFAULT_PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)


def _sitk():
    import SimpleITK
    return SimpleITK


def _float_image(volume: Volume):
    return sitk_from_volume(Volume(np.asarray(volume.array, np.float32), volume.ijk_to_ras))


def _volume_like(image, volume: Volume) -> Volume:
    array = volume_from_sitk(image).array.astype(np.float32)
    return Volume(array, volume.ijk_to_ras)


def n4_bias_correction(volume: Volume, options: dict) -> Volume:
    """Remove the slowly varying coil shading (N4, on an Otsu body mask).

    options: shrink_factor (default 4; the field is estimated on a downsampled image and
    applied at full resolution; 1 or less: estimated at full resolution), iterations per
    fitting level (default [50, 50, 30]), convergence (default 1e-3).
    """
    sitk = _sitk()
    image = _float_image(volume)
    # Shrink by 1 leaves the image as it is, so "1 or less" needs no branch of its own.
    factors = [max(1, int(options.get("shrink_factor", 4)))] * image.GetDimension()
    iterations = [int(n) for n in options.get("iterations", [50, 50, 30])]
    mask = sitk.OtsuThreshold(image, 0, 1, 200)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(iterations)
    corrector.SetConvergenceThreshold(float(options.get("convergence", 1e-3)))
    corrector.Execute(sitk.Shrink(image, factors), sitk.Shrink(mask, factors))
    log_bias = corrector.GetLogBiasFieldAsImage(image)
    return _volume_like(image / sitk.Exp(log_bias), volume)


def edge_preserving_smoothing(volume: Volume, options: dict) -> Volume:
    """Curvature anisotropic diffusion: smooths within tissues, keeps their edges.

    options: iterations (default 5), conductance (default 1.0), time_step (default the
    stable limit for 3D: smallest spacing / 16, at most ITK's 0.0625).
    """
    sitk = _sitk()
    image = _float_image(volume)
    stable_step = min(0.0625, float(np.min(volume.spacing)) / 16.0)
    return _volume_like(sitk.CurvatureAnisotropicDiffusion(
        image,
        timeStep=float(options.get("time_step", stable_step)),
        conductanceParameter=float(options.get("conductance", 1.0)),
        numberOfIterations=int(options.get("iterations", 5))), volume)


def intensity_landmarks(array: np.ndarray, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """Intensities at `percentiles` of the voxels above the mean (the foreground, Nyul-Udupa)."""
    values = np.asarray(array, np.float64).ravel()
    foreground = values[values > values.mean()]
    return np.percentile(foreground if foreground.size else values, percentiles)


def standardise_intensities(volume: Volume, percentiles: Sequence[float],
                            landmarks: Sequence[float]) -> Volume:
    """Piecewise-linear map of this volume's percentile landmarks onto the standard `landmarks`.

    Intensities beyond the outer landmarks continue along the outer segments' slopes.
    """
    source = intensity_landmarks(volume.array, percentiles)
    target = np.asarray(landmarks, float)  # pragma: no mutate (interp and the slopes promote ints to float anyway)
    if len(source) != len(target):
        raise ModelFileError("The model card's standardisation landmarks and percentiles differ in number.")
    # Strictly increasing source landmarks keep the map invertible on flat histograms.
    source = np.maximum.accumulate(source + np.arange(len(source)) * 1e-9)
    # float64: with NumPy 1 casting, float32 voxels minus a float64 landmark stayed float32
    values = np.asarray(volume.array, np.float64)  # pragma: no mutate (NumPy 2 promotes anyway)
    mapped = np.interp(values, source, target)
    low_slope = (target[1] - target[0]) / (source[1] - source[0])
    high_slope = (target[-1] - target[-2]) / (source[-1] - source[-2])
    # The outer segments continue the interpolation's first and last pieces, so "<" or "<=",
    # and source[0] or source[1] as the bound, give the same values (likewise at the top).
    mapped = np.where(values < source[0], target[0] + (values - source[0]) * low_slope, mapped)  # pragma: no mutate
    mapped = np.where(values > source[-1], target[-1] + (values - source[-1]) * high_slope, mapped)  # pragma: no mutate
    return Volume(mapped.astype(np.float32), volume.ijk_to_ras)


def check_preprocessing(options: dict) -> None:
    """Refuse a card whose pre-processing this version cannot reproduce: every input-format
    entry must be `INPUT_FORMAT`'s, except "normalisation", which may be any of `NORMALISATIONS`."""
    for key, value in INPUT_FORMAT.items():
        allowed = NORMALISATIONS if key == "normalisation" else (value,)
        if key in options and options[key] not in allowed:
            raise ModelFileError(
                f"The model was trained with {key} = {options[key]!r}; this version of IPMNRisk builds "
                f"its input with {' or '.join(map(repr, allowed))} and cannot reproduce it.")
    for step in STEPS:
        value = options.get(step)
        if value not in (None, False) and not isinstance(value, dict):
            raise ModelFileError(f"The model card's preprocessing '{step}' must be an object or false.")
    standard = options.get("standardisation")
    if isinstance(standard, dict):
        missing = [key for key in ("percentiles", "t1_landmarks", "t2_landmarks") if key not in standard]
        if missing:
            raise ModelFileError(f"The model card's standardisation lacks {', '.join(missing)}.")


def preprocess_volume(volume: Volume, options: dict, modality: str) -> Volume:
    """Run the steps `options` enables, in the paper's order; modality is 't1' or 't2'.

    Returns `volume` itself when no step is enabled.
    """
    check_preprocessing(options)
    if options.get("n4_bias_correction"):
        volume = n4_bias_correction(volume, options["n4_bias_correction"])
    if options.get("smoothing"):
        volume = edge_preserving_smoothing(volume, options["smoothing"])
    standard = options.get("standardisation")
    if standard:
        volume = standardise_intensities(volume, standard["percentiles"], standard[f"{modality}_landmarks"])
    return volume
