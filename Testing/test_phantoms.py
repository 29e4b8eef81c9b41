"""Synthetic CT and MRI phantoms: what the demo training, the tests and the self-test rely on."""
import numpy as np
import pytest
from scipy import ndimage

from PancreasAIPhantoms.mr import MrPhantom, make_mr_phantom
from PancreasAIPhantoms.ct import CtPhantom, make_ct_phantom, make_ct_phantom_set

SMALL_CT = (16, 96, 96)


@pytest.fixture(scope="module")
def ct_phantoms() -> list[CtPhantom]:
    return [make_ct_phantom(seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def mr_phantoms() -> dict[tuple[int, int], MrPhantom]:
    return {(seed, risk): make_mr_phantom(seed, risk) for seed in (0, 1) for risk in (0, 1, 2)}


def _voxel_centres_ras(mask: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    ijk1 = np.stack([i, j, k, np.ones_like(i)]).astype(np.float64)
    return (ijk_to_ras @ ijk1)[:3].T


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# --- CT -------------------------------------------------------------------------------


def test_ct_same_seed_gives_identical_arrays():
    first, second = make_ct_phantom(7, shape=SMALL_CT), make_ct_phantom(7, shape=SMALL_CT)
    assert np.array_equal(first.hu, second.hu)
    assert np.array_equal(first.pancreas, second.pancreas)
    assert np.array_equal(first.ijk_to_ras, second.ijk_to_ras)


def test_ct_arrays_have_the_documented_shapes_and_types(ct_phantoms):
    phantom = ct_phantoms[0]
    assert phantom.hu.shape == (48, 256, 256) and phantom.hu.dtype == np.int16
    assert phantom.pancreas.shape == (48, 256, 256) and phantom.pancreas.dtype == bool
    assert phantom.ijk_to_ras.shape == (4, 4) and phantom.ijk_to_ras.dtype == np.float64


def test_ct_geometry_maps_columns_left_rows_posterior_slices_superior(ct_phantoms):
    for phantom in ct_phantoms:
        sx, sy, sz = phantom.spacing
        np.testing.assert_allclose(phantom.ijk_to_ras[:3, :3], np.diag([-sx, -sy, sz]))
        np.testing.assert_array_equal(phantom.ijk_to_ras[3], [0.0, 0.0, 0.0, 1.0])


def test_ct_default_field_of_view_holds_the_whole_body(ct_phantoms):
    for phantom in ct_phantoms:
        border = np.concatenate([phantom.hu[:, :, 0].ravel(), phantom.hu[:, :, -1].ravel()])
        assert np.median(border) < -900


def test_ct_honours_an_explicit_spacing():
    phantom = make_ct_phantom(3, shape=SMALL_CT, spacing=(0.8, 0.8, 2.5))
    assert phantom.spacing == (0.8, 0.8, 2.5)
    np.testing.assert_allclose(np.diag(phantom.ijk_to_ras)[:3], [-0.8, -0.8, 2.5])


def test_ct_air_outside_the_body_is_below_minus_900_hu(ct_phantoms):
    for phantom in ct_phantoms:
        corners = phantom.hu[:, :12, :12]
        assert np.median(corners) < -900


def test_ct_pancreas_is_present_and_inside_the_body(ct_phantoms):
    for phantom in ct_phantoms:
        assert phantom.pancreas.sum() * np.prod(phantom.spacing) > 20_000  # > 20 ml
        body = np.stack([ndimage.binary_fill_holes(s > -400) for s in phantom.hu])
        assert body[phantom.pancreas].all()


def test_ct_pancreas_median_is_enhancing_soft_tissue(ct_phantoms):
    for phantom in ct_phantoms:
        assert 80 <= np.median(phantom.hu[phantom.pancreas]) <= 150


def test_ct_pancreas_is_one_smooth_organ(ct_phantoms):
    for phantom in ct_phantoms:
        labels, count = ndimage.label(phantom.pancreas)
        largest = np.bincount(labels.ravel())[1:].max()
        assert largest / phantom.pancreas.sum() > 0.9


def test_ct_contains_fat_soft_tissue_contrast_and_bone(ct_phantoms):
    for phantom in ct_phantoms:
        hu = phantom.hu
        assert np.mean((hu > -150) & (hu < -50)) > 0.05  # subcutaneous and visceral fat
        assert np.mean((hu > 130) & (hu < 250)) > 0.002  # enhancing vessels and kidneys
        assert np.percentile(hu, 99.9) > 300  # vertebral bone


def test_ct_different_seeds_give_different_pancreas_position_and_shape(ct_phantoms):
    first, second = ct_phantoms
    assert _dice(first.pancreas, second.pancreas) < 0.7
    centre_first = _voxel_centres_ras(first.pancreas, first.ijk_to_ras).mean(axis=0)
    centre_second = _voxel_centres_ras(second.pancreas, second.ijk_to_ras).mean(axis=0)
    assert np.linalg.norm(centre_first[:2] - centre_second[:2]) > 2.0


def test_ct_phantom_set_yields_one_phantom_per_seed():
    phantoms = list(make_ct_phantom_set([4, 5], shape=SMALL_CT))
    assert len(phantoms) == 2
    assert np.array_equal(phantoms[0].hu, make_ct_phantom(4, shape=SMALL_CT).hu)


# --- MR -------------------------------------------------------------------------------


def test_mr_same_seed_and_class_give_identical_arrays(mr_phantoms):
    again = make_mr_phantom(1, 2)
    original = mr_phantoms[(1, 2)]
    assert np.array_equal(again.t1, original.t1) and np.array_equal(again.t2, original.t2)
    assert np.array_equal(again.lesion, original.lesion)
    np.testing.assert_array_equal(again.pancreas_box_ras[0], original.pancreas_box_ras[0])


def test_mr_arrays_have_the_documented_shapes_types_and_positive_signal(mr_phantoms):
    phantom = mr_phantoms[(0, 1)]
    for image in (phantom.t1, phantom.t2):
        assert image.shape == (24, 160, 160) and image.dtype == np.float32
        assert image.min() > 0
    assert phantom.pancreas.dtype == bool and phantom.lesion.dtype == bool
    assert phantom.risk_class == 1


def test_mr_geometry_maps_columns_left_rows_posterior_slices_superior(mr_phantoms):
    phantom = mr_phantoms[(0, 0)]
    np.testing.assert_allclose(phantom.ijk_to_ras[:3, :3], np.diag([-1.5, -1.5, 4.0]))
    np.testing.assert_array_equal(phantom.ijk_to_ras[3], [0.0, 0.0, 0.0, 1.0])


def test_mr_normal_pancreas_has_no_lesion(mr_phantoms):
    for seed in (0, 1):
        phantom = mr_phantoms[(seed, 0)]
        assert phantom.pancreas.any()
        assert not phantom.lesion.any()
        assert phantom.lesion_center_ras is None


def test_mr_lesion_lies_in_the_pancreas(mr_phantoms):
    for seed in (0, 1):
        for risk in (1, 2):
            phantom = mr_phantoms[(seed, risk)]
            assert phantom.lesion.any()
            assert phantom.pancreas[phantom.lesion].all()


def test_mr_lesion_and_its_centre_lie_in_the_pancreas_box(mr_phantoms):
    for seed in (0, 1):
        for risk in (1, 2):
            phantom = mr_phantoms[(seed, risk)]
            centre, size = phantom.pancreas_box_ras
            low, high = centre - size / 2, centre + size / 2
            points = _voxel_centres_ras(phantom.lesion, phantom.ijk_to_ras)
            assert (points >= low).all() and (points <= high).all()
            assert (phantom.lesion_center_ras >= low).all() and (phantom.lesion_center_ras <= high).all()


def test_mr_lesion_centre_is_within_the_lesion_extent(mr_phantoms):
    for seed in (0, 1):
        for risk in (1, 2):
            phantom = mr_phantoms[(seed, risk)]
            points = _voxel_centres_ras(phantom.lesion, phantom.ijk_to_ras)
            half_voxel = np.array([0.75, 0.75, 2.0])
            assert (phantom.lesion_center_ras >= points.min(axis=0) - half_voxel).all()
            assert (phantom.lesion_center_ras <= points.max(axis=0) + half_voxel).all()


def test_mr_high_risk_cyst_is_larger_than_low_risk_cyst(mr_phantoms):
    for seed in (0, 1):
        assert mr_phantoms[(seed, 1)].lesion.sum() < mr_phantoms[(seed, 2)].lesion.sum()


def test_mr_cyst_is_bright_on_t2_and_dark_on_t1_relative_to_the_gland(mr_phantoms):
    for seed in (0, 1):
        for risk in (1, 2):
            phantom = mr_phantoms[(seed, risk)]
            gland = phantom.pancreas & ~phantom.lesion
            lesion_t2, gland_t2 = phantom.t2[phantom.lesion], np.median(phantom.t2[gland])
            assert np.median(lesion_t2) > gland_t2
            assert np.percentile(lesion_t2, 90) > 1.5 * gland_t2  # the fluid, not its rim
            assert np.median(phantom.t1[phantom.lesion]) < np.median(phantom.t1[gland])


def test_mr_high_risk_gland_shows_a_dilated_fluid_bright_duct(mr_phantoms):
    for seed in (0, 1):
        high_risk = mr_phantoms[(seed, 2)]
        fluid_level = 0.6 * np.median(high_risk.t2[high_risk.lesion])
        bright = []
        for risk in (0, 2):
            phantom = mr_phantoms[(seed, risk)]
            gland = phantom.pancreas & ~ndimage.binary_dilation(phantom.lesion, iterations=2)
            bright.append(np.sum(phantom.t2[gland] > fluid_level))
        assert bright[0] < 20 < bright[1]


def test_mr_lesion_appears_on_the_nine_central_slices(mr_phantoms):
    for seed in (0, 1):
        for risk in (1, 2):
            phantom = mr_phantoms[(seed, risk)]
            start = phantom.t1.shape[0] // 2 - 4
            assert phantom.lesion[start:start + 9].any()


def test_mr_rejects_an_unknown_risk_class():
    with pytest.raises(ValueError):
        make_mr_phantom(0, 3)
