"""The CT-to-mask pipeline keeps geometry: same physical CT in any storage -> same physical mask."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from conftest import dice
from PancreasAILib.errors import InputError, OperationCancelled
from PancreasAILib.progress import CancelToken
from PancreasAILib.resample import resample
from PancreasAILib.volume import Volume
from PancreasSegMoNetLib.segmentation import largest_component, segment_ct


def as_volume(phantom) -> Volume:
    return Volume(phantom.hu, phantom.ijk_to_ras)


def flipped(volume: Volume, array_axis: int) -> Volume:
    """The same physical image stored with one array axis reversed."""
    voxel_axis = 2 - array_axis
    new_to_old = np.eye(4)
    new_to_old[voxel_axis, voxel_axis] = -1
    new_to_old[voxel_axis, 3] = volume.shape[array_axis] - 1
    return Volume(np.flip(volume.array, array_axis).copy(), volume.ijk_to_ras @ new_to_old)


def permuted(volume: Volume, array_order: tuple[int, int, int]) -> Volume:
    """The same physical image with the array axes transposed (e.g. stored sagittally)."""
    voxel_order = [2 - array_order[2 - n] for n in range(3)]  # new voxel axis n = old voxel axis
    new_to_old = np.zeros((4, 4))
    new_to_old[3, 3] = 1
    for n, old in enumerate(voxel_order):
        new_to_old[old, n] = 1
    return Volume(np.transpose(volume.array, array_order).copy(), volume.ijk_to_ras @ new_to_old)


@pytest.fixture(scope="module")
def reference(small_ct_phantom, random_monet_card):
    volume = as_volume(small_ct_phantom)
    return volume, segment_ct(volume, random_monet_card, keep_largest_component=False, device="cpu")


def test_mask_lies_exactly_on_the_input_grid(reference):
    volume, result = reference
    assert result.mask.shape == volume.shape
    assert result.mask.array.dtype == np.uint8
    np.testing.assert_array_equal(result.mask.ijk_to_ras, volume.ijk_to_ras)
    # random weights at threshold 0.5 give a rich pattern, so the tests below are sensitive
    assert 0.01 < result.mask.array.mean() < 0.99


@pytest.mark.parametrize("array_axis", [0, 1, 2])
def test_mask_follows_volume_stored_flipped(reference, random_monet_card, array_axis):
    volume, result = reference
    stored = flipped(volume, array_axis)
    mask = segment_ct(stored, random_monet_card, keep_largest_component=False).mask
    np.testing.assert_array_equal(np.flip(mask.array, array_axis), result.mask.array)
    np.testing.assert_array_equal(mask.ijk_to_ras, stored.ijk_to_ras)


@pytest.mark.parametrize("array_order", [(2, 1, 0), (1, 0, 2), (1, 2, 0)])
def test_mask_follows_volume_stored_with_permuted_axes(reference, random_monet_card, array_order):
    volume, result = reference
    stored = permuted(volume, array_order)
    mask = segment_ct(stored, random_monet_card, keep_largest_component=False).mask
    np.testing.assert_array_equal(np.transpose(mask.array, np.argsort(array_order)), result.mask.array)


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_mask_follows_volume_through_oblique_direction(reference, random_monet_card, axis):
    """Tilting the whole image by 12 degrees tilts the mask with it: voxel for voxel the same."""
    volume, result = reference
    tilt = np.eye(4)
    tilt[:3, :3] = Rotation.from_euler(axis, 12, degrees=True).as_matrix()
    tilted = Volume(volume.array, tilt @ volume.ijk_to_ras)
    mask = segment_ct(tilted, random_monet_card, keep_largest_component=False).mask
    np.testing.assert_array_equal(mask.array, result.mask.array)
    np.testing.assert_allclose(mask.ijk_to_ras, tilted.ijk_to_ras)


def test_anisotropic_resampling_of_the_same_ct_gives_the_same_physical_mask(demo_monet_card):
    """The same phantom sampled on a coarser, anisotropic, shifted grid: masks agree in space."""
    from PancreasSegMoNetLib.phantom import make_ct_phantom

    phantom = make_ct_phantom(seed=1001, shape=(40, 256, 256))
    original = as_volume(phantom)
    reference_mask = segment_ct(original, demo_monet_card).mask
    assert dice(reference_mask.array, phantom.pancreas) > 0.4  # the model finds the pancreas: a meaningful comparison
    coarse = original.ijk_to_ras @ np.diag([1.25, 0.8, 1.5, 1.0])
    coarse[:3, 3] += [0.7, -1.1, 0.4]
    shape = (26, 320, 205)
    resampled = Volume(resample(original, shape, coarse, order=1, fill_value=-1024).astype(np.int16), coarse)
    mask = segment_ct(resampled, demo_monet_card).mask
    back = resample(Volume(mask.array.astype(np.float32), coarse), original.shape, original.ijk_to_ras, order=1)
    assert dice(back >= 0.5, reference_mask.array) > 0.85


def test_two_dimensional_image_is_refused(random_monet_card):
    with pytest.raises(InputError, match="dimension"):
        segment_ct(Volume(np.zeros((64, 64), np.int16), np.eye(4)), random_monet_card)


def test_four_dimensional_image_is_refused(random_monet_card):
    with pytest.raises(InputError, match="4 dimensions"):
        segment_ct(Volume(np.zeros((4, 8, 64, 64), np.int16), np.eye(4)), random_monet_card)


def test_nan_voxels_are_refused(small_ct_phantom, random_monet_card):
    array = small_ct_phantom.hu.astype(np.float32)
    array[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="not numbers"):
        segment_ct(Volume(array, small_ct_phantom.ijk_to_ras), random_monet_card)


def test_constant_volume_is_refused(random_monet_card):
    with pytest.raises(InputError, match="same value"):
        segment_ct(Volume(np.full((4, 64, 64), -1000, np.int16), np.eye(4)), random_monet_card)


def test_tiny_volume_is_refused(random_monet_card):
    with pytest.raises(InputError, match="too small"):
        segment_ct(Volume(np.arange(4 * 16 * 16, dtype=np.int16).reshape(4, 16, 16), np.eye(4)),
                   random_monet_card)


def test_mri_given_as_ct_gives_a_warning(small_ct_phantom, random_monet_card):
    mri_like = (small_ct_phantom.hu.astype(np.float32) + 1024) * 0.8
    result = segment_ct(Volume(mri_like, small_ct_phantom.ijk_to_ras), random_monet_card)
    assert any("does not look like a CT" in warning for warning in result.warnings)


def test_ct_gives_no_modality_warning(reference):
    assert not any("does not look like a CT" in warning for warning in reference[1].warnings)


def test_threshold_outside_zero_one_is_refused(small_ct_phantom, random_monet_card):
    with pytest.raises(InputError, match="threshold"):
        segment_ct(as_volume(small_ct_phantom), random_monet_card, threshold=1.5)


def test_cancel_stops_the_work(small_ct_phantom, random_monet_card):
    token = CancelToken()
    token.cancel()
    with pytest.raises(OperationCancelled):
        segment_ct(as_volume(small_ct_phantom), random_monet_card, cancel=token)


def test_progress_rises_to_one(small_ct_phantom, random_monet_card):
    reports = []
    segment_ct(as_volume(small_ct_phantom), random_monet_card, progress=lambda f, s: reports.append(f))
    assert reports == sorted(reports) and reports[-1] == 1.0


def test_largest_component_keeps_only_the_biggest_piece():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[1:4, 1:4, 1:4] = 1
    mask[6:9, 6:9, 6:10] = 1
    kept = largest_component(mask)
    assert kept.sum() == 36 and kept[7, 7, 7] == 1 and kept[2, 2, 2] == 0


def test_largest_component_of_an_empty_mask_is_empty():
    mask = np.zeros((4, 5, 6), np.uint8)
    assert not largest_component(mask).any()
