"""Geometry of the shared core: Volume, canonical axial orientation, resampling."""
import itertools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from PancreasAILib import resample as resample_module
from PancreasAILib.orientation import axial_reorientation, obliquity_degrees
from PancreasAILib.resample import overlap_fraction, resample, resample_like, resampled_at_least
from PancreasAILib.volume import Volume, make_ijk_to_ras

SPACING = (0.7, 0.9, 2.5)
ORIGIN = (10.5, -20.25, 33.0)
SHAPE = (4, 5, 6)  # (K, J, I): every axis a different length, so a wrong permutation shows


def rotation(axis: str, degrees: float) -> np.ndarray:
    return Rotation.from_euler(axis, degrees, degrees=True).as_matrix()


def signed_permutations() -> list[np.ndarray]:
    """All 48 directions whose voxel axes run along patient axes (6 permutations x 8 flips)."""
    directions = []
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            direction = np.zeros((3, 3))
            for voxel_axis, (patient_axis, sign) in enumerate(zip(permutation, signs)):
                direction[patient_axis, voxel_axis] = sign
            directions.append(direction)
    return directions


SIGNED_PERMUTATIONS = signed_permutations()


def numbered_volume(direction: np.ndarray, shape=SHAPE) -> Volume:
    """Every voxel holds its own flat index, so any voxel can be identified by its value."""
    return Volume(np.arange(np.prod(shape)).reshape(shape), make_ijk_to_ras(SPACING, ORIGIN, direction))


def all_ijk(shape) -> np.ndarray:
    """(N, 3) integer (i, j, k) of every voxel of a (K, J, I) array, in C order of the array."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)


def source_values_at_same_ras(source: Volume, other: Volume) -> np.ndarray:
    """For every voxel of `other`, the value of the `source` voxel at the same RAS position."""
    ijk = source.ras_to_ijk_points(other.ijk_to_ras_points(all_ijk(other.shape)))
    index = np.rint(ijk).astype(int)
    assert np.allclose(ijk, index, atol=1e-6), "voxel centres do not coincide"
    return source.array[index[:, 2], index[:, 1], index[:, 0]].reshape(other.shape)


# --- make_ijk_to_ras and Volume -----------------------------------------------------------


def test_make_ijk_to_ras_scales_direction_columns_and_puts_origin_last():
    direction = rotation("z", 30)
    matrix = make_ijk_to_ras(SPACING, ORIGIN, direction)
    np.testing.assert_allclose(matrix[:3, :3], direction * np.array(SPACING))
    np.testing.assert_allclose(matrix[:3, 3], ORIGIN)
    np.testing.assert_array_equal(matrix[3], [0, 0, 0, 1])


def test_make_ijk_to_ras_defaults_to_identity_direction_at_the_origin():
    np.testing.assert_allclose(make_ijk_to_ras((1, 2, 3)), np.diag([1.0, 2.0, 3.0, 1.0]))


def test_volume_gives_back_spacing_direction_and_origin():
    direction = rotation("xyz", [10, 20, 30]) @ SIGNED_PERMUTATIONS[17]
    volume = numbered_volume(direction)
    np.testing.assert_allclose(volume.spacing, SPACING)
    np.testing.assert_allclose(volume.direction, direction, atol=1e-12)
    np.testing.assert_allclose(volume.origin, ORIGIN)


def test_volume_origin_is_a_copy():
    volume = numbered_volume(np.eye(3))
    volume.origin[:] = 0
    np.testing.assert_allclose(volume.origin, ORIGIN)


def test_volume_refuses_a_matrix_that_is_not_4_by_4():
    with pytest.raises(ValueError, match="4 x 4"):
        Volume(np.zeros(SHAPE), np.eye(3))


def test_volume_stores_ijk_to_ras_as_float64():
    volume = Volume(np.zeros(SHAPE), np.eye(4, dtype=np.float32))
    assert volume.ijk_to_ras.dtype == np.float64


def test_ras_to_ijk_undoes_ijk_to_ras():
    volume = numbered_volume(rotation("xyz", [10, -25, 40]))
    ijk = np.random.default_rng(0).uniform(-5, 20, size=(50, 3))
    np.testing.assert_allclose(volume.ras_to_ijk_points(volume.ijk_to_ras_points(ijk)), ijk, atol=1e-10)


def test_ijk_to_ras_points_maps_voxel_origin_to_origin_and_steps_by_spacing():
    volume = numbered_volume(rotation("y", 20))
    ras = volume.ijk_to_ras_points([[0, 0, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(ras[0], ORIGIN)
    assert np.linalg.norm(ras[1] - ras[0]) == pytest.approx(SPACING[0])
    assert np.linalg.norm(ras[2] - ras[0]) == pytest.approx(SPACING[2])


def test_slab_keeps_the_physical_position_of_its_slices():
    volume = numbered_volume(rotation("xyz", [5, 10, 15]))
    slab = volume.slab(1, 3)
    np.testing.assert_array_equal(slab.array, volume.array[1:3])
    ijk = all_ijk(slab.shape)
    np.testing.assert_allclose(slab.ijk_to_ras_points(ijk), volume.ijk_to_ras_points(ijk + [0, 0, 1]))


def test_with_array_keeps_the_grid_and_refuses_another_shape():
    volume = numbered_volume(np.eye(3))
    values = np.ones(SHAPE, np.float32)
    other = volume.with_array(values)
    assert other.array is values
    np.testing.assert_array_equal(other.ijk_to_ras, volume.ijk_to_ras)
    with pytest.raises(ValueError, match="does not match"):
        volume.with_array(np.ones((1, 2, 3)))


def test_with_array_accepts_per_voxel_vectors_on_the_same_grid():
    volume = numbered_volume(np.eye(3))
    probabilities = volume.with_array(np.zeros((*SHAPE, 3)))
    assert probabilities.shape == (*SHAPE, 3)
    labels = probabilities.with_array(np.zeros(SHAPE, np.uint8))
    assert labels.shape == SHAPE


def test_corners_are_the_outer_voxel_centres():
    volume = numbered_volume(np.eye(3))
    corners = volume.corners_ras()
    assert corners.shape == (8, 3)
    np.testing.assert_allclose(corners.min(0), ORIGIN)
    np.testing.assert_allclose(corners.max(0), np.array(ORIGIN) + np.array(SPACING) * [5, 4, 3])


def test_corners_of_a_vector_volume_are_those_of_its_grid():
    grid = numbered_volume(rotation("z", 30))
    vectors = grid.with_array(np.zeros((*SHAPE, 3)))
    np.testing.assert_array_equal(vectors.corners_ras(), grid.corners_ras())


def test_volumes_compare_by_identity_and_can_be_hashed():
    """Comparing two volumes must not raise numpy's 'truth value is ambiguous' error."""
    first, second = numbered_volume(np.eye(3)), numbered_volume(np.eye(3))
    assert first == first and first != second
    assert len({first, second}) == 2


# --- canonical axial orientation ----------------------------------------------------------


@pytest.mark.parametrize("direction", SIGNED_PERMUTATIONS, ids=lambda d: str(d.astype(int).tolist()))
def test_every_axis_order_and_flip_becomes_canonical_axial(direction):
    source = numbered_volume(direction)
    canonical = axial_reorientation(source).apply_volume(source)
    np.testing.assert_allclose(canonical.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-12)
    np.testing.assert_array_equal(canonical.array, source_values_at_same_ras(source, canonical))


@pytest.mark.parametrize("direction", SIGNED_PERMUTATIONS, ids=lambda d: str(d.astype(int).tolist()))
def test_undo_restores_the_source_array(direction):
    source = numbered_volume(direction)
    reorientation = axial_reorientation(source)
    np.testing.assert_array_equal(reorientation.undo(reorientation.apply(source.array)), source.array)


def test_canonical_volume_keeps_spacing_per_physical_axis():
    direction = SIGNED_PERMUTATIONS[-1]  # voxel axes run S, A, R (reversed)
    source = numbered_volume(direction)
    canonical = axial_reorientation(source).apply_volume(source)
    # The voxel axis along R had spacing SPACING[2], along A SPACING[1], along S SPACING[0].
    expected = [SPACING[int(np.flatnonzero(direction[axis])[0])] for axis in range(3)]
    np.testing.assert_allclose(canonical.spacing, expected)


def test_canonical_input_is_left_alone():
    source = numbered_volume(np.diag([-1.0, -1.0, 1.0]))
    reorientation = axial_reorientation(source)
    assert reorientation.is_identity
    np.testing.assert_array_equal(reorientation.apply_volume(source).ijk_to_ras, source.ijk_to_ras)


def test_apply_returns_a_view_not_a_copy():
    source = numbered_volume(SIGNED_PERMUTATIONS[13])
    assert np.shares_memory(axial_reorientation(source).apply(source.array), source.array)


@pytest.mark.parametrize("axis", ["x", "y", "z"])
@pytest.mark.parametrize("index", [0, 13, 30, 47])
def test_oblique_volume_goes_to_the_nearest_canonical_axes(axis, index):
    straight = SIGNED_PERMUTATIONS[index]
    for degrees in (15, -15):
        source = numbered_volume(rotation(axis, degrees) @ straight)
        reorientation = axial_reorientation(source)
        assert reorientation == axial_reorientation(numbered_volume(straight))
        canonical = reorientation.apply_volume(source)
        # Each canonical axis stays within 15 degrees of its patient axis, and the voxels are
        # the same physical voxels as before.
        cosines = np.diag(canonical.direction) * [-1, -1, 1]
        assert np.all(cosines >= np.cos(np.radians(15)) - 1e-9)
        np.testing.assert_array_equal(canonical.array, source_values_at_same_ras(source, canonical))


def test_reorientation_of_a_vector_volume_is_that_of_its_grid():
    grid = numbered_volume(SIGNED_PERMUTATIONS[29])
    vectors = grid.with_array(np.zeros((*SHAPE, 2)))
    assert axial_reorientation(vectors) == axial_reorientation(grid)


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_obliquity_is_the_rotation_angle(axis):
    for degrees in (0, 15, -30):
        volume = numbered_volume(rotation(axis, degrees) @ SIGNED_PERMUTATIONS[21])
        assert obliquity_degrees(volume) == pytest.approx(abs(degrees), abs=1e-6)


def test_obliquity_is_that_of_the_most_tilted_voxel_axis():
    """Turned 45 degrees about S, then tilted 35 degrees: the i axis ends furthest from any
    patient axis, at arccos(cos 35 cos 45) (about 54.7 degrees); j stays 45 degrees from R."""
    c35, s35, c45, s45 = np.cos(np.radians(35)), np.sin(np.radians(35)), np.cos(np.radians(45)), np.sin(np.radians(45))
    direction = np.array([[c35 * c45, s45, s35 * c45],
                          [-c35 * s45, c45, -s35 * s45],
                          [-s35, 0.0, c35]])
    volume = Volume(np.zeros(SHAPE), make_ijk_to_ras(SPACING, ORIGIN, direction))
    assert obliquity_degrees(volume) == pytest.approx(np.degrees(np.arccos(c35 * c45)))


# --- resampling --------------------------------------------------------------------------

RAMP_GRADIENT = np.array([0.3, -1.1, 0.7])  # value change per mm along R, A, S
RAMP_OFFSET = 5.0


def ramp(volume_shape, ijk_to_ras) -> Volume:
    """f(ras) = gradient . ras + offset at every voxel centre: trilinear interpolation is exact."""
    ras = Volume(np.zeros(volume_shape), ijk_to_ras).ijk_to_ras_points(all_ijk(volume_shape))
    return Volume((ras @ RAMP_GRADIENT + RAMP_OFFSET).reshape(volume_shape), ijk_to_ras)


def source_index_of_targets(source: Volume, shape, target_ijk_to_ras) -> np.ndarray:
    """(K, J, I, 3) continuous source (i, j, k) of every target voxel centre."""
    target = Volume(np.zeros(shape), target_ijk_to_ras)
    return source.ras_to_ijk_points(target.ijk_to_ras_points(all_ijk(shape))).reshape(*shape, 3)


@pytest.fixture
def ramp_source() -> Volume:
    return ramp((12, 14, 16), make_ijk_to_ras((1.2, 0.8, 2.0), (-8.0, 4.0, 12.0), rotation("xyz", [8, -5, 12])))


def test_resampling_onto_the_own_grid_returns_the_input(ramp_source):
    out = resample(ramp_source, ramp_source.shape, ramp_source.ijk_to_ras, order=1, dtype=np.float64)
    np.testing.assert_allclose(out, ramp_source.array, rtol=0, atol=1e-9)


def test_centres_outside_the_source_get_zero_unless_told_otherwise(ramp_source):
    shifted = ramp_source.ijk_to_ras.copy()
    shifted[:3, 3] = ramp_source.ijk_to_ras_points([[0.0, 0.0, -1.0]])[0]  # one slice below the source
    out = resample(ramp_source, ramp_source.shape, shifted)
    assert np.all(out[0] == 0.0) and np.all(out[1:] != 0.0)
    reference = Volume(np.zeros(ramp_source.shape), shifted)
    out_like = resample_like(ramp_source, reference)
    assert np.all(out_like.array[0] == 0.0) and np.all(out_like.array[1:] != 0.0)


def test_resample_like_gives_the_asked_voxel_type(ramp_source):
    assert resample_like(ramp_source, ramp_source).array.dtype == np.float32
    assert resample_like(ramp_source, ramp_source, dtype=np.int16).array.dtype == np.int16


def test_resample_like_onto_a_vector_volume_uses_its_grid(ramp_source):
    reference = Volume(np.zeros((3, 4, 5, 2)), make_ijk_to_ras((2, 2, 2), ramp_source.origin))
    assert resample_like(ramp_source, reference).shape == (3, 4, 5)


def test_resample_like_puts_the_result_on_the_reference_grid(ramp_source):
    reference = Volume(np.zeros((3, 4, 5)), make_ijk_to_ras((2, 2, 2), ramp_source.origin))
    result = resample_like(ramp_source, reference)
    assert result.shape == (3, 4, 5)
    np.testing.assert_array_equal(result.ijk_to_ras, reference.ijk_to_ras)


@pytest.mark.parametrize("target_direction, target_spacing, shift", [
    (np.eye(3), (1.0, 1.0, 1.0), (1.3, -0.7, 2.1)),
    (rotation("xyz", [20, -15, 35]), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5)),
    (rotation("z", 50) @ SIGNED_PERMUTATIONS[29], (0.45, 1.7, 0.9), (-1.0, 2.0, 0.3)),
], ids=["shifted", "rotated", "anisotropic_permuted"])
def test_linear_resampling_is_exact_on_a_linear_ramp(ramp_source, target_direction, target_spacing, shift):
    shape = (14, 15, 16)
    centre = ramp_source.ijk_to_ras_points(np.array(ramp_source.shape[::-1]) / 2 - 0.5)[0]
    target = make_ijk_to_ras(target_spacing, np.zeros(3), target_direction)
    target[:3, 3] = centre + shift - target[:3, :3] @ (np.array(shape[::-1]) / 2 - 0.5)
    out = resample(ramp_source, shape, target, order=1, fill_value=np.nan, dtype=np.float64)
    expected = ramp(shape, target).array

    source_ijk = source_index_of_targets(ramp_source, shape, target)
    within_centres = np.all((source_ijk >= 0) & (source_ijk <= np.array(ramp_source.shape[::-1]) - 1), axis=-1)
    assert within_centres.mean() > 0.2 and not within_centres.all()  # the test covers both cases
    np.testing.assert_allclose(out[within_centres], expected[within_centres], rtol=0, atol=1e-9)


def test_points_beyond_the_source_voxels_get_the_fill_value(ramp_source):
    target = ramp_source.ijk_to_ras.copy()
    target[:3, 3] = ramp_source.ijk_to_ras_points([[-3.0, 0.25, 0.0]])[0]  # 3 columns to the "left"
    out = resample(ramp_source, ramp_source.shape, target, order=1, fill_value=-999.0)
    assert np.all(out[:, :, :2] == -999.0)  # source i = -3, -2: beyond the voxels
    assert np.all(out[:, :, 3:] != -999.0)  # source i >= 0: inside


def test_a_target_entirely_outside_is_all_fill_value(ramp_source):
    far = make_ijk_to_ras((1, 1, 1), ramp_source.origin + 1000.0)
    assert np.all(resample(ramp_source, (3, 3, 3), far, fill_value=7.0) == 7.0)


@pytest.mark.parametrize("order", [0, 1])
def test_outer_half_voxel_holds_the_edge_value(order):
    """The source voxels cover half a voxel beyond their centres (as in ITK and Slicer), so
    upsampling keeps the outer ring instead of turning it into fill_value."""
    source = Volume(np.arange(1.0, 5.0).reshape(1, 1, 4), np.eye(4))
    # A 4x finer grid over the same extent: centres at i = -0.375, -0.125, ..., 3.375.
    target = make_ijk_to_ras((0.25, 1, 1), (-0.375, 0, 0))
    out = resample(source, (1, 1, 16), target, order=order, fill_value=-1.0)[0, 0]
    assert out[0] == 1.0 and out[-1] == 4.0
    assert np.all(out != -1.0)


def test_one_slice_source_covers_its_slice_thickness():
    source = Volume(np.full((1, 8, 8), 3.0), make_ijk_to_ras((1, 1, 5)))
    inside = make_ijk_to_ras((1, 1, 1), (0, 0, -2.4))
    outside = make_ijk_to_ras((1, 1, 1), (0, 0, 2.6))
    assert np.all(resample(source, (1, 8, 8), inside) == 3.0)
    assert np.all(resample(source, (1, 8, 8), outside, fill_value=-1) == -1)


def test_centres_less_than_a_voxel_beyond_the_first_slice_get_the_fill_value():
    source = Volume(np.full((1, 8, 8), 3.0), make_ijk_to_ras((1, 1, 5)))
    below = make_ijk_to_ras((1, 1, 1), (0, 0, -2.6))  # 0.52 slice below the centre
    assert np.all(resample(source, (1, 8, 8), below, fill_value=-1) == -1)


LINE_OF_FOUR = np.arange(1.0, 5.0).reshape(1, 1, 4)  # four voxels along i, identity geometry


def test_centres_exactly_on_the_outer_faces_take_the_edge_values():
    target = make_ijk_to_ras((4.0, 1.0, 1.0), (-0.5, 0.0, 0.0))  # centres at i = -0.5 and 3.5
    out = resample(Volume(LINE_OF_FOUR, np.eye(4)), (1, 1, 2), target, order=0, fill_value=-1.0)
    np.testing.assert_array_equal(out[0, 0], [1.0, 4.0])


def test_the_outer_faces_are_closed_up_to_the_edge_tolerance():
    """Rounding noise of up to _EDGE_TOLERANCE voxel beyond a face still counts as inside,
    also when other centres of the same target lie far outside."""
    tolerance = resample_module._EDGE_TOLERANCE
    low_face = -0.5 - tolerance
    high_face = np.float64(4) - 0.5 + tolerance
    source = Volume(LINE_OF_FOUR, np.eye(4))
    # centres at the low face (with noise) and 20 voxels beyond the high face
    low = resample(source, (1, 1, 2), make_ijk_to_ras((24.0, 1.0, 1.0), (low_face, 0.0, 0.0)),
                   order=0, fill_value=-1.0)
    np.testing.assert_array_equal(low[0, 0], [1.0, -1.0])
    # centres at the high face (with noise) and 20 voxels beyond the low face
    high = resample(source, (1, 1, 2), make_ijk_to_ras((20.0, 1.0, 1.0), (high_face, 0.0, 0.0), np.diag([-1.0, 1, 1])),
                    order=0, fill_value=-1.0)
    np.testing.assert_array_equal(high[0, 0], [4.0, -1.0])


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("side", ["first", "last"])
def test_a_single_plane_beyond_the_source_gets_the_fill_value(axis, side):
    """A (6, 5, 4) target inside an (8, 7, 6) source except for its first or last plane along
    one array axis: exactly that plane, and nothing else, gets the fill value."""
    source = Volume(np.arange(1.0, 8 * 7 * 6 + 1).reshape(8, 7, 6), np.eye(4))
    target_shape = (6, 5, 4)
    shift_kji = np.zeros(3)
    # first plane at source index -1; or last plane at source index n (one past the end)
    shift_kji[axis] = -1 if side == "first" else source.shape[axis] - target_shape[axis] + 1
    target = make_ijk_to_ras((1, 1, 1), shift_kji[::-1])
    out = resample(source, target_shape, target, order=0, fill_value=-1.0)

    plane = [slice(None)] * 3
    plane[axis] = 0 if side == "first" else -1
    expected_outside = np.zeros(target_shape, bool)
    expected_outside[tuple(plane)] = True
    np.testing.assert_array_equal(out == -1.0, expected_outside)
    k, j, i = (np.arange(n) + int(s) for n, s in zip(target_shape, shift_kji))
    inside = source.array[np.ix_(np.clip(k, 0, 7), np.clip(j, 0, 6), np.clip(i, 0, 5))]
    np.testing.assert_array_equal(out[~expected_outside], inside[~expected_outside])


def test_no_mask_is_computed_for_a_target_inside_the_source():
    """_outside_source answers None, not an all-False mask, when every centre is inside:
    the own grid, and a grid whose outer centres lie exactly on the source's outer faces."""
    identity = np.eye(3)
    assert resample_module._outside_source(identity, np.zeros(3), (8, 7, 6), (8, 7, 6)) is None
    faces = np.diag([8.0 / 6, 7.0 / 5, 6.0 / 4])  # 7 centres from -0.5 to 7.5 along k, and so on
    assert resample_module._outside_source(faces, np.full(3, -0.5), (7, 6, 5), (8, 7, 6)) is None
    tolerance = resample_module._EDGE_TOLERANCE
    assert resample_module._outside_source(identity, np.full(3, -0.5 - tolerance), (2, 2, 2), (8, 7, 6)) is None
    high = np.asarray((8, 7, 6)) - 0.5 + tolerance
    assert resample_module._outside_source(-identity, high, (2, 2, 2), (8, 7, 6)) is None


def test_nearest_neighbour_keeps_label_values():
    labels = np.random.default_rng(1).choice([0, 3, 7, 250], size=(10, 11, 12)).astype(np.uint8)
    source = Volume(labels, make_ijk_to_ras((1.0, 1.0, 2.0)))
    target = make_ijk_to_ras((0.6, 0.7, 0.9), (0.3, 0.2, 0.1), rotation("z", 25))
    out = resample(source, (18, 16, 16), target, order=0, fill_value=0, dtype=np.uint8)
    assert set(np.unique(out)) <= {0, 3, 7, 250}
    assert {3, 7, 250} <= set(np.unique(out))
    # Every output voxel holds the value of the source voxel its centre falls in.
    continuous = source_index_of_targets(source, (18, 16, 16), target)
    ijk = np.rint(continuous).astype(int)
    valid = np.all((ijk >= 0) & (ijk < np.array(labels.shape[::-1])), axis=-1)
    # Centres halfway between two source voxels may go either way.
    valid &= np.all(np.abs(np.abs(continuous - ijk) - 0.5) > 1e-6, axis=-1)
    i, j, k = ijk[valid].T
    np.testing.assert_array_equal(out[valid], labels[k, j, i])


def test_order_other_than_0_or_1_is_refused(ramp_source):
    with pytest.raises(ValueError, match="order"):
        resample(ramp_source, (2, 2, 2), np.eye(4), order=3)


@pytest.mark.parametrize("order", [0, 1])
def test_chunked_resampling_equals_one_chunk(monkeypatch, ramp_source, order):
    target = make_ijk_to_ras((0.9, 1.1, 1.3), (-9.0, 3.0, 10.0), rotation("xyz", [-10, 5, 30]))
    shape = (13, 9, 11)
    whole = resample(ramp_source, shape, target, order=order, fill_value=-5)
    monkeypatch.setattr(resample_module, "_CHUNK_VOXELS", 2 * 9 * 11 + 1)  # 2 slices per chunk
    chunked = resample(ramp_source, shape, target, order=order, fill_value=-5)
    assert np.any(whole == -5) and np.any(whole != -5)
    np.testing.assert_array_equal(chunked, whole)


@pytest.mark.parametrize("shape, chunk_voxels, slabs", [
    ((5, 4, 3), 2 * 4 * 3 + 1, [2, 2, 1]),  # two slices fit in a chunk
    ((5, 4, 3), 1, [1, 1, 1, 1, 1]),  # a slice larger than a chunk: one slice at a time
    ((5, 1, 1), 3, [3, 2]),  # one-voxel slices: three per chunk
])
def test_each_scipy_call_computes_at_most_a_chunk_of_slices(monkeypatch, ramp_source, shape, chunk_voxels, slabs):
    calls = []
    affine_transform = resample_module.ndimage.affine_transform

    def counting(*args, output, **kwargs):
        calls.append(output.shape[0])
        return affine_transform(*args, output=output, **kwargs)

    monkeypatch.setattr(resample_module, "_CHUNK_VOXELS", chunk_voxels)
    monkeypatch.setattr(resample_module.ndimage, "affine_transform", counting)
    resample(ramp_source, shape, ramp_source.ijk_to_ras)
    assert calls == slabs


def box_volume(origin, size_mm, spacing=1.0) -> Volume:
    """A volume whose voxels exactly fill the RAS box [origin, origin + size_mm]."""
    shape = tuple(int(round(s / spacing)) for s in size_mm[::-1])
    return Volume(np.zeros(shape), make_ijk_to_ras([spacing] * 3, np.array(origin) + spacing / 2))


def test_overlap_of_identical_boxes_is_one():
    volume = box_volume((0, 0, 0), (10, 20, 30))
    assert overlap_fraction(volume, volume) == pytest.approx(1.0)


def test_overlap_of_disjoint_boxes_is_zero():
    assert overlap_fraction(box_volume((0, 0, 0), (10, 10, 10)), box_volume((50, 0, 0), (10, 10, 10))) == 0.0


def test_overlap_is_the_covered_fraction_of_the_reference():
    reference = box_volume((0, 0, 0), (10, 10, 10))
    half = box_volume((5, 0, 0), (10, 10, 10), spacing=0.5)
    assert overlap_fraction(half, reference) == pytest.approx(0.5)
    small = box_volume((0, 0, 0), (5, 5, 10))
    assert overlap_fraction(small, reference) == pytest.approx(0.25)
    assert overlap_fraction(reference, small) == pytest.approx(1.0)


def one_voxel_box(low, high) -> Volume:
    """A single voxel exactly filling the RAS box [low, high]."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    return Volume(np.zeros((1, 1, 1)), make_ijk_to_ras(high - low, (low + high) / 2))


def test_overlap_uses_each_patient_axis_extent_of_a_permuted_anisotropic_grid():
    # i runs along S (2 mm), j along R (0.5 mm), k along A (1 mm): 15 x 20 x 20 voxels fill
    # exactly the RAS box [0, 10] x [0, 20] x [0, 30]
    direction = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    permuted = Volume(np.zeros((20, 20, 15)), make_ijk_to_ras((2.0, 0.5, 1.0), (0.25, 0.5, 1.0), direction))
    same_box = box_volume((0, 0, 0), (10, 20, 30))
    assert overlap_fraction(same_box, permuted) == pytest.approx(1.0)
    assert overlap_fraction(permuted, same_box) == pytest.approx(1.0)
    right_half = one_voxel_box((5, -50, -50), (50, 50, 50))
    assert overlap_fraction(right_half, permuted) == pytest.approx(0.5)
    lower_third = one_voxel_box((-50, -50, -50), (50, 50, 10))
    assert overlap_fraction(lower_third, permuted) == pytest.approx(1 / 3)


def test_overlap_of_an_oblique_grid_is_taken_over_its_whole_bounding_box():
    # 8 x 4 x 5 voxels of 0.5 x 2 x 1 mm (a 4 x 8 x 5 mm block) turned 30 degrees about S,
    # centred on the origin: its RAS bounding box is 4 cos 30 + 8 sin 30 mm wide along R,
    # 4 sin 30 + 8 cos 30 mm along A and 5 mm along S
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    matrix = make_ijk_to_ras((0.5, 2.0, 1.0), (0, 0, 0), rotation("z", 30))
    matrix[:3, 3] = -matrix[:3, :3] @ ((np.array([8, 4, 5]) - 1) / 2)
    oblique = Volume(np.zeros((5, 4, 8)), matrix)
    half_width = np.array([4 * c + 8 * s, 4 * s + 8 * c, 5.0]) / 2
    assert overlap_fraction(one_voxel_box(-half_width, half_width), oblique) == pytest.approx(1.0)
    # cut off the first quarter of the width along R, then along A
    for axis in (0, 1):
        low = np.full(3, -100.0)
        low[axis] = -half_width[axis] / 2
        assert overlap_fraction(one_voxel_box(low, np.full(3, 100.0)), oblique) == pytest.approx(0.75)


# --- back-resampling only where the threshold can be reached -----------------------------------

def awkward_grids():
    """(name, slab IJK-to-RAS): oblique, anisotropic, flipped; the model grid is built from it
    as the pipeline does (`inplane_grid`)."""
    oblique = np.eye(4)
    oblique[:3, :3] = Rotation.from_euler("xyz", [12, -20, 33], degrees=True).as_matrix() @ np.diag([0.7, 0.9, 2.5])
    oblique[:3, 3] = [12.0, -40.0, 7.5]
    flipped = make_ijk_to_ras((0.8, 0.8, 3.0), (100.0, 50.0, -20.0))
    flipped[:3, :3] = flipped[:3, :3] @ np.diag([-1.0, 1.0, -1.0])
    return [("oblique", oblique), ("anisotropic", make_ijk_to_ras((0.6, 1.4, 5.0), (0.0, 0.0, 0.0))),
            ("flipped", flipped)]


@pytest.mark.parametrize("name, slab_ijk_to_ras", awkward_grids())
@pytest.mark.parametrize("where", ["centre", "edge", "plateau", "nowhere", "everywhere"])
@pytest.mark.parametrize("target_rows", [150, 23])  # finer than the 64 x 64 model grid, and coarser
def test_thresholding_only_where_reachable_gives_the_full_resampling_s_mask(name, slab_ijk_to_ras, where,
                                                                            target_rows):
    from PancreasSegMoNetLib.preprocessing import inplane_grid

    rng = np.random.default_rng(len(name) + len(where) + target_rows)
    slab_shape = (9, target_rows, 131 * target_rows // 150)
    grid = inplane_grid(Volume(np.zeros(slab_shape, np.float32), slab_ijk_to_ras), 64)
    k, j, i = np.mgrid[:9, :64, :64]
    probabilities = 0.3 * rng.random((9, 64, 64)).astype(np.float32)
    if where == "centre":
        probabilities += np.exp(-((j - 30) ** 2 + (i - 36) ** 2) / 60.0 - (k - 4) ** 2 / 4.0).astype(np.float32)
    elif where == "edge":
        probabilities[:, :, :8] = 0.9  # at least a voxel of the coarse target too
        probabilities[5, 63, 40] = 0.95
    elif where == "plateau":  # just below the threshold around a block above it: the mask
        probabilities[:] = 0.49  # reaches almost a whole model pixel beyond the block
        probabilities[2:7, 20:40, 25:45] = 0.9
    elif where == "everywhere":
        probabilities += 0.45
    source = Volume(probabilities, grid)
    expected = resample(source, slab_shape, slab_ijk_to_ras, order=1) >= 0.5
    found = resampled_at_least(source, slab_shape, slab_ijk_to_ras, 0.5)
    assert found.dtype == bool and found.shape == slab_shape
    np.testing.assert_array_equal(found, expected)
    if where != "edge":  # the model grid's edge can lie outside a narrow slab's columns
        assert expected.any() == (where != "nowhere")


def test_thresholding_needs_a_threshold_above_the_fill_value():
    source = Volume(np.ones((2, 4, 4), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="above the fill value"):
        resampled_at_least(source, (2, 4, 4), np.eye(4), 0.0)
