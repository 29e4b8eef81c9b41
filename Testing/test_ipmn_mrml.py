"""IPMNRisk on a real slicer-core scene: region nodes, and the one route every caller takes
(`IPMNRiskLib.logic.assess`, the command line run in this process): heat map, table, grid
picture, undo."""

import numpy as np
import pytest

from conftest import use_model_for_default

from PancreasAILib.errors import InputError, OperationCancelled
from PancreasAILib.scene import vtk_matrix
from PancreasAILib.progress import CancelToken
from IPMNRiskLib import logic
from IPMNRiskLib import result_nodes as adapter


@pytest.fixture(autouse=True)
def use_random_model(monkeypatch, random_vit_card):
    """'model=None' resolves to the random ViT (in this process only)."""
    from IPMNRiskLib import registry

    use_model_for_default(monkeypatch, registry, random_vit_card)


@pytest.fixture
def nodes(mr_nodes):
    return mr_nodes


def node_ids(scene) -> set:
    return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}


def test_roi_node_gives_its_box(nodes, small_mr_phantom):
    region = adapter.region_box_from_node(nodes[2])
    np.testing.assert_allclose(region.center_ras, small_mr_phantom.pancreas_box_ras[0], atol=1e-6)
    np.testing.assert_allclose(region.size_mm, small_mr_phantom.pancreas_box_ras[1], atol=1e-6)


def test_point_gives_a_cube_of_the_default_size(mrml_scene):
    point = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "pancreas point")
    point.AddControlPointWorld(12.0, -30.0, 5.0)
    region = adapter.region_box_from_node(point, point_box_size_mm=50)
    np.testing.assert_allclose(region.center_ras, (12, -30, 5))
    np.testing.assert_allclose(region.size_mm, (50, 50, 50))


def test_segmentation_gives_the_extent_of_its_segments(mrml_scene, nodes, small_mr_phantom):
    import slicer

    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(nodes[1])
    segment_id = segmentation.GetSegmentation().AddEmptySegment("pancreas")
    mask = np.zeros(small_mr_phantom.t2.shape, np.uint8)
    mask[5:9, 40:60, 30:70] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, nodes[1])
    region = adapter.region_box_from_node(segmentation)
    spacing = np.abs(np.diag(small_mr_phantom.ijk_to_ras)[:3])
    np.testing.assert_allclose(region.size_mm, np.array([40, 20, 4]) * spacing, atol=1e-4)


def test_empty_region_nodes_are_refused(mrml_scene):
    with pytest.raises(InputError, match="No region"):
        adapter.region_box_from_node(None)
    empty_point = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "nothing")
    with pytest.raises(InputError, match="no point"):
        adapter.region_box_from_node(empty_point)
    empty_segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(InputError, match="empty"):
        adapter.region_box_from_node(empty_segmentation)


def test_assessment_adds_a_heat_map_on_t2_grid_and_a_table(mrml_scene, nodes):
    import slicer

    t1, t2, roi = nodes
    result = logic.assess(t1, t2, roi)
    assert result.probabilities.sum() == pytest.approx(1.0)
    assert result.risk_class == int(np.argmax(result.probabilities))
    heat = slicer.util.arrayFromVolume(result.heat_map_node)
    assert heat.shape == slicer.util.arrayFromVolume(t2).shape
    assert heat.max() == pytest.approx(1.0) and heat.min() >= 0
    from PancreasAILib.scene import world_ijk_to_ras
    np.testing.assert_allclose(world_ijk_to_ras(result.heat_map_node), world_ijk_to_ras(t2))
    table = result.table_node.GetTable()
    values = {table.GetValue(r, 0).ToString(): table.GetValue(r, 1).ToString() for r in range(table.GetNumberOfRows())}
    assert values["Risk class"] == result.class_name
    assert "research use only" in values["Note"].lower()


def test_the_grid_picture_comes_back_as_png_bytes_and_no_work_folder_is_left(
        monkeypatch, tmp_path, nodes, random_vit_card):
    """The 3 x 3 T2 grid with the heat map, as the command line drew it for these very nodes."""
    import io
    import tempfile

    from PIL import Image

    from PancreasAILib.scene import volume_from_node
    from IPMNRiskLib.inference import assess, render_grid_png

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    t1, t2, roi = nodes
    result = logic.assess(t1, t2, roi)
    assert list(tmp_path.iterdir()) == []
    assert result.grid_png.startswith(b"\x89PNG")
    expected = assess(volume_from_node(t1), volume_from_node(t2), adapter.region_box_from_node(roi),
                      random_vit_card)
    expected_path = render_grid_png(expected, tmp_path / "expected.png")
    picture = np.asarray(Image.open(io.BytesIO(result.grid_png), formats=["PNG"]).convert("RGB"))
    np.testing.assert_array_equal(picture, np.asarray(Image.open(expected_path).convert("RGB")))


def test_heat_map_and_table_name_the_model_its_sha256_and_its_warnings(nodes, random_vit_card):
    result = logic.assess(*nodes)
    assert (result.model_name, result.model_sha256) == (random_vit_card.name, random_vit_card.sha256)
    for node in (result.heat_map_node, result.table_node):
        assert node.GetAttribute(adapter.MODEL_ATTRIBUTE) == random_vit_card.name
        assert node.GetAttribute(adapter.MODEL_SHA256_ATTRIBUTE) == random_vit_card.sha256
        assert node.GetAttribute(adapter.WARNINGS_ATTRIBUTE) == "\n".join(result.warnings)
        assert node.GetAttribute("IPMNRisk.GridPNG") is None  # the picture is result.grid_png


def test_heat_map_uses_a_perceptual_colour_table(nodes):
    result = logic.assess(*nodes)
    color = result.heat_map_node.GetDisplayNode().GetColorNode()
    assert color.GetName() == adapter.COLOR_TABLE_NAME and color.GetNumberOfColors() == 256
    low, high = [0.0] * 4, [0.0] * 4
    color.GetColor(0, low)
    color.GetColor(255, high)
    assert sum(low[:3]) < 0.1 and sum(high[:3]) > 2.5  # inferno: black to pale yellow


def test_results_go_beside_t2_in_its_study(mrml_scene, nodes):
    hierarchy = mrml_scene.GetSubjectHierarchyNode()
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "P"), "S")
    for node in nodes[:2]:
        hierarchy.CreateItem(study, node)
    result = logic.assess(*nodes)
    for node in (result.heat_map_node, result.table_node):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study


def test_heat_map_follows_t2_under_a_transform(mrml_scene, nodes):
    from PancreasAILib.scene import world_ijk_to_ras

    t1, t2, roi = nodes
    shift = np.eye(4)
    shift[:3, 3] = [5.0, 0.0, -8.0]
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(vtk_matrix(shift))
    for node in (t1, t2, roi):
        node.SetAndObserveTransformNodeID(transform.GetID())
    result = logic.assess(t1, t2, roi)
    assert result.heat_map_node.GetParentTransformNode() is transform
    np.testing.assert_allclose(world_ijk_to_ras(result.heat_map_node), world_ijk_to_ras(t2))


def test_same_volume_twice_is_refused_and_the_scene_is_unchanged(mrml_scene, nodes):
    before = node_ids(mrml_scene)
    with pytest.raises(InputError, match="same image"):
        logic.assess(nodes[1], nodes[1], nodes[2])
    assert node_ids(mrml_scene) == before


def test_region_outside_the_volumes_is_refused(mrml_scene, nodes):
    far = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far away")
    far.SetCenter(500, 500, 500)
    far.SetSize(40, 40, 40)
    before = node_ids(mrml_scene)
    with pytest.raises(InputError, match="outside"):
        logic.assess(nodes[0], nodes[1], far)
    assert node_ids(mrml_scene) == before


def test_cancel_leaves_the_scene_as_it_was(mrml_scene, nodes):
    token = CancelToken()
    token.cancel()
    before = node_ids(mrml_scene)
    with pytest.raises(OperationCancelled):
        logic.assess(*nodes, cancel=token)
    assert node_ids(mrml_scene) == before


def test_failure_while_adding_nodes_removes_what_was_added(monkeypatch, mrml_scene, nodes):
    def broken_table(*args):
        raise RuntimeError("table could not be made")

    monkeypatch.setattr(adapter, "_result_table", broken_table)
    before = node_ids(mrml_scene)
    with pytest.raises(RuntimeError):
        logic.assess(*nodes)
    assert node_ids(mrml_scene) == before
