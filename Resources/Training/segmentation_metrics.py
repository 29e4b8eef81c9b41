"""Per-patient segmentation metrics: Dice, the Hausdorff distance (maximum, as the MoNet paper
reports it) and its 95th percentile (HD95), in mm.

Both distances follow MONAI's convention (compute_hausdorff_distance, percentile None and 95):
surface voxels are mask voxels with a background face-neighbour (outside the array counts as
background); for each surface voxel of one mask, the distance to the nearest surface voxel of
the other, in mm with the voxel spacing; the maximum (HD) or the 95th percentile with linear
interpolation (HD95) of each direction; the larger of the two. The tests check our numbers
against MONAI's.

A case with no pancreas predicted (and some in the reference) has no surface distance at all;
`case_metrics` gives it the largest distance possible in its scan, the diagonal of the
reference's voxel grid, as HD and HD95, so that a mean over cases counts it as the worst case
instead of leaving it out. A case without pancreas in its reference says nothing about
segmentation quality: its Dice and distances are NaN.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from PancreasAILib.volume import Volume


def dice_coefficient(prediction: np.ndarray, reference: np.ndarray) -> float:
    """2 |P and R| / (|P| + |R|) for two binary masks of one shape; NaN when the reference is
    empty (the case says nothing about segmentation quality)."""
    prediction, reference = np.asarray(prediction) > 0, np.asarray(reference) > 0
    reference_count = int(np.count_nonzero(reference))
    if reference_count == 0:
        return math.nan
    overlap = int(np.count_nonzero(prediction & reference))
    return 2.0 * overlap / (int(np.count_nonzero(prediction)) + reference_count)


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` with at least one background face-neighbour (bool, same shape).

    scipy's erosion defaults are exactly that: face-neighbour structure, outside = background."""
    return mask & ~ndimage.binary_erosion(mask)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box holding every True voxel of `mask`."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def directed_surface_distances(from_surface: np.ndarray, to_surface: np.ndarray,
                               spacing: Sequence[float]) -> np.ndarray:
    """For each True voxel of `from_surface`, the distance in mm to the nearest True voxel of
    `to_surface` (Euclidean distance transform with the voxel spacing along each array axis)."""
    distance_to_surface = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return distance_to_surface[from_surface]


def _symmetric_surface_distance(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                                statistic: Callable[[np.ndarray], float]) -> float:
    """The larger of `statistic` over the two directed surface distances (mm); NaN when either
    mask is empty."""
    prediction, reference = np.asarray(prediction) > 0, np.asarray(reference) > 0
    if not prediction.any() or not reference.any():
        return math.nan
    # Every surface voxel lies in the union's bounding box: working there is exact and small.
    box = _bounding_box(prediction | reference)
    prediction_surface, reference_surface = surface(prediction[box]), surface(reference[box])
    return float(max(statistic(directed_surface_distances(prediction_surface, reference_surface, spacing)),
                     statistic(directed_surface_distances(reference_surface, prediction_surface, spacing))))


def hausdorff_distance(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric Hausdorff distance in mm (the largest surface distance either way) between two
    binary masks; NaN when either is empty.

    spacing: voxel size in mm along each array axis, e.g. (sz, sy, sx) for a (K, J, I) array.
    """
    return _symmetric_surface_distance(prediction, reference, spacing, np.max)


def hausdorff_distance_95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95 % Hausdorff distance in mm between two binary masks; NaN when either is empty.

    spacing: voxel size in mm along each array axis, e.g. (sz, sy, sx) for a (K, J, I) array.
    """
    return _symmetric_surface_distance(prediction, reference, spacing, lambda d: np.percentile(d, 95))


def grid_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The largest distance between two voxel centres of a grid: sqrt(sum(((n - 1) * s)^2)) in mm.

    shape: voxels along each array axis, e.g. (K, J, I); spacing: mm along the same axes."""
    return float(math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing))))


def case_metrics(prediction: Volume, reference: Volume) -> dict:
    """Dice, HD and HD95 (mm) and both volumes (ml) of two label maps on the same grid (non-zero = in).

    empty_prediction: no pancreas predicted where the reference has some; HD and HD95 are then
    the diagonal of the reference's voxel grid (see the module), not NaN.
    """
    spacing_kji = tuple(float(s) for s in reference.spacing[::-1])
    voxel_ml = float(np.prod(reference.spacing)) / 1000.0
    predicted, truth = prediction.array > 0, reference.array > 0
    empty_prediction = bool(truth.any()) and not predicted.any()
    if empty_prediction:
        hd_mm = hd95_mm = grid_diagonal_mm(truth.shape, spacing_kji)
    else:
        hd_mm = hausdorff_distance(predicted, truth, spacing_kji)
        hd95_mm = hausdorff_distance_95(predicted, truth, spacing_kji)
    return {"dice": dice_coefficient(predicted, truth), "hd_mm": hd_mm, "hd95_mm": hd95_mm,
            "empty_prediction": empty_prediction,
            "reference_ml": int(np.count_nonzero(truth)) * voxel_ml,
            "predicted_ml": int(np.count_nonzero(predicted)) * voxel_ml}
