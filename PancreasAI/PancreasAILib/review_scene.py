"""A case of the review worklist (`review.ReviewCase`) in an MRML scene, and a reviewer's
corrected pancreas back to a file.

Works on any vtkMRMLScene: Slicer's own, slicer-core's outside the application, and the scene
trame-slicer renders in the browser. A segmentation case shows the CT with its "Pancreas"
segment; an IPMN case shows T2 with the attention heat map over it (inferno, 0 to 1), T1
beside it, the region as an ROI and the result table, as `ipmn-risk` saves them in its .mrb.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import InputError, PancreasAIError
from .review import REVIEWED_SUFFIX, ReviewCase, ReviewError, Worklist, reviewed_segmentation_name
from .scene import SLICE_VIEWS, add_volume_node, removing_new_nodes_on_error, show_in_slice_views, volume_from_node
from .volume_io import read_volume

HEAT_MAP_OPACITY = 0.5
HEAT_MAP_FLOOR = 0.1  # heat below this share of the peak is not drawn
# Window / level presets a radiologist expects for abdominal CT (HU); MR is windowed automatically.
CT_PRESETS = {"abdomen": (400.0, 40.0), "pancreas": (350.0, 50.0), "liver": (150.0, 90.0)}


@dataclass
class LoadedCase:
    """The nodes `load_case` added (remove them all with `unload_case`)."""

    case: ReviewCase
    background: object  # CT, or T2
    foreground: object = None  # the heat map (IPMN)
    alternate_background: object = None  # T1 (IPMN)
    segmentation: object = None  # the model's pancreas (segmentation)
    reviewed_segmentation: object = None  # a reviewer's correction, when one was saved
    roi: object = None
    table: object = None
    center_ras: tuple = (0.0, 0.0, 0.0)
    size_mm: tuple = (100.0, 100.0, 100.0)
    nodes: list = field(default_factory=list)


def load_case(case: ReviewCase, scene, reviewed_file: Optional[Path] = None) -> LoadedCase:
    """Read the case's files into `scene` (nothing is added if one of them fails) and return its
    nodes; `reviewed_file`, when it exists, is loaded too as "Pancreas (reviewed)"."""
    if not case.reviewable:
        raise ReviewError(f"'{case.name}' {case.problem}.")
    before = {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}
    try:
        with removing_new_nodes_on_error(scene):
            loaded = _load_ipmn(case, scene) if case.task == "ipmn" else _load_segmentation(case, scene, reviewed_file)
    except PancreasAIError:
        raise
    except Exception as error:  # a damaged file: say which case, keep the scene as it was
        raise ReviewError(f"'{case.name}' could not be loaded ({error}).") from error
    loaded.nodes = [scene.GetNthNode(n) for n in range(scene.GetNumberOfNodes())
                    if scene.GetNthNode(n).GetID() not in before]
    return loaded


def _load_segmentation(case: ReviewCase, scene, reviewed_file: Optional[Path]) -> LoadedCase:
    from PancreasSegMoNetLib.pancreas_segment import import_mask_file  # the module's own import

    ct_node = add_volume_node(scene, read_volume(case.files["ct"]), f"{case.name} CT")
    set_window_level(ct_node, *CT_PRESETS["abdomen"])
    segmentation = import_mask_file(ct_node, case.files["labelmap"])
    segmentation.SetName(f"{case.name} pancreas (model)")
    reviewed = None
    if reviewed_file is not None and Path(reviewed_file).is_file():
        reviewed = import_mask_file(ct_node, reviewed_file)
        reviewed.SetName(f"{case.name} pancreas (reviewed)")
        segmentation.GetDisplayNode().SetVisibility(False)
    bounds = np.zeros(6)
    (reviewed or segmentation).GetRASBounds(bounds)
    center, size = (bounds[0::2] + bounds[1::2]) / 2, bounds[1::2] - bounds[0::2]
    if not np.all(np.isfinite(size)) or np.max(size) <= 0:  # an empty segment: the whole CT
        ct_node.GetRASBounds(bounds)
        center, size = (bounds[0::2] + bounds[1::2]) / 2, bounds[1::2] - bounds[0::2]
    return LoadedCase(case, ct_node, segmentation=segmentation, reviewed_segmentation=reviewed,
                      center_ras=tuple(center), size_mm=tuple(size))


def _load_ipmn(case: ReviewCase, scene) -> LoadedCase:
    from IPMNRiskLib.result_nodes import add_assessment_to_scene  # the module's own nodes

    t2 = read_volume(case.files["t2"])
    t2_node = add_volume_node(scene, t2, f"{case.name} T2")
    t1_node = None
    if "t1" in case.files:
        t1_node = add_volume_node(scene, read_volume(case.files["t1"]), f"{case.name} T1")
    heat_map = read_volume(case.files["heat_map"])
    if heat_map.shape != t2.shape or not np.allclose(heat_map.ijk_to_ras, t2.ijk_to_ras, atol=1e-3):
        raise InputError(f"The heat map of '{case.name}' is not on its T2's grid: were the files of two "
                         "runs mixed?")
    classes = len(case.class_names)  # 3-class or 2-class: the result's own task
    summary = {"class_names": list(case.class_names), "probabilities": [0] * classes,
               "spread": [0] * classes, "test_time_views": "", "research_use_notice": "",
               "region": {"center_ras": [0, 0, 0], "size_mm": [0, 0, 0]}, **case.record}
    result = add_assessment_to_scene(t2_node, heat_map, summary)
    # Below a tenth of its peak the heat map is transparent: the T2 shows as it is, and the colour
    # only where the model looked (inferno's black end would otherwise darken the whole image).
    display = result.heat_map_node.GetDisplayNode()
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(HEAT_MAP_FLOOR)
    display.SetUpperThreshold(1.0)
    _colour_legend(result.heat_map_node)
    center, size = summary["region"]["center_ras"], summary["region"]["size_mm"]
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", f"{case.name} IPMN region")
    roi.SetCenter(*center)
    roi.SetSize(*size)
    roi.CreateDefaultDisplayNodes()
    _outline_only(roi)
    # The slices go through the heat map's peak (where the model looked), the view spans the region.
    focus = _peak_ras(heat_map) if float(np.max(heat_map.array)) > 0 else np.asarray(center, float)
    return LoadedCase(case, t2_node, foreground=result.heat_map_node, alternate_background=t1_node,
                      roi=roi, table=result.table_node, center_ras=tuple(float(v) for v in focus),
                      size_mm=tuple(size))


def _colour_legend(heat_map_node):
    """Slicer's colour legend beside the heat map in the slice views, saying what it shows."""
    import slicer

    scene = heat_map_node.GetScene()
    if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):  # the Colors module's job
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    # What vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode does in the application (outside
    # it, without the Colors module's logic, that returns nothing).
    legend = scene.AddNewNodeByClass("vtkMRMLColorLegendDisplayNode", f"{heat_map_node.GetName()} legend")
    legend.SetAndObservePrimaryDisplayNode(heat_map_node.GetDisplayNode())
    heat_map_node.AddAndObserveDisplayNodeID(legend.GetID())
    legend.SetTitleText("Attention rollout\n(relative to its peak,\nnot a probability)")
    legend.SetNumberOfLabels(3)
    legend.SetLabelFormat("%.1f")
    legend.SetVisibility(True)
    return legend


def _peak_ras(volume) -> np.ndarray:
    """The world position of the volume's largest value (the first, if it is reached twice)."""
    index = np.unravel_index(int(np.argmax(volume.array)), volume.shape)
    return (volume.ijk_to_ras @ np.r_[index[::-1], 1.0])[:3]


def _outline_only(roi_node) -> None:
    """The region as a thin outline a reviewer cannot drag: a filled box would hide the heat map,
    and the region is the model's input, not something to edit in a review."""
    display = roi_node.GetDisplayNode()
    if display is None:
        return
    display.SetFillVisibility(False)
    display.SetHandlesInteractive(False)
    display.SetPropertiesLabelVisibility(False)
    display.SetPointLabelsVisibility(False)
    roi_node.SetLocked(True)


def show_case(scene, loaded: LoadedCase, opacity: float = HEAT_MAP_OPACITY, background: str = "default") -> None:
    """The case in the three slice views, centred on the region or the pancreas: the heat map
    over T2 (or over T1 with background='t1') at `opacity`."""
    import slicer

    back = loaded.alternate_background if background == "t1" and loaded.alternate_background else loaded.background
    show_in_slice_views(scene, back, loaded.foreground, float(np.clip(opacity, 0.0, 1.0)),
                        loaded.center_ras, loaded.size_mm)
    # Where the patient's axes point and how long a centimetre is, in every view (Slicer's own
    # orientation marker and ruler; the web views draw them too).
    views = slicer.vtkMRMLAbstractViewNode
    for layout_name, _, _ in SLICE_VIEWS:
        slice_node = scene.GetSingletonNode(layout_name, "vtkMRMLSliceNode")
        slice_node.SetOrientationMarkerType(views.OrientationMarkerTypeAxes)
        slice_node.SetRulerType(views.RulerTypeThin)


def unload_case(scene, loaded: Optional[LoadedCase]) -> None:
    """Remove what `load_case` added (the slice views keep their own nodes)."""
    if loaded is None:
        return
    for node in loaded.nodes:
        if node is not None and scene.IsNodePresent(node):
            scene.RemoveNode(node)


def set_window_level(volume_node, window: float, level: float) -> None:
    display = volume_node.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(float(window), float(level))


def set_auto_window_level(volume_node) -> None:
    volume_node.GetDisplayNode().SetAutoWindowLevel(True)


def save_reviewed_segmentation(worklist: Worklist, case: ReviewCase, segmentation_node, reference_node,
                               reviewer: str, segment_id: Optional[str] = None) -> Path:
    """Write a reviewer's corrected pancreas as `<case>_pancreas_reviewed.seg.nrrd` in the results
    folder, on the CT's grid (the model's own file is never touched). `segment_id` defaults to
    the segmentation's first segment. Returns the path, for an 'edited' verdict."""
    import slicer
    import vtk

    from PancreasSegMoNetLib.cli import PANCREAS_SEGMENT
    from PancreasAILib.output_files import all_or_nothing
    from PancreasAILib.segmentation_file import write_segmentation

    if case.task != "segmentation":
        raise ReviewError(f"'{case.name}' is an IPMN case; only a pancreas segmentation is saved as reviewed.")
    segmentation = segmentation_node.GetSegmentation()
    if segment_id is None:
        if segmentation.GetNumberOfSegments() == 0:
            raise ReviewError("The segmentation holds no segment to save.")
        segment_id = segmentation.GetNthSegmentID(0)
    name = reviewed_segmentation_name(worklist, case.name, reviewer)
    if not name.startswith(f"{case.name}{REVIEWED_SUFFIX}"):  # never the model's file
        raise ReviewError(f"Refusing to write {name}: not a reviewed-segmentation name.")
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "reviewed export")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, reference_node):
            raise ReviewError("Slicer could not export the corrected segment on the CT's grid.")
        mask = volume_from_node(labelmap, "corrected segmentation")
        reference = volume_from_node(reference_node, "CT")
        if mask.shape != reference.shape:
            raise ReviewError("The corrected segment did not come out on the CT's grid.")
        path = worklist.folder / name
        with all_or_nothing([path], overwrite=True) as (temporary,):
            write_segmentation(reference.with_array((np.asarray(mask.array) > 0).astype(np.uint8)), temporary,
                               [PANCREAS_SEGMENT])
    finally:  # the export's display and storage nodes too: the scene is left as it was
        for helper in (labelmap.GetDisplayNode(), labelmap.GetStorageNode()):
            if helper is not None:
                scene.RemoveNode(helper)
        scene.RemoveNode(labelmap)
    return path
