"""What both modules need from an MRML scene: volumes in and out, study placement, undo,
slice views, scene files.

The only shared file that knows about nodes. It uses the MRML classes and the module logics'
static methods directly (not `slicer.modules`), so the same code runs in the Slicer
application and in `slicer-core` outside it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np

from .errors import InputError
from .volume import Volume, check_geometry, check_spacing

if TYPE_CHECKING:
    from pathlib import Path


def _slicer():
    import slicer
    return slicer


def vtk_matrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix


def numpy_matrix(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def world_ijk_to_ras(node) -> np.ndarray:
    """The node's IJK-to-RAS in world space, including a linear parent transform."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = numpy_matrix(matrix)
    transform = node.GetParentTransformNode()
    if transform is not None:
        if not transform.IsTransformToWorldLinear():
            raise InputError(
                f"'{node.GetName()}' is under a non-linear transform; harden the transform "
                "(Transforms module) before running this.")
        to_world = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(to_world)
        ijk_to_ras = numpy_matrix(to_world) @ ijk_to_ras
    return ijk_to_ras


def volume_from_node(node, what: str = "volume") -> Volume:
    """Voxels (a view, not a copy) and world geometry of a scalar volume node."""
    if node is None:
        raise InputError(f"No {what} is selected.")
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"'{node.GetName()}' holds no image data.")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"'{node.GetName()}' has {image.GetNumberOfScalarComponents()} components per "
                         "voxel (a colour or vector image); a grey-scale scan is needed.")
    from vtk.util.numpy_support import vtk_to_numpy

    dims = image.GetDimensions()
    array = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    # A zero spacing makes the node's own matrix NaN: name the cause before using it.
    check_spacing(node.GetSpacing(), f"{what} '{node.GetName()}'")
    ijk_to_ras = world_ijk_to_ras(node)
    check_geometry(ijk_to_ras, f"{what} '{node.GetName()}'")
    return Volume(array, ijk_to_ras)


def export_volume_node(node, path, what: str = "volume"):
    """Write a volume node for a command line, in world coordinates (a linear parent transform
    applied), so the command line sees what the user sees; uncompressed (a work file, read once).
    Returns the path."""
    from .volume_io import write_volume

    return write_volume(volume_from_node(node, what), path, compress=False)


def add_volume_node(scene, volume: Volume, name: str, node_class: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node holding a copy of `volume`, with display and storage nodes."""
    from vtk.util.numpy_support import numpy_to_vtk
    import vtk

    node = scene.AddNewNodeByClass(node_class, name)
    array = np.ascontiguousarray(volume.array)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_to_vtk(array.ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(vtk_matrix(volume.ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    node.CreateDefaultStorageNode()
    return node


def oriented_image(mask: np.ndarray, ijk_to_ras: np.ndarray):
    """(K, J, I) uint8 mask -> vtkOrientedImageData with that geometry."""
    from vtk.util.numpy_support import numpy_to_vtk

    slicer = _slicer()
    array = np.ascontiguousarray(mask, dtype=np.uint8)
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.GetPointData().SetScalars(numpy_to_vtk(array.ravel(), deep=True))
    image.SetImageToWorldMatrix(vtk_matrix(ijk_to_ras))
    return image


def place_beside(scene, node, reference_node) -> None:
    """Put `node` in the subject hierarchy folder or study that holds `reference_node`,
    and under the same parent transform."""
    hierarchy = scene.GetSubjectHierarchyNode()
    if hierarchy is not None:
        reference_item = hierarchy.GetItemByDataNode(reference_node)
        parent = hierarchy.GetItemParent(reference_item) if reference_item else 0
        if parent and parent != hierarchy.GetSceneItemID():
            item = hierarchy.GetItemByDataNode(node)
            # In the application a plugin creates items for new nodes; outside it, we do.
            if item:
                hierarchy.SetItemParent(item, parent)
            else:
                hierarchy.CreateItem(parent, node)
    transform = reference_node.GetParentTransformNode()
    if transform is not None and hasattr(node, "SetAndObserveTransformNodeID"):
        node.SetAndObserveTransformNodeID(transform.GetID())


@contextlib.contextmanager
def removing_new_nodes_on_error(scene) -> Iterator[None]:
    """If the block raises (or is cancelled), remove every node it added to `scene`."""
    before = {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}
    try:
        yield
    except BaseException:
        added = [scene.GetNthNode(n) for n in range(scene.GetNumberOfNodes())]
        for node in added:
            if node is not None and node.GetID() not in before and scene.IsNodePresent(node):
                scene.RemoveNode(node)
        raise


# The module logics create_scene() needs: the Slicer application and slicer-core have them;
# PythonSlicer (Slicer's Python outside the application) does not.
SCENE_LOGICS = ("vtkSlicerApplicationLogic", "vtkSlicerVolumesLogic", "vtkSlicerSegmentationsModuleLogic",
                "vtkSlicerMarkupsLogic")


def scenes_unavailable() -> Optional[str]:
    """Why this Python cannot build scenes outside the application (None if it can)."""
    try:
        slicer = _slicer()
    except ImportError:
        return "slicer-core is not installed (pip install slicer-core)"
    missing = [name for name in SCENE_LOGICS if not hasattr(slicer, name)]
    if missing:
        return (f"this Python's 'slicer' has no {', '.join(missing)} (PythonSlicer loads no module "
                "logics); run in Slicer's Python console, or in a Python with slicer-core")
    return None


def create_scene():
    """A scene with the logics our adapters use, for work outside the Slicer application
    (batch scripts, tests). Inside Slicer use `slicer.mrmlScene`."""
    slicer = _slicer()
    scene = slicer.vtkMRMLScene()
    application_logic = slicer.vtkSlicerApplicationLogic()
    application_logic.SetMRMLScene(scene)
    color_logic = application_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    color_logic.AddDefaultColorNodes()
    application_logic.SetModuleLogic("Colors", color_logic)
    logics = []
    for logic_class in (slicer.vtkSlicerVolumesLogic, slicer.vtkSlicerSegmentationsModuleLogic):
        logic = logic_class()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(application_logic)
        logics.append(logic)
    # The markups logic registers the markups storage nodes; without them an ROI is saved with
    # its centre only (in the .mrml) and reopens with size 0 x 0 x 0.
    markups_logic = slicer.vtkSlicerMarkupsLogic()
    markups_logic.SetMRMLApplicationLogic(application_logic)
    markups_logic.SetMRMLScene(scene)
    application_logic.SetModuleLogic("Markups", markups_logic)
    # Keep the logics alive as long as the scene (the application logic holds weak references).
    scene._pancreasai_logics = (application_logic, *logics)
    scene._pancreasai_markups_logic = markups_logic
    return scene


# Slicer's three standard slice views as its layout logic makes them: layout name (also the
# singleton tag), orientation, label.
SLICE_VIEWS = (("Red", "Axial", "R"), ("Yellow", "Sagittal", "Y"), ("Green", "Coronal", "G"))
# Field of view around a region of interest: the region and some of its surroundings.
REGION_CONTEXT = 1.5


def show_in_slice_views(scene, background_node, foreground_node=None, foreground_opacity: float = 0.5,
                        center_ras=None, size_mm=None) -> None:
    """Show `background_node`, with `foreground_node` over it at `foreground_opacity`, in the Red,
    Yellow and Green slice views, centred on the box `center_ras` + `size_mm` (default: the
    background volume), and keep this set-up in the scene so a saved scene opens with it.

    The slice and slice composite nodes are singletons tagged with the layout name, as Slicer
    makes them: opening the scene in Slicer copies their settings into its own views.
    """
    slicer = _slicer()
    if center_ras is None or size_mm is None:
        bounds = np.zeros(6)
        background_node.GetRASBounds(bounds)
        center_ras, size_mm = (bounds[0::2] + bounds[1::2]) / 2, bounds[1::2] - bounds[0::2]
    field_of_view = REGION_CONTEXT * float(np.max(size_mm))
    # The slab of one voxel of the background, as Slicer's "fit to volume" sets it.
    thickness = float(min(background_node.GetSpacing()))
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    for layout_name, orientation, label in SLICE_VIEWS:
        slice_node = scene.GetSingletonNode(layout_name, "vtkMRMLSliceNode")
        if slice_node is None:
            slice_node = _new_view_node(scene, "vtkMRMLSliceNode", layout_name)
            slice_node.SetName(layout_name)
            slice_node.SetDefaultOrientation(orientation)
            slice_node.SetOrientation(orientation)
            slice_node.SetLayoutLabel(label)
            slice_node.SetLayoutColor(getattr(slicer.vtkMRMLAbstractViewNode, f"Get{layout_name}Color")())
            scene.AddNode(slice_node)
        slice_node.SetFieldOfView(field_of_view, field_of_view, thickness)
        slice_node.JumpSliceByCentering(*(float(v) for v in center_ras))

        composite = scene.GetSingletonNode(layout_name, "vtkMRMLSliceCompositeNode")
        if composite is None:
            composite = _new_view_node(scene, "vtkMRMLSliceCompositeNode", layout_name)
            scene.AddNode(composite)
        composite.SetBackgroundVolumeID(background_node.GetID())
        composite.SetForegroundVolumeID(foreground_node.GetID() if foreground_node is not None else None)
        composite.SetForegroundOpacity(foreground_opacity if foreground_node is not None else 0.0)


def _new_view_node(scene, class_name: str, layout_name: str):
    """A node of `class_name` with the scene's defaults, tagged with `layout_name`."""
    node = scene.CreateNodeByClass(class_name)
    node.UnRegister(None)  # CreateNodeByClass hands over a reference that Python also takes
    node.SetLayoutName(layout_name)
    return node


def save_scene_bundle(scene, path) -> "Path":
    """Write the whole scene, data included, as one Slicer `.mrb` file; `path` may be relative or
    start with `~`. Returns the absolute path written."""
    from .output_files import user_path

    # Slicer's writer refuses a relative path ("given directory is not a full path").
    path = user_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is None and node.GetSaveWithScene():
            node.CreateDefaultStorageNode()
    import vtk

    # vtkArchive reports every file it zips; keep the console for what matters.
    output_window = vtk.vtkOutputWindow.GetInstance()
    mode = output_window.GetDisplayMode()
    output_window.SetDisplayModeToNever()
    try:
        written = scene.WriteToMRB(str(path))
    finally:
        output_window.SetDisplayMode(mode)
    if not written:
        raise OSError(f"Slicer could not write the scene to {path}.")
    return path
