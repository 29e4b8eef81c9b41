"""The paper's optional MRI pre-processing (N4, edge-preserving smoothing, standardisation)."""

import numpy as np
import pytest

from PancreasAILib.errors import ModelFileError
from PancreasAILib.volume import Volume, make_ijk_to_ras
from IPMNRiskLib.grids import INPUT_FORMAT
from IPMNRiskLib.preprocessing import (DEFAULT_PERCENTILES, edge_preserving_smoothing, fit_standard_scale,
                                       n4_bias_correction, preprocess_volume,
                                       standardise_intensities)

GEOMETRY = make_ijk_to_ras((1.5, 1.5, 3.0), origin=(10, -5, 20))


def disc_phantom(shading_strength=0.0, noise=4.0, seed=0):
    """(10, 32, 32): a bright disc on a dark background, optionally shaded left to right."""
    z, y, x = np.mgrid[0:10, 0:32, 0:32]
    tissue = np.where((x - 16) ** 2 + (y - 16) ** 2 < 150, 400.0, 20.0)
    shading = np.exp(shading_strength * (x - 16) / 16)
    noisy = tissue * shading + np.random.default_rng(seed).normal(0, noise, tissue.shape)
    return Volume(noisy.astype(np.float32), GEOMETRY), tissue > 100, x


def right_to_left_ratio(array, inside, x):
    return array[inside & (x > 20)].mean() / array[inside & (x < 12)].mean()


def test_n4_flattens_a_smooth_shading_across_the_tissue():
    volume, inside, x = disc_phantom(shading_strength=0.4)
    corrected = n4_bias_correction(volume, {"shrink_factor": 2, "iterations": [20, 20]})
    assert right_to_left_ratio(volume.array, inside, x) > 1.4
    assert abs(right_to_left_ratio(corrected.array, inside, x) - 1.0) < 0.05


def test_n4_keeps_the_grid():
    volume, _, _ = disc_phantom(shading_strength=0.4)
    corrected = n4_bias_correction(volume, {"shrink_factor": 2, "iterations": [5]})
    assert corrected.shape == volume.shape and corrected.array.dtype == np.float32
    np.testing.assert_allclose(corrected.ijk_to_ras, volume.ijk_to_ras)


def test_smoothing_removes_noise_inside_tissue_but_keeps_the_edge():
    volume, inside, x = disc_phantom(noise=20.0)
    smoothed = edge_preserving_smoothing(volume, {"iterations": 5, "conductance": 1.0}).array
    assert smoothed[inside].std() < 0.7 * volume.array[inside].std()
    # the step from background (x = 3) into the disc (x = 4) survives; a Gaussian blur of
    # sigma 1 voxel would leave less than half of it
    row = smoothed[5, 16]
    assert row[4] - row[3] > 0.9 * (400 - 20)


def test_standardisation_maps_the_landmarks_onto_the_standard_scale():
    rng = np.random.default_rng(1)
    training = [rng.gamma(3.0, scale, (8, 16, 16)) for scale in (50.0, 120.0, 300.0)]
    landmarks = fit_standard_scale(training)
    assert landmarks[0] == pytest.approx(0.0) and landmarks[-1] == pytest.approx(100.0)
    new_patient = Volume(rng.gamma(3.0, 700.0, (8, 16, 16)), GEOMETRY)
    standardised = standardise_intensities(new_patient, DEFAULT_PERCENTILES, landmarks).array
    # the map is increasing, so the foreground's percentiles land on the standard landmarks
    foreground = new_patient.array > new_patient.array.mean()
    percentiles = np.percentile(standardised[foreground], DEFAULT_PERCENTILES)
    np.testing.assert_allclose(percentiles, landmarks, atol=0.5)


def test_preprocessing_with_every_step_off_returns_the_input():
    volume, _, _ = disc_phantom()
    assert preprocess_volume(volume, {}, "t2") is volume
    assert preprocess_volume(volume, {"n4_bias_correction": False, "smoothing": None}, "t2") is volume


def test_preprocessing_runs_the_enabled_steps_with_the_modality_s_landmarks():
    volume, _, _ = disc_phantom()
    options = {"smoothing": {"iterations": 2},
               "standardisation": {"percentiles": [1, 50, 99], "t1_landmarks": [0, 10, 20],
                                   "t2_landmarks": [0, 500, 1000]}}
    out = preprocess_volume(volume, options, "t2")
    assert out.array.max() > 900  # the T2 scale, not T1's
    out = preprocess_volume(volume, options, "t1")
    assert 10 < out.array.max() < 100  # the T1 scale (0 .. 20, a little beyond), not T2's


def test_t1_and_t2_are_each_standardised_onto_their_own_landmarks():
    # intensities 0 .. 999: the foreground (above the mean 499.5) is 500 .. 999, so its 0th,
    # 50th and 100th percentiles are 500, 749.5 and 999
    volume = Volume(np.arange(1000, dtype=np.float32).reshape(10, 10, 10), GEOMETRY)
    options = {"standardisation": {"percentiles": [0, 50, 100], "t1_landmarks": [0, 10, 20],
                                   "t2_landmarks": [100, 400, 1000]}}
    values = volume.array.astype(float)
    t1 = preprocess_volume(volume, options, "t1").array
    # T1: 500 -> 0, 749.5 -> 10, 999 -> 20, both segments of slope 10 / 249.5 (and beyond)
    np.testing.assert_allclose(t1, (values - 500) * 10 / 249.5, atol=1e-3)
    t2 = preprocess_volume(volume, options, "t2").array
    # T2: 500 -> 100, 749.5 -> 400, 999 -> 1000; slope 300 / 249.5 below 749.5, 600 / 249.5 above
    expected_t2 = np.where(values <= 749.5, 100 + (values - 500) * 300 / 249.5,
                           400 + (values - 749.5) * 600 / 249.5)
    np.testing.assert_allclose(t2, expected_t2, atol=1e-2)


def test_a_card_with_incomplete_standardisation_is_refused():
    volume, _, _ = disc_phantom()
    with pytest.raises(ModelFileError, match="t2_landmarks"):
        preprocess_volume(volume, {"standardisation": {"percentiles": [1, 99], "t1_landmarks": [0, 1]}}, "t1")


def test_a_card_built_with_another_input_format_is_refused():
    volume, _, _ = disc_phantom()
    with pytest.raises(ModelFileError, match="normalisation"):
        preprocess_volume(volume, {"normalisation": "whole_volume_min_max"}, "t1")


def test_a_card_recording_this_input_format_is_accepted():
    volume, _, _ = disc_phantom()
    assert preprocess_volume(volume, dict(INPUT_FORMAT), "t1") is volume


def test_preprocessing_runs_n4_when_the_card_asks_for_it():
    volume, inside, x = disc_phantom(shading_strength=0.4)
    corrected = preprocess_volume(volume, {"n4_bias_correction": {"shrink_factor": 2, "iterations": [20, 20]}}, "t1")
    assert abs(right_to_left_ratio(corrected.array, inside, x) - 1.0) < 0.05


def test_intensities_beyond_the_outer_landmarks_continue_along_the_outer_segments():
    # intensities 0 .. 999: the foreground is 500 .. 999; its 10th, 50th and 90th percentiles
    # are 549.9, 749.5 and 949.1
    volume = Volume(np.arange(1000, dtype=np.float32).reshape(10, 10, 10), GEOMETRY)
    values = volume.array.astype(float)
    mapped = standardise_intensities(volume, [10, 50, 90], [0.0, 100.0, 400.0]).array
    low_slope, high_slope = 100.0 / (749.5 - 549.9), 300.0 / (949.1 - 749.5)
    expected = np.where(values < 749.5, (values - 549.9) * low_slope, 100.0 + (values - 749.5) * high_slope)
    np.testing.assert_allclose(mapped, expected, rtol=1e-5, atol=1e-3)


def test_a_flat_image_is_standardised_without_failing():
    volume = Volume(np.full((4, 8, 8), 7.0, np.float32), GEOMETRY)
    mapped = standardise_intensities(volume, [1, 50, 99], [0.0, 50.0, 100.0]).array
    assert np.all(np.isfinite(mapped))


def test_the_standard_scale_runs_between_the_given_ends():
    rng = np.random.default_rng(2)
    landmarks = fit_standard_scale([rng.gamma(3.0, 100.0, (8, 16, 16)) for _ in range(2)], scale=(10.0, 20.0))
    assert landmarks[0] == pytest.approx(10.0) and landmarks[-1] == pytest.approx(20.0)
    assert np.all(np.diff(landmarks) > 0)


@pytest.mark.parametrize("step", ["n4_bias_correction", "smoothing", "standardisation"])
def test_a_card_whose_step_is_neither_an_object_nor_false_is_refused(step):
    volume, _, _ = disc_phantom()
    with pytest.raises(ModelFileError, match=step):
        preprocess_volume(volume, {step: "yes"}, "t1")
