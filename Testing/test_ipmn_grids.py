"""The slice grids of the IPMN ViT: which slices, where their pixels are, how they tile."""

import numpy as np
import pytest

from PancreasAILib.errors import InputError
from PancreasAILib.volume import Volume, make_ijk_to_ras
from IPMNRiskLib.grids import (DIHEDRAL_VIEWS, CropBox, RegionBox, central_window, crop_box_for_region,
                               crop_box_stack, heat_stack, make_input, normalise_volume,
                               patch_map_to_slices, slice_window_starts, tile_grid, transform_tiles,
                               undo_transform_tiles, untile_grid)


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


def test_region_from_a_mask_bounds_its_voxels_in_patient_space():
    mask = np.zeros((10, 30, 30), np.uint8)
    mask[2:5, 10:20, 4:8] = 1
    region = RegionBox.from_mask(Volume(mask, make_ijk_to_ras((2.0, 1.0, 3.0), origin=(100, 0, -10))))
    np.testing.assert_allclose(region.size_mm, (8.0, 10.0, 9.0))
    np.testing.assert_allclose(region.center_ras, (100 + 2 * 5.5, 14.5, -10 + 3 * 3))


def test_an_empty_mask_is_refused_as_region():
    with pytest.raises(InputError, match="empty"):
        RegionBox.from_mask(Volume(np.zeros((4, 8, 8)), np.eye(4)))


def linear_ramp_volume(shape, ijk_to_ras):
    """Voxel value = a fixed linear function of the voxel's RAS position."""
    volume = Volume(np.zeros(shape, np.float64), ijk_to_ras)
    k, j, i = np.indices(shape)
    ras = volume.ijk_to_ras_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    return volume.with_array((ras @ [0.5, -0.25, 2.0] + 1000.0).reshape(shape)), [0.5, -0.25, 2.0]


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


def test_stack_corner_pixels_sit_on_the_box_corner_voxel_centres():
    volume = Volume(np.zeros((12, 50, 40)), make_ijk_to_ras((0.8, 1.3, 2.5), origin=(30, -20, 5)))
    box = CropBox((5, 7, 2), (35, 30, 11))
    stack = crop_box_stack(volume, box)
    np.testing.assert_allclose(stack.ijk_to_ras_points([[0, 0, 0]]), volume.ijk_to_ras_points([[5, 7, 2]]))
    np.testing.assert_allclose(stack.ijk_to_ras_points([[63, 63, 8]]),
                               volume.ijk_to_ras_points([[34, 29, 10]]))


def test_a_box_on_the_volume_border_gives_real_values_on_every_pixel():
    geometry = make_ijk_to_ras((0.7, 0.9, 3.0), direction=oblique_direction(10))
    volume = Volume(np.full((6, 30, 25), 5.0), geometry)
    stack = crop_box_stack(volume, CropBox((0, 0, 0), (25, 30, 6)))
    np.testing.assert_allclose(stack.array, 5.0, atol=1e-5)


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


def test_heat_stack_averages_a_repeated_slice_and_leaves_unshown_slices_empty():
    maps = numbered_slices(size=4)  # tile n has value n
    stack = heat_stack(maps, central_window(5), n_stack_slices=5)
    np.testing.assert_allclose(stack[:, 0, 0], [0, 1, 2, 3, np.mean([4, 5, 6, 7, 8])])
    stack = heat_stack(maps, central_window(20), n_stack_slices=20)
    assert np.all(stack[:6] == 0) and np.all(stack[15:] == 0)
    np.testing.assert_allclose(stack[6:15, 0, 0], np.arange(9))
