"""assess(): a T1/T2 pair and a region -> risk class, probabilities, spread and a heat map
that lands where the model looked, on T2's own grid in patient space."""

import numpy as np
import pytest

from conftest import save_random_vit
from PancreasAILib.errors import InputError, ModelFileError, OperationCancelled
from PancreasAILib.progress import CancelToken
from PancreasAILib.resample import resample_like
from PancreasAILib.volume import Volume, make_ijk_to_ras
from PancreasAILib.weights import ModelCard
from IPMNRiskLib import inference as inference_module
from IPMNRiskLib import rollout as rollout_module
from IPMNRiskLib.inference import RESEARCH_USE_NOTICE, Assessment, RegionBox, assess, model_input, render_grid_png

CLASSES = ["normal", "low-risk IPMN", "high-risk IPMN"]
LPS = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def mr_case(small_mr_phantom):
    """Synthetic paired T1/T2 with a high-risk IPMN; (t1, t2, region around the pancreas)."""
    phantom = small_mr_phantom
    t1, t2 = Volume(phantom.t1, phantom.ijk_to_ras), Volume(phantom.t2, phantom.ijk_to_ras)
    return t1, t2, RegionBox(*phantom.pancreas_box_ras), phantom


@pytest.fixture  # per test: mutation testing credits only the tests that run assess() themselves
def assessment(mr_case, random_vit_card):
    t1, t2, region, _ = mr_case
    return assess(t1, t2, region, random_vit_card)


# --- what comes out -------------------------------------------------------------------------------

def test_probabilities_sum_to_one_and_the_spread_is_not_negative(assessment):
    assert assessment.probabilities.shape == (3,) and assessment.spread.shape == (3,)
    assert assessment.probabilities.sum() == pytest.approx(1.0)
    assert np.all(assessment.spread >= 0) and assessment.views == 8


def test_the_class_is_the_most_probable_and_named_by_the_model_card(assessment):
    assert assessment.risk_class == int(np.argmax(assessment.probabilities))
    assert assessment.class_name == CLASSES[assessment.risk_class]
    assert assessment.model_name == "ipmn-random"
    assert assessment.class_names == tuple(CLASSES)
    assert assessment.research_use_notice == RESEARCH_USE_NOTICE
    assert "research use only" in RESEARCH_USE_NOTICE.lower()


def test_the_heat_map_is_on_t2_s_grid_with_its_peak_at_one(mr_case, assessment):
    _, t2, _, _ = mr_case
    heat = assessment.heat_map
    assert heat.shape == t2.shape and heat.array.dtype == np.float32
    np.testing.assert_array_equal(heat.ijk_to_ras, t2.ijk_to_ras)
    assert heat.array.max() == pytest.approx(1.0) and heat.array.min() >= 0.0


def test_the_heat_map_is_zero_outside_the_region(mr_case, assessment):
    _, t2, region, _ = mr_case
    k, j, i = np.indices(t2.shape)
    ras = t2.ijk_to_ras_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    margin = np.asarray(region.size_mm) / 2 + 1e-3
    outside = np.any(np.abs(ras - region.center_ras) > margin, axis=1).reshape(t2.shape)
    assert outside.any() and np.all(assessment.heat_map.array[outside] == 0)
    assert np.count_nonzero(assessment.heat_map.array[~outside]) > 0


def test_the_grid_image_is_the_two_channel_model_input(assessment):
    grid = assessment.grid_image
    assert grid.shape == (192, 192, 2)
    assert grid.min() >= 0.0 and grid.max() <= 1.0
    assert not np.allclose(grid[..., 0], grid[..., 1])
    assert assessment.grid_heat.shape == (192, 192) and assessment.grid_heat.max() == pytest.approx(1.0)


def test_tiles_show_nine_consecutive_axial_slices_inside_the_region(mr_case, assessment):
    _, t2, region, _ = mr_case
    centers = assessment.tile_centers_ras
    assert centers.shape == (9, 3)
    np.testing.assert_allclose(np.diff(centers[:, 2]), t2.spacing[2])
    assert np.all(np.abs(centers - region.center_ras) <= np.asarray(region.size_mm) / 2)


def test_without_rollout_there_is_no_heat_map(mr_case, random_vit_card):
    t1, t2, region, _ = mr_case
    result = assess(t1, t2, region, random_vit_card, tta=False, rollout=False)
    assert result.heat_map is None and result.grid_heat is None
    assert np.all(result.spread == 0) and result.views == 1


def test_a_segmentation_mask_can_give_the_region(mr_case, random_vit_card):
    t1, t2, _, phantom = mr_case
    region = RegionBox.from_mask(Volume(phantom.pancreas.astype(np.uint8), phantom.ijk_to_ras))
    result = assess(t1, t2, region, random_vit_card, tta=False)
    assert result.probabilities.sum() == pytest.approx(1.0)


def test_pre_processing_named_in_the_card_is_applied(mr_case, random_vit_card, tmp_path):
    t1, t2, region, _ = mr_case
    smoothing_card = save_random_vit(tmp_path, "ipmn-smoothing", {"smoothing": {"iterations": 3}})
    plain = assess(t1, t2, region, random_vit_card, tta=False, rollout=False)
    smoothed = assess(t1, t2, region, smoothing_card, tta=False, rollout=False)
    def roughness(image):  # pixel-to-pixel change relative to the overall contrast
        return np.abs(np.diff(image, axis=1)).mean() / image.std()

    assert roughness(smoothed.grid_image[..., 1]) < 0.9 * roughness(plain.grid_image[..., 1])


@pytest.fixture(scope="module")
def demo_vit_card():
    """The bundled demo IPMN ViT's card (its weights are not loaded by `model_input`)."""
    from IPMNRiskLib.registry import model_registry

    return model_registry().resolve(None)


def with_preprocessing(card, preprocessing):
    return ModelCard(card.card_path, {**card.data, "preprocessing": preprocessing})


def test_a_card_normalised_over_the_whole_volume_feeds_the_model_another_input(mr_case, demo_vit_card):
    # the phantom's brightest T1 and T2 voxels lie outside the region around the pancreas
    t1, t2, region, _ = mr_case
    crop_stack = model_input(t1, t2, region, demo_vit_card)
    whole_volume = model_input(t1, t2, region, with_preprocessing(
        demo_vit_card, {**demo_vit_card.preprocessing, "normalisation": "volume_min_max"}))
    assert np.abs(whole_volume.x - crop_stack.x).max() > 0.05
    assert whole_volume.t2_stack.array.max() < 1.0
    assert whole_volume.x[0].max() < crop_stack.x[0].max()


def test_the_demo_card_and_a_card_without_normalisation_keep_the_crop_stack_normalisation(mr_case, demo_vit_card):
    t1, t2, region, _ = mr_case
    assert demo_vit_card.preprocessing["normalisation"] == "crop_stack_min_max"
    demo = model_input(t1, t2, region, demo_vit_card)
    assert demo.t2_stack.array.min() == 0.0 and demo.t2_stack.array.max() == 1.0
    unnamed = {key: value for key, value in demo_vit_card.preprocessing.items() if key != "normalisation"}
    np.testing.assert_array_equal(model_input(t1, t2, region, with_preprocessing(demo_vit_card, unnamed)).x, demo.x)


def test_progress_reaches_done_and_cancelling_stops_the_assessment(mr_case, random_vit_card):
    t1, t2, region, _ = mr_case
    reports = []
    assess(t1, t2, region, random_vit_card, tta=False, progress=lambda f, s: reports.append(f))
    assert reports[-1] == 1.0 and reports == sorted(reports)
    token = CancelToken()
    token.cancel()
    with pytest.raises(OperationCancelled):
        assess(t1, t2, region, random_vit_card, cancel=token)


def test_the_grid_picture_has_the_heat_map_in_colour_and_a_research_caption(assessment, tmp_path):
    from PIL import Image

    path = render_grid_png(assessment, tmp_path / "grid.png")
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    margin = 22  # orientation letters around the grid; colour bar (50) and caption (40) below
    assert image.shape == (384 + 2 * margin + 50 + 40, 384 + 2 * margin, 3)
    grid, caption = image[margin:margin + 384, margin:margin + 384], image[384 + 2 * margin + 50:]
    row, col = np.unravel_index(np.argmax(assessment.grid_heat), assessment.grid_heat.shape)
    r, g, b = grid[(row // 16 * 16 + 8) * 2, (col // 16 * 16 + 8) * 2]  # middle of the hottest patch
    assert max(r, g, b) - min(r, g, b) > 20  # coloured, not grey
    assert caption.max() > 200  # the caption text is drawn


def fixed_rollout(logits, patch_map, calls=None):
    """Injected rollout: the model's answer is `logits` (3,) for every view, its attention
    `patch_map` (12, 12); `calls` collects the (head_fusion, discard_ratio) it was asked for."""
    def rollout(engine, batch, grid, head_fusion="mean", discard_ratio=0.0):
        if calls is not None:
            calls.append((head_fusion, discard_ratio))
        return (np.tile(np.asarray(logits, np.float32), (len(batch), 1)),
                np.repeat(np.asarray(patch_map, float)[None], len(batch), 0))
    return rollout


def test_the_class_and_probabilities_are_the_softmax_of_the_model_s_answer(mr_case, random_vit_card,
                                                                            monkeypatch):
    monkeypatch.setattr(rollout_module, "engine_logits_and_rollout_maps", fixed_rollout([0.0, 1.0, 3.0], np.ones((12, 12))))
    t1, t2, region, _ = mr_case
    result = assess(t1, t2, region, random_vit_card)
    # softmax of (0, 1, 3): e^0, e^1, e^3 over their sum 1 + 2.718 + 20.09
    expected = np.exp([0.0, 1.0, 3.0]) / np.exp([0.0, 1.0, 3.0]).sum()
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-6)
    np.testing.assert_allclose(result.spread, 0.0, atol=1e-7)  # every view said the same
    assert result.risk_class == 2 and result.class_name == "high-risk IPMN" and result.views == 8


def test_class_names_come_from_the_model_card_and_must_be_those_of_a_task(mr_case, random_vit_card, monkeypatch):
    monkeypatch.setattr(rollout_module, "engine_logits_and_rollout_maps", fixed_rollout([2.0, 0.0, 0.0], np.ones((12, 12))))
    t1, t2, region, _ = mr_case
    result = assess(t1, t2, region, random_vit_card, tta=False)
    assert result.class_names == ("normal", "low-risk IPMN", "high-risk IPMN") and result.class_name == "normal"
    names = ["no IPMN", "IPMN, low grade", "IPMN, high grade"]  # the task follows the names: these are none
    card = ModelCard(random_vit_card.card_path, {**random_vit_card.data, "classes": names})
    with pytest.raises(ModelFileError, match="not those of an IPMN risk task"):
        assess(t1, t2, region, card, tta=False)


def test_the_grid_heat_is_the_patch_map_in_16_pixel_blocks_scaled_to_one(mr_case, random_vit_card, monkeypatch):
    patch_map = np.random.default_rng(4).uniform(0.05, 0.5, (12, 12))  # peak below 1
    monkeypatch.setattr(rollout_module, "engine_logits_and_rollout_maps", fixed_rollout([0.0, 0.0, 0.0], patch_map))
    t1, t2, region, _ = mr_case
    result = assess(t1, t2, region, random_vit_card, tta=False)
    expected = np.kron(patch_map, np.ones((16, 16))) / patch_map.max()
    np.testing.assert_allclose(result.grid_heat, expected, rtol=1e-6)


def test_attention_nowhere_gives_empty_heat_maps_not_undefined_ones(mr_case, random_vit_card, monkeypatch):
    monkeypatch.setattr(rollout_module, "engine_logits_and_rollout_maps", fixed_rollout([0.0, 0.0, 0.0], np.zeros((12, 12))))
    t1, t2, region, _ = mr_case
    result = assess(t1, t2, region, random_vit_card, tta=False)
    assert np.all(result.heat_map.array == 0) and np.all(result.grid_heat == 0)


def test_the_rollout_options_reach_the_rollout_and_without_rollout_none_is_computed(mr_case, random_vit_card,
                                                                                      monkeypatch):
    calls = []
    monkeypatch.setattr(rollout_module, "engine_logits_and_rollout_maps",
                        fixed_rollout([0.0, 0.0, 0.0], np.ones((12, 12)), calls))
    t1, t2, region, _ = mr_case
    assess(t1, t2, region, random_vit_card, tta=False, head_fusion="max", discard_ratio=0.5)
    assert calls == [("max", 0.5)]
    calls.clear()
    assess(t1, t2, region, random_vit_card, tta=False, rollout=False)
    assert calls == []


@pytest.mark.parametrize("discard_ratio", [-0.1, 1.0])
def test_a_discard_ratio_outside_0_to_1_is_refused_even_without_rollout(mr_case, random_vit_card, discard_ratio):
    t1, t2, region, _ = mr_case
    with pytest.raises(ValueError, match="discard_ratio"):
        assess(t1, t2, region, random_vit_card, tta=False, rollout=False, discard_ratio=discard_ratio)


def test_the_model_runs_on_the_requested_device(mr_case, random_vit_card, monkeypatch):
    devices = []
    choose_engine = inference_module.choose_engine

    def choose_and_watch(card, engine, precision, device):
        devices.append(device)
        return choose_engine(card, engine, precision, device)

    monkeypatch.setattr(inference_module, "choose_engine", choose_and_watch)
    t1, t2, region, _ = mr_case
    result = assess(t1, t2, region, random_vit_card, tta=False, rollout=False, device="cpu")
    assert devices == ["cpu"] and result.engine.endswith(" cpu")


@pytest.mark.parametrize("tta, classifying", [(True, "Classifying (8 test-time views)"), (False, "Classifying")])
def test_progress_names_each_stage_in_order(mr_case, random_vit_card, tta, classifying):
    t1, t2, region, _ = mr_case
    reports = []
    assess(t1, t2, region, random_vit_card, tta=tta, rollout=False, progress=lambda f, s: reports.append((f, s)))
    assert reports == [(0.0, "Checking the T1 and T2 volumes and the region"), (0.05, "Pre-processing T1"),
                       (0.25, "Pre-processing T2"), (0.45, "Cropping the region"), (0.55, "Loading the model"),
                       (0.65, classifying), (0.9, "Mapping attention back onto T2"), (1.0, "Done")]


def test_standardisation_maps_each_modality_onto_its_own_landmarks(mr_case, random_vit_card, tmp_path):
    from IPMNRiskLib.preprocessing import standardise_intensities

    percentiles = [1, 50, 99]
    # deliberately non-linear scales, so that a wrong modality's landmarks change the picture
    t1_landmarks, t2_landmarks = [0.0, 80.0, 100.0], [0.0, 10.0, 100.0]
    card = save_random_vit(tmp_path, "ipmn-standardised", {"standardisation": {
        "percentiles": percentiles, "t1_landmarks": t1_landmarks, "t2_landmarks": t2_landmarks}})
    t1, t2, region, _ = mr_case
    result = assess(t1, t2, region, card, tta=False, rollout=False)
    by_hand = assess(standardise_intensities(t1, percentiles, t1_landmarks),
                     standardise_intensities(t2, percentiles, t2_landmarks), region, random_vit_card,
                     tta=False, rollout=False)
    np.testing.assert_allclose(result.grid_image, by_hand.grid_image, atol=1e-6)


def test_the_grid_picture_is_the_t2_grid_with_the_heat_blended_in_tile_borders_and_a_caption(tmp_path):
    from PIL import Image

    from IPMNRiskLib.colormap import apply_colormap

    rng = np.random.default_rng(8)
    t2_grid = rng.uniform(-0.2, 1.2, (192, 192))  # beyond 0 .. 1 too: shown as black / white
    grid_heat = rng.uniform(-0.1, 1.1, (192, 192))
    assessment = Assessment(
        risk_class=2, class_name="high-risk IPMN", probabilities=np.array([0.1, 0.2, 0.7]),
        spread=np.zeros(3), heat_map=None, grid_image=np.stack([np.zeros((192, 192)), t2_grid], -1),
        grid_heat=grid_heat, model_name="ipmn-test", research_use_notice=RESEARCH_USE_NOTICE,
        class_names=tuple(CLASSES), tile_centers_ras=np.zeros((9, 3)), views=8)
    path = render_grid_png(assessment, tmp_path / "reports" / "case 1" / "grid")  # folders made, PNG anyway
    image = np.asarray(Image.open(path, formats=["PNG"]).convert("RGB"))
    margin = 22
    assert image.shape == (384 + 2 * margin + 50 + 40, 384 + 2 * margin, 3)
    # each grid pixel a 2 x 2 block: grey T2 under inferno heat of opacity 0.6 x heat (both clipped to 0 .. 1)
    alpha = 0.6 * np.clip(grid_heat, 0, 1)[..., None]
    grey = np.clip(t2_grid, 0, 1)[..., None] * 255.0
    expected = np.round((1.0 - alpha) * grey + alpha * apply_colormap(grid_heat)).astype(np.uint8)
    expected = np.repeat(np.repeat(expected, 2, 0), 2, 1)
    expected[[128, 256], :] = 90  # one grey line between tiles (different slices)
    expected[:, [128, 256]] = 90
    unlabelled = np.ones((384, 384), bool)  # each tile's slice position is written in its top 20 rows
    for top in (0, 128, 256):
        unlabelled[top:top + 20] = False
    grid = image[margin:margin + 384, margin:margin + 384]
    np.testing.assert_array_equal(grid[unlabelled], expected[unlabelled])
    caption = image[384 + 2 * margin + 50:]
    assert caption.max() > 200 and (caption == (255, 200, 0)).all(-1).any()  # white text, amber notice


def test_the_heat_colours_brighten_steadily_from_black_to_yellow():
    from IPMNRiskLib.colormap import colormap_table

    table = colormap_table()
    luminance = table @ [0.2126, 0.7152, 0.0722]
    assert np.all(np.diff(luminance) > 0)
    assert luminance[0] < 0.01 and luminance[-1] > 0.9


def test_the_heat_colours_follow_matplotlib_s_inferno():
    matplotlib = pytest.importorskip("matplotlib")
    from IPMNRiskLib.colormap import colormap_table

    reference = matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3]
    np.testing.assert_allclose(colormap_table(), reference, atol=0.02)


# --- inputs that are refused -------------------------------------------------------------------------

def shifted(volume, offset_mm):
    matrix = volume.ijk_to_ras.copy()
    matrix[:3, 3] += offset_mm
    return Volume(volume.array, matrix)


def bad_inputs(t1, t2, region, phantom):
    centre = np.asarray(region.center_ras)
    with_nan = t2.array.copy()
    with_nan[3, 10, 10] = np.nan
    return {
        "do not overlap": (shifted(t1, (1000.0, 0, 0)), t2, region),
        "outside the T2 volume": (t1, t2, RegionBox(centre + (500.0, 0, 0), region.size_mm)),
        "outside the T1 volume": (shifted(t1, (210.0, 0, 0)), t2, region),
        "same image": (t2, t2, region),
        "same image ": (Volume(t2.array.copy(), t2.ijk_to_ras), t2, region),
        "2 dimension": (t1, Volume(t2.array[5], t2.ijk_to_ras), region),
        "4 dimensions": (Volume(np.stack([t1.array] * 2, -1), t1.ijk_to_ras), t2, region),
        "not numbers": (t1, Volume(with_nan, t2.ijk_to_ras), region),
        "only 2 axial slice": (t1, t2.slab(6, 8), RegionBox(centre, (*region.size_mm[:2], 40.0))),
        "at least 8 x 8": (t1, t2, RegionBox(centre, (10.0, 10.0, 20.0))),
    }


@pytest.mark.parametrize("message", ["do not overlap", "outside the T2 volume", "outside the T1 volume",
                                     "same image", "same image ", "2 dimension", "4 dimensions",
                                     "not numbers", "only 2 axial slice", "at least 8 x 8"])
def test_unusable_inputs_are_refused_saying_why(mr_case, random_vit_card, message):
    t1, t2, region = bad_inputs(*mr_case)[message]
    with pytest.raises(InputError, match=message.strip()):
        assess(t1, t2, region, random_vit_card, tta=False)


@pytest.mark.parametrize("modality", ["T1", "T2"])
@pytest.mark.parametrize("fault", ["a pixel that is not a number", "no position in space"])
def test_refusals_name_the_volume_at_fault(mr_case, random_vit_card, modality, fault):
    t1, t2, region, _ = mr_case
    volume = t1 if modality == "T1" else t2
    array, matrix = volume.array.copy(), volume.ijk_to_ras.copy()
    if fault == "a pixel that is not a number":
        array[3, 10, 10] = np.nan
    else:
        matrix[0, 3] = np.inf
    pair = (Volume(array, matrix), t2) if modality == "T1" else (t1, Volume(array, matrix))
    with pytest.raises(InputError, match=f"The {modality} volume"):
        assess(*pair, region, random_vit_card, tta=False)


def test_the_same_pixels_placed_elsewhere_are_still_the_same_image(mr_case, random_vit_card):
    t1, t2, region, _ = mr_case
    with pytest.raises(InputError, match="same image"):
        assess(shifted(t2, (1.0, 0, 0)), t2, region, random_vit_card, tta=False)


@pytest.mark.parametrize("modality, axis, message", [
    ("T1", 0, "outside the T1 volume"), ("T1", 1, "outside the T1 volume"), ("T1", 2, "outside the T1 volume"),
    ("T2", 0, "only 1 axial slice"), ("T2", 1, "voxels of the T2 volume in the axial plane"),
    ("T2", 2, "voxels of the T2 volume in the axial plane")])
def test_a_volume_one_voxel_thick_is_judged_by_what_it_covers_of_the_region(mr_case, random_vit_card,
                                                                            modality, axis, message):
    t1, t2, region, _ = mr_case
    volume = t1 if modality == "T1" else t2
    middle = [slice(None)] * 3
    middle[axis] = slice(volume.shape[axis] // 2, volume.shape[axis] // 2 + 1)
    ijk = [0.0, 0.0, 0.0]
    ijk[2 - axis] = volume.shape[axis] // 2  # the slab's first voxel, in (i, j, k)
    matrix = volume.ijk_to_ras.copy()
    matrix[:3, 3] = volume.ijk_to_ras_points(np.array([ijk]))[0]
    thin = Volume(np.ascontiguousarray(volume.array[tuple(middle)]), matrix)
    pair = (thin, t2) if modality == "T1" else (t1, thin)
    with pytest.raises(InputError, match=message):
        assess(*pair, region, random_vit_card, tta=False)


# --- geometry: T1 on another grid, heat map back in patient space --------------------------------------

LESION_RAS = np.array([4.0, -3.0, 3.0])  # off the region's centre on every axis
REGION = RegionBox((0.0, 0.0, 0.0), (40.0, 40.0, 24.0))
SIGMA_XY, SIGMA_Z = 5.0, 2.0


def lesion_profile(ras):
    d = ras - LESION_RAS
    return np.exp(-0.5 * ((d[:, 0] ** 2 + d[:, 1] ** 2) / SIGMA_XY ** 2 + d[:, 2] ** 2 / SIGMA_Z ** 2))


def smooth_t1(ras):
    return 300.0 + 2.0 * ras[:, 0] - 1.5 * ras[:, 1] + ras[:, 2] + 40.0 * np.sin(ras[:, 1] / 9.0)


def volume_of(function, shape, spacing, direction=LPS, center=(0.0, 0.0, 0.0)):
    """An analytic image on a grid whose middle is at `center` (RAS mm)."""
    direction = np.asarray(direction, float)
    half_extent = direction @ (np.asarray(spacing) * (np.asarray(shape[::-1]) - 1) / 2)
    ijk_to_ras = make_ijk_to_ras(spacing, np.asarray(center) - half_extent, direction)
    geometry = Volume(np.zeros(shape, np.float32), ijk_to_ras)
    k, j, i = np.indices(shape)
    ras = geometry.ijk_to_ras_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    return geometry.with_array(function(ras).reshape(shape).astype(np.float32))


def rotation_about_r(degrees):
    a = np.radians(degrees)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


T2_GRIDS = {
    "axial": dict(shape=(30, 64, 64), spacing=(1.0, 1.0, 2.0), direction=LPS),
    "flipped": dict(shape=(30, 64, 64), spacing=(1.0, 1.0, 2.0), direction=np.diag([1.0, 1.0, -1.0])),
    "oblique": dict(shape=(30, 64, 64), spacing=(1.0, 1.0, 2.0), direction=rotation_about_r(15) @ LPS),
    "anisotropic": dict(shape=(20, 60, 90), spacing=(0.7, 1.1, 3.0), direction=LPS),
}


def test_t1_on_an_oblique_anisotropic_shifted_grid_is_resampled_onto_t2(random_vit_card):
    grid = T2_GRIDS["axial"]
    t2 = volume_of(lambda ras: 100 + 900 * lesion_profile(ras), **grid)
    t1_same_grid = volume_of(smooth_t1, **grid)
    t1_elsewhere = volume_of(smooth_t1, shape=(40, 70, 70), spacing=(1.3, 0.9, 1.7),
                             direction=rotation_about_r(20) @ LPS, center=(3.0, -4.0, 5.0))
    reference = assess(t1_same_grid, t2, REGION, random_vit_card, tta=False, rollout=False)
    result = assess(t1_elsewhere, t2, REGION, random_vit_card, tta=False, rollout=False)
    np.testing.assert_array_equal(result.grid_image[..., 1], reference.grid_image[..., 1])
    np.testing.assert_allclose(result.grid_image[..., 0], reference.grid_image[..., 0], atol=0.02)


def test_a_t1_covering_most_of_the_region_is_normalised_over_what_it_covers(random_vit_card):
    grid = T2_GRIDS["axial"]
    t2 = volume_of(lambda ras: 100 + 900 * lesion_profile(ras), **grid)
    # T1 spans R -12.5 .. 20.5 mm; the region spans -20 .. 20 mm: about 80 % covered
    t1 = volume_of(smooth_t1, shape=(30, 64, 34), spacing=(1.0, 1.0, 2.0), center=(4.0, 0.0, 0.0))
    t1_channel = assess(t1, t2, REGION, random_vit_card, tta=False, rollout=False).grid_image[..., 0]
    uncovered = t1_channel == 0
    assert 0.1 < uncovered.mean() < 0.3
    # had the empty margin counted as intensity 0, T1 itself would start near 0.5
    assert t1_channel[~uncovered].min() < 0.1


def test_t1_given_on_t2_s_grid_is_used_without_interpolation(mr_case, random_vit_card):
    # T1 resampled onto T2 beforehand gives the very same input as T1 on its own grid copy
    t1, t2, region, _ = mr_case
    t1_copy = resample_like(t1, t2)
    a = assess(t1_copy, t2, region, random_vit_card, tta=False, rollout=False)
    b = assess(t1, t2, region, random_vit_card, tta=False, rollout=False)
    np.testing.assert_array_equal(a.grid_image, b.grid_image)


def patch_masses_of_t2(engine, batch, grid, head_fusion="mean", discard_ratio=0.0):
    """Injected rollout: each patch's total T2 intensity, i.e. attention exactly on the lesion
    as the model sees it in the tile grid."""
    return engine(batch)[0], batch[:, 1].reshape(-1, 12, 16, 12, 16).sum(axis=(2, 4))


@pytest.mark.parametrize("grid_name", list(T2_GRIDS))
def test_the_heat_map_lands_on_the_lesion_in_patient_space(grid_name, random_vit_card, monkeypatch):
    monkeypatch.setattr(rollout_module, "engine_logits_and_rollout_maps", patch_masses_of_t2)
    grid = T2_GRIDS[grid_name]
    t2 = volume_of(lambda ras: 100 + 900 * lesion_profile(ras), **grid)
    t1 = volume_of(lambda ras: 300 - 100 * lesion_profile(ras), **grid)
    heat = assess(t1, t2, REGION, random_vit_card).heat_map
    k, j, i = np.indices(heat.shape)
    ras = heat.ijk_to_ras_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1))
    weights = heat.array.ravel().astype(float)
    centroid = weights @ ras / weights.sum()
    error_voxels = np.linalg.solve(heat.ijk_to_ras[:3, :3], centroid - LESION_RAS)
    assert np.all(np.abs(error_voxels) <= 1.0), f"heat centre off by {error_voxels} voxels"


# --- the heat map and the tiles in patient space, whatever T2's storage order -----------------------
#
# One physical scan stored in several voxel orders. On its canonical grid (i to the left, j to
# posterior, k to superior) the region covers voxels i 4..67, j 3..66, k 1..11: 64 x 64 voxels in
# plane, so every voxel of the box is exactly one 64 x 64 tile pixel, and 11 slices, whose
# central 9 (box slices 1..9, canonical k 2..10) become the tiles.

CANONICAL_SHAPE = (13, 70, 72)  # (K, J, I)
CANONICAL_IJK_TO_RAS = make_ijk_to_ras((0.8, 0.9, 2.5), (31.0, 22.0, -14.0), LPS)
BOX_LOWER, BOX_UPPER = (4, 3, 1), (68, 67, 12)  # canonical (i, j, k), upper exclusive
TILE_SLICES_K = np.arange(2, 11)  # canonical k of tiles 0..8

#: storage axis b (i, j, k) holds canonical axis PERMUTATION[b], reversed where FLIPS[b]
STORAGE_ORDERS = {
    "axial": ((0, 1, 2), (False, False, False)),
    "axial reversed": ((0, 1, 2), (True, True, True)),
    "coronal": ((0, 2, 1), (False, True, False)),
    "sagittal": ((1, 2, 0), (False, True, True)),
    "cyclic permutation": ((2, 0, 1), (True, False, True)),
}


def region_of_canonical_box() -> RegionBox:
    low = CANONICAL_IJK_TO_RAS[:3, :3] @ (np.array(BOX_LOWER) - 0.3) + CANONICAL_IJK_TO_RAS[:3, 3]
    high = CANONICAL_IJK_TO_RAS[:3, :3] @ (np.array(BOX_UPPER) - 1 + 0.3) + CANONICAL_IJK_TO_RAS[:3, 3]
    return RegionBox(tuple((low + high) / 2), tuple(np.abs(high - low)))


def storage_to_canonical(order: str) -> np.ndarray:
    """4 x 4 taking storage voxel indices (i, j, k, 1) to canonical ones."""
    permutation, flips = STORAGE_ORDERS[order]
    canonical_dims = CANONICAL_SHAPE[::-1]
    matrix = np.zeros((4, 4))
    matrix[3, 3] = 1.0
    for axis, (canonical_axis, flip) in enumerate(zip(permutation, flips)):
        matrix[canonical_axis, axis] = -1.0 if flip else 1.0
        matrix[canonical_axis, 3] = canonical_dims[canonical_axis] - 1 if flip else 0.0
    return matrix


def canonical_index_of_storage_voxels(order: str) -> tuple[tuple[int, ...], tuple[np.ndarray, ...]]:
    """The storage shape (K, J, I), and for every storage voxel its canonical (k, j, i) index arrays."""
    permutation, _ = STORAGE_ORDERS[order]
    canonical_dims = CANONICAL_SHAPE[::-1]
    shape = tuple(canonical_dims[permutation[axis]] for axis in (2, 1, 0))
    k, j, i = np.indices(shape)
    ijk = np.stack([i, j, k, np.ones_like(i)], -1) @ storage_to_canonical(order).T
    ijk = np.rint(ijk).astype(int)
    return shape, (ijk[..., 2], ijk[..., 1], ijk[..., 0])


def stored(canonical_array: np.ndarray, order: str) -> Volume:
    """The canonical scan stored in `order` (same voxels, same physical places)."""
    shape, index = canonical_index_of_storage_voxels(order)
    array = canonical_array[index]
    assert array.shape == shape
    return Volume(np.ascontiguousarray(array), CANONICAL_IJK_TO_RAS @ storage_to_canonical(order))


def to_canonical(volume: Volume, order: str) -> np.ndarray:
    _, index = canonical_index_of_storage_voxels(order)
    canonical = np.zeros(CANONICAL_SHAPE, volume.array.dtype)
    canonical[index] = volume.array
    return canonical


@pytest.fixture(scope="module")
def canonical_pair():
    rng = np.random.default_rng(11)
    t1 = rng.uniform(100, 400, CANONICAL_SHAPE).astype(np.float32)
    t2 = rng.uniform(50, 900, CANONICAL_SHAPE).astype(np.float32)
    return t1, t2


def expected_heat_on_canonical_grid(patch_map: np.ndarray) -> np.ndarray:
    """Where each patch's value belongs: tile n (row n // 3, column n % 3) is canonical slice
    TILE_SLICES_K[n]; its pixel (row q, column p) is voxel (i0 + p, j0 + q); each 16 x 16 pixel
    block carries one patch. Scaled to max 1, zero elsewhere."""
    heat = np.zeros(CANONICAL_SHAPE)
    (i0, j0, _), block = BOX_LOWER, np.arange(64) // 16
    for n, k in enumerate(TILE_SLICES_K):
        rows, cols = 4 * (n // 3) + block, 4 * (n % 3) + block
        heat[k, j0:j0 + 64, i0:i0 + 64] = patch_map[np.ix_(rows, cols)]
    return heat / heat.max()


@pytest.mark.parametrize("order", list(STORAGE_ORDERS))
def test_each_patch_s_attention_lands_on_the_voxels_of_its_tile_pixels(order, canonical_pair, random_vit_card,
                                                                          monkeypatch):
    patch_map = np.random.default_rng(3).uniform(0.1, 1.0, (12, 12))  # every patch different

    def rollout_of_known_patches(engine, batch, grid, head_fusion="mean", discard_ratio=0.0):
        return engine(batch)[0], np.repeat(patch_map[None], len(batch), 0)

    monkeypatch.setattr(rollout_module, "engine_logits_and_rollout_maps", rollout_of_known_patches)
    t1, t2 = (stored(array, order) for array in canonical_pair)
    heat = assess(t1, t2, region_of_canonical_box(), random_vit_card, tta=False).heat_map
    assert heat.shape == t2.shape
    np.testing.assert_array_equal(heat.ijk_to_ras, t2.ijk_to_ras)
    np.testing.assert_allclose(to_canonical(heat, order), expected_heat_on_canonical_grid(patch_map),
                               atol=1e-5)


@pytest.mark.parametrize("order", list(STORAGE_ORDERS))
def test_tile_centres_are_the_middle_of_the_region_on_each_tile_slice(order, canonical_pair, random_vit_card):
    t1, t2 = (stored(array, order) for array in canonical_pair)
    result = assess(t1, t2, region_of_canonical_box(), random_vit_card, tta=False, rollout=False)
    # voxels i 4..67 and j 3..66: the middle is i 35.5, j 34.5
    ijk = np.array([[35.5, 34.5, k] for k in TILE_SLICES_K])
    expected = ijk @ CANONICAL_IJK_TO_RAS[:3, :3].T + CANONICAL_IJK_TO_RAS[:3, 3]
    np.testing.assert_allclose(result.tile_centers_ras, expected, atol=1e-6)


def test_the_real_rollout_heat_map_is_the_same_in_patient_space_whatever_t2_s_storage_order(
        canonical_pair, random_vit_card):
    from IPMNRiskLib.network import load_vit
    from IPMNRiskLib.tta import predict

    heat_maps, inputs = {}, {}
    for order in STORAGE_ORDERS:
        t1, t2 = (stored(array, order) for array in canonical_pair)
        result = assess(t1, t2, region_of_canonical_box(), random_vit_card)
        heat_maps[order], inputs[order] = to_canonical(result.heat_map, order), result.grid_image
    for order, grid_image in inputs.items():  # the model sees one input whatever the storage
        np.testing.assert_allclose(grid_image, inputs["axial"], atol=1e-5, err_msg=order)
    # the model's own rollout of its input, put where its patches belong
    patch_map = predict(load_vit(random_vit_card), np.moveaxis(result.grid_image, -1, 0)).patch_map
    expected = expected_heat_on_canonical_grid(patch_map)
    for order, heat in heat_maps.items():
        np.testing.assert_allclose(heat, expected, atol=1e-4, err_msg=order)


# --- the explanation method -------------------------------------------------------------------------

def test_the_paper_s_rollout_is_the_default_and_is_recorded_as_made_by_the_engine(assessment):
    assert assessment.explanation == "rollout" and assessment.explanation_engine == assessment.engine


def test_the_gradient_rollout_heat_map_is_the_chefer_map_of_the_assessed_class(mr_case, random_vit_card):
    from IPMNRiskLib.explanations import logits_and_gradient_rollout_maps
    from IPMNRiskLib.network import load_vit

    t1, t2, region, _ = mr_case
    result = assess(t1, t2, region, random_vit_card, tta=False, explanation="gradient-rollout", engine="pytorch")
    x = np.moveaxis(result.grid_image, -1, 0)[None]
    _, maps = logits_and_gradient_rollout_maps(load_vit(random_vit_card), x, result.risk_class)
    np.testing.assert_allclose(result.grid_heat, np.kron(maps[0], np.ones((16, 16))) / maps[0].max(), rtol=1e-4)
    assert result.explanation == "gradient-rollout" and result.heat_map.array.max() == pytest.approx(1.0)


def test_the_gradient_map_explains_the_class_of_the_probabilities_over_the_views(mr_case, random_vit_card,
                                                                                 monkeypatch):
    asked = []
    monkeypatch.setattr(inference_module, "gradient_rollout_map",
                        lambda vit, x, target_class, tta: asked.append((target_class, tta)) or np.ones((12, 12)))
    t1, t2, region, _ = mr_case
    result = assess(t1, t2, region, random_vit_card, explanation="gradient-rollout", engine="pytorch")
    assert asked == [(result.risk_class, True)]


def test_with_openvino_the_gradient_map_is_made_by_pytorch_and_the_result_says_so(mr_case, random_vit_card):
    t1, t2, region, _ = mr_case
    result = assess(t1, t2, region, random_vit_card, tta=False, explanation="gradient-rollout", engine="openvino",
                    device="cpu")
    reference = assess(t1, t2, region, random_vit_card, tta=False, explanation="gradient-rollout", engine="pytorch",
                       device="cpu")
    assert result.engine.startswith("openvino ") and result.explanation_engine.startswith("pytorch ")
    assert result.explanation_engine.endswith(" fp32 cpu")
    np.testing.assert_allclose(result.grid_heat, reference.grid_heat, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.probabilities, reference.probabilities, atol=1e-4)


def test_head_fusion_options_are_refused_for_the_gradient_method(mr_case, random_vit_card):
    t1, t2, region, _ = mr_case
    with pytest.raises(ValueError, match="belong to attention rollout"):
        assess(t1, t2, region, random_vit_card, explanation="gradient-rollout", head_fusion="max")


def test_an_unknown_explanation_is_refused_naming_the_known_ones(mr_case, random_vit_card):
    t1, t2, region, _ = mr_case
    with pytest.raises(ValueError, match="rollout, gradient-rollout"):
        assess(t1, t2, region, random_vit_card, explanation="grad-cam")


def test_the_grid_picture_names_the_method_of_its_heat_map():
    assert inference_module.heat_scale_title("gradient-rollout").startswith("gradient-weighted attention rollout")
    assert inference_module.heat_scale_title("rollout").startswith("attention rollout")
