"""The paper's optional MRI pre-processing (N4, edge-preserving smoothing, standardisation)."""

import numpy as np
import pytest

from PancreasAILib.errors import ModelFileError
from PancreasAILib.volume import Volume, make_ijk_to_ras
from PancreasAILib.volume_io import sitk_from_volume
from IPMNRiskLib.grids import INPUT_FORMAT, NORMALISATIONS, input_format
from IPMNRiskLib.preprocessing import (DEFAULT_PERCENTILES, check_preprocessing, edge_preserving_smoothing,
                                       intensity_landmarks, n4_bias_correction, preprocess_volume,
                                       standardise_intensities)
from ipmn_data import fit_standard_scale

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


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
def test_a_card_normalised_over_the_crop_stack_or_the_whole_volume_is_accepted(normalisation):
    check_preprocessing(input_format(normalisation))
    check_preprocessing({"normalisation": normalisation})


def test_a_card_with_another_normalisation_is_refused_naming_both_known_ones():
    with pytest.raises(ModelFileError, match=r"normalisation = 'z_score'.*'crop_stack_min_max' or 'volume_min_max'"):
        check_preprocessing({**INPUT_FORMAT, "normalisation": "z_score"})


def test_a_card_normalised_over_the_whole_volume_must_still_match_the_rest_of_the_input_format():
    with pytest.raises(ModelFileError, match="tile_size = 32"):
        check_preprocessing({**input_format("volume_min_max"), "tile_size": 32})


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


# --- Each step equals SimpleITK called directly with the documented parameters -------------
# (N4: Otsu body mask with 200 bins, shrink factor 4, iterations [50, 50, 30], convergence 1e-3;
# smoothing: curvature anisotropic diffusion, 5 iterations, conductance 1, time step
# min(smallest spacing / 16, 0.0625).)

@pytest.fixture
def one_itk_thread():
    """N4 on a tiny volume is several times faster (and steadier) on one thread on a busy machine."""
    import SimpleITK as sitk
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def shaded_body(noise=5.0, spacing=(1.5, 1.5, 3.0), seed=3):
    """(12, 24, 24): a bright body on a darker background under a smooth multiplicative field."""
    z, y, x = np.mgrid[0:12, 0:24, 0:24]
    tissue = np.where((x - 12) ** 2 + (y - 12) ** 2 < 80, 300.0, 60.0)
    tissue = tissue + np.random.default_rng(seed).normal(0, noise, tissue.shape)
    field = np.exp(0.4 * (x - 12) / 12 + 0.2 * (z - 6) / 6)
    direction = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])  # oblique
    return Volume((tissue * field).astype(np.float32), make_ijk_to_ras(spacing, (10, -5, 20), direction))


def n4_reference(volume, shrink, iterations, convergence):
    import SimpleITK as sitk
    image = sitk_from_volume(Volume(volume.array.astype(np.float32), volume.ijk_to_ras))
    mask = sitk.OtsuThreshold(image, 0, 1, 200)  # 1 above the Otsu threshold: the body
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(iterations)
    corrector.SetConvergenceThreshold(convergence)
    if shrink > 1:
        image_to_fit, mask_to_fit = sitk.Shrink(image, [shrink] * 3), sitk.Shrink(mask, [shrink] * 3)
    else:
        image_to_fit, mask_to_fit = image, mask
    corrector.Execute(image_to_fit, mask_to_fit)
    field = sitk.GetArrayFromImage(sitk.Exp(corrector.GetLogBiasFieldAsImage(image)))
    return volume.array / field


def smoothing_reference(volume, time_step, conductance, iterations):
    import SimpleITK as sitk
    image = sitk_from_volume(Volume(volume.array.astype(np.float32), volume.ijk_to_ras))
    return sitk.GetArrayFromImage(sitk.CurvatureAnisotropicDiffusion(
        image, timeStep=time_step, conductanceParameter=conductance, numberOfIterations=iterations))


def assert_same_volume(out, expected_array, volume):
    assert out.array.dtype == np.float32 and out.shape == volume.shape
    assert np.all(np.isfinite(out.array))
    np.testing.assert_array_equal(out.ijk_to_ras, volume.ijk_to_ras)  # spacing, origin, direction kept
    np.testing.assert_allclose(out.array, expected_array, rtol=1e-5, atol=1e-3)


def test_n4_defaults_are_shrink_4_and_50_50_30_iterations_on_an_otsu_mask(one_itk_thread):
    volume = shaded_body()
    assert_same_volume(n4_bias_correction(volume, {}), n4_reference(volume, 4, [50, 50, 30], 1e-3), volume)


def test_n4_runs_every_default_iteration_when_convergence_is_zero(one_itk_thread):
    volume = shaded_body()
    assert_same_volume(n4_bias_correction(volume, {"convergence": 0.0}),
                       n4_reference(volume, 4, [50, 50, 30], 0.0), volume)


def test_n4_uses_the_card_s_shrink_factor_iterations_and_convergence(one_itk_thread):
    # a noisy body: which voxels the Otsu mask takes depends on its number of bins
    volume = shaded_body(noise=40.0)
    full_resolution = n4_reference(volume, 1, [8, 4], 1e-6)
    for shrink in (1, 0):  # 1 or less: the field is fitted at full resolution
        options = {"shrink_factor": shrink, "iterations": [8, 4], "convergence": 1e-6}
        assert_same_volume(n4_bias_correction(volume, options), full_resolution, volume)
    options = {"shrink_factor": 2, "iterations": [6], "convergence": 1e-6}
    assert_same_volume(n4_bias_correction(volume, options), n4_reference(volume, 2, [6], 1e-6), volume)


def test_n4_accepts_an_integer_volume(one_itk_thread):
    # DICOM MR is usually int16; SimpleITK's N4 only takes real pixels
    volume = shaded_body()
    as_int = Volume(np.round(volume.array).astype(np.int16), volume.ijk_to_ras)
    options = {"shrink_factor": 2, "iterations": [5]}
    assert_same_volume(n4_bias_correction(as_int, options),
                       n4_reference(as_int, 2, [5], 1e-3), as_int)


def test_smoothing_defaults_use_the_stable_time_step_of_a_fine_grid():
    volume = shaded_body(noise=30.0, spacing=(0.7, 0.8, 2.0))  # stable step 0.7 / 16 < 0.0625
    assert_same_volume(edge_preserving_smoothing(volume, {}),
                       smoothing_reference(volume, 0.7 / 16, 1.0, 5), volume)


def test_smoothing_time_step_is_at_most_itk_s_default_on_a_coarse_grid():
    volume = shaded_body(noise=30.0, spacing=(1.5, 1.5, 3.0))  # 1.5 / 16 > 0.0625
    assert_same_volume(edge_preserving_smoothing(volume, {}),
                       smoothing_reference(volume, 0.0625, 1.0, 5), volume)


def test_smoothing_uses_the_card_s_iterations_conductance_and_time_step():
    volume = shaded_body(noise=30.0, spacing=(0.7, 0.8, 2.0))
    options = {"iterations": 2, "conductance": 2.5, "time_step": 0.02}
    assert_same_volume(edge_preserving_smoothing(volume, options),
                       smoothing_reference(volume, 0.02, 2.5, 2), volume)


def test_smoothing_accepts_an_integer_volume():
    volume = shaded_body(noise=30.0)
    as_int = Volume(np.round(volume.array).astype(np.int16), volume.ijk_to_ras)
    assert_same_volume(edge_preserving_smoothing(as_int, {"iterations": 2}),
                       smoothing_reference(as_int, 0.0625, 1.0, 2), as_int)


# --- Nyul-Udupa landmarks and the standard scale ---------------------------------------------

def test_landmarks_are_taken_from_the_voxels_strictly_above_the_mean():
    # mean 5: the foreground is the two 10s only, not the 5s equal to the mean
    np.testing.assert_array_equal(intensity_landmarks(np.array([0.0, 0, 5, 5, 10, 10]), [0, 100]), [10, 10])


def test_the_foreground_of_a_float32_volume_is_taken_against_its_exact_mean():
    # intensities 1, 2 and 3 float32 steps above 1: the exact mean is 1.6 steps above 1 (a
    # float32 sum would round it to 2 steps and lose the voxel at 2 steps)
    step = 2.0 ** -23
    array = (1 + np.array([2, 3, 0, 0, 3]) * step).astype(np.float32)
    marks = intensity_landmarks(array, [0, 100])
    assert marks.dtype == np.float64
    np.testing.assert_array_equal(marks, [1 + 2 * step, 1 + 3 * step])


def test_the_standard_scale_uses_the_given_percentiles_of_each_volume():
    # 0 .. 999: the foreground 500 .. 999 is uniform, so each percentile maps onto itself
    volume = np.arange(1000.0).reshape(10, 10, 10)
    np.testing.assert_allclose(fit_standard_scale([volume, 3 * volume + 50], [0, 10, 100]), [0, 10, 100])


def test_the_standard_scale_does_not_depend_on_the_intensity_unit():
    # volumes already normalised to [0, 1] (or smaller) get the same standard landmarks
    rng = np.random.default_rng(5)
    training = [rng.gamma(3.0, 100.0, (8, 16, 16)) for _ in range(2)]
    np.testing.assert_allclose(fit_standard_scale([a / 5000.0 for a in training]), fit_standard_scale(training),
                               atol=1e-9)


def test_standardised_volume_is_float32_on_the_same_grid():
    volume, _, _ = disc_phantom()
    out = standardise_intensities(volume, [1, 50, 99], [0.0, 50.0, 100.0])
    assert out.array.dtype == np.float32
    np.testing.assert_array_equal(out.ijk_to_ras, volume.ijk_to_ras)


def test_a_two_valued_image_is_standardised_to_finite_values():
    # the foreground is flat (every landmark 100) while the background lies below it; how far
    # below the background lands is not pinned (the first segment is nearly vertical), only
    # that it stays a number
    volume = Volume(np.repeat([0.0, 100.0], 128).reshape(4, 8, 8).astype(np.float32), GEOMETRY)
    mapped = standardise_intensities(volume, [1, 50, 99], [0.0, 50.0, 100.0]).array
    assert np.all(np.isfinite(mapped))
