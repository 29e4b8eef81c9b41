"""The CT-to-mask pipeline keeps geometry: same physical CT in any storage -> same physical mask."""

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from conftest import dice
from PancreasAILib.errors import InputError, OperationCancelled
from PancreasAILib.progress import CancelToken
from PancreasAILib.resample import resample
from PancreasAILib.volume import Volume, make_ijk_to_ras
from PancreasAILib.weights import read_model_card
from PancreasSegMoNetLib.preprocessing import DEFAULT_PREPROCESSING, inplane_grid, model_slices
from PancreasSegMoNetLib.segmentation import SegmentationResult, largest_component, segment_ct


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


def test_threshold_comes_from_the_model_card(small_ct_phantom, random_monet_card, tmp_path):
    """A card whose post-processing threshold is 0.7 gives the mask of threshold 0.7, not of 0.5."""
    weights = tmp_path / "monet-tuned.safetensors"
    weights.write_bytes(random_monet_card.weights_path.read_bytes())
    card_data = {**random_monet_card.data, "name": "monet-tuned", "weights_file": weights.name,
                 "postprocessing": {"threshold": 0.7}}
    (tmp_path / "monet-tuned.json").write_text(json.dumps(card_data))
    tuned_card = read_model_card(weights)
    one_slice = as_volume(small_ct_phantom).slab(7, 8)

    tuned = segment_ct(one_slice, tuned_card, keep_largest_component=False)
    at_0_7 = segment_ct(one_slice, random_monet_card, threshold=0.7, keep_largest_component=False).mask.array
    at_0_5 = segment_ct(one_slice, random_monet_card, keep_largest_component=False).mask.array
    assert tuned.threshold == 0.7
    np.testing.assert_array_equal(tuned.mask.array, at_0_7)
    assert 0 < at_0_7.sum() < at_0_5.sum()  # the two thresholds give demonstrably different masks


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


def test_largest_component_keeps_pieces_touching_only_at_a_corner():
    """Diagonal neighbours belong to one gland: 26-connectivity joins cubes sharing one vertex."""
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[1:4, 1:4, 1:4] = 1  # 27 voxels
    mask[4:6, 4:6, 4:6] = 1  # 8 voxels; (3, 3, 3) and (4, 4, 4) share only a corner
    mask[8, 8, 0] = 1  # a far single voxel: the only piece to drop
    kept = largest_component(mask)
    assert kept.sum() == 35 and kept[5, 5, 5] == 1 and kept[2, 2, 2] == 1 and kept[8, 8, 0] == 0


def test_volume_in_ml_is_voxel_count_times_voxel_size():
    """50 voxels of 2 x 2.5 x 4 mm = 50 x 20 mm^3 = 1000 mm^3 = 1 ml (directions flipped as in LPS)."""
    array = np.zeros((6, 10, 10), np.uint8)
    array[1:3, 2:7, 3:8] = 1  # 2 x 5 x 5 = 50 voxels
    ijk_to_ras = make_ijk_to_ras((2.0, 2.5, 4.0), origin=(10, -20, 30), direction=np.diag([-1.0, -1.0, 1.0]))
    result = SegmentationResult(Volume(array, ijk_to_ras), "test", 0.5)
    assert result.voxel_count == 50
    assert result.volume_ml == pytest.approx(1.0)


def one_slice_ct(hu: np.ndarray, spacing=(0.7, 0.7, 2.5)) -> Volume:
    """A (1, J, I) canonical axial CT slab, LPS-oriented like the canonical volumes."""
    return Volume(hu[None].astype(np.float32),
                  make_ijk_to_ras(spacing, origin=(-3.0, 5.0, 12.0), direction=np.diag([-1.0, -1.0, 1.0])))


def test_inplane_grid_samples_the_papers_2x_down_sampling_at_half_pixel_offsets():
    """8 x 8 pixels to 4 x 4: output pixel m lies between source pixels 2m and 2m + 1."""
    canonical = one_slice_ct(np.zeros((8, 8)))
    grid = inplane_grid(canonical, 4)
    centres = np.array([[m, m, 0.0] for m in range(4)])
    ras = centres @ grid[:3, :3].T + grid[:3, 3]
    source_ijk = canonical.ras_to_ijk_points(ras)
    np.testing.assert_allclose(source_ijk[:, 0], [0.5, 2.5, 4.5, 6.5], atol=1e-9)
    np.testing.assert_allclose(source_ijk[:, 1], [0.5, 2.5, 4.5, 6.5], atol=1e-9)
    np.testing.assert_allclose(source_ijk[:, 2], 0.0, atol=1e-9)


def test_model_slices_of_a_2x_larger_slice_are_the_means_of_2_x_2_pixel_blocks():
    """Bilinear sampling half-way between four pixel centres is their mean."""
    hu = np.random.default_rng(3).uniform(-150, 230, (8, 8)).astype(np.float32)
    slices, _ = model_slices(one_slice_ct(hu), {**DEFAULT_PREPROCESSING, "input_size": 4})
    block_means = hu.reshape(4, 2, 4, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(slices[0], (block_means + 160) / 400, atol=1e-6)


def test_default_window_is_the_one_the_bundled_weights_were_trained_with():
    """-160..240 HU, as README documents and the bundled MoNet card records; a new model trained
    with defaults must see the same window."""
    from PancreasSegMoNetLib.models import model_registry

    assert list(DEFAULT_PREPROCESSING["window_hu"]) == [-160, 240]
    bundled = model_registry().resolve(None, download=False)
    assert list(bundled.preprocessing["window_hu"]) == list(DEFAULT_PREPROCESSING["window_hu"])


def test_default_window_maps_minus_160_hu_to_0_and_240_hu_to_1():
    hu = np.full((8, 8), -130.0)
    hu[:, 2:4], hu[:, 4:6], hu[:, 6:] = -160.0, 40.0, 240.0
    slices, _ = model_slices(one_slice_ct(hu), {**DEFAULT_PREPROCESSING, "input_size": 4})
    np.testing.assert_allclose(slices[0], np.tile([30 / 400, 0.0, 0.5, 1.0], (4, 1)), atol=1e-6)


def test_hu_outside_the_window_is_clipped_to_0_and_1():
    """Air (-1000 HU) is as black as -160 HU and bone (1500 HU) as white as 240 HU."""
    hu = np.full((8, 8), -1000.0)
    hu[:, 4:] = 1500.0
    slices, _ = model_slices(one_slice_ct(hu), {**DEFAULT_PREPROCESSING, "input_size": 4})
    np.testing.assert_array_equal(slices[0], np.tile([0.0, 0.0, 1.0, 1.0], (4, 1)))
