"""The slice grids of the IPMN ViT: which slices, where their pixels are, how they tile."""

import numpy as np
import pytest

from PancreasAILib.errors import InputError
from PancreasAILib.resample import resample
from PancreasAILib.volume import Volume, make_ijk_to_ras
from IPMNRiskLib.grids import (DIHEDRAL_VIEWS, INPUT_FORMAT, NORMALISATIONS, CropBox, RegionBox, _box_with_margin,
                               central_window, crop_box_for_region, crop_box_stack, heat_stack, input_format,
                               make_input, normalise_volume, patch_map_to_slices, crop_stacks, plan_crop, same_grid,
                               slice_window_starts, tile_grid, transform_tiles, undo_transform_tiles, untile_grid)


def numbered_slices(n=9, size=64):
    """Slice s is filled with the value s."""
    return np.arange(n, dtype=float)[:, None, None] * np.ones((n, size, size))


def oblique_direction(degrees):
    """Canonical LPS axes rotated about R by `degrees`."""
    a = np.radians(degrees)
    rotation = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    return rotation @ np.diag([-1.0, -1.0, 1.0])


# --- which slices --------------------------------------------------------------------------------

def test_tiles_are_filled_row_by_row_from_the_top_left():
    grid = tile_grid(numbered_slices())
    assert grid.shape == (192, 192)
    for n in range(9):
        row, col = divmod(n, 3)
        assert np.all(grid[row * 64:(row + 1) * 64, col * 64:(col + 1) * 64] == n)


def test_untile_is_the_inverse_of_tile():
    slices = np.random.default_rng(0).random((9, 64, 64))
    np.testing.assert_array_equal(untile_grid(tile_grid(slices)), slices)


def test_tiles_must_be_nine_square_slices():
    with pytest.raises(ValueError, match="expected"):
        tile_grid(np.zeros((9, 4, 5)))
    with pytest.raises(ValueError, match="expected"):
        tile_grid(np.zeros((8, 4, 4)))


def test_only_a_square_grid_of_three_by_three_tiles_can_be_untiled():
    with pytest.raises(ValueError, match="square grid"):
        untile_grid(np.zeros((6, 9)))
    with pytest.raises(ValueError, match="square grid"):
        untile_grid(np.zeros((10, 10)))


def test_central_window_starts_at_half_the_slices_minus_four():
    np.testing.assert_array_equal(central_window(20), np.arange(6, 15))
    np.testing.assert_array_equal(central_window(9), np.arange(9))
    np.testing.assert_array_equal(central_window(10), np.arange(1, 10))


def test_a_short_stack_repeats_its_last_slice():
    np.testing.assert_array_equal(central_window(5), [0, 1, 2, 3, 4, 4, 4, 4, 4])
    np.testing.assert_array_equal(central_window(1), [0] * 9)


def test_sliding_windows_start_at_every_slice_that_leaves_nine():
    assert slice_window_starts(12) == [0, 1, 2, 3]
    assert slice_window_starts(9) == [0]
    assert slice_window_starts(4) == [0]


def test_a_single_slice_stack_gives_one_window():
    assert slice_window_starts(1) == [0]


def test_central_window_of_another_length_is_centred_the_same_way():
    # start = 10 // 2 - 3 // 2 = 4
    np.testing.assert_array_equal(central_window(10, k=3), [4, 5, 6])


# --- intensities ----------------------------------------------------------------------------------

def test_normalised_volume_spans_zero_to_one():
    array = np.random.default_rng(1).normal(300, 80, (5, 20, 20))
    normalised = normalise_volume(array)
    assert normalised.dtype == np.float32
    assert normalised.min() == 0.0 and normalised.max() == pytest.approx(1.0)


def test_normalisation_equals_z_score_then_min_max():
    array = np.random.default_rng(2).gamma(2.0, 50.0, (4, 16, 16))
    z = (array - array.mean()) / array.std()
    expected = (z - z.min()) / (z.max() - z.min())
    np.testing.assert_allclose(normalise_volume(array), expected, atol=1e-6)


def test_normalisation_can_ignore_pixels_outside_the_scan():
    array = np.array([[[0.0, 50.0, 150.0, 250.0]]])  # the first pixel lies outside the scan
    valid = np.array([[[False, True, True, True]]])
    np.testing.assert_allclose(normalise_volume(array, valid), [[[0.0, 0.0, 0.5, 1.0]]])


def test_normalising_a_constant_volume_gives_zeros():
    assert np.all(normalise_volume(np.full((3, 8, 8), 7.0)) == 0)


def test_normalisation_is_computed_in_double_precision_and_rounded_once():
    array = (np.random.default_rng(7).random(200) * 1000 + 100).astype(np.float32)
    exact = array.astype(np.float64)
    expected = ((exact - exact.min()) / (exact.max() - exact.min())).astype(np.float32)
    np.testing.assert_array_equal(normalise_volume(array), expected)


def test_normalisation_accepts_a_zero_one_mask_as_valid_pixels():
    array = np.array([[[0.0, 50.0, 150.0, 250.0]]])
    valid = np.array([[[0, 1, 1, 1]]], np.uint8)
    np.testing.assert_allclose(normalise_volume(array, valid), [[[0.0, 0.0, 0.5, 1.0]]])


def test_a_stack_without_valid_pixels_normalises_to_float32_zeros():
    normalised = normalise_volume(np.arange(12.0).reshape(1, 3, 4), np.zeros((1, 3, 4), bool))
    assert normalised.shape == (1, 3, 4) and normalised.dtype == np.float32
    assert np.all(normalised == 0)


def test_a_constant_stack_normalises_to_float32_zeros_of_its_shape():
    normalised = normalise_volume(np.full((3, 8, 5), 7.0))
    assert normalised.shape == (3, 8, 5) and normalised.dtype == np.float32


def test_input_refuses_a_t2_stack_of_the_wrong_shape():
    with pytest.raises(ValueError, match="expected two"):
        make_input(numbered_slices(), numbered_slices(size=32))


def test_input_stacks_t1_grid_then_t2_grid():
    t1, t2 = numbered_slices(), 10 + numbered_slices()
    x = make_input(t1, t2)
    assert x.shape == (2, 192, 192) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], tile_grid(t1))
    np.testing.assert_array_equal(x[1], tile_grid(t2))


# --- where: region, crop box, stack geometry -------------------------------------------------------

def test_crop_box_holds_the_voxels_whose_centres_are_inside_the_region():
    volume = Volume(np.zeros((10, 40, 40)), make_ijk_to_ras((1.0, 1.0, 2.0)))
    # centres at i = 5..14 (x 5..14 mm), j = 10..19, k = 2..4 (z 4..8 mm)
    box = crop_box_for_region(volume, RegionBox((9.5, 14.5, 6.0), (10.0, 10.0, 5.0)))
    assert box == CropBox((5, 10, 2), (15, 20, 5))


def test_crop_box_is_clipped_to_the_volume():
    volume = Volume(np.zeros((10, 40, 40)), make_ijk_to_ras((1.0, 1.0, 1.0)))
    box = crop_box_for_region(volume, RegionBox((0.0, 0.0, 0.0), (20.0, 20.0, 20.0)))
    assert box == CropBox((0, 0, 0), (11, 11, 10))


def test_a_region_outside_the_volume_is_refused():
    volume = Volume(np.zeros((10, 40, 40)), make_ijk_to_ras((1.0, 1.0, 1.0)))
    with pytest.raises(InputError, match="outside the T2 volume"):
        crop_box_for_region(volume, RegionBox((200.0, 0.0, 0.0), (20.0, 20.0, 20.0)), "T2 volume")


def test_region_edges_on_voxel_centres_include_those_voxels():
    volume = Volume(np.zeros((10, 40, 40)), make_ijk_to_ras((1.0, 1.0, 2.0)))
    # x 5..15 mm, y 10..20 mm, z 4..12 mm: the edges are the centres of i 5 and 15, j 10 and 20, k 2 and 6
    box = crop_box_for_region(volume, RegionBox((10.0, 15.0, 8.0), (10.0, 10.0, 8.0)))
    assert box == CropBox((5, 10, 2), (16, 21, 7))


def test_a_region_outside_says_where_it_is_and_names_the_t2_volume_by_default():
    volume = Volume(np.zeros((10, 40, 40)), make_ijk_to_ras((1.0, 1.0, 1.0)))
    with pytest.raises(InputError, match=r"centre RAS 200\.0, 0\.0, -5\.0 mm.* outside the T2 volume"):
        crop_box_for_region(volume, RegionBox((200.0, 0.0, -5.0), (20.0, 20.0, 20.0)))


def test_a_region_between_two_slices_holds_no_voxel_and_is_refused():
    volume = Volume(np.zeros((10, 40, 40)), make_ijk_to_ras((1.0, 1.0, 2.0)))
    with pytest.raises(InputError, match="outside the T2 volume"):
        crop_box_for_region(volume, RegionBox((10.0, 10.0, 5.0), (10.0, 10.0, 1.0)))  # z 4.5..5.5 mm


def test_region_coordinates_become_tuples_of_floats():
    region = RegionBox(np.array([[1, 2, 3]]), np.array([[4], [5], [6]]))
    assert type(region.center_ras) is tuple and type(region.size_mm) is tuple
    assert region.center_ras == (1.0, 2.0, 3.0) and region.size_mm == (4.0, 5.0, 6.0)
    assert all(type(v) is float for v in region.center_ras + region.size_mm)


@pytest.mark.parametrize("center, size", [((np.nan, 0.0, 0.0), (10.0, 10.0, 10.0)),
                                          ((0.0, 0.0, 0.0), (10.0, np.nan, 10.0)),
                                          ((0.0, 0.0, 0.0), (10.0, 10.0, np.inf)),
                                          ((None, 0.0, 0.0), (10.0, 10.0, 10.0)),
                                          ((0.0, 0.0, 0.0), (10.0, None, 10.0))])
def test_a_region_with_a_coordinate_that_is_not_a_number_is_refused(center, size):
    with pytest.raises(InputError, match="not a number"):
        RegionBox(center, size)


def test_a_region_without_extent_is_refused():
    with pytest.raises(InputError, match="no extent"):
        RegionBox((0.0, 0.0, 0.0), (10.0, 0.0, 10.0))


def test_a_region_thinner_than_a_millimetre_is_accepted():
    assert RegionBox((0.0, 0.0, 0.0), (10.0, 10.0, 0.5)).size_mm == (10.0, 10.0, 0.5)


def test_region_from_a_mask_bounds_its_voxels_in_patient_space():
    mask = np.zeros((10, 30, 30), np.uint8)
    mask[2:5, 10:20, 4:8] = 1
    region = RegionBox.from_mask(Volume(mask, make_ijk_to_ras((2.0, 1.0, 3.0), origin=(100, 0, -10))))
    np.testing.assert_allclose(region.size_mm, (8.0, 10.0, 9.0))
    np.testing.assert_allclose(region.center_ras, (100 + 2 * 5.5, 14.5, -10 + 3 * 3))


def test_an_empty_mask_is_refused_as_region():
    with pytest.raises(InputError, match="empty"):
        RegionBox.from_mask(Volume(np.zeros((4, 8, 8)), np.eye(4)))


def linear_ramp_volume(shape, ijk_to_ras, weights=(0.5, -0.25, 2.0)):
    """Voxel value = a fixed linear function of the voxel's RAS position."""
    volume = Volume(np.zeros(shape, np.float64), ijk_to_ras)
    return volume.with_array(ramp_at_voxels(volume, weights)), list(weights)


def ramp_at_voxels(volume, weights):
    """(K, J, I) values of ras . weights + 1000 at the voxel centres of `volume`."""
    k, j, i = np.indices(volume.shape)
    ras = volume.ijk_to_ras_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    return (ras @ np.asarray(weights) + 1000.0).reshape(volume.shape)


def min_max(values):
    return (values - values.min()) / (values.max() - values.min())


def test_every_stack_pixel_holds_the_scan_value_at_its_physical_position():
    # bilinear interpolation of a linear function is exact, so a pixel's value tells its position
    ijk_to_ras = make_ijk_to_ras((0.8, 1.3, 2.5), origin=(30, -20, 5), direction=oblique_direction(15))
    volume, weights = linear_ramp_volume((12, 50, 40), ijk_to_ras)
    stack = crop_box_stack(volume, CropBox((5, 7, 2), (35, 30, 11)))
    assert stack.shape == (9, 64, 64)
    s, q, p = np.indices(stack.shape)
    ras = stack.ijk_to_ras_points(np.stack([p.ravel(), q.ravel(), s.ravel()], 1))
    expected = (ras @ weights + 1000.0).reshape(stack.shape)
    np.testing.assert_allclose(stack.array, expected, rtol=0, atol=2e-3)


def test_a_box_as_a_grid_of_its_own_starts_at_its_first_voxel():
    volume = Volume(np.zeros((12, 50, 40)), make_ijk_to_ras((0.8, 1.3, 2.5), origin=(30, -20, 5),
                                                            direction=oblique_direction(15)))
    shape, ijk_to_ras = CropBox((5, 7, 2), (35, 30, 11)).sub_grid(volume)
    assert shape == (9, 23, 30)
    np.testing.assert_allclose(ijk_to_ras[:3, :3], volume.ijk_to_ras[:3, :3])
    np.testing.assert_allclose(Volume(np.zeros(shape), ijk_to_ras).ijk_to_ras_points([[0, 0, 0], [29, 22, 8]]),
                               volume.ijk_to_ras_points([[5, 7, 2], [34, 29, 10]]))


def test_stack_corner_pixels_sit_on_the_box_corner_voxel_centres():
    volume = Volume(np.zeros((12, 50, 40)), make_ijk_to_ras((0.8, 1.3, 2.5), origin=(30, -20, 5)))
    box = CropBox((5, 7, 2), (35, 30, 11))
    stack = crop_box_stack(volume, box)
    np.testing.assert_allclose(stack.ijk_to_ras_points([[0, 0, 0]]), volume.ijk_to_ras_points([[5, 7, 2]]))
    np.testing.assert_allclose(stack.ijk_to_ras_points([[63, 63, 8]]),
                               volume.ijk_to_ras_points([[34, 29, 10]]))


def test_a_box_two_voxels_wide_is_enough_for_a_stack():
    volume, weights = linear_ramp_volume((4, 10, 10), make_ijk_to_ras((1.0, 1.5, 2.0), origin=(3, 4, 5)))
    stack = crop_box_stack(volume, CropBox((3, 4, 1), (5, 6, 3)))
    assert stack.shape == (2, 64, 64)
    # pixel 0 and 63 sit on the centres of the two voxels, pixels between them in between
    np.testing.assert_allclose(stack.ijk_to_ras_points([[63, 63, 1]]), volume.ijk_to_ras_points([[4, 5, 2]]))
    np.testing.assert_allclose(stack.array[1, 0, 0], volume.array[2, 4, 3], atol=1e-3)
    np.testing.assert_allclose(stack.array[1, 63, 63], volume.array[2, 5, 4], atol=1e-3)


def test_a_box_one_voxel_wide_is_refused():
    volume = Volume(np.zeros((4, 10, 10)), make_ijk_to_ras((1.0, 1.0, 1.0)))
    with pytest.raises(InputError, match="covers only 1 x 2 voxels"):
        crop_box_stack(volume, CropBox((3, 4, 1), (4, 6, 3)))


def test_a_stack_can_have_another_tile_size():
    volume = Volume(np.zeros((6, 30, 25)), make_ijk_to_ras((1.0, 1.0, 1.0)))
    stack = crop_box_stack(volume, CropBox((2, 3, 1), (12, 13, 5)), tile_size=10)
    assert stack.shape == (4, 10, 10)
    np.testing.assert_allclose(stack.ijk_to_ras_points([[9, 9, 3]]), volume.ijk_to_ras_points([[11, 12, 4]]))


def test_box_margin_is_one_voxel_all_round_with_edge_values_repeated_at_the_volume_border():
    shape = (5, 6, 7)  # (K, J, I)
    volume = Volume(np.arange(np.prod(shape), dtype=float).reshape(shape),
                    make_ijk_to_ras((0.5, 1.0, 2.0), origin=(10, 20, 30)))
    box = CropBox((0, 2, 3), (4, 6, 5))  # i starts at the border, j ends at it, k is inside
    margin = _box_with_margin(volume, box)
    assert margin.shape == (4, 6, 6)
    k, j, i = np.indices(margin.shape)
    # margin voxel n along an axis is volume voxel lower - 1 + n, clamped into the volume
    source = (np.clip(k + 3 - 1, 0, 4), np.clip(j + 2 - 1, 0, 5), np.clip(i + 0 - 1, 0, 6))
    np.testing.assert_array_equal(margin.array, volume.array[source])
    np.testing.assert_allclose(margin.ijk_to_ras_points([[1, 1, 1]]), volume.ijk_to_ras_points([[0, 2, 3]]))


def test_a_box_on_the_volume_border_gives_real_values_on_every_pixel():
    geometry = make_ijk_to_ras((0.7, 0.9, 3.0), direction=oblique_direction(10))
    volume = Volume(np.full((6, 30, 25), 5.0), geometry)
    stack = crop_box_stack(volume, CropBox((0, 0, 0), (25, 30, 6)))
    np.testing.assert_allclose(stack.array, 5.0, atol=1e-5)


# --- the T1/T2 pair: plan the crop -------------------------------------------------------------------

LPS = np.diag([-1.0, -1.0, 1.0])


def test_volumes_on_one_grid_up_to_header_rounding_are_on_the_same_grid():
    a = Volume(np.zeros((4, 5, 6)), make_ijk_to_ras((1.0, 1.0, 2.0), origin=(0.0, 10.0, 20.0)))
    assert same_grid(a, Volume(np.ones((4, 5, 6)), a.ijk_to_ras))
    assert same_grid(a, Volume(np.zeros((4, 5, 6)), make_ijk_to_ras((1.0, 1.0, 2.0), origin=(5e-5, 10.0, 20.0))))


def test_volumes_half_a_millimetre_apart_or_of_another_size_are_not_on_the_same_grid():
    a = Volume(np.zeros((4, 5, 6)), make_ijk_to_ras((1.0, 1.0, 2.0)))
    assert not same_grid(a, Volume(np.zeros((4, 5, 6)), make_ijk_to_ras((1.0, 1.0, 2.0), origin=(0.5, 0, 0))))
    assert not same_grid(a, Volume(np.zeros((4, 5, 7)), a.ijk_to_ras))


def test_a_t2_of_three_axial_slices_with_a_region_of_eight_by_eight_voxels_is_enough():
    t2 = Volume(np.zeros((3, 20, 20)), make_ijk_to_ras((1.0, 1.0, 1.0), direction=LPS))
    # voxel centres i = 2..9 lie at x = -2..-9 mm, j = 2..9 at y = -2..-9 mm
    plan = plan_crop(t2, t2, RegionBox((-5.5, -5.5, 1.0), (8.0, 8.0, 3.0)))
    assert plan.box.size == (8, 8, 3) and plan.stack_shape == (3, 64, 64)
    assert plan.t1_inside is None


def test_a_t2_of_two_axial_slices_is_refused():
    t2 = Volume(np.zeros((2, 20, 20)), make_ijk_to_ras((1.0, 1.0, 1.0), direction=LPS))
    with pytest.raises(InputError, match="only 2 axial slice"):
        plan_crop(t2, t2, RegionBox((-9.5, -9.5, 0.5), (20.0, 20.0, 2.0)))


def test_a_t1_covering_three_quarters_of_the_crop_stack_is_enough():
    geometry = make_ijk_to_ras((1.0, 1.0, 1.0), direction=LPS)
    t2 = Volume(np.zeros((4, 20, 20)), geometry)
    t1 = Volume(np.zeros((3, 20, 20)), geometry)  # covers T2's slices 0-2 (up to z = 2.5 mm), not 3
    plan = plan_crop(t1, t2, RegionBox((-9.5, -9.5, 1.5), (20.0, 20.0, 4.0)))
    assert plan.t1_inside.dtype == bool and plan.t1_inside.shape == (4, 64, 64)
    assert plan.t1_inside.mean() == 0.75


def test_a_t1_covering_half_of_the_crop_stack_is_refused():
    geometry = make_ijk_to_ras((1.0, 1.0, 1.0), direction=LPS)
    t2 = Volume(np.zeros((4, 20, 20)), geometry)
    with pytest.raises(InputError, match="partly outside the T1 volume"):
        plan_crop(Volume(np.zeros((2, 20, 20)), geometry), t2, RegionBox((-9.5, -9.5, 1.5), (20.0, 20.0, 4.0)))


def test_t1_on_the_t2_grid_is_cut_like_t2_and_each_stack_is_normalised():
    # RAS-ordered axes: T2 is flipped to canonical order before cutting, and T1 with it
    geometry = make_ijk_to_ras((0.8, 0.9, 2.0), origin=(-10, -12, 0))
    t2, t2_weights = linear_ramp_volume((6, 30, 28), geometry)
    t1, t1_weights = linear_ramp_volume((6, 30, 28), geometry, weights=(-1.0, 0.3, 0.7))
    plan = plan_crop(t1, t2, RegionBox((3.0, 2.0, 5.0), (12.0, 14.0, 6.0)))
    t1_stack, t2_stack = crop_stacks(plan, t1, t2)
    grid = Volume(np.zeros(plan.stack_shape), plan.stack_ijk_to_ras)
    assert t1_stack.dtype == np.float32 and t2_stack.array.dtype == np.float32
    np.testing.assert_allclose(t2_stack.ijk_to_ras, plan.stack_ijk_to_ras)
    np.testing.assert_allclose(t2_stack.array, min_max(ramp_at_voxels(grid, t2_weights)), atol=1e-4)
    np.testing.assert_allclose(t1_stack, min_max(ramp_at_voxels(grid, t1_weights)), atol=1e-4)


def test_t1_on_another_grid_is_sampled_at_the_t2_pixels_and_normalised_where_it_covers():
    geometry = make_ijk_to_ras((1.0, 1.0, 1.0), direction=LPS)
    t2, _ = linear_ramp_volume((4, 20, 20), geometry)
    # T1 has half of T2's voxel width along x, is shifted 2 mm in-plane, and has no slice at T2's slice 3
    t1_geometry = make_ijk_to_ras((0.5, 1.0, 1.0), origin=(2, 2, 0), direction=LPS)
    t1, t1_weights = linear_ramp_volume((3, 24, 48), t1_geometry, weights=(-1.0, 0.3, 0.7))
    plan = plan_crop(t1, t2, RegionBox((-9.5, -9.5, 1.5), (20.0, 20.0, 4.0)))
    t1_stack, _ = crop_stacks(plan, t1, t2)
    covered = ramp_at_voxels(Volume(np.zeros(plan.stack_shape), plan.stack_ijk_to_ras), t1_weights)[:3]
    np.testing.assert_allclose(t1_stack[:3], min_max(covered), atol=1e-4)
    assert np.all(t1_stack[3] == 0)


# --- the T1/T2 pair: whole-volume normalisation (the paper's) ----------------------------------------

# 10 x 10 x 4 voxels of a 1 x 1 x 2 mm LPS grid: i, j 10..19 and k 1..4. Ten voxels across
# resize to 64 pixels with pixel 7 v on voxel v, so every voxel value reaches the crop stack.
TEN_VOXEL_REGION = RegionBox((-14.5, -14.5, 5.0), (10.0, 10.0, 6.0))


def noise_with_a_bright_voxel_outside_the_region(seed):
    """(6, 30, 30) on a 1 x 1 x 2 mm LPS grid: uniform noise in [100, 200], exactly 100 and 200
    at two voxels inside `TEN_VOXEL_REGION`, and 400 at one voxel outside it."""
    array = np.random.default_rng(seed).uniform(100.0, 200.0, (6, 30, 30))
    array[2, 12, 13], array[3, 17, 15] = 100.0, 200.0
    array[5, 0, 0] = 400.0
    return Volume(array, make_ijk_to_ras((1.0, 1.0, 2.0), direction=LPS))


def test_the_card_input_format_names_its_normalisation_and_defaults_to_the_crop_stack():
    assert input_format() == INPUT_FORMAT and INPUT_FORMAT["normalisation"] == "crop_stack_min_max"
    paper = input_format("volume_min_max")
    assert paper == {**INPUT_FORMAT, "normalisation": "volume_min_max"}
    paper["tile_size"] = 32  # a copy: changing it leaves INPUT_FORMAT alone
    assert INPUT_FORMAT["tile_size"] == 64 and NORMALISATIONS == ("crop_stack_min_max", "volume_min_max")


def test_whole_volume_normalisation_keeps_a_crop_below_one_when_a_brighter_voxel_lies_outside():
    t1, t2 = noise_with_a_bright_voxel_outside_the_region(1), noise_with_a_bright_voxel_outside_the_region(2)
    plan = plan_crop(t1, t2, TEN_VOXEL_REGION)
    assert plan.box == CropBox((10, 10, 1), (20, 20, 5))
    t1_crop, t2_crop = crop_stacks(plan, t1, t2)
    t1_volume, t2_volume = crop_stacks(plan, t1, t2, normalisation="volume_min_max")
    assert t1_crop.max() == 1.0 and t2_crop.array.max() == 1.0
    # inside the crop the voxels span 100 .. 200; the volume spans 100 .. 400
    assert t1_volume.max() == pytest.approx(1 / 3) and t2_volume.array.max() == pytest.approx(1 / 3)
    np.testing.assert_allclose(t1_volume, t1_crop / 3, atol=1e-6)
    np.testing.assert_allclose(t2_volume.array, t2_crop.array / 3, atol=1e-6)
    np.testing.assert_array_equal(t2_volume.ijk_to_ras, t2_crop.ijk_to_ras)


def test_whole_volume_normalisation_ignores_a_scaling_and_offset_of_the_intensities():
    t1, t2 = noise_with_a_bright_voxel_outside_the_region(3), noise_with_a_bright_voxel_outside_the_region(4)
    plan = plan_crop(t1, t2, TEN_VOXEL_REGION)
    t1_stack, t2_stack = crop_stacks(plan, t1, t2, normalisation="volume_min_max")
    rescaled = crop_stacks(plan, t1.with_array(3.7 * t1.array - 250.0), t2.with_array(0.02 * t2.array + 9.0),
                           normalisation="volume_min_max")
    np.testing.assert_allclose(rescaled[0], t1_stack, atol=1e-5)
    np.testing.assert_allclose(rescaled[1].array, t2_stack.array, atol=1e-5)


def test_t1_on_an_oblique_grid_is_normalised_over_its_whole_volume_then_sampled_at_the_t2_pixels():
    t2, _ = linear_ramp_volume((6, 20, 20), make_ijk_to_ras((1.0, 1.0, 1.0), direction=LPS))
    t1_geometry = make_ijk_to_ras((0.8, 0.9, 1.1), origin=(1.0, 1.5, 0.5), direction=oblique_direction(10))
    t1, _ = linear_ramp_volume((6, 26, 30), t1_geometry, weights=(-1.0, 0.3, 0.7))
    plan = plan_crop(t1, t2, RegionBox((-9.5, -9.5, 2.5), (20.0, 20.0, 6.0)))
    assert 0.75 < plan.t1_inside.mean() < 1.0  # T1 covers most of the crop stack, not all of it
    t1_stack, _ = crop_stacks(plan, t1, t2, normalisation="volume_min_max")
    whole_t1_normalised = t1.with_array(min_max(t1.array))
    expected = resample(whole_t1_normalised, plan.stack_shape, plan.stack_ijk_to_ras)
    assert np.all(t1_stack[~plan.t1_inside] == 0)
    np.testing.assert_allclose(t1_stack[plan.t1_inside], expected[plan.t1_inside], atol=1e-5)
    assert t1_stack.min() >= 0.0 and t1_stack.max() <= 1.0


def test_an_unknown_normalisation_is_refused_naming_the_known_ones():
    t1, t2 = noise_with_a_bright_voxel_outside_the_region(5), noise_with_a_bright_voxel_outside_the_region(6)
    plan = plan_crop(t1, t2, TEN_VOXEL_REGION)
    with pytest.raises(ValueError, match="z_score.*crop_stack_min_max, volume_min_max"):
        crop_stacks(plan, t1, t2, normalisation="z_score")
    with pytest.raises(ValueError, match="z_score"):
        input_format("z_score")


def test_whole_volume_normalisation_stays_within_zero_to_one_when_float32_rounding_passes_the_maximum():
    # a one-unit range at 1000: the maximum 1001 - 1e-7 becomes 1001.0 in the float32 stack
    t2 = noise_with_a_bright_voxel_outside_the_region(8)
    array = 1000.0 + (t2.array - 100.0) / 400.0
    array[5, 0, 0] = 1001.0 - 1e-7
    array[3, 17, 15] = 1001.0 - 1e-7  # the maximum inside the region as well
    t2 = t2.with_array(array)
    _, t2_stack = crop_stacks(plan_crop(t2, t2, TEN_VOXEL_REGION), t2, t2, normalisation="volume_min_max")
    assert t2_stack.array.max() == 1.0


def test_a_constant_volume_normalises_to_zeros_over_its_whole_volume():
    t1 = noise_with_a_bright_voxel_outside_the_region(7)
    t2 = t1.with_array(np.full(t1.shape, 42.0))
    _, t2_stack = crop_stacks(plan_crop(t1, t2, TEN_VOXEL_REGION), t1, t2, normalisation="volume_min_max")
    assert t2_stack.array.dtype == np.float32 and np.all(t2_stack.array == 0)


# --- augmentation ----------------------------------------------------------------------------------

def test_tile_transforms_keep_every_slice_in_its_own_tile():
    slices = numbered_slices() * 1000 + np.random.default_rng(3).random((9, 64, 64))
    for flip, turns in DIHEDRAL_VIEWS:
        tiles = untile_grid(transform_tiles(tile_grid(slices), flip, turns))
        for n in range(9):
            expected = np.rot90(slices[n][:, ::-1] if flip else slices[n], turns)
            np.testing.assert_array_equal(tiles[n], expected)


def test_tile_transforms_act_identically_on_both_channels():
    x = np.random.default_rng(4).random((2, 192, 192))
    x[1] = x[0]
    out = transform_tiles(x, True, 1)
    np.testing.assert_array_equal(out[0], out[1])


def test_the_eight_views_are_distinct_and_undone_exactly():
    x = np.random.default_rng(5).random((2, 192, 192))
    views = [transform_tiles(x, flip, turns) for flip, turns in DIHEDRAL_VIEWS]
    assert len({view.tobytes() for view in views}) == 8
    for view, (flip, turns) in zip(views, DIHEDRAL_VIEWS):
        np.testing.assert_array_equal(undo_transform_tiles(view, flip, turns), x)


def test_a_patch_map_tile_transform_matches_the_image_transform():
    # a 64 x 64 tile is 4 x 4 patches: transforming the image then pooling patches equals
    # pooling then transforming the 12 x 12 map
    image = np.random.default_rng(6).random((192, 192))
    pooled = image.reshape(12, 16, 12, 16).mean(axis=(1, 3))
    for flip, turns in DIHEDRAL_VIEWS:
        moved = transform_tiles(image, flip, turns).reshape(12, 16, 12, 16).mean(axis=(1, 3))
        np.testing.assert_allclose(moved, transform_tiles(pooled, flip, turns))


# --- back from patches ------------------------------------------------------------------------------

def test_a_patch_value_fills_its_sixteen_pixel_block_of_its_slice():
    patch_map = np.zeros((12, 12))
    patch_map[5, 10] = 1.0  # tile row 1, tile column 2 -> slice 5; patch (1, 2) inside it
    slices = patch_map_to_slices(patch_map)
    assert slices.shape == (9, 64, 64)
    expected = np.zeros((9, 64, 64))
    expected[5, 16:32, 32:48] = 1.0
    np.testing.assert_array_equal(slices, expected)


def test_a_patch_map_must_be_square_and_divide_the_grid():
    for shape in [(12, 6), (12, 12, 12), (10, 10)]:
        with pytest.raises(ValueError, match="square patch map"):
            patch_map_to_slices(np.zeros(shape))


def test_heat_stack_averages_a_repeated_slice_and_leaves_unshown_slices_empty():
    maps = numbered_slices(size=4)  # tile n has value n
    stack = heat_stack(maps, central_window(5), n_stack_slices=5)
    np.testing.assert_allclose(stack[:, 0, 0], [0, 1, 2, 3, np.mean([4, 5, 6, 7, 8])])
    stack = heat_stack(maps, central_window(20), n_stack_slices=20)
    assert np.all(stack[:6] == 0) and np.all(stack[15:] == 0)
    np.testing.assert_allclose(stack[6:15, 0, 0], np.arange(9))
