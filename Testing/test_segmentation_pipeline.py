"""The CT-to-mask pipeline keeps geometry: same physical CT in any storage -> same physical mask."""

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from conftest import dice
from PancreasAILib.errors import InputError, ModelFileError, OperationCancelled
from PancreasAILib.progress import CancelToken
from PancreasAILib.resample import resample
from PancreasAILib.volume import Volume, make_ijk_to_ras
from PancreasAILib.weights import read_model_card
from PancreasSegMoNetLib.preprocessing import (DEFAULT_PREPROCESSING, INTENSITY_SCALINGS, check_preprocessing,
                                               inplane_grid, intensity_range, model_slices)
from PancreasSegMoNetLib.segmentation import (SegmentationResult, card_keeps_largest_component, check_card, check_ct,
                                              largest_component, segment_ct)
from segmentation_data import label_slices


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
    from PancreasAIPhantoms.ct import make_ct_phantom

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


@pytest.mark.parametrize("engine", ["openvino", "pytorch"])
def test_the_probability_thresholded_is_the_sigmoid_of_the_network_s_logit(small_ct_phantom, random_monet_card,
                                                                           monkeypatch, tmp_path, engine):
    """The network returns logits; the pipeline applies the sigmoid exactly once, on either
    engine. A network whose logit is log(0.6 / 0.4) everywhere gives probability 0.6: all
    voxels at threshold 0.55, none at 0.62 (a second sigmoid would give 0.646, no sigmoid 0.405)."""
    import math

    import torch

    from PancreasAILib import engines
    from PancreasSegMoNetLib import registry

    class ConstantLogit(torch.nn.Module):
        def forward(self, x):
            return x * 0.0 + math.log(0.6 / 0.4)

    monkeypatch.setattr(registry, "build_monet", lambda card, device: ConstantLogit())
    monkeypatch.setattr(engines, "_ENGINES", {})  # no engine of the real network kept
    monkeypatch.setenv("PANCREASAI_ENGINE_CACHE", str(tmp_path))  # nor its conversion
    one_slice = as_volume(small_ct_phantom).slab(7, 8)
    below = segment_ct(one_slice, random_monet_card, threshold=0.55, keep_largest_component=False,
                       engine=engine).mask.array
    above = segment_ct(one_slice, random_monet_card, threshold=0.62, keep_largest_component=False,
                       engine=engine).mask.array
    assert below.all()
    assert not above.any()


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
    from PancreasSegMoNetLib.registry import model_registry

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


# --- check_ct at the edges of its limits ---------------------------------------------------------

def ct_of_range(low: float, high: float, shape=(1, 32, 32), ijk_to_ras=None) -> Volume:
    """A volume whose values run exactly from `low` to `high`."""
    array = np.linspace(low, high, int(np.prod(shape)), dtype=np.float64).reshape(shape).astype(np.float32)
    return Volume(array, np.eye(4) if ijk_to_ras is None else ijk_to_ras)


def modality_warnings(volume: Volume) -> list[str]:
    return [w for w in check_ct(volume) if "does not look like a CT" in w]


@pytest.mark.parametrize("low, high, warned", [
    (-1000, 400, False), (-500, 400, False), (-499, 400, True),
    (-1000, 0, False), (-1000, -1, True), (-400, -100, True)])
def test_modality_warning_starts_just_above_minus_500_hu_or_below_0_hu(low, high, warned):
    assert bool(modality_warnings(ct_of_range(low, high))) == warned


def tilted_ijk_to_ras(degrees: float) -> np.ndarray:
    return make_ijk_to_ras((1.0, 1.0, 1.0), direction=Rotation.from_euler("x", degrees, degrees=True).as_matrix())


@pytest.mark.parametrize("degrees, warned", [(0, False), (19.5, False), (20.5, True), (21.5, True)])
def test_tilt_warning_starts_above_20_degrees(degrees, warned):
    warnings = check_ct(ct_of_range(-1000, 400, (32, 32, 32), tilted_ijk_to_ras(degrees)))
    assert any("tilted" in w for w in warnings) == warned
    assert not modality_warnings(ct_of_range(-1000, 400, (32, 32, 32), tilted_ijk_to_ras(degrees)))


@pytest.mark.parametrize("columns, rows, accepted", [(32, 32, True), (31, 32, False), (32, 31, False)])
def test_axial_slices_of_at_least_32_x_32_voxels_are_accepted(columns, rows, accepted):
    volume = ct_of_range(-1000, 400, (2, rows, columns))
    if accepted:
        assert check_ct(volume) == []
    else:
        with pytest.raises(InputError, match="too small"):
            check_ct(volume)


@pytest.mark.parametrize("shape, direction", [
    ((32, 32, 1), [[0, 0, 1], [0, 1, 0], [1, 0, 0]]),  # one sagittal-stored slice: i runs superior
    ((32, 1, 32), [[1, 0, 0], [0, 0, 1], [0, 1, 0]]),  # one coronal-stored slice: j runs superior
])
def test_a_single_axial_slice_stored_along_any_array_axis_is_accepted(shape, direction):
    volume = ct_of_range(-1000, 400, shape, make_ijk_to_ras((0.8, 0.8, 0.8), direction=np.array(direction, float)))
    assert check_ct(volume) == []


def test_refusals_name_the_ct_volume():
    with pytest.raises(InputError, match="The CT volume has 2 dimension"):
        check_ct(Volume(np.zeros((32, 32), np.float32), np.eye(4)))
    bad_position = np.eye(4)
    bad_position[0, 3] = np.nan
    with pytest.raises(InputError, match="The CT volume has an invalid position"):
        check_ct(ct_of_range(-1000, 400, ijk_to_ras=bad_position))


# --- largest_component on hand-made masks ------------------------------------------------------

def test_largest_component_bounding_box_is_taken_on_each_axis():
    """Pieces spread along j and i further than along k are all labelled."""
    mask = np.zeros((2, 12, 12), np.uint8)
    mask[0, 5:10, 0:5] = 1  # 25 voxels
    mask[0, 0, 8] = 1  # a single voxel far away along j and i
    mask[1, 11, 11] = 1
    kept = largest_component(mask)
    assert kept.sum() == 25 and kept[0, 7, 2] == 1 and kept[0, 0, 8] == 0 and kept[1, 11, 11] == 0


def test_largest_component_of_equal_single_voxels_keeps_exactly_one_of_them():
    mask = np.zeros((5, 5, 5), np.uint8)
    mask[0, 0, 0] = mask[4, 4, 4] = 1
    kept = largest_component(mask)
    assert kept.sum() == 1 and kept[mask == 0].sum() == 0


@pytest.mark.parametrize("dtype", [np.uint8, bool, np.float32])
@pytest.mark.parametrize("pieces", [1, 2])
def test_largest_component_keeps_shape_and_dtype(dtype, pieces):
    mask = np.zeros((4, 6, 8), dtype)
    mask[1:3, 1:3, 1:3] = 1
    if pieces == 2:
        mask[3, 5, 7] = 1
    kept = largest_component(mask)
    assert kept.shape == mask.shape and kept.dtype == mask.dtype
    np.testing.assert_array_equal(kept.astype(np.uint8)[1:3, 1:3, 1:3], 1)
    assert kept.astype(np.uint8).sum() == 8


@pytest.mark.parametrize("corner", ["first", "last", "middle"])
@pytest.mark.parametrize("pieces", [1, 2])
def test_largest_component_labels_only_the_masks_bounding_box(corner, pieces):
    """Memory stays near the mask's own size wherever the pieces lie (no whole-volume label image)."""
    import tracemalloc

    mask = np.zeros((32, 128, 128), np.uint8)
    at = {"first": 0, "last": -4, "middle": 60}[corner]
    k = {"first": 0, "last": -4, "middle": 14}[corner]
    view = mask[k:k + 4 if k + 4 != 0 else None, at:at + 4 if at + 4 != 0 else None,
                at:at + 4 if at + 4 != 0 else None]
    view[:2, :2, :2] = 1
    if pieces == 2:
        view[3, 3, 3] = 1
    tracemalloc.start()
    try:
        kept = largest_component(mask)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert kept.sum() == 8
    # two pieces: the output (the mask's size in uint8) and a few small arrays; one piece: no copy
    assert peak < (mask.nbytes if pieces == 2 else 0) + 100_000


# --- label_slices: the training masks on the model's grid ------------------------------------------

def canonical_slab(array: np.ndarray, spacing=(0.7, 0.7, 2.5)) -> Volume:
    return Volume(array, make_ijk_to_ras(spacing, origin=(-3.0, 5.0, 12.0), direction=np.diag([-1.0, -1.0, 1.0])))


def test_label_slices_keep_pixels_at_least_half_covered_on_each_slice():
    """8 x 8 to 4 x 4: each output pixel is the mean of a 2 x 2 block, kept when >= 0.5."""
    labels = np.zeros((3, 8, 8), bool)
    labels[0, 0:2, 0:2] = True  # whole block -> 1
    labels[0, 2:4, 4] = True  # half a block -> 1
    labels[0, 6, 6] = True  # a quarter -> 0
    labels[1, 4:7, 0:2] = True  # block (2, 0) whole, block (3, 0) half -> both 1
    labels[2, 1, 1] = labels[2, 1, 2] = labels[2, 0, 2] = True  # 1/4 of block (0,0), 2/4 of (0,1)
    slices = label_slices(canonical_slab(labels), {**DEFAULT_PREPROCESSING, "input_size": 4})
    expected = np.zeros((3, 4, 4), np.float32)
    expected[0, 0, 0] = expected[0, 1, 2] = 1
    expected[1, 2, 0] = expected[1, 3, 0] = 1
    expected[2, 0, 1] = 1
    assert slices.dtype == np.float32 and slices.shape == (3, 4, 4)
    np.testing.assert_array_equal(slices, expected)


def test_label_slices_lie_on_the_grid_of_model_slices():
    """A non-square slab: a label and the CT's bright spot land on the same output pixels, and
    pixels beyond the slice are background (label 0, air in the CT)."""
    hu = np.full((2, 4, 8), -100.0, np.float32)
    hu[:, 2:4, 6:8] = 200.0  # bright block at rows 2-3, columns 6-7
    labels = np.zeros(hu.shape, np.uint8)
    labels[:, 2:4, 6:8] = 1
    preprocessing = {**DEFAULT_PREPROCESSING, "input_size": 4}
    images, grid = model_slices(canonical_slab(hu), preprocessing)
    masks = label_slices(canonical_slab(labels), preprocessing)
    assert images.shape == masks.shape == (2, 4, 4)
    # the 4-row slice fills output rows 1-2 of the square 8 x 8 field of view, centred
    expected_image = np.zeros((4, 4), np.float32)
    expected_image[1:3] = 60 / 400
    expected_image[2, 3] = 360 / 400
    expected_mask = np.zeros((4, 4), np.float32)
    expected_mask[2, 3] = 1
    for k in range(2):
        np.testing.assert_allclose(images[k], expected_image, atol=1e-6)
        np.testing.assert_array_equal(masks[k], expected_mask)
    np.testing.assert_allclose(grid, inplane_grid(canonical_slab(labels), 4))


# --- intensity scaling: the fixed window or the CT's own range (the MoNet authors') ----------------

VOLUME_MIN_MAX = {**DEFAULT_PREPROCESSING, "intensity_scaling": "volume_min_max"}


def card_variant(card, folder, name: str, **sections):
    """A copy of `card` and its weights in `folder` under `name`, with the given card sections
    ("preprocessing", "postprocessing") updated key by key; the weights' SHA256 stays valid."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    shutil.copy(card.weights_path, weights)
    data = {**card.data, "name": name, "weights_file": weights.name}
    for section, changes in sections.items():
        data[section] = {**data.get(section, {}), **changes}
    (folder / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")
    return read_model_card(weights)


def soft_tissue_ct(phantom) -> Volume:
    """Slices 4-11 of the phantom with every voxel clipped into -100..150 HU, inside the window."""
    return Volume(np.clip(phantom.hu[4:12], -100, 150), phantom.ijk_to_ras)


def test_volume_min_max_scales_the_cts_own_range_to_0_and_1_not_the_fill():
    """A 4 x 8 slice from -100 to 200 HU: -100 HU is black and 200 HU white, and so is the fill
    of the rows outside the slice (-1024 HU clipped to the CT's minimum); the fixed window
    would show them at 60/400 and 360/400."""
    hu = np.full((2, 4, 8), -100.0, np.float32)
    hu[:, 2:4, 6:8] = 200.0
    images, _ = model_slices(canonical_slab(hu), {**VOLUME_MIN_MAX, "input_size": 4})
    windowed, _ = model_slices(canonical_slab(hu), {**DEFAULT_PREPROCESSING, "input_size": 4})
    expected = np.zeros((4, 4), np.float32)
    expected[2, 3] = 1.0
    for k in range(2):
        np.testing.assert_allclose(images[k], expected, atol=1e-6)
    assert not np.allclose(images, windowed, atol=0.1)


def test_volume_min_max_equals_the_min_max_of_the_clipped_volume_computed_by_hand():
    hu = np.random.default_rng(4).uniform(-120, 170, (3, 8, 8)).astype(np.float32)
    slices, _ = model_slices(canonical_slab(hu), {**VOLUME_MIN_MAX, "input_size": 4})
    block_means = hu.reshape(3, 4, 2, 4, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(slices, (block_means - hu.min()) / (hu.max() - hu.min()), atol=1e-6)


@pytest.mark.parametrize("low, high, expected", [
    (-100, 150, (-100, 150)),  # inside the window: the CT's own range
    (-1000, 1500, (-160, 240)),  # air to bone: the window
    (-1000, 100, (-160, 100)),
    (-50, 900, (-50, 240)),
])
def test_volume_min_max_range_is_the_window_narrowed_to_the_voxels_range(low, high, expected):
    assert intensity_range(ct_of_range(low, high), VOLUME_MIN_MAX) == expected


def test_window_range_is_the_window_whatever_the_ct():
    assert intensity_range(ct_of_range(-100, 150), DEFAULT_PREPROCESSING) == (-160.0, 240.0)


@pytest.mark.parametrize("low, high", [(100, 100), (-1000, -500)])
def test_a_volume_constant_after_clipping_gives_zeros_not_a_division_by_zero(low, high):
    """100 HU everywhere, or air only (all of it clipped to -160 HU): the authors' code stops on
    an assertion; here the slices are black."""
    volume = ct_of_range(low, high, (2, 8, 8), canonical_slab(np.zeros((1, 1, 1))).ijk_to_ras)
    with np.errstate(all="raise"):
        slices, _ = model_slices(volume, {**VOLUME_MIN_MAX, "input_size": 4})
    assert slices.dtype == np.float32
    np.testing.assert_array_equal(slices, 0.0)


def test_cards_without_intensity_scaling_see_the_window_bit_for_bit_as_before():
    """The arithmetic every existing card was trained and checked with: bilinear slices, clipped
    to -160..240 HU, minus -160, divided by 400, in float32."""
    hu = np.random.default_rng(5).uniform(-1100, 1600, (2, 6, 10)).astype(np.float32)
    preprocessing = {**DEFAULT_PREPROCESSING, "input_size": 8}
    slices, grid = model_slices(canonical_slab(hu), preprocessing)
    before = resample(canonical_slab(hu), (2, 8, 8), grid, order=1, fill_value=-1024.0)
    np.clip(before, -160.0, 240.0, out=before)
    before -= -160.0
    before /= 400.0
    np.testing.assert_array_equal(slices, before)
    assert "intensity_scaling" not in DEFAULT_PREPROCESSING


def test_the_default_cards_mask_is_the_window_scalings_mask(demo_monet_card, small_ct_phantom, tmp_path):
    """On a CT whose range lies inside the window, where the two scalings differ: the bundled
    card (no intensity_scaling) segments exactly as "window" does, and not as "volume_min_max"."""
    ct = soft_tissue_ct(small_ct_phantom)
    window_card = card_variant(demo_monet_card, tmp_path, "demo-window",
                               preprocessing={"intensity_scaling": "window"})
    min_max_card = card_variant(demo_monet_card, tmp_path, "demo-min-max",
                                preprocessing={"intensity_scaling": "volume_min_max"})
    default = segment_ct(ct, demo_monet_card, keep_largest_component=False).mask.array
    np.testing.assert_array_equal(default, segment_ct(ct, window_card, keep_largest_component=False).mask.array)
    assert not np.array_equal(default, segment_ct(ct, min_max_card, keep_largest_component=False).mask.array)


def test_slab_by_slab_inference_scales_every_slab_by_the_whole_volumes_range(demo_monet_card, small_ct_phantom,
                                                                           tmp_path, monkeypatch):
    """8 slices in slabs of 2 give the mask of one 8-slice slab, though the upper slabs alone
    span only -50..80 HU (the whole CT: air to bone, so the window)."""
    from PancreasSegMoNetLib import segmentation

    hu = small_ct_phantom.hu[4:12].copy()
    hu[4:] = np.clip(hu[4:], -50, 80)
    ct = Volume(hu, small_ct_phantom.ijk_to_ras)
    card = card_variant(demo_monet_card, tmp_path, "demo-min-max",
                        preprocessing={"intensity_scaling": "volume_min_max"})
    assert ct.shape[0] <= segmentation.SLAB_SLICES
    one_slab = segment_ct(ct, card, keep_largest_component=False).mask.array
    monkeypatch.setattr(segmentation, "SLAB_SLICES", 2)
    slabs = segment_ct(ct, card, keep_largest_component=False).mask.array
    assert one_slab[4:].any()  # the slices where a slab's own range would differ hold pancreas
    np.testing.assert_array_equal(slabs, one_slab)


def test_a_card_with_an_unknown_intensity_scaling_is_refused_before_any_work(demo_monet_card, small_ct_phantom,
                                                                            tmp_path):
    card = card_variant(demo_monet_card, tmp_path, "demo-typo", preprocessing={"intensity_scaling": "min_max"})
    reports = []
    with pytest.raises(ModelFileError, match=r"intensity_scaling 'min_max'.*'window' and 'volume_min_max'"):
        segment_ct(as_volume(small_ct_phantom), card, progress=lambda f, s: reports.append(s))
    assert reports == []
    assert INTENSITY_SCALINGS == ("window", "volume_min_max", "volume_percentiles")


@pytest.mark.parametrize("window_hu, message", [([240, -160], "is empty"), ([-160], "not two numbers"),
                                                ("soft tissue", "not two numbers")])
def test_a_card_with_an_unusable_window_is_refused(window_hu, message):
    with pytest.raises(ModelFileError, match=message):
        check_preprocessing({**DEFAULT_PREPROCESSING, "window_hu": window_hu})


def test_a_card_lacking_the_slice_settings_is_refused_naming_them():
    with pytest.raises(ModelFileError, match="lacks input_size, fill_hu"):
        check_preprocessing({"window_hu": [-160, 240]})


# --- the card's post-processing: keeping the largest component --------------------------------------

def ct_with_a_stray_pancreas(phantom) -> Volume:
    """The phantom's slices 4-9, 2 slices of air, then its slices 5-7 again: two separate
    pancreas pieces, the second the smaller."""
    air = np.full((2,) + phantom.hu.shape[1:], -1000, phantom.hu.dtype)
    return Volume(np.concatenate([phantom.hu[4:10], air, phantom.hu[5:8]]), phantom.ijk_to_ras)


def pieces(mask: np.ndarray) -> int:
    return ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]


def test_a_card_keeping_every_piece_keeps_the_stray_one(demo_monet_card, small_ct_phantom, tmp_path):
    ct = ct_with_a_stray_pancreas(small_ct_phantom)
    card = card_variant(demo_monet_card, tmp_path, "demo-all-pieces", postprocessing={"keep_largest_component": False})
    assert pieces(segment_ct(ct, card).mask.array) == 2
    assert pieces(segment_ct(ct, demo_monet_card).mask.array) == 1  # the bundled card keeps the largest


def test_an_explicit_keep_largest_component_overrides_the_cards(demo_monet_card, small_ct_phantom, tmp_path):
    ct = ct_with_a_stray_pancreas(small_ct_phantom)
    card = card_variant(demo_monet_card, tmp_path, "demo-all-pieces", postprocessing={"keep_largest_component": False})
    assert pieces(segment_ct(ct, card, keep_largest_component=True).mask.array) == 1
    assert pieces(segment_ct(ct, demo_monet_card, keep_largest_component=False).mask.array) == 2


def test_a_card_without_keep_largest_component_keeps_the_largest(random_monet_card, tmp_path):
    assert "keep_largest_component" not in random_monet_card.data["postprocessing"]
    assert card_keeps_largest_component(random_monet_card) is True


def test_a_card_whose_keep_largest_component_is_not_true_or_false_is_refused(demo_monet_card, tmp_path):
    card = card_variant(demo_monet_card, tmp_path, "demo-text", postprocessing={"keep_largest_component": "false"})
    with pytest.raises(ModelFileError, match="keep_largest_component as 'false'; it must be true or false"):
        check_card(card)


# --- the training slice cache scales as inference does ----------------------------------------------

def test_cached_training_slices_of_a_volume_min_max_card_are_the_slices_inference_makes(small_ct_phantom, tmp_path):
    """A CT within the window whose halves span different ranges: the cache holds the slices
    `model_slices` makes of the whole canonical CT (the range of the whole CT, as segment_ct
    uses), not the window's."""
    from PancreasAILib.orientation import axial_reorientation
    from PancreasAILib.volume_io import write_volume
    from segmentation_data import FileCase, SliceCache, prepare_cases
    from trainkit.hashing import FileHashes

    hu = np.clip(small_ct_phantom.hu, -100, 150)
    hu[8:] = np.clip(hu[8:], -50, 80)
    ct = Volume(hu, small_ct_phantom.ijk_to_ras)
    labels = Volume(small_ct_phantom.pancreas.astype(np.uint8), small_ct_phantom.ijk_to_ras)
    case = FileCase("case_001", write_volume(ct, tmp_path / "images" / "case_001.nii.gz"),
                    write_volume(labels, tmp_path / "labels" / "case_001.nii.gz"), "case_001")
    preprocessing = {**VOLUME_MIN_MAX, "input_size": 64}
    cache = SliceCache(tmp_path / "cache", preprocessing)
    [prepared], _ = prepare_cases([case], cache, FileHashes(None), show_progress=False)
    cached = cache.get(prepared.cache_key).images
    canonical = axial_reorientation(ct).apply_volume(ct)
    inference, _ = model_slices(canonical, preprocessing, intensity_range(canonical, preprocessing))
    np.testing.assert_array_equal(cached, inference.astype(np.float16))
    windowed, _ = model_slices(canonical, {**DEFAULT_PREPROCESSING, "input_size": 64})
    assert not np.allclose(cached, windowed, atol=0.05)
    assert cache.folder != SliceCache(tmp_path / "cache", {**DEFAULT_PREPROCESSING, "input_size": 64}).folder
