"""Our Dice, HD and HD95 give the known answers on simple masks and agree with MONAI's
independent implementation (DiceMetric, compute_hausdorff_distance) on irregular ones; a case
with nothing predicted gets the largest distance of its scan."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from PancreasAILib.volume import Volume, make_ijk_to_ras
from segmentation_metrics import case_metrics, dice_coefficient, hausdorff_distance, hausdorff_distance_95

SPACING_KJI = (2.5, 0.7, 0.8)  # slices 2.5 mm apart, 0.7 x 0.8 mm pixels


def monai_dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    from monai.metrics import DiceMetric

    as_batch = lambda m: torch.from_numpy(m.astype(np.float32))[None, None]  # noqa: E731
    return float(DiceMetric(include_background=True, reduction="none")(as_batch(prediction), as_batch(reference)))


def monai_hausdorff(prediction: np.ndarray, reference: np.ndarray, spacing, percentile=None) -> float:
    """MONAI's symmetric Hausdorff distance: the maximum, or `percentile` of each direction."""
    from monai.metrics import compute_hausdorff_distance

    as_batch = lambda m: torch.from_numpy(m)[None, None]  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return float(compute_hausdorff_distance(as_batch(prediction), as_batch(reference), include_background=True,
                                                percentile=percentile, spacing=list(spacing)))


def monai_hd95(prediction: np.ndarray, reference: np.ndarray, spacing) -> float:
    return monai_hausdorff(prediction, reference, spacing, percentile=95)


def blob(seed: int, shape=(16, 40, 40)) -> np.ndarray:
    """An irregular, partly touching-the-border mask."""
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 2.5) > 0.5


def test_dice_of_half_overlapping_cubes_is_one_half():
    prediction, reference = np.zeros((20, 20, 20), bool), np.zeros((20, 20, 20), bool)
    reference[5:15, 5:15, 5:15] = True
    prediction[10:20, 5:15, 5:15] = True
    assert dice_coefficient(prediction, reference) == 0.5
    assert monai_dice(prediction, reference) == pytest.approx(0.5)


def test_hd95_of_parallel_plates_is_their_distance_in_mm():
    prediction, reference = np.zeros((12, 30, 30), bool), np.zeros((12, 30, 30), bool)
    reference[2] = True
    prediction[6] = True  # 4 slices of 2.5 mm further
    assert hausdorff_distance_95(prediction, reference, SPACING_KJI) == pytest.approx(10.0)
    assert monai_hd95(prediction, reference, SPACING_KJI) == pytest.approx(10.0)


def test_hd95_of_two_single_voxels_uses_the_spacing_of_each_axis():
    prediction, reference = np.zeros((5, 10, 10), bool), np.zeros((5, 10, 10), bool)
    reference[1, 2, 2] = True
    prediction[2, 2, 6] = True  # one slice (2.5 mm) and four columns (4 x 0.8 mm) apart
    expected = math.hypot(2.5, 3.2)
    assert hausdorff_distance_95(prediction, reference, SPACING_KJI) == pytest.approx(expected)
    assert monai_hd95(prediction, reference, SPACING_KJI) == pytest.approx(expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_and_hd95_agree_with_monai_on_irregular_masks(seed):
    prediction, reference = blob(seed), blob(seed + 100)
    assert dice_coefficient(prediction, reference) == pytest.approx(monai_dice(prediction, reference), abs=1e-6)
    ours = hausdorff_distance_95(prediction, reference, SPACING_KJI)
    assert ours == pytest.approx(monai_hd95(prediction, reference, SPACING_KJI), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd_agrees_with_monai_on_irregular_masks(seed):
    prediction, reference = blob(seed), blob(seed + 100)
    ours = hausdorff_distance(prediction, reference, SPACING_KJI)
    assert ours == pytest.approx(monai_hausdorff(prediction, reference, SPACING_KJI), rel=1e-5)
    assert ours > hausdorff_distance_95(prediction, reference, SPACING_KJI)  # the maximum, not a percentile


def test_hd_is_the_farthest_surface_voxel_which_hd95_leaves_out():
    prediction, reference = np.zeros((12, 30, 30), bool), np.zeros((12, 30, 30), bool)
    reference[2] = True
    prediction[2] = True
    prediction[10, 15, 15] = True  # one stray voxel 8 slices of 2.5 mm away, among 901 surface voxels
    assert hausdorff_distance(prediction, reference, SPACING_KJI) == pytest.approx(20.0)
    assert monai_hausdorff(prediction, reference, SPACING_KJI) == pytest.approx(20.0)
    assert hausdorff_distance_95(prediction, reference, SPACING_KJI) == 0.0


def test_identical_masks_have_dice_one_and_distances_zero():
    mask = blob(5)
    assert dice_coefficient(mask, mask) == 1.0
    assert hausdorff_distance(mask, mask, SPACING_KJI) == 0.0
    assert hausdorff_distance_95(mask, mask, SPACING_KJI) == 0.0


def test_distances_are_undefined_when_nothing_is_predicted():
    reference = blob(0)
    assert math.isnan(hausdorff_distance(np.zeros_like(reference), reference, SPACING_KJI))
    assert math.isnan(hausdorff_distance_95(np.zeros_like(reference), reference, SPACING_KJI))
    assert dice_coefficient(np.zeros_like(reference), reference) == 0.0


def test_dice_is_undefined_without_a_reference():
    assert math.isnan(dice_coefficient(blob(0), np.zeros((16, 40, 40), bool)))


def test_case_metrics_take_the_spacing_from_the_volume_geometry():
    reference, prediction = np.zeros((12, 30, 30), np.uint8), np.zeros((12, 30, 30), np.uint8)
    reference[2], prediction[6] = 1, 1
    ijk_to_ras = make_ijk_to_ras((0.8, 0.7, 2.5), origin=(10.0, -5.0, 100.0),
                                 direction=[[-1, 0, 0], [0, -1, 0], [0, 0, 1]])
    metrics = case_metrics(Volume(prediction, ijk_to_ras), Volume(reference, ijk_to_ras))
    assert metrics["hd_mm"] == pytest.approx(10.0)
    assert metrics["hd95_mm"] == pytest.approx(10.0)
    assert metrics["dice"] == 0.0
    assert metrics["reference_ml"] == pytest.approx(900 * 0.8 * 0.7 * 2.5 / 1000)


def test_surface_voxels_have_a_background_face_neighbour_outside_the_array_included():
    from segmentation_metrics import surface

    mask = np.zeros((3, 5, 5), bool)
    mask[:, 1:4, 1:4] = True  # a 3 x 3 x 3 cube touching the top and bottom of the array
    expected = mask.copy()
    expected[1, 2, 2] = False  # the centre: its six face-neighbours are in the cube
    assert np.array_equal(surface(mask), expected)
    cross = ndimage.generate_binary_structure(3, 1)  # a voxel and its six face-neighbours
    centre = np.zeros((3, 3, 3), bool)
    centre[1, 1, 1] = True
    assert np.array_equal(surface(np.pad(cross, 1)), np.pad(cross & ~centre, 1))  # diagonal background doesn't count


def test_bounding_box_is_the_smallest_box_holding_the_mask():
    from segmentation_metrics import _bounding_box

    mask = np.zeros((6, 7, 8), bool)
    mask[1, 2, 3] = mask[4, 2, 5] = True
    assert _bounding_box(mask) == (slice(1, 5), slice(2, 3), slice(3, 6))


def test_case_metrics_by_hand_on_a_row_of_voxels():
    """Reference: 4 voxels in a row along i (0.8 mm); prediction: its first 2. Distances reference ->
    prediction 0, 0, 0.8, 1.6 mm: the maximum is 1.6 mm, the 95th percentile interpolates
    0.8 + 0.85 x 0.8 = 1.48 mm."""
    reference, prediction = np.zeros((3, 3, 6), np.uint8), np.zeros((3, 3, 6), np.uint8)
    reference[1, 1, 1:5] = 1
    prediction[1, 1, 1:3] = 1
    ijk_to_ras = make_ijk_to_ras((0.8, 0.7, 2.5), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    metrics = case_metrics(Volume(prediction, ijk_to_ras), Volume(reference, ijk_to_ras))
    assert metrics["dice"] == pytest.approx(2 * 2 / 6)
    assert metrics["hd_mm"] == pytest.approx(1.6)
    assert metrics["hd95_mm"] == pytest.approx(1.48)
    assert metrics["reference_ml"] == pytest.approx(4 * 1.4 / 1000)
    assert metrics["predicted_ml"] == pytest.approx(2 * 1.4 / 1000)


def anisotropic_grid(shape=(12, 30, 40)):
    """An empty uint8 (K, J, I) array and an oblique-origin IJK-to-RAS with 0.8 x 0.7 x 2.5 mm voxels."""
    ijk_to_ras = make_ijk_to_ras((0.8, 0.7, 2.5), origin=(10.0, -5.0, 100.0),
                                 direction=[[-1, 0, 0], [0, -1, 0], [0, 0, 1]])
    return np.zeros(shape, np.uint8), ijk_to_ras


def test_nothing_predicted_gives_hd_and_hd95_the_diagonal_of_the_reference_grid():
    reference, ijk_to_ras = anisotropic_grid()
    reference[4:7, 10:20, 10:25] = 1
    metrics = case_metrics(Volume(np.zeros_like(reference), ijk_to_ras), Volume(reference, ijk_to_ras))
    diagonal = math.sqrt((11 * 2.5) ** 2 + (29 * 0.7) ** 2 + (39 * 0.8) ** 2)  # (n - 1) x spacing per axis
    assert metrics["empty_prediction"] is True
    assert metrics["hd_mm"] == pytest.approx(diagonal)
    assert metrics["hd95_mm"] == pytest.approx(diagonal)
    assert metrics["dice"] == 0.0


def test_a_prediction_is_not_flagged_empty_and_keeps_its_distances():
    reference, ijk_to_ras = anisotropic_grid()
    reference[4:7, 10:20, 10:25] = 1
    prediction = np.roll(reference, 1, axis=0)  # one slice (2.5 mm) further
    metrics = case_metrics(Volume(prediction, ijk_to_ras), Volume(reference, ijk_to_ras))
    assert metrics["empty_prediction"] is False
    assert metrics["hd_mm"] == pytest.approx(2.5)


def test_an_empty_reference_is_undefined_not_penalised():
    reference, ijk_to_ras = anisotropic_grid()
    for predicted in (np.zeros_like(reference), np.pad(np.ones((2, 2, 2), np.uint8), [(3, 7), (3, 25), (3, 35)])):
        metrics = case_metrics(Volume(predicted, ijk_to_ras), Volume(reference, ijk_to_ras))
        assert metrics["empty_prediction"] is False
        assert math.isnan(metrics["dice"]) and math.isnan(metrics["hd_mm"]) and math.isnan(metrics["hd95_mm"])
