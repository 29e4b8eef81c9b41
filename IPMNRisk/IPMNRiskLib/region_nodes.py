"""An automatic region in a Slicer scene: the pancreas the MR MoNet found, as a segmentation
beside T2, and the box the ViT cropped, as an ROI, so the radiologist sees what the region was
drawn around (and can correct it and assess again with their own box).
A failure while changing the scene removes whatever was added."""

from __future__ import annotations

from PancreasAILib.scene import place_beside, removing_new_nodes_on_error
from PancreasAILib.volume import Volume

from .automatic_region import segmentation_package

ROI_NAME = "IPMN automatic region"
#: Attribute of both nodes: the segmentation model that found the pancreas.
SEGMENTATION_MODEL_ATTRIBUTE = "IPMNRisk.SegmentationModel"


def add_automatic_region_nodes(t2_node, summary: dict, pancreas: Volume) -> tuple[object, object]:
    """(ROI node of the region, segmentation node of `pancreas`, a mask on T2's grid), beside T2."""
    segmentation_package()
    from PancreasSegMoNetLib.pancreas_segment import apply_pancreas_mask

    scene = t2_node.GetScene()
    region = summary["region"]
    with removing_new_nodes_on_error(scene):
        segmentation_node = apply_pancreas_mask(t2_node, pancreas.array > 0)
        roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName(ROI_NAME))
        roi.SetCenter(*region["center_ras"])
        roi.SetSize(*region["size_mm"])
        roi.CreateDefaultDisplayNodes()
        for node in (roi, segmentation_node):
            node.SetAttribute(SEGMENTATION_MODEL_ATTRIBUTE, region.get("segmentation_model", ""))
        place_beside(scene, roi, t2_node)
    return roi, segmentation_node
