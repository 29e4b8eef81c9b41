"""PancreasSegMoNet on a real slicer-core MRML scene, through the one route every caller takes
(`PancreasSegMoNetLib.logic.segment`: the CT is written to a work folder, the command line runs
in this process, its files come back into the scene)."""

import numpy as np
import pytest

from conftest import use_model_for_default

from PancreasAILib.errors import InputError, OperationCancelled
from PancreasAILib.scene import add_volume_node
from PancreasAILib.progress import CancelToken
from PancreasAILib.volume import Volume
from PancreasSegMoNetLib import logic
from PancreasSegMoNetLib import pancreas_segment as adapter
from PancreasSegMoNetLib.segmentation import segment_ct


@pytest.fixture
def ct_node(mrml_scene, small_ct_phantom):
    volume = Volume(small_ct_phantom.hu, small_ct_phantom.ijk_to_ras)
    return add_volume_node(mrml_scene, volume, "CT phantom")


@pytest.fixture(autouse=True)
def use_random_model(monkeypatch, random_monet_card):
    """The route resolves 'model=None' through the registry: point it at the random model
    (in this process only; a background run must be given the model's path)."""
    from PancreasSegMoNetLib import registry

    use_model_for_default(monkeypatch, registry, random_monet_card)


def segment_voxels(segmentation_node, volume_node, segment_id=adapter.SEGMENT_ID) -> np.ndarray:
    import slicer
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)


def segmented_node(volume_node, *args, **kwargs):
    """The segmentation node that `logic.segment` filled (in this process)."""
    return logic.segment(volume_node, *args, **kwargs).segmentation_node


def node_ids(scene) -> set:
    return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}


def test_segment_carries_name_colour_and_terminology(ct_node):
    node = segmented_node(ct_node)
    segment = node.GetSegmentation().GetSegment(adapter.SEGMENT_ID)
    assert segment.GetName() == "Pancreas"
    np.testing.assert_allclose(segment.GetColor(), (249 / 255, 180 / 255, 111 / 255), atol=1e-6)
    terminology = segment.GetTerminology()
    assert "SCT^15776009^Pancreas" in terminology and "SCT^123037004^Anatomical Structure" in terminology


def test_segment_voxels_equal_the_core_mask(ct_node, random_monet_card, small_ct_phantom):
    node = segmented_node(ct_node)
    expected = segment_ct(Volume(small_ct_phantom.hu, small_ct_phantom.ijk_to_ras), random_monet_card).mask.array
    assert expected.any()
    np.testing.assert_array_equal(segment_voxels(node, ct_node), expected)


def test_reference_geometry_is_the_input_volume(ct_node):
    import slicer

    node = segmented_node(ct_node)
    reference = node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
    assert reference is ct_node


def test_oblique_volume_keeps_its_geometry_in_the_segment(mrml_scene, small_ct_phantom):
    import slicer
    from scipy.spatial.transform import Rotation

    tilt = np.eye(4)
    tilt[:3, :3] = Rotation.from_euler("xz", [10, -7], degrees=True).as_matrix()
    volume = Volume(small_ct_phantom.hu, tilt @ small_ct_phantom.ijk_to_ras)
    node = add_volume_node(mrml_scene, volume, "oblique CT")
    segmentation = segmented_node(node)
    image = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation, adapter.SEGMENT_ID, image)
    from PancreasAILib.scene import numpy_matrix
    import vtk
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    np.testing.assert_allclose(numpy_matrix(matrix)[:3, :3], volume.ijk_to_ras[:3, :3], atol=1e-6)


def test_segmentation_goes_under_the_input_study(mrml_scene, ct_node):
    hierarchy = mrml_scene.GetSubjectHierarchyNode()
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient 1")
    study = hierarchy.CreateStudyItem(patient, "Study 1")
    item = hierarchy.GetItemByDataNode(ct_node)
    if item:
        hierarchy.SetItemParent(item, study)
    else:
        hierarchy.CreateItem(study, ct_node)
    node = segmented_node(ct_node)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study


def test_rerun_replaces_only_its_own_segment(ct_node):
    node = segmented_node(ct_node)
    user_id = node.GetSegmentation().AddEmptySegment("user_liver", "Liver", [0.5, 0.2, 0.1])
    liver = np.zeros(ct_node.GetImageData().GetDimensions()[::-1], np.uint8)
    liver[2:5, 10:30, 10:30] = 1
    import slicer
    slicer.util.updateSegmentBinaryLabelmapFromArray(liver, node, user_id, ct_node)
    again = segmented_node(ct_node, node, threshold=0.7)
    assert again is node
    assert node.GetSegmentation().GetNumberOfSegments() == 2
    np.testing.assert_array_equal(segment_voxels(node, ct_node, user_id), liver)
    assert node.GetSegmentation().GetSegment(user_id).GetName() == "Liver"


def test_rerun_with_a_higher_threshold_updates_the_voxels(ct_node):
    node = segmented_node(ct_node, threshold=0.3, keep_largest_component=False)
    low = segment_voxels(node, ct_node).sum()
    segmented_node(ct_node, node, threshold=0.8, keep_largest_component=False)
    assert segment_voxels(node, ct_node).sum() < low


def test_failure_leaves_the_scene_as_it_was(mrml_scene, ct_node):
    before = node_ids(mrml_scene)
    with pytest.raises(InputError):
        segmented_node(ct_node, threshold=2.0)
    assert node_ids(mrml_scene) == before


def test_cancel_leaves_the_scene_as_it_was(mrml_scene, ct_node):
    token = CancelToken()
    token.cancel()
    before = node_ids(mrml_scene)
    with pytest.raises(OperationCancelled):
        segmented_node(ct_node, cancel=token)
    assert node_ids(mrml_scene) == before


def test_failure_while_writing_restores_the_previous_segment(monkeypatch, ct_node):
    node = segmented_node(ct_node, threshold=0.3, keep_largest_component=False)
    previous = segment_voxels(node, ct_node).copy()
    real = adapter._set_segment_voxels
    calls = []

    def fail_first(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("disk full")
        return real(*args)

    monkeypatch.setattr(adapter, "_set_segment_voxels", fail_first)
    with pytest.raises(RuntimeError):
        segmented_node(ct_node, node, threshold=0.8, keep_largest_component=False)
    np.testing.assert_array_equal(segment_voxels(node, ct_node), previous)


def test_volume_under_linear_transform_is_used_in_world_space(mrml_scene, ct_node):
    from PancreasAILib.scene import volume_from_node, vtk_matrix

    shift = np.eye(4)
    shift[:3, 3] = [12.0, -4.0, 30.0]
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(vtk_matrix(shift))
    ct_node.SetAndObserveTransformNodeID(transform.GetID())
    local = volume_from_node(ct_node)
    node = segmented_node(ct_node)
    assert node.GetParentTransformNode() is transform
    import vtk
    matrix = vtk.vtkMatrix4x4()
    ct_node.GetIJKToRASMatrix(matrix)
    from PancreasAILib.scene import numpy_matrix
    np.testing.assert_allclose(local.ijk_to_ras, shift @ numpy_matrix(matrix))


def test_missing_volume_gives_a_clear_message():
    with pytest.raises(InputError, match="No CT volume"):
        segmented_node(None)


def test_import_mask_file_refuses_another_grid(tmp_path, ct_node):
    from PancreasAILib.volume_io import write_volume

    path = write_volume(Volume(np.zeros((3, 8, 8), np.uint8), np.eye(4)), tmp_path / "other.nii.gz")
    with pytest.raises(InputError, match="not on the grid"):
        adapter.import_mask_file(ct_node, path)


def test_import_mask_file_puts_the_cli_result_into_the_scene(tmp_path, ct_node, small_ct_phantom):
    from PancreasAILib.volume_io import write_volume

    mask = small_ct_phantom.pancreas.astype(np.uint8)
    path = write_volume(Volume(mask, small_ct_phantom.ijk_to_ras), tmp_path / "ct_pancreas.nii.gz")
    node = adapter.import_mask_file(ct_node, path)
    np.testing.assert_array_equal(segment_voxels(node, ct_node), mask)


def test_outcome_and_node_name_the_model_and_its_sha256(ct_node, random_monet_card):
    outcome = logic.segment(ct_node)
    node = outcome.segmentation_node
    assert (outcome.model_name, outcome.model_sha256) == (random_monet_card.name, random_monet_card.sha256)
    assert node.GetAttribute(logic.MODEL_ATTRIBUTE) == random_monet_card.name
    assert node.GetAttribute(logic.MODEL_SHA256_ATTRIBUTE) == random_monet_card.sha256
    assert outcome.threshold == pytest.approx(0.5)  # the card's


def test_outcome_counts_the_voxels_of_the_segment(ct_node):
    outcome = logic.segment(ct_node)
    voxels = segment_voxels(outcome.segmentation_node, ct_node)
    assert outcome.voxel_count == int(voxels.sum()) > 0
    spacing = np.prod(ct_node.GetSpacing())
    assert outcome.volume_ml == pytest.approx(voxels.sum() * spacing / 1000, abs=1e-3)
    assert outcome.seconds > 0


def test_a_plausible_ct_gives_no_warnings(ct_node):
    outcome = logic.segment(ct_node)
    assert outcome.warnings == []
    assert outcome.segmentation_node.GetAttribute(logic.WARNINGS_ATTRIBUTE) == ""


def test_each_warning_is_one_line_of_the_node_attribute(mrml_scene, small_ct_phantom):
    """A CT outside the Hounsfield range and tilted 30 degrees: two warnings, one per line."""
    from scipy.spatial.transform import Rotation

    tilt = np.eye(4)
    tilt[:3, :3] = Rotation.from_euler("x", 30, degrees=True).as_matrix()
    volume = Volume((small_ct_phantom.hu + 1500).astype(np.int16), tilt @ small_ct_phantom.ijk_to_ras)
    outcome = logic.segment(add_volume_node(mrml_scene, volume, "rescaled CT"))
    assert len(outcome.warnings) == 2
    assert "Hounsfield" in outcome.warnings[0] and "tilted 30 degrees" in outcome.warnings[1]
    assert outcome.segmentation_node.GetAttribute(logic.WARNINGS_ATTRIBUTE).split("\n") == outcome.warnings
