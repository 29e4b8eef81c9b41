"""An IPMN assessment in a Slicer scene: the region a node gives (ROI, segmentation, point), and
the result's nodes beside T2 (heat map, result table), and the review scene the command line
saves. A failure while changing the scene removes whatever was added."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from PancreasAILib.errors import InputError
from PancreasAILib.scene import add_volume_node, numpy_matrix, place_beside, removing_new_nodes_on_error
from PancreasAILib.volume import Volume

from .grids import RegionBox

COLOR_TABLE_NAME = "PancreasAI Inferno"
RESEARCH_LABEL = "For research use only"
# The heat map over T2 in the slice views: enough to see both.
HEAT_MAP_OPACITY = 0.5


# Attributes of the heat-map and table nodes: which model gave the result, what ran it at which
# precision, and its warnings.
MODEL_ATTRIBUTE = "IPMNRisk.Model"
MODEL_SHA256_ATTRIBUTE = "IPMNRisk.ModelSHA256"
ENGINE_ATTRIBUTE = "IPMNRisk.Engine"  # e.g. 'openvino 2026.4.1 fp32 cpu'
PRECISION_ATTRIBUTE = "IPMNRisk.Precision"  # 'fp32' or 'bf16'
WARNINGS_ATTRIBUTE = "IPMNRisk.Warnings"  # one warning per line
EXPLANATION_ATTRIBUTE = "IPMNRisk.Explanation"  # the heat map's method: 'rollout' or 'gradient-rollout'


@dataclass
class ResultNodes:
    """What `add_assessment_to_scene` added: the heat map (None without one) and the table."""

    heat_map_node: object
    table_node: object


def region_box_from_node(region_node, point_box_size_mm: float = 60.0) -> RegionBox:
    """A markups ROI, a segmentation (extent of its segments) or a markups point (centre of a
    cube of `point_box_size_mm`) -> an axis-aligned box in RAS."""
    if region_node is None:
        raise InputError("No region is given: place an ROI around the pancreas, or choose a "
                         "segmentation or a point.")
    if region_node.IsA("vtkMRMLMarkupsROINode"):
        bounds = np.zeros(6)
        region_node.GetRASBounds(bounds)
        low, high = bounds[0::2], bounds[1::2]
        if np.any(high <= low):
            raise InputError(f"The ROI '{region_node.GetName()}' is empty: place it around the pancreas.")
        return RegionBox((low + high) / 2, high - low)
    if region_node.IsA("vtkMRMLSegmentationNode"):
        return _segmentation_box(region_node)
    if region_node.IsA("vtkMRMLMarkupsNode"):
        if region_node.GetNumberOfControlPoints() < 1:
            raise InputError(f"'{region_node.GetName()}' has no point: place a point on the pancreas.")
        center = np.zeros(3)
        region_node.GetNthControlPointPositionWorld(0, center)
        return RegionBox(center, np.full(3, float(point_box_size_mm)))
    raise InputError(f"'{region_node.GetName()}' cannot give a region: use a markups ROI, a "
                     "segmentation or a markups point.")


def _segmentation_box(segmentation_node) -> RegionBox:
    """Bounding box of all non-empty segments, in world RAS."""
    import slicer
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    corners = []
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        image = slicer.vtkOrientedImageData()
        slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentation_node, segmentation.GetNthSegmentID(index), image)
        scalars = image.GetPointData().GetScalars()
        if scalars is None or not vtk_to_numpy(scalars).any():
            continue
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        first_voxel = np.eye(4)
        first_voxel[:3, 3] = image.GetExtent()[0::2]
        mask = Volume(vtk_to_numpy(scalars).reshape(image.GetDimensions()[::-1]), numpy_matrix(matrix) @ first_voxel)
        corners.append(RegionBox.from_mask(mask).corners_ras())
    if not corners:
        raise InputError(f"The segmentation '{segmentation_node.GetName()}' is empty: segment the pancreas first.")
    points = np.concatenate(corners)
    return RegionBox((points.min(0) + points.max(0)) / 2, points.max(0) - points.min(0))


def add_assessment_to_scene(t2_node, heat_map: Volume, summary: dict) -> ResultNodes:
    """Heat-map volume (inferno, 0..1) and a result table, both beside T2 in the hierarchy, each
    marked research-use-only and with the model, engine, precision, explanation method and warnings
    of `summary`."""
    scene = t2_node.GetScene()
    with removing_new_nodes_on_error(scene):
        # The heat map lies on T2's own grid; under T2's parent transform like T2.
        local = Volume(heat_map.array.astype(np.float32), _local_ijk_to_ras(t2_node, heat_map))
        heat_node = add_volume_node(scene, local, scene.GenerateUniqueName(f"{t2_node.GetName()} IPMN attention"))
        display = heat_node.GetDisplayNode()
        display.SetAndObserveColorNodeID(inferno_color_node(scene).GetID())
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, 1.0)
        heat_node.SetAttribute("IPMNRisk.ResearchUseOnly", "true")
        table_node = _result_table(scene, summary, t2_node.GetName())
        for node in (heat_node, table_node):
            node.SetAttribute(MODEL_ATTRIBUTE, summary["model"])
            node.SetAttribute(MODEL_SHA256_ATTRIBUTE, summary.get("model_sha256", ""))
            node.SetAttribute(ENGINE_ATTRIBUTE, summary.get("engine", ""))
            node.SetAttribute(PRECISION_ATTRIBUTE, summary.get("precision", ""))
            node.SetAttribute(EXPLANATION_ATTRIBUTE, summary.get("explanation") or "rollout")
            node.SetAttribute(WARNINGS_ATTRIBUTE, "\n".join(summary.get("warnings", [])))
            place_beside(scene, node, t2_node)
    return ResultNodes(heat_map_node=heat_node, table_node=table_node)


def _local_ijk_to_ras(t2_node, heat_map: Volume) -> np.ndarray:
    """`heat_map` is in world space; undo T2's parent transform, as the node will sit under it."""
    import vtk

    transform = t2_node.GetParentTransformNode()
    if transform is None:
        return heat_map.ijk_to_ras
    to_world = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(to_world)
    return np.linalg.inv(numpy_matrix(to_world)) @ heat_map.ijk_to_ras


def _explanation_text(summary: dict) -> str:
    """Which method made the heat map, and on what when not on the engine (older results: rollout)."""
    from .explanations import EXPLANATION_TITLES

    text = EXPLANATION_TITLES.get(summary.get("explanation") or "rollout", summary.get("explanation", ""))
    if summary.get("explanation_engine") and summary.get("explanation_engine") != summary.get("engine"):
        text += f" (computed by {summary['explanation_engine']})"
    return text


def _result_table(scene, summary: dict, t2_name: str):
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{t2_name} IPMN risk"))
    table = table_node.GetTable()
    import vtk

    for name in ("Quantity", "Value"):
        column = vtk.vtkStringArray()
        column.SetName(name)
        table.AddColumn(column)
    rows = [("Risk class", summary["class_name"])]
    rows += [(f"P({name})", f"{p:.3f} +- {s:.3f}") for name, p, s in
             zip(summary["class_names"], summary["probabilities"], summary["spread"])]
    rows += [("Test-time views", str(summary["test_time_views"])), ("Model", summary["model"]),
             ("Engine", summary.get("engine", "")),
             ("Heat map", _explanation_text(summary)),
             ("Region centre RAS (mm)", " ".join(f"{v:.1f}" for v in summary["region"]["center_ras"])),
             ("Region size (mm)", " ".join(f"{v:.1f}" for v in summary["region"]["size_mm"])),
             ("Note", _research_note(summary["research_use_notice"]))]
    for quantity, value in rows:
        row = table.InsertNextBlankRow()
        table.SetValue(row, 0, vtk.vtkVariant(quantity))
        table.SetValue(row, 1, vtk.vtkVariant(value))
    table_node.Modified()
    return table_node


def _research_note(notice: str) -> str:
    """The notice, labelled "For research use only" once (the notice may already say it)."""
    if notice.lower().startswith(RESEARCH_LABEL.lower()):
        return notice
    return f"{RESEARCH_LABEL}: {notice}"


def build_review_scene(t1: Volume, t2: Volume, heat_map: Volume, summary: dict):
    """A new scene for review (what `ipmn-risk` saves as .mrb): T1, T2, the heat map over T2 in
    the slice views centred on the region, the region as an ROI, the result table."""
    from PancreasAILib.scene import add_volume_node, create_scene, show_in_slice_views

    scene = create_scene()
    add_volume_node(scene, t1, "T1")
    t2_node = add_volume_node(scene, t2, "T2")
    result = add_assessment_to_scene(t2_node, heat_map, summary)
    center, size = summary["region"]["center_ras"], summary["region"]["size_mm"]
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "IPMN region")
    roi.SetCenter(*center)
    roi.SetSize(*size)
    roi.CreateDefaultDisplayNodes()
    show_in_slice_views(scene, t2_node, result.heat_map_node, HEAT_MAP_OPACITY, center, size)
    return scene


def inferno_color_node(scene):
    """Our inferno colour table (Slicer's own colour files may be absent), made once per scene."""
    from .colormap import colormap_table

    existing = scene.GetFirstNodeByName(COLOR_TABLE_NAME)
    if existing is not None:
        return existing
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOR_TABLE_NAME)
    node.SetTypeToUser()
    table = colormap_table(256)
    node.SetNumberOfColors(len(table))
    for index, (r, g, b) in enumerate(table):
        node.SetColor(index, f"{index}", float(r), float(g), float(b), 1.0)
    node.SetAttribute("Category", "PancreasAI")
    return node
