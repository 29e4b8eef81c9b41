"""The "Pancreas" segment in a Slicer scene: a mask written by the command line goes into a
segmentation node (name, colour, terminology, beside the CT), and the review scene of the demo.

Any failure while changing the scene restores what was there (a new node is removed, a
replaced segment gets its old voxels back).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from PancreasAILib.errors import InputError
from PancreasAILib.scene import oriented_image, place_beside, world_ijk_to_ras
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import read_volume

SEGMENT_ID = "PancreasSegMoNet_pancreas"
SEGMENT_NAME = "Pancreas"
SEGMENT_COLOR = (249 / 255, 180 / 255, 111 / 255)
PANCREAS_TERMINOLOGY = (
    "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
    "~SCT^15776009^Pancreas~^^~Anatomic codes - DICOM master list~^^~^^")
# Marks the segment this module owns, so a re-run replaces it and nothing else.
SOURCE_TAG = "PancreasAI.Source"
SOURCE_VALUE = "PancreasSegMoNet"


def import_mask_file(volume_node, labelmap_path: str | Path, segmentation_node=None):
    """Put a mask written by the command line (on the volume's grid) into the scene."""
    mask = read_volume(labelmap_path)
    expected = world_ijk_to_ras(volume_node)
    dims = volume_node.GetImageData().GetDimensions()[::-1]
    if mask.shape != tuple(dims) or not np.allclose(mask.ijk_to_ras, expected, atol=1e-3):
        raise InputError(f"{labelmap_path} is not on the grid of '{volume_node.GetName()}'.")
    return apply_pancreas_mask(volume_node, mask.array > 0, segmentation_node)


def build_review_scene(ct: Volume, labelmap_path: str | Path, ct_name: str = "CT"):
    """A new scene for review (what the demo saves as .mrb): the CT in the slice views, centred
    on the pancreas, and the mask written by the command line as its "Pancreas" segment."""
    from PancreasAILib.scene import add_volume_node, create_scene, show_in_slice_views

    scene = create_scene()
    ct_node = add_volume_node(scene, ct, ct_name)
    segmentation_node = import_mask_file(ct_node, labelmap_path)
    # The segment's extent; an empty segment keeps the CT's, so then the views show the whole CT.
    bounds = np.zeros(6)
    segmentation_node.GetRASBounds(bounds)
    show_in_slice_views(scene, ct_node, center_ras=(bounds[0::2] + bounds[1::2]) / 2,
                        size_mm=bounds[1::2] - bounds[0::2])
    return scene


def apply_pancreas_mask(volume_node, mask: np.ndarray, segmentation_node=None):
    """Write a (K, J, I) mask on `volume_node`'s grid into our "Pancreas" segment."""
    scene = volume_node.GetScene()
    created = segmentation_node is None
    if created:
        segmentation_node = scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{volume_node.GetName()} pancreas"))
    segmentation = segmentation_node.GetSegmentation()
    had_segment = segmentation.GetSegment(SEGMENT_ID) is not None
    previous = _segment_snapshot(segmentation_node) if had_segment else None
    try:
        if created:
            segmentation_node.CreateDefaultDisplayNodes()
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
            place_beside(scene, segmentation_node, volume_node)
        if not had_segment:
            segmentation.AddEmptySegment(SEGMENT_ID, SEGMENT_NAME, list(SEGMENT_COLOR))
        segment = segmentation.GetSegment(SEGMENT_ID)
        segment.SetTag(segment.GetTerminologyEntryTagName(), PANCREAS_TERMINOLOGY)
        segment.SetTag(SOURCE_TAG, SOURCE_VALUE)
        _set_segment_voxels(segmentation_node, mask.astype(np.uint8), _volume_geometry(volume_node))
    except BaseException:
        if created:
            scene.RemoveNode(segmentation_node)
        elif not had_segment:
            segmentation.RemoveSegment(SEGMENT_ID)
        elif previous is not None:
            _set_segment_voxels(segmentation_node, *previous)
        raise
    return segmentation_node


def _volume_geometry(volume_node) -> np.ndarray:
    import vtk

    from PancreasAILib.scene import numpy_matrix

    # The segmentation sits under the same transform as the volume: use the local geometry.
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return numpy_matrix(matrix)


def _set_segment_voxels(segmentation_node, mask: np.ndarray, ijk_to_ras: np.ndarray) -> None:
    import slicer

    logic = slicer.vtkSlicerSegmentationsModuleLogic
    image = oriented_image(mask, ijk_to_ras)
    if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, SEGMENT_ID, logic.MODE_REPLACE,
                                            image.GetExtent()):
        raise RuntimeError("Slicer could not write the pancreas voxels into the segmentation.")


def _segment_snapshot(segmentation_node) -> tuple[np.ndarray, np.ndarray]:
    """The segment's current voxels and geometry, to restore them if an update fails."""
    import slicer
    from vtk.util.numpy_support import vtk_to_numpy

    from PancreasAILib.scene import numpy_matrix
    import vtk

    image = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation_node, SEGMENT_ID, image)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    dims = image.GetDimensions()
    extent = image.GetExtent()
    if image.GetPointData().GetScalars() is None or dims[0] <= 0:
        return np.zeros((1, 1, 1), np.uint8), numpy_matrix(matrix)
    array = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]).copy()
    # Shift the matrix so voxel (0, 0, 0) of the array is the extent's first voxel.
    shift = np.eye(4)
    shift[:3, 3] = extent[0::2]
    return (array > 0).astype(np.uint8), numpy_matrix(matrix) @ shift
