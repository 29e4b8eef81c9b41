"""Pictures a radiologist can read: orientation letters that follow the scan's real geometry, a
scale bar as long as it says, and for the IPMN grid a colour bar and each tile's slice position."""

import numpy as np
import pytest

from demo_render import _display_views, overlay_png
from PancreasAILib.picture import (PixelGeometry, cut_geometry, direction_letters, draw_scale_bar, length_text,
                                   scale_bar, slice_position_text)
from PancreasAILib.volume import Volume, make_ijk_to_ras
from IPMNRiskLib.grids import CropBox, stack_grid
from IPMNRiskLib.inference import (RESEARCH_USE_NOTICE, Assessment, grid_pixel_geometry, render_grid_png,
                                  tile_position_texts)

AXIAL = (5, slice(None), slice(None))  # a (K, J, I) array cut at k = 5: rows follow j, columns i


def rotation_about_s(degrees: float) -> np.ndarray:
    """Direction whose i and j axes are turned `degrees` from R and A towards A and L."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def edges(geometry: PixelGeometry) -> tuple[str, str, str, str]:
    labels = geometry.edge_labels()
    return labels.left, labels.right, labels.top, labels.bottom


# --- the letters ------------------------------------------------------------------------------------

@pytest.mark.parametrize("direction, letters", [((1, 0, 0), "R"), ((-1, 0, 0), "L"), ((0, 2, 0), "A"),
                                                ((0, -1, 0), "P"), ((0, 0, 1), "S"), ((0, 0, -3), "I")])
def test_a_direction_along_a_patient_axis_gets_that_axis_letter(direction, letters):
    assert direction_letters(direction) == letters


def test_an_oblique_direction_names_both_axes_it_leans_to_the_larger_first():
    assert direction_letters(rotation_about_s(30)[:, 0]) == "RA"
    assert direction_letters(-rotation_about_s(30)[:, 0]) == "LP"
    assert direction_letters(rotation_about_s(60)[:, 0]) == "AR"
    assert direction_letters(rotation_about_s(5)[:, 0]) == "R"  # a few degrees off still reads straight


def test_an_axial_cut_of_ras_stored_voxels_has_r_on_the_right():
    # i runs to R, j to A: stored as is, columns go to the patient's right and rows to anterior
    assert edges(cut_geometry(make_ijk_to_ras((1, 1, 1)), AXIAL)) == ("L", "R", "P", "A")


def test_flipping_x_swaps_the_left_and_right_letters():
    flipped = make_ijk_to_ras((1, 1, 1), direction=np.diag([-1.0, 1.0, 1.0]))
    assert edges(cut_geometry(flipped, AXIAL)) == ("R", "L", "P", "A")


def test_flipping_y_swaps_the_top_and_bottom_letters():
    flipped = make_ijk_to_ras((1, 1, 1), direction=np.diag([1.0, -1.0, 1.0]))
    assert edges(cut_geometry(flipped, AXIAL)) == ("L", "R", "A", "P")


def test_a_volume_turned_30_degrees_gets_oblique_letters():
    turned = make_ijk_to_ras((1, 1, 1), direction=rotation_about_s(30))
    assert edges(cut_geometry(turned, AXIAL)) == ("LP", "RA", "PR", "AL")


def test_a_reversed_slice_in_the_cut_turns_its_direction_round():
    coronal = (slice(None, None, -1), 3, slice(None))  # rows follow k from the top slice down
    assert edges(cut_geometry(make_ijk_to_ras((1, 1, 1)), coronal)) == ("L", "R", "S", "I")


# --- the demo's views: letters from the same transform as the pixels ------------------------------

def volume_with_a_marker(direction: np.ndarray, toward_ras: np.ndarray) -> tuple[Volume, np.ndarray]:
    """A 20 x 20 x 20 volume of 2 mm voxels centred on RAS 0, with a bright marker 12 mm from the
    centre toward `toward_ras`; the mask is the marker (so the views pass through it)."""
    ijk_to_ras = make_ijk_to_ras((2.0, 2.0, 2.0), direction=direction)
    ijk_to_ras[:3, 3] = -ijk_to_ras[:3, :3] @ np.full(3, 9.5)
    volume = Volume(np.zeros((20, 20, 20), np.float32), ijk_to_ras)
    i, j, k = np.round(volume.ras_to_ijk_points(12.0 * np.asarray(toward_ras, float))[0]).astype(int)
    array = volume.array.copy()
    array[k - 1:k + 2, j - 1:j + 2, i - 1:i + 2] = 1000.0
    return volume.with_array(array), (array > 0).astype(np.uint8)


def marker_side(image: np.ndarray) -> tuple[str, str]:
    """('left' or 'right', 'top' or 'bottom'): where the bright marker is in a picture."""
    rows, columns = np.nonzero(image > 0)
    return ("left" if columns.mean() < (image.shape[1] - 1) / 2 else "right",
            "top" if rows.mean() < (image.shape[0] - 1) / 2 else "bottom")


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, 1.0, 1.0]), np.diag([1.0, -1.0, 1.0]),
                                       np.diag([-1.0, -1.0, -1.0]), rotation_about_s(30)],
                         ids=["ras", "flipped x", "flipped y", "lpi", "turned 30 degrees"])
def test_the_edge_labelled_r_is_where_the_patient_s_right_is_in_every_view(direction):
    volume, mask = volume_with_a_marker(direction, toward_ras=(1.0, 0.0, 0.0))
    for view in _display_views(volume, mask):
        horizontal, _ = marker_side(view.image)
        assert getattr(view.geometry.edge_labels(), horizontal).startswith("R"), view.name


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([1.0, -1.0, -1.0]), rotation_about_s(30)],
                         ids=["ras", "flipped y and z", "turned 30 degrees"])
def test_the_edges_labelled_a_and_s_are_where_anterior_and_superior_are(direction):
    volume, mask = volume_with_a_marker(direction, toward_ras=(0.0, 1.0, 1.0))
    axial, coronal = _display_views(volume, mask)
    assert getattr(axial.geometry.edge_labels(), marker_side(axial.image)[1]).startswith("A")
    assert getattr(coronal.geometry.edge_labels(), marker_side(coronal.image)[1]).startswith("S")


def test_ras_stored_data_is_shown_radiologically_with_matching_letters():
    volume, mask = volume_with_a_marker(np.eye(3), toward_ras=(1.0, 0.0, 0.0))
    axial, coronal = _display_views(volume, mask)
    assert edges(axial.geometry) == ("R", "L", "A", "P")
    assert edges(coronal.geometry) == ("R", "L", "S", "I")


def test_an_oblique_volume_is_labelled_differently_from_a_straight_one():
    straight = _display_views(*volume_with_a_marker(np.eye(3), (1.0, 0.0, 0.0)))
    turned = _display_views(*volume_with_a_marker(rotation_about_s(30), (1.0, 0.0, 0.0)))
    assert edges(turned[0].geometry) != edges(straight[0].geometry)
    assert edges(turned[0].geometry) == ("RA", "LP", "AL", "PR")


def test_the_demo_picture_is_written_with_its_views(tmp_path):
    from PIL import Image

    volume, mask = volume_with_a_marker(np.diag([-1.0, 1.0, 1.0]), (1.0, 0.0, 0.0))
    path = overlay_png(volume, mask, tmp_path / "views.png", window=(0, 1000), title="test")
    assert Image.open(path).size[0] > 2 * 384 // 2


# --- scale bars -------------------------------------------------------------------------------------

def test_the_scale_bar_is_the_longest_round_length_that_fits():
    assert scale_bar(0.5, 120) == (50.0, 100)
    assert scale_bar(2.0, 30) == (50.0, 25)
    assert scale_bar(0.7, 40) == (20.0, 29)
    assert scale_bar(5.0, 0.5) is None


def test_scale_bar_lengths_are_written_in_mm_or_cm():
    assert [length_text(mm) for mm in (5.0, 10.0, 20.0, 50.0)] == ["5 mm", "1 cm", "2 cm", "5 cm"]


def test_anisotropic_pixels_give_a_scale_bar_from_their_width():
    geometry = PixelGeometry(row_step_ras=np.array([0.0, -3.0, 0.0]), column_step_ras=np.array([-0.8, 0.0, 0.0]))
    assert geometry.pixel_mm == (3.0, 0.8)
    assert scale_bar(geometry.pixel_mm[1], 100) == (50.0, 62)  # along the row: 0.8 mm a pixel
    assert scale_bar(geometry.pixel_mm[0], 100) == (100.0, 33)  # down a column: 3 mm a pixel


def test_resizing_a_picture_changes_its_pixel_size_per_axis():
    geometry = PixelGeometry(row_step_ras=np.array([0.0, 3.0, 0.0]), column_step_ras=np.array([0.7, 0.0, 0.0]))
    resized = geometry.resized((10, 20), (30, 28))
    assert resized.pixel_mm == pytest.approx((1.0, 0.5))
    assert edges(resized) == edges(geometry)


def test_the_scale_bar_drawn_is_as_long_as_it_says():
    from PIL import Image, ImageDraw

    from PancreasAILib.picture import label_font

    geometry = PixelGeometry(row_step_ras=np.array([0.0, 0.5, 0.0]), column_step_ras=np.array([0.5, 0.0, 0.0]))
    canvas = Image.new("RGB", (200, 40))
    draw_scale_bar(ImageDraw.Draw(canvas), (10, 30), geometry, 120, label_font(13))
    bar_row = np.asarray(canvas)[30, :, 0]
    white = np.flatnonzero(bar_row == 255)
    assert white[0] == 10 and white[-1] - white[0] == 100  # 5 cm at 0.5 mm a pixel


def test_a_grid_tile_pixel_spans_the_crop_box_over_the_tile_size_then_the_drawing_scale():
    # canonical (LPS-ordered) voxels of 0.5 mm in-plane; a box of 127 x 64 voxels -> 64 x 64 pixels
    canonical_ijk_to_ras = make_ijk_to_ras((0.5, 2.0, 3.0), direction=np.diag([-1.0, -1.0, 1.0]))
    _, stack_ijk_to_ras = stack_grid(Volume(np.zeros((10, 80, 140)), canonical_ijk_to_ras),
                                     CropBox((5, 5, 0), (132, 69, 10)))
    geometry = grid_pixel_geometry(stack_ijk_to_ras, scale=2)
    assert geometry.pixel_mm == pytest.approx((1.0, 0.5))  # 63 x 2 mm / 63 / 2 and 126 x 0.5 mm / 63 / 2
    assert edges(geometry) == ("R", "L", "A", "P")


# --- the IPMN grid picture -----------------------------------------------------------------------

def grid_assessment(tile_ijk_to_ras=None, with_heat=True) -> Assessment:
    rng = np.random.default_rng(3)
    centres = np.column_stack([np.zeros(9), np.zeros(9), -12.5 + 2.5 * np.arange(9)])
    return Assessment(
        risk_class=2, class_name="high-risk IPMN", probabilities=np.array([0.1, 0.2, 0.7]), spread=np.zeros(3),
        heat_map=None, grid_image=np.stack([np.zeros((192, 192)), rng.uniform(0, 1, (192, 192))], -1),
        grid_heat=rng.uniform(0, 1, (192, 192)) if with_heat else None, model_name="ipmn-test",
        research_use_notice=RESEARCH_USE_NOTICE, class_names=("normal", "low-risk IPMN", "high-risk IPMN"),
        tile_centers_ras=centres, views=8, tile_ijk_to_ras=tile_ijk_to_ras)


def test_each_tile_is_named_by_its_position_along_the_slice_axis():
    texts = tile_position_texts(grid_assessment(make_ijk_to_ras((1, 1, 2.5), direction=np.diag([-1.0, -1.0, 1.0]))))
    assert texts[0] == "S -12.5 mm" and texts[5] == "S 0.0 mm" and texts[8] == "S 7.5 mm"


def test_a_slice_position_is_read_along_the_axis_the_normal_points_to_most():
    assert slice_position_text((4.0, -7.25, 1.0), rotation_about_s(30)[:, 1]) == "A -7.2 mm"
    assert slice_position_text((4.0, -7.25, 1.0), (0.1, 0.2, -0.9)) == "S 1.0 mm"


def test_the_grid_picture_has_a_colour_bar_from_dark_to_bright(tmp_path):
    from PIL import Image

    stack = make_ijk_to_ras((1.25, 1.25, 2.5), direction=np.diag([-1.0, -1.0, 1.0]))
    image = np.asarray(Image.open(render_grid_png(grid_assessment(stack), tmp_path / "g.png")).convert("RGB"))
    without = np.asarray(Image.open(render_grid_png(grid_assessment(stack, with_heat=False),
                                                    tmp_path / "plain.png")).convert("RGB"))
    assert image.shape[0] > without.shape[0]  # the colour bar's rows
    luminance = image.astype(float) @ [0.2126, 0.7152, 0.0722]
    columns = slice(40, image.shape[1] - 40)
    bars = [row for row in luminance[400:, columns]
            if row[0] < 30 and row[-1] > 200 and np.all(np.diff(row) >= -1)]
    assert bars, "no row runs steadily from the dark to the bright end of the colour map"


def test_a_scale_bar_for_pixels_that_are_not_square_has_a_vertical_arm_of_the_same_length():
    from PIL import Image, ImageDraw

    from PancreasAILib.picture import label_font

    geometry = PixelGeometry(row_step_ras=np.array([0.0, 0.5, 0.0]), column_step_ras=np.array([1.0, 0.0, 0.0]))
    canvas = Image.new("RGB", (200, 140))
    draw_scale_bar(ImageDraw.Draw(canvas), (10, 130), geometry, 120, label_font(13))
    picture = np.asarray(canvas)[..., 0]
    across, up = np.flatnonzero(picture[130] == 255), np.flatnonzero(picture[:, 10] == 255)
    # from the corner at (10, 130): 5 cm both ways, the longest that fits in 120 pixels of 0.5 mm
    assert across[-1] - 10 == 50 and 130 - up[0] == 100
